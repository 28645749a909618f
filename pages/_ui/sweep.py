"""The Scaling page's sweep: one filter at 1..N processes, with repeats, as a resumable plan.

A sweep is a list of runs still to do plus the rows measured so far, kept in the session.
Each script run advances it one job at a time, so a rerun (a click anywhere) interrupts
nothing: the next run picks up the job in flight. Cancel stops it and keeps what was measured;
changing a setting stops it too (the rows would no longer match the settings shown).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Hashable

import numpy as np
import pandas as pd
import streamlit as st

import engine

from . import charts, jobs
from .state import CPUS, WORKER_CAP, get_engine

SLOT = "sweep"
SIDES = [128, 256, 512, 1024, 2048, 4096]
PYTHON_MAX_SIDE = 256


def side_label(side: int) -> str:
    mp = side * side / 2**20
    return f"{side}x{side}" + (f" ({mp:.0f} MP)" if mp >= 1 else "")


@dataclass(eq=False)
class Sweep:
    config: Hashable
    kernel: str
    image: np.ndarray  # shared: every run reads it in place
    todo: list[tuple[str, int, int]]  # (implementation, processes, repeat); repeat 0 = warm-up
    total: int
    runs: list[dict] = field(default_factory=list)
    pending: jobs.Pending | None = None
    status: str = "running"  # running, done, cancelled, stopped, failed
    message: str = ""
    started: float = field(default_factory=time.perf_counter)

    def frame(self) -> pd.DataFrame:
        cols = ["implementation", "processes", "repeat", "seconds", "compute_s", "copy_in_s", "copy_out_s", "bands"]
        return pd.DataFrame(self.runs, columns=cols)

    def stop(self, status: str, message: str) -> None:
        if self.pending is not None:
            self.pending.job.cancel()
            self.pending = None
        self.status, self.message = status, message


def plan(impls: list[str], n_max: int, repeats: int) -> list[tuple[str, int, int]]:
    """Warm-up first (unrecorded), then repeats outermost so that slow drift spreads evenly."""
    todo = [(impl, n_max, 0) for impl in impls]
    for rep in range(1, repeats + 1):
        for impl in impls:
            for p in range(1, n_max + 1):
                todo.append((impl, p, rep))
    return todo


def start(config: Hashable, kernel: str, image: np.ndarray, impls: list[str], n_max: int, repeats: int) -> Sweep:
    old = st.session_state.get(SLOT)
    if isinstance(old, Sweep) and old.status == "running":
        old.stop("cancelled", "restarted")
    shared = get_engine().shared_array(image.shape, image.dtype)
    shared[...] = image
    todo = plan(impls, n_max, repeats)
    sw = Sweep(config, kernel, shared, todo, len(todo))
    st.session_state[SLOT] = sw
    return sw


def advance(sw: Sweep, bar) -> None:
    """Run the sweep's remaining jobs, drawing progress; resumable after any interruption."""
    eng = get_engine()
    while sw.status == "running":
        if sw.pending is None:
            if not sw.todo:
                sw.status = "done"
                sw.message = f"{len(sw.runs)} runs in {time.perf_counter() - sw.started:.1f} s"
                break
            impl, p, rep = sw.todo[0]
            try:
                job = eng.submit(sw.image, [sw.kernel], processes=p, implementation=impl)
            except (ValueError, TypeError) as e:
                sw.stop("failed", str(e))
                break
            sw.pending = jobs.Pending(job, sw.config, {"impl": impl, "p": p, "rep": rep})
        job = sw.pending.job
        if not job.done():
            impl, p, rep = sw.todo[0]
            done_bands, total_bands = job.progress()
            finished = sw.total - len(sw.todo)
            frac = (finished + (done_bands / total_bands if total_bands else 0)) / sw.total
            what = "warm-up" if rep == 0 else f"repeat {rep}"
            if job.state() == "waiting":
                text = f"⏳ Waiting for free workers (other sessions are using the engine's {WORKER_CAP} processes)…"
            else:
                text = f"{impl} · {p} process{'es' if p > 1 else ''} · {what} — run {finished + 1} of {sw.total}"
            bar.progress(min(frac, 1.0), text=text)
            time.sleep(jobs.POLL_SECONDS)
            continue
        try:
            res = job.result()
        except engine.JobCancelled:
            sw.pending = None
            continue
        except (engine.WorkerError, ValueError, TypeError) as e:
            sw.stop("failed", str(e))
            break
        impl, p, rep = sw.todo[0]
        if rep > 0:
            ph = res.phases
            sw.runs.append({"implementation": impl, "processes": p, "repeat": rep, "seconds": ph.wall,
                            "compute_s": ph.compute, "copy_in_s": ph.copy_in, "copy_out_s": ph.copy_out,
                            "bands": len(res.timeline)})
        sw.todo.pop(0)
        sw.pending = None
    bar.empty()


