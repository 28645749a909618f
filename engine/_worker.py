"""What runs inside a worker process: attach to segments, run the band kernel, report timing.

Workers never create or unlink a segment; they attach (and unregister from the resource
tracker), compute, and close their mapping when the parent says the job is over.

One *pass* of a filter (see ``_engine``'s header) reaches a worker as a message naming the band
it starts with, then, when the filter has more bands than workers, the read end of the pass's
token pipe. The worker runs its first band, then claims the next band by reading a token (a
band index, 2 bytes) from the pipe, until the pipe is empty: the workers of a group share the
rest of the bands without asking the parent (as GNU make's jobserver hands out job slots). A
read of 2 bytes from a pipe is atomic, so no band is claimed twice; the parent cancels by
emptying the pipe. The worker answers once per pass, with every band's timing.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing import reduction

import numpy as np

from ._compute import band_range, filter_band
from ._shm import attach

_maps: dict = {}  # segment name -> SharedMemory, this worker's attachments
#: madvise(MADV_POPULATE_WRITE), Linux 5.14+ (Python 3.11 has no name for it): map every page of
#: a segment in one call when the worker attaches it, instead of one page fault per 4 KiB page
#: the first time a band touches it (thousands per band, ~10 ms per 48 MiB).
_MADV_POPULATE_WRITE = 23
TOKEN_BYTES = 2  # a band index in a token pipe, little-endian: up to 65536 bands a filter


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


def serve(conn, parent_pid: int, bands_done) -> None:
    """The worker's loop: answer the parent's messages in order (see ``_engine._Slot``).
    ``bands_done`` is a shared counter that only this worker writes: the parent reads it for
    ``Job.progress()`` without a message per band."""
    init(parent_pid)
    conn.send(os.getpid())
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        if msg[0] == "release":
            release(msg[1])
            continue
        _, spec, first, piped = msg
        try:
            answer = run_pass(conn, spec, first, piped, bands_done)
        except (EOFError, OSError):
            return  # the parent went away while handing over the token pipe
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


def claim(fd: int) -> int | None:
    """The next band index from a token pipe (non-blocking), or None when it is empty."""
    try:
        token = os.read(fd, TOKEN_BYTES)
    except BlockingIOError:
        return None
    return int.from_bytes(token, "little") if len(token) == TOKEN_BYTES else None


def empty(fd: int) -> None:
    """Take every token left in a pipe, so that no worker starts another band."""
    while claim(fd) is not None:
        pass


def run_pass(conn, spec, first, piped, bands_done):
    """Bands of one pass: ``first``, then whatever the token pipe (received from ``conn`` when
    ``piped``) still holds. ``spec`` is ``("range" | "filter", filter index, plan, src, dst,
    kernel, border, output, implementation, value_range)``. Returns ``("ok", (filter index,
    pid, [(band index, start, end, range), ...]))`` or ``("error", exception)``."""
    kind, fi, plan, src_desc, dst_desc, kernel, border, output, impl, value_range = spec
    fd = None
    done = []
    try:
        src = _array(src_desc)
        dst = _array(dst_desc) if kind == "filter" else None
        index = first
        while index is not None:
            t0 = time.perf_counter()
            band = plan[index]
            rng = None
            if kind == "range":
                rng = band_range(src, band, kernel, border, impl)
            else:
                filter_band(src, dst, band, kernel, border, output, impl, value_range=value_range)
            done.append((index, t0, time.perf_counter(), rng))
            bands_done.value += 1
            if piped and fd is None:
                fd = reduction.recv_handle(conn)  # sent right after the message: here by now
            index = claim(fd) if fd is not None else None
        return "ok", (fi, os.getpid(), done)
    except Exception as e:  # noqa: BLE001 - the parent re-raises it in the job
        if piped and fd is None:
            fd = reduction.recv_handle(conn)  # keep the stream in step: the pipe follows
        if fd is not None:
            empty(fd)  # the job failed: the group's other workers stop after their band
        return "error", e
    finally:
        if fd is not None:
            os.close(fd)


def release(names) -> None:
    """Close this worker's mappings of segments the parent is done with."""
    for name in names:
        shm = _maps.pop(name, None)
        if shm is not None:
            try:
                shm.close()
            except BufferError:  # pragma: no cover - an array escaped; it dies with the task
                pass
