"""What runs inside a worker process: attach to segments, run the band kernel, report timing.

Workers never create or unlink a segment; they attach (and unregister from the resource
tracker), compute, and close their mapping when the parent says the job is over.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np

from ._compute import band_range, filter_band
from ._shm import attach

_maps: dict = {}  # segment name -> SharedMemory, this worker's attachments
#: madvise(MADV_POPULATE_WRITE), Linux 5.14+ (Python 3.11 has no name for it): map every page of
#: a segment in one call when the worker attaches it, instead of one page fault per 4 KiB page
#: the first time a band touches it (thousands per band, ~10 ms per 48 MiB).
_MADV_POPULATE_WRITE = 23


def init(parent_pid: int) -> None:
    """Worker setup: one OpenCV thread, Ctrl-C is the parent's business, die with the parent."""
    import cv2

    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # started blocked: see _engine._Slot

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.2)
        os._exit(0)  # the parent is gone (even by SIGKILL): do not linger as an orphan

    threading.Thread(target=watch, name="pfl-parent-watch", daemon=True).start()


def serve(conn, parent_pid: int) -> None:
    """The worker's loop: answer the parent's messages in order (see ``_engine._Slot``)."""
    init(parent_pid)
    conn.send(os.getpid())
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        kind, payload = msg
        if kind == "release":
            release(payload)
            continue
        try:
            answer = ("ok", run_band(payload))
        except Exception as e:  # noqa: BLE001 - the parent re-raises it in the job
            answer = ("error", e)
        try:
            conn.send(answer)
        except Exception as e:  # noqa: BLE001 - an exception that does not pickle
            conn.send(("error", RuntimeError(f"{type(answer[1]).__name__}: {answer[1]} ({e})")))


def _array(desc):
    name, offset, shape, dtype = desc
    shm = _maps.get(name)
    if shm is None:
        shm = _maps[name] = attach(name)
        try:
            shm._mmap.madvise(_MADV_POPULATE_WRITE)  # noqa: SLF001 - SharedMemory's own mapping
        except (AttributeError, OSError, ValueError):
            pass  # an older kernel: pages fault in as bands touch them
    return np.ndarray(shape, dtype=np.dtype(dtype), buffer=shm.buf, offset=offset)


def run_band(task):
    """One band: ``("range" | "filter", filter index, Band, src, dst, kernel, border, output,
    implementation, value_range)`` -> ``(filter index, band index, pid, start, end, range)``."""
    kind, fi, band, src_desc, dst_desc, kernel, border, output, impl, value_range = task
    t0 = time.perf_counter()
    src = _array(src_desc)
    rng = None
    if kind == "range":
        rng = band_range(src, band, kernel, border, impl)
    else:
        filter_band(src, _array(dst_desc), band, kernel, border, output, impl, value_range=value_range)
    return fi, band.index, os.getpid(), t0, time.perf_counter(), rng


def release(names) -> None:
    """Close this worker's mappings of segments the parent is done with."""
    for name in names:
        shm = _maps.pop(name, None)
        if shm is not None:
            try:
                shm.close()
            except BufferError:  # pragma: no cover - an array escaped; it dies with the task
                pass
