"""Running engine jobs under Streamlit's rerun model: never two at once, never a stale one.

Streamlit reruns the page script on every click. A job lives in the session across reruns::

    rerun with Run clicked ----> cancel the session's unfinished job (if any), submit a new one
    rerun, settings changed ---> cancel the unfinished job (its result would be stale)
    rerun, nothing changed ----> keep polling the unfinished job
    polling: job.state() "waiting" -> "waiting for free workers" (other sessions hold them)
             otherwise            -> progress bar of bands done / total
    a click while polling interrupts the script at its next Streamlit call; the next rerun
    decides with the rules above.

The engine caps worker processes for all sessions together and queues jobs FIFO, so a busy
server makes a session wait instead of starting more processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Hashable

import streamlit as st

import engine

POLL_SECONDS = 0.03


@dataclass(eq=False)
class Pending:
    """A submitted job, the settings it was made for, and what the page needs to show it."""

    job: engine.Job
    settings: Hashable
    meta: dict[str, Any] = field(default_factory=dict)


def cancel_if_stale(slot: str, settings: Hashable, run_clicked: bool) -> str | None:
    """Cancel the session's unfinished job in ``slot`` when Run was clicked again or the
    settings changed. Returns why it was cancelled, or None."""
    pending = st.session_state.get(slot)
    if not isinstance(pending, Pending):
        return None
    if pending.job.done():
        return None
    reason = None
    if run_clicked:
        reason = "restarted: Run was clicked again"
    elif pending.settings != settings:
        reason = "cancelled: the settings changed while it ran"
    if reason:
        pending.job.cancel()
        st.session_state[slot] = None
    return reason


def wait(pending: Pending, bar, what: str, cap: int) -> engine.PairResult:
    """Poll ``pending.job`` until it finishes, drawing progress into the ``bar`` placeholder.

    Raises whatever the job raised (``engine.JobCancelled``, ``engine.WorkerError``, ...).
    """
    job = pending.job
    while not job.done():
        done, total = job.progress()
        if job.state() == "waiting":
            bar.progress(0.0, text=f"⏳ Waiting for free workers: other sessions are using the engine "
                                   f"(at most {cap} worker processes for everyone)…")
        else:
            frac = done / total if total else 0.0
            bar.progress(min(frac, 1.0), text=f"{what}: {done} of {total} bands done")
        time.sleep(POLL_SECONDS)
    bar.empty()
    return job.result()
