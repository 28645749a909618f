"""The Scaling page's sweep: one filter at 1..N processes, with repeats, as a resumable plan.

A sweep is a list of runs still to do plus the rows measured so far, kept in the session.
Each script run advances it one job at a time, so a rerun (a click anywhere) interrupts
nothing: the next run picks up the job in flight. Cancel stops it and keeps what was measured;
changing a setting stops it too (the rows would no longer match the settings shown).

Only the Scaling page advances a sweep. On another page it pauses once its current job ends:
it is then no longer in flight (``Sweep.in_flight``), so the session's holdings may release it
when idle or over the memory cap (the release cancels it); back on the page, it resumes.

Two backends run the same filter on the same image: the engine's process pool (timed by the
engine's phases) and, when the Dask extras are installed, a Dask LocalCluster of as many
single-threaded worker processes (``cluster``; timed by wall clock around
``engine.filter_image(..., scheduler=client)``). Their rows share one table, told apart by the
``backend`` column, and one set of charts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Hashable

import numpy as np
import pandas as pd
import streamlit as st

import engine

from . import charts, cluster, jobs, report
from .charts import DASK, POOL
from .fmt import ms
from .holdings import weakly
from .state import CPUS, WORKER_CAP, get_engine, holdings

KEY = "sweep"  # the key in the session's holdings
#: Every sweep's border and output mapping (its runs and its serial reference).
BORDER, OUTPUT = "replicate", "clip"
SIDES = [128, 256, 512, 1024, 2048, 4096]
PYTHON_MAX_SIDE = 256
#: The backends a sweep can run on, as the page names them.
BACKENDS = {POOL: "process pool", DASK: "Dask LocalCluster"}
COLUMNS = ["backend", "implementation", "processes", "repeat", "seconds", "compute_s", "copy_in_s", "copy_out_s",
           "bands"]


def side_label(side: int) -> str:
    """The size as the slider shows it, in decimal megapixels like the lab's.

    >>> side_label(512), side_label(1024), side_label(4096)
    ('512x512', '1024x1024 (1.0 MP)', '4096x4096 (16.8 MP)')
    """
    mp = side * side / 1e6
    return f"{side}x{side}" + (f" ({mp:.1f} MP)" if mp >= 1 else "")


@dataclass(eq=False)
class Sweep:
    config: Hashable
    kernel: str
    image: np.ndarray  # shared: every run reads it in place
    todo: list[tuple[str, str, int, int]]  # (backend, implementation, processes, repeat); repeat 0 = warm-up
    total: int
    runs: list[dict] = field(default_factory=list)
    pending: jobs.Pending | None = None
    status: str = "running"  # running, done, cancelled, stopped, failed
    message: str = ""
    started: float = field(default_factory=time.perf_counter)
    #: The latest output per (backend, implementation): the same for every process count.
    outputs: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    #: True while ``advance`` runs it (a script run of the Scaling page), between jobs too.
    advancing: bool = False

    def frame(self) -> pd.DataFrame:
        """One row per recorded run; the Dask backend has no phase breakdown (NaN there)."""
        df = pd.DataFrame(self.runs, columns=COLUMNS)
        df["bands"] = df["bands"].astype("Int64")
        return df

    def stop(self, status: str, message: str) -> None:
        if self.pending is not None:
            self.pending.job.cancel()
            self.pending = None
        self.status, self.message = status, message

    # what the session's holdings ask of what they hold (holdings.py)
    def held_bytes(self) -> int:
        return self.image.nbytes + sum(o.nbytes for o in self.outputs.values())

    def in_flight(self) -> bool:
        """True while the sweep really runs: a job of it is not done, or the Scaling page is
        advancing it. A "running" sweep that nothing advances (the person went to another page)
        is paused, and may be released."""
        if self.status != "running":
            return False
        return self.advancing or (self.pending is not None and not self.pending.job.done())

    def cancel(self) -> None:
        if self.status == "running":
            self.stop("cancelled", "cancelled: the session's memory was released")


def plan(impls: list[str], n_max: int, repeats: int, backends=(POOL,)) -> list[tuple[str, str, int, int]]:
    """The runs of a sweep, backend by backend; repeat 0 is an unrecorded warm-up.

    Process pool: warm-up at N first, then repeats outermost so that slow drift spreads evenly.
    Dask: workers outermost, because rescaling the cluster takes seconds; a warm-up on each new
    set of workers (they import the engine and are probed for shared memory on first use).

    >>> plan(["opencv"], 2, 1, backends=("process pool", "dask"))  # doctest: +NORMALIZE_WHITESPACE
    [('process pool', 'opencv', 2, 0), ('process pool', 'opencv', 1, 1), ('process pool', 'opencv', 2, 1),
     ('dask', 'opencv', 1, 0), ('dask', 'opencv', 1, 1), ('dask', 'opencv', 2, 0), ('dask', 'opencv', 2, 1)]
    """
    todo = []
    if POOL in backends:
        todo += [(POOL, impl, n_max, 0) for impl in impls]
        for rep in range(1, repeats + 1):
            for impl in impls:
                for p in range(1, n_max + 1):
                    todo.append((POOL, impl, p, rep))
    if DASK in backends:
        for p in range(1, n_max + 1):
            todo.append((DASK, impls[0], p, 0))
            for rep in range(1, repeats + 1):
                for impl in impls:
                    todo.append((DASK, impl, p, rep))
    return todo


def start(config: Hashable, kernel: str, image: np.ndarray, impls: list[str], n_max: int, repeats: int,
          backends=(POOL,)) -> Sweep:
    h = holdings()
    old = h.get(KEY)
    if isinstance(old, Sweep) and old.status == "running":
        old.stop("cancelled", "restarted")
    h[KEY] = None  # the old sweep's image and outputs go before the new image is made
    del old
    shared = get_engine().shared_array(image.shape, image.dtype)
    shared[...] = image
    todo = plan(impls, n_max, repeats, backends)
    sw = Sweep(config, kernel, shared, todo, len(todo))
    h[KEY] = sw
    return sw


def _submit(sw: Sweep, backend: str, impl: str, p: int):
    if backend == DASK:
        return cluster.get_cluster().submit(sw.image, sw.kernel, p, border=BORDER, output=OUTPUT, implementation=impl)
    request = engine.FilterRequest([sw.kernel], border=BORDER, output=OUTPUT, implementation=impl)
    return get_engine().submit(sw.image, request, processes=p)


def _progress_text(job, backend: str, impl: str, p: int, rep: int, run: int, total: int) -> str:
    what = "warm-up" if rep == 0 else f"repeat {rep}"
    state = job.state()
    if backend == DASK:
        if state == "waiting":
            return "⏳ Waiting for the Dask LocalCluster (it runs one sweep's job at a time, for every session)…"
        if state == "scaling":
            return f"Dask · scaling the LocalCluster to {p} worker{'s' if p > 1 else ''}… — run {run} of {total}"
        return f"{impl} · Dask · {p} worker{'s' if p > 1 else ''} · {what} — run {run} of {total}"
    if state == "waiting":
        return f"⏳ Waiting for free workers (other sessions are using the engine's {WORKER_CAP} processes)…"
    return f"{impl} · {p} process{'es' if p > 1 else ''} · {what} — run {run} of {total}"


def _record(sw: Sweep, backend: str, impl: str, p: int, rep: int, res) -> None:
    if backend == DASK:
        sw.outputs[(backend, impl)] = res.output
        row = {"seconds": res.seconds}  # wall clock: the Dask path has no phase breakdown
    else:
        sw.outputs[(backend, impl)] = res.outputs[0]
        ph = res.phases
        row = {"seconds": ph.wall, "compute_s": ph.compute, "copy_in_s": ph.copy_in, "copy_out_s": ph.copy_out,
               "bands": len(res.timeline)}
    if rep > 0:
        sw.runs.append({"backend": backend, "implementation": impl, "processes": p, "repeat": rep, **row})


def advance(sw: Sweep, bar) -> None:
    """Run the sweep's remaining jobs, drawing progress; resumable after any interruption."""
    sw.advancing = True
    try:
        _advance(sw, bar)
    finally:  # a rerun interrupts the loop with an exception: the sweep pauses
        sw.advancing = False


