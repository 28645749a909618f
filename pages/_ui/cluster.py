"""The Scaling page's Dask backend: one LocalCluster per server process, rescaled per sweep point.

::

    server process (all sessions)                         one sweep (a session)
    -----------------------------                         ---------------------
    get_cluster(): st.cache_resource, first Dask run      DaskJob per run: (workers p, settings)
      LocalCluster(1 worker process, 1 thread each)         submitted to the one-thread executor,
        + Client, + a one-thread executor                     FIFO across sessions ("waiting")
      (never at import time: workers are spawned         executor thread, per job:
       and re-import the main module)                       cluster.scale(p); poll until exactly
      closed by on_release (close_cluster()) and              p workers (retired ones gone)
        at interpreter exit (atexit)                        t0; engine.filter_image(img, kernel,
                                                              scheduler=client, ...); wall time
    Dask worker processes (children of this process):    the page polls job.done() and draws
      attach to the engine's segments for each band       progress; Cancel sets a flag that is
      (engine/_dask.py's shared-memory transport)          honoured between runs and while scaling

One executor thread means one job on the cluster at a time, for everyone: rescaling changes the
cluster for all sessions, so a job owns it from ``scale`` to the end of its run. A run already on
the cluster is not interrupted by Cancel: its bands write into a segment the engine reuses, and
cancelling Dask futures under ``engine.filter_image`` could leave a task writing into it after
the call returned. Runs are short at the page's sizes (well under a second for opencv), so
Cancel waits at most that long. A worker that dies is replaced by its nanny (see docs/scale-out.md); a cluster, or
its Client, that closed is rebuilt on the next use (``validate``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import streamlit as st

import engine

#: How to get the backend when ``engine.dask_available()`` is False.
INSTALL = 'pip install "dask[array]" distributed'
#: Seconds a rescale may take before the run fails (worker processes start in ~1 s when idle).
SCALE_TIMEOUT = 120.0


@dataclass(frozen=True)
class DaskRun:
    """What one timed run on the cluster gives back."""

    seconds: float  # wall clock around engine.filter_image, rescaling excluded
    output: np.ndarray
    workers: int


class DaskJob:
    """A run waiting for or on the cluster; the same polling surface as ``engine.Job``."""

    def __init__(self, workers: int):
        self.workers = workers
        self.phase = "waiting"  # waiting, scaling, running; set by the executor thread
        self._cancelled = threading.Event()
        self.future: Future | None = None

    def done(self) -> bool:
        return self.future is not None and self.future.done()

    def state(self) -> str:
        return "cancelled" if self._cancelled.is_set() and not self.done() else self.phase

    def cancel(self) -> None:
        """Drop the job if it has not started; otherwise stop it before its next step."""
        self._cancelled.set()
        if self.future is not None:
            self.future.cancel()

    def check(self) -> None:
        if self._cancelled.is_set():
            raise engine.JobCancelled("the sweep was cancelled")

    def result(self) -> DaskRun:
        """The run, or what it raised (``engine.JobCancelled`` for a cancelled job)."""
        if self.future is None or self.future.cancelled():
            raise engine.JobCancelled("the sweep was cancelled")
        return self.future.result()


class DaskCluster:
    """A LocalCluster of single-threaded worker processes, its Client, and the executor that
    runs one job on them at a time."""

    def __init__(self, n_workers: int = 1):
        from distributed import Client, LocalCluster  # optional extras, imported only here

        self.cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                    dashboard_address=":0", silence_logs=logging.ERROR)
        try:
            self.client = Client(self.cluster, set_as_default=False)
        except BaseException:
            self.cluster.close()
            raise
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pfl-dask")
        self._current: DaskJob | None = None  # the job the executor thread is on
        self._closed = False
        atexit.register(self.close)

    def alive(self) -> bool:
        return not self._closed and self.cluster.status.name == "running" and self.client.status == "running"

    def workers(self) -> int:
        return len(self.client.nthreads())

    def submit(self, image: np.ndarray, kernel, workers: int, *, border: str = "replicate",
               output: str = "clip", implementation: str = "opencv") -> DaskJob:
        """Queue one timed run of ``engine.filter_image(..., scheduler=client)`` on ``workers`` workers."""
        job = DaskJob(workers)
        job.future = self._executor.submit(self._run, job, image, kernel, border, output, implementation)
        return job

    def _run(self, job: DaskJob, image, kernel, border, output, implementation) -> DaskRun:
        self._current = job
        job.check()
        job.phase = "scaling"
        self._scale(job.workers, job)
        job.check()
        job.phase = "running"
        t0 = time.perf_counter()
        out = engine.filter_image(image, kernel, scheduler=self.client, border=border, output=output,
                                  implementation=implementation)
        return DaskRun(time.perf_counter() - t0, out, job.workers)

    def _scale(self, p: int, job: DaskJob) -> None:
        """Exactly ``p`` workers: the engine cuts bands for the workers it sees, so retiring ones
        must be gone too (``wait_for_workers`` waits only for at least ``p``)."""
        if self.workers() == p:
            return
        self.cluster.scale(p)
        deadline = time.monotonic() + SCALE_TIMEOUT
        while self.workers() != p:
            job.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Dask LocalCluster did not reach {p} workers in {SCALE_TIMEOUT:.0f} s "
                                   f"(it has {self.workers()}); the machine may be out of memory or overloaded")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop taking jobs, wait for the one in flight, close the Client and the cluster."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._current is not None:
            self._current.cancel()  # a rescale in progress stops now; a run finishes
        self._executor.shutdown(wait=True, cancel_futures=True)
        try:
            self.client.close()
        finally:
            self.cluster.close()


def _release(c: DaskCluster) -> None:
    c.close()


def _usable(c: DaskCluster) -> bool:
    """False (after closing what is left of it) for a cluster that stopped: the cache makes a new one."""
    if c.alive():
        return True
    with contextlib.suppress(Exception):
        c.close()
    return False


@st.cache_resource(show_spinner="Starting a Dask LocalCluster…", on_release=_release, validate=_usable)
def get_cluster() -> DaskCluster:
    """The server's Dask cluster: created on the first Dask run, shared by every session."""
    return DaskCluster(n_workers=1)


def close_cluster() -> None:
    """Close the cached cluster (its ``on_release``) and forget it; the next call makes a new one."""
    get_cluster.clear()
