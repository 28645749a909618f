"""Running engine jobs under Streamlit's rerun model: never two at once, never a stale one.

Streamlit reruns the page script on every click. A job lives in the session's holdings across
reruns::

    rerun with Run clicked ----> cancel the session's unfinished job (if any), submit a new one
    rerun, settings changed ---> cancel the unfinished job (its result would be stale)
    rerun, nothing changed ----> keep polling the unfinished job
    right after submit: settle() blocks on the job (releasing the GIL) for up to SETTLE_SECONDS,
             so that the job thread starts both filters' passes without waiting for this
             thread; a small job is done by then
    polling: job.state() "waiting" -> "waiting for free workers" (other sessions hold them)
             otherwise            -> progress bar of bands done / total, and the seconds so far
             against the estimate, redrawn only when its text changes (at least every second)
    a click while polling interrupts the script at its next Streamlit call; the next rerun
    decides with the rules above.

The engine caps worker processes for all sessions together and queues jobs FIFO, so a busy
server makes a session wait instead of starting more processes.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from dataclasses import dataclass, field
from typing import Any, Hashable

import engine

from .fmt import duration

POLL_SECONDS = 0.03
#: How long the page thread stays off the GIL after a submit (see the module's docstring).
SETTLE_SECONDS = 0.05


@dataclass(eq=False)
class Pending:
    """A submitted job, the settings it was made for, and what the page needs to show it."""

    job: engine.Job
    settings: Hashable
    meta: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    estimate: float | None = None  # seconds, if the page estimated the run

    def in_flight(self) -> bool:
        return not self.job.done()

    def cancel(self) -> None:
        self.job.cancel()


def cancel_if_stale(holdings, key: str, settings: Hashable, run_clicked: bool) -> str | None:
    """Cancel the session's unfinished job under ``key`` when Run was clicked again or the
    settings changed. Returns why it was cancelled, or None."""
    pending = holdings.get(key)
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
        holdings[key] = None
    return reason


def settle(pending: Pending, seconds: float = SETTLE_SECONDS) -> bool:
    """Wait up to ``seconds`` for the job without holding the GIL; True if it is done."""
    try:
        pending.job.exception(timeout=seconds)
    except (cf.TimeoutError, cf.CancelledError):
        pass
    return pending.job.done()


def progress_text(what: str, done: int, total: int, elapsed: float, estimate: float | None) -> tuple[float, str]:
    """The bar's fraction and text: bands, and the time so far against the estimate (so that the
    text moves every second even while one long band runs).

    >>> progress_text("sobel and gaussian", 1, 4, 12.2, 137.0)
    (0.25, 'sobel and gaussian: 1 of 4 bands done · 12 s of about 2 min 17 s')
    >>> progress_text("numpy", 0, 2, 70.0, 60.0)[1]
    'numpy: 0 of 2 bands done · 70 s (estimated 1 min)'
    """
    frac = done / total if total else 0.0
    if estimate:
        frac = max(frac, min(0.99, elapsed / estimate))
        clock = (f"{int(elapsed)} s of about {duration(estimate)}" if elapsed <= estimate
                 else f"{int(elapsed)} s (estimated {duration(estimate)})")
    else:
        clock = f"{int(elapsed)} s"
    return min(frac, 1.0), f"{what}: {done} of {total} bands done · {clock}"


def wait(pending: Pending, bar, what: str, cap: int) -> engine.JobResult:
    """Poll ``pending.job`` until it finishes, drawing progress into the ``bar`` placeholder.

    Raises whatever the job raised (``engine.JobCancelled``, ``engine.WorkerError``, ...).
    """
    job = pending.job
    shown = None
    while not job.done():
        if job.state() == "waiting":
            text = (f"⏳ Waiting for free workers: other sessions are using the engine "
                    f"(at most {cap} worker processes for everyone)…")
            frac = 0.0
        else:
            done, total = job.progress()
            frac, text = progress_text(what, done, total, time.perf_counter() - pending.started, pending.estimate)
        if text != shown:  # a delta per change, not per poll
            bar.progress(frac, text=text)
            shown = text
        try:
            job.exception(timeout=POLL_SECONDS)  # sleeps off the GIL, wakes at once when done
        except (cf.TimeoutError, cf.CancelledError):
            pass
    if shown is not None:
        bar.empty()
    return job.result()