def _advance(sw: Sweep, bar) -> None:
    while sw.status == "running":
        if sw.pending is None:
            if not sw.todo:
                sw.status = "done"
                sw.message = f"{len(sw.runs)} runs in {time.perf_counter() - sw.started:.1f} s"
                break
            backend, impl, p, rep = sw.todo[0]
            try:
                job = _submit(sw, backend, impl, p)
            except (ValueError, TypeError, ImportError) as e:
                sw.stop("failed", str(e))
                break
            except Exception as e:  # noqa: BLE001 - starting a LocalCluster can fail in many ways (ports, memory)
                if backend != DASK:
                    raise
                sw.stop("failed", f"could not start the Dask LocalCluster: {type(e).__name__}: {e}")
                break
            sw.pending = jobs.Pending(job, sw.config, {"backend": backend, "impl": impl, "p": p, "rep": rep})
        job = sw.pending.job
        backend, impl, p, rep = sw.todo[0]
        if not job.done():
            finished = sw.total - len(sw.todo)
            frac = finished / sw.total
            if backend == POOL:
                done_bands, total_bands = job.progress()
                frac += (done_bands / total_bands if total_bands else 0) / sw.total
            bar.progress(min(frac, 1.0), text=_progress_text(job, backend, impl, p, rep, finished + 1, sw.total))
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
        except Exception as e:  # noqa: BLE001 - a Dask run: scheduler, comm or timeout errors end the sweep
            if backend != DASK:
                raise
            sw.stop("failed", f"the Dask run failed: {type(e).__name__}: {e}")
            break
        _record(sw, backend, impl, p, rep, res)
        sw.todo.pop(0)
        sw.pending = None
    bar.empty()