# -- reading the results ------------------------------------------------------------------------
def time_sentence(summary: pd.DataFrame) -> str:
    parts = []
    for impl, g in summary.groupby("implementation", sort=False):
        g = g.sort_values("processes")
        best = g.loc[g["ms"].idxmin()]
        first = g.iloc[0]
        s = (f"**{impl}**: {int(first['processes'])} process took {first['ms']:.1f} ms; the fastest was "
             f"{int(best['processes'])} processes at {best['ms']:.1f} ms")
        if best["processes"] == first["processes"]:
            s = f"**{impl}**: {int(first['processes'])} process was fastest at {first['ms']:.1f} ms: the work is too small to split"
        parts.append(s)
    tail = (f" With more than {CPUS} processes the time stops falling: this machine has {CPUS} CPUs, so extra "
            "processes take turns on them." if summary["processes"].max() > CPUS else "")
    return "; ".join(parts) + "." + tail


def speedup_sentence(summary: pd.DataFrame) -> str:
    parts = []
    for impl, g in summary.groupby("implementation", sort=False):
        at = g[g["processes"] == min(CPUS, int(g["processes"].max()))]
        if at.empty:
            continue
        r = at.iloc[0]
        s = f"**{impl}** reached {r['speedup']:.2f}x on {int(r['processes'])} processes (ideal {int(r['processes'])}x)"
        sf = g["serial_fraction"].dropna()
        if not sf.empty:
            f = float(sf.iloc[0])
            limit = "no limit" if f < 1e-3 else f"at most {1 / f:.0f}x on any number of cores"
            s += f"; Amdahl's fit gives a serial fraction of {f:.1%}, so {limit}"
        parts.append(s)
    return "; ".join(parts) + ". Dashed: Amdahl's law fitted to the medians, counting at most the CPUs as parallel."


def efficiency_sentence(summary: pd.DataFrame) -> str:
    parts = []
    for impl, g in summary.groupby("implementation", sort=False):
        g = g.sort_values("processes")
        pieces = [f"{e:.0%} at {int(p)}" for p, e in zip(g["processes"], g["efficiency"])]
        parts.append(f"**{impl}** {', '.join(pieces)}")
    tail = (f" Past {CPUS} processes it must fall: the processes share {CPUS} cores."
            if summary["processes"].max() > CPUS else "")
    return "Efficiency is speedup per process (100 % is ideal): " + "; ".join(parts) + "." + tail


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    t = summary.copy()
    t["serial fraction"] = t.pop("serial_fraction")
    t = t.drop(columns=["amdahl"])
    return t


def charts_row(sw: Sweep) -> None:
    """Time, speedup and efficiency side by side, each with a sentence; the table; CSV export."""
    runs = sw.frame()
    if runs.empty:
        return
    n_max = int(runs["processes"].max())
    summary = charts.sweep_summary(runs, CPUS)
    c1, c2, c3 = st.columns(3, gap="medium")
    with c1:
        st.markdown("**Time** (each dot one run, line the median)")
        st.altair_chart(charts.time_chart(runs, summary, CPUS, n_max), width="stretch")
        st.caption(time_sentence(summary))
    with c2:
        st.markdown("**Speedup** against the ideal line and Amdahl's law")
        st.altair_chart(charts.speedup_chart(summary, CPUS, n_max), width="stretch")
        st.caption(speedup_sentence(summary))
    with c3:
        st.markdown("**Efficiency** (speedup / processes)")
        st.altair_chart(charts.efficiency_chart(summary, CPUS, n_max), width="stretch")
        st.caption(efficiency_sentence(summary))
    with st.expander("The numbers", icon=":material/table:"):
        st.dataframe(summary_table(summary), hide_index=True, width="stretch",
                     column_config={"ms": st.column_config.NumberColumn("median ms", format="%.2f"),
                                    "speedup": st.column_config.NumberColumn(format="%.2fx"),
                                    "efficiency": st.column_config.NumberColumn(format="percent"),
                                    "serial fraction": st.column_config.NumberColumn(format="percent")})
    st.download_button("Runs as CSV", runs.to_csv(index=False), file_name=f"scaling_{sw.kernel}.csv",
                       mime="text/csv", icon=":material/download:", on_click="ignore", key="sc_csv")