# -- reading the results ------------------------------------------------------------------------
def _count(backend: str, n: int) -> str:
    """``"1 process"``, ``"2 processes"``; Dask's are ``"workers"`` (each a single-threaded process)."""
    if backend == DASK:
        return f"{n} worker{'' if n == 1 else 's'}"
    return f"{n} process{'' if n == 1 else 'es'}"


def _series(summary: pd.DataFrame):
    """``(backend, "**label**", rows sorted by processes)`` per backend and implementation."""
    for (backend, _impl, series), g in summary.groupby(["backend", "implementation", "series"], sort=False):
        yield backend, f"**{series}**", g.sort_values("processes")


def _both(summary: pd.DataFrame) -> bool:
    return {POOL, DASK} <= set(summary["backend"])


def dask_versus_pool(summary: pd.DataFrame) -> list[tuple[str, int, float]]:
    """``(implementation, processes, Dask time / pool time)`` at the most processes both ran,
    up to the CPUs, per implementation that ran on both backends."""
    out = []
    for impl, g in summary.groupby("implementation", sort=False):
        pool = g[g["backend"] == POOL].set_index("processes")["ms"]
        dask = g[g["backend"] == DASK].set_index("processes")["ms"]
        common = sorted(set(pool.index) & set(dask.index))
        if common:
            p = max([q for q in common if q <= CPUS] or common[:1])
            out.append((impl, int(p), float(dask[p] / pool[p])))
    return out


def _versus_sentence(summary: pd.DataFrame) -> str:
    ratios = dask_versus_pool(summary)
    if not ratios:
        return ""
    pieces = [f"{r:.1f}x the process pool's time for {impl} at {p}" for impl, p, r in ratios]
    s = " On the same image, Dask took " + "; ".join(pieces)
    if any(r > 1.1 for _, _, r in ratios):
        s += (": each Dask run submits a task graph, waits on the scheduler for every band and copies the image "
              "into and out of segments of its own, where the pool's workers read and write the page's shared "
              "arrays in place")
    elif all(r < 0.9 for _, _, r in ratios):
        s += ": here the cluster's scheduling cost less than the pool's"
    return s + "."


def time_sentence(summary: pd.DataFrame) -> str:
    parts = []
    for backend, label, g in _series(summary):
        best = g.loc[g["ms"].idxmin()]
        first = g.iloc[0]
        s = (f"{label}: {_count(backend, int(first['processes']))} took {first['ms']:.1f} ms; the fastest was "
             f"{_count(backend, int(best['processes']))} at {best['ms']:.1f} ms")
        if best["processes"] == first["processes"]:
            s = (f"{label}: {_count(backend, int(first['processes']))} was fastest at {first['ms']:.1f} ms: "
                 "the work is too small to split")
        parts.append(s)
    tail = (f" With more than {CPUS} processes the time stops falling: this machine has {CPUS} CPUs, so extra "
            "processes take turns on them." if summary["processes"].max() > CPUS else "")
    return "; ".join(parts) + "." + _versus_sentence(summary) + tail


def speedup_sentence(summary: pd.DataFrame) -> str:
    parts = []
    for backend, label, g in _series(summary):
        at = g[g["processes"] == min(CPUS, int(g["processes"].max()))]
        if at.empty:
            continue
        r = at.iloc[0]
        s = (f"{label} reached {r['speedup']:.2f}x on {_count(backend, int(r['processes']))} "
             f"(ideal {int(r['processes'])}x)")
        sf = g["serial_fraction"].dropna()
        if not sf.empty:
            f = float(sf.iloc[0])
            if f < 1e-3:
                s += "; Amdahl's fit finds no serial part: the limit here is the CPUs"
            elif f > 0.9:
                s += (f"; Amdahl's fit puts {f:.0%} of the time in serial work: at this size the "
                      "overhead of sending bands to workers outweighs the filtering")
            else:
                s += (f"; Amdahl's fit gives a serial fraction of {f:.1%}, so at most {1 / f:.1f}x "
                      "on any number of cores")
        parts.append(s)
    each = " Each backend is measured against its own time on 1 process." if _both(summary) else ""
    fit = (" Dotted: Amdahl's law fitted to the medians, counting at most the CPUs as parallel."
           if summary["amdahl"].notna().any() else "")  # speedup_chart draws the fit only where there is one
    return "; ".join(parts) + ". Dashed grey: the ideal, speedup = processes." + fit + each


def efficiency_sentence(summary: pd.DataFrame) -> str:
    parts = []
    for _backend, label, g in _series(summary):
        pieces = [f"{e:.0%} at {int(p)}" for p, e in zip(g["processes"], g["efficiency"])]
        parts.append(f"{label} {', '.join(pieces)}")
    tail = (f" Past {CPUS} processes it must fall: the processes share {CPUS} cores."
            if summary["processes"].max() > CPUS else "")
    return "Efficiency is speedup per process (100 % is ideal): " + "; ".join(parts) + "." + tail


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    t = summary.copy()
    t["serial fraction"] = t.pop("serial_fraction")
    t = t.drop(columns=["amdahl", "series"])
    return t


def serial_key(sw: Sweep) -> tuple:
    """The serial reference's key in the server's cache (``lab.serial_times``): the sweep's image
    (its source and size, in ``config``), kernel, and the sweep's border and output."""
    return ("sweep", sw.config[-1], sw.config[1], sw.kernel, BORDER, OUTPUT)


def serial_seconds(sw: Sweep) -> float | None:
    from .lab import serial_times

    return serial_times().get(serial_key(sw))


def measure_serial(sw: Sweep) -> float | None:
    """``Engine.serial_time`` of the sweep's filter on its image (OpenCV, one thread), once per
    image and kernel for the server; after the sweep, never before (it needs the workers)."""
    from .lab import serial_times

    cache = serial_times()
    key = serial_key(sw)
    if key not in cache and sw.status in ("done", "cancelled", "stopped") and sw.runs:
        try:
            cache[key] = get_engine().serial_time(sw.image, sw.kernel, border=BORDER, output=OUTPUT,
                                                  implementation="opencv")
        except (ValueError, TypeError, RuntimeError, engine.WorkerError, engine.JobCancelled):
            return None
    return cache.get(key)


def serial_code(sw: Sweep) -> charts.SerialCode:
    """The best serial code for the sweep's filter on its image, and the route it takes."""
    return charts.SerialCode.of(sw.kernel, sw.image.dtype, BORDER, OUTPUT)


def serial_sentence(summary: pd.DataFrame, serial_s: float, code: charts.SerialCode) -> str:
    """Where each series stands against the best serial code."""
    parts = []
    for series, g in summary.groupby("series", sort=False):
        best = g.loc[g["ms"].idxmin()]
        ratio = serial_s * 1e3 / float(best["ms"])
        parts.append(f"**{series}** at best {ratio:.2f}x its speed" if ratio >= 1 else
                     f"**{series}** at best {1 / ratio:.2f}x its time")
    return (f"Dark dashed line: the best serial code, {code.sentence} (route **{code.route}**), {ms(serial_s)} "
            f"(Engine.serial_time); " + "; ".join(parts) + ".")


def charts_row(sw: Sweep) -> None:
    """Time, speedup and efficiency side by side, each with a sentence; the table; CSV export."""
    runs = sw.frame()
    if runs.empty:
        return
    n_max = int(runs["processes"].max())
    summary = charts.sweep_summary(runs, CPUS)
    serial_s = serial_seconds(sw)
    serial_ms = serial_s * 1e3 if serial_s is not None else None
    code = serial_code(sw)
    c1, c2, c3 = st.columns(3, gap="medium")
    with c1:
        st.markdown("**Time** (each dot one run, line the median)")
        st.altair_chart(charts.time_chart(runs, summary, CPUS, n_max, serial_ms, code.label), width="stretch")
        st.caption(time_sentence(summary))
        if serial_s is not None:
            st.caption(serial_sentence(summary, serial_s, code))
    with c2:
        st.markdown("**Speedup** against the ideal line and Amdahl's law")
        st.altair_chart(charts.speedup_chart(summary, CPUS, n_max, serial_ms, code.label), width="stretch")
        st.caption(speedup_sentence(summary) + (
            f" Dash-dot: where each series would equal the best serial code, {code.sentence}."
            if serial_s is not None else ""))
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
    report.downloads("sc_fig_format", [report.ReportFigure("sc_fig", "Scaling charts", f"scaling_{sw.kernel}",
                                                           weakly(sw, figure))])


def figure(sw: Sweep):
    """The three charts above as one ``engine.plot.scaling`` figure, in the page's colours."""
    scs = charts.scalings(sw.frame(), CPUS, kernel=sw.kernel, shape=sw.image.shape)
    colors = charts.series_colors(scs)
    return engine.plot.scaling({series: sc for (_, _, series), sc in scs.items()}, colors=colors)
