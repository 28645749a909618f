"""What runs inside a pool worker process, and the messages it exchanges with the parent.

One pipe per worker, messages in order::

    parent (_pool._Worker)                         worker (serve)
    ----------------------                         --------------
                                  <-------------   pid (once, when started)
    Pass(filter, kind, plan, src, dst,
         kernel, options, first, piped,
         gate) ------------------------------->  attach src/dst (kept between passes);
                                                   a pair's first worker of each filter
                                                   writes arrivals[filter] = gate,
                                                   steps += 1, waits until both filters'
                                                   arrivals or gate.value reach gate
    gate.value = n (once both have passed, or      (wait_gate), steps += 1;
      after _GATE_WAIT; in a finally) ........>    run band ``first``, then claim the next
    [the read end of the pass's token pipe,        band by reading a token (a band index,
     when piped: SCM_RIGHTS]                ---->  2 bytes) from the pipe, until it is empty
                                  <-------------   PassDone(filter, pid, bands) or PassFailed(error)
    Release(names) ------------------------------> close the mappings of unlinked segments
    Stop() --------------------------------------> exit

The workers of one filter share the rest of a pass's bands through its token pipe without asking
the parent, as GNU make's jobserver hands out job slots: a read of 2 bytes from a pipe is atomic,
so no band is claimed twice; the parent cancels by emptying the pipe. A worker never creates or
unlinks a segment of a live parent: it attaches, computes, and closes a mapping when told
(``_shm.Attachments``); when its parent dies, it sweeps the dead parent's segments and exits.
``bands_done`` is a shared counter that only this worker writes; the parent reads it for
``Job.progress()`` without a message per band.

The gate starts a pair's two filters together. Between two sends the job thread may lose the GIL
for milliseconds (a Streamlit script runs in the same process), or B's worker may still unmap the
segments of a previous image; A's first band would start that much before B's. So the first
worker of each filter writes the pair's number into ``arrivals[filter]`` (two shared int64 of the
engine) and waits until both slots hold it: the one that arrives second opens the way for both,
with no message and no help from the parent, whose thread (and the GIL) stays out of that
moment; the first to arrive keeps its CPU for up to ``GATE_HOLD`` while it waits, so that it is
on a CPU when the other arrives. ``gate`` is one shared int64 that only the parent writes, the
highest pair number it has let through: its fallback when a send failed or a worker died before
arriving (then the other is let go after ``_pool._GATE_WAIT``), and a slot overwritten by another
session's pair at the same moment costs no more than that wait. ``steps`` counts this worker's
steps at the gate (only it writes it): +1 on arriving, +1 on passing. The parent sends a pair's
other workers their passes only once both first ones have passed (with more workers than CPUs, a
woken one would take the CPU of a first one still at the gate, and that filter would start a
time slice late).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing import reduction

from ._bands import Band
from ._compute import band_range, filter_band
from ._kernels import Kernel
from ._shm import Attachments, SegmentRef, sweep_owner

__all__ = ["Pass", "Release", "Stop", "BandDone", "PassDone", "PassFailed", "serve", "run_pass", "claim", "empty",
           "wait_gate", "spin_until", "TOKEN_BYTES", "GATE_TIMEOUT", "GATE_HOLD"]

TOKEN_BYTES = 2  # a band index in a token pipe, little-endian: up to 65536 bands a filter
#: Longest wait at the gate. A safety valve only (the parent opens the gate in a ``finally``):
#: a band that starts without the gate computes the same bits, just not at the same moment.
GATE_TIMEOUT = 5.0
#: A first worker at the gate polls without yielding its CPU for this long, then yields between
#: looks (``wait_gate``).
GATE_HOLD = 0.005


# -- messages ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pass:
    """Run bands of one filter: ``first``, then the pass's token pipe's (sent right after this
    message when ``piped``). ``kind``: ``"range"`` (normalize's first pass: each band's min and
    max, no output) or ``"filter"``. ``gate``: when not 0, the pair's number: wait at the gate
    (``wait_gate``) before the first band."""

    filter: int
    kind: str
    plan: tuple[Band, ...]
    src: SegmentRef
    dst: SegmentRef | None
    kernel: Kernel
    border: str
    output: str
    implementation: str
    value_range: tuple[float, float] | None
    first: int
    piped: bool
    gate: int = 0


@dataclass(frozen=True)
class Release:
    """Close these mappings: the parent has unlinked the segments."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class Stop:
    """Exit."""


@dataclass(frozen=True)
class BandDone:
    index: int
    start: float  # time.perf_counter() in the worker (the same clock as the parent's, on Linux)
    end: float
    value_range: tuple[float, float] | None  # for a range pass


@dataclass(frozen=True)
class PassDone:
    filter: int
    pid: int
    bands: tuple[BandDone, ...]


@dataclass(frozen=True)
class PassFailed:
    error: BaseException


# -- the worker -------------------------------------------------------------------------------
_ATTACHED = Attachments()
_GATE = None  # the engine's gate (a shared int64 that only the parent writes), given to serve
_ARRIVALS = None  # per filter, the pair number its first worker last arrived at the gate with (two int64)
_STEPS = None  # this worker's steps at the gate: +1 arriving, +1 passing (a shared int64 only it writes)


def spin_until(done, timeout: float, *, hold: float = 0.0) -> None:
    """Call ``done()`` until it is true or ``timeout`` seconds have passed: for waits shorter
    than waking a sleeping process (the gate's). For the first ``hold`` seconds it keeps the
    CPU; after that it yields the CPU between calls."""
    start = time.monotonic()
    deadline, held = start + timeout, start + min(hold, timeout)
    while not done():
        now = time.monotonic()
        if now >= deadline:
            return
        if now >= held:
            os.sched_yield()


def wait_gate(gate, arrivals, number: int, timeout: float = GATE_TIMEOUT, hold: float = GATE_HOLD) -> None:
    """Wait until both filters' first workers have arrived at pair ``number`` (both
    ``arrivals`` slots ``>= number``) or the parent has let it through (``gate.value >=
    number``). Polling, not sleeping: waking a sleeping process costs more than the wait.

    For ``hold`` seconds it polls without yielding: a worker that yields while the other is on
    its way lets a browser's or server's thread onto its CPU and, once the other arrives,
    starts when the scheduler gives the CPU back, a time slice late (docs/benchmarks.md, the
    start gap). Past ``hold`` it yields, so that a late partner waiting for this very CPU is not
    kept off it for long."""
    spin_until(lambda: gate.value >= number or min(arrivals[0], arrivals[1]) >= number, timeout, hold=hold)


def init(parent_pid: int) -> None:
    """Worker setup: one OpenCV thread, Ctrl-C is the parent's business, die with the parent."""
    import cv2

    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # started blocked: see _pool._Worker

    def watch():  # a worker busy in a long band notices too
        while os.getppid() == parent_pid:
            time.sleep(0.2)
        _orphaned(parent_pid)

    threading.Thread(target=watch, name="pfl-parent-watch", daemon=True).start()


def _orphaned(parent_pid: int) -> None:
    """Exit; first, if the parent died (even by SIGKILL: a Jupyter kernel killed at shutdown,
    the OOM killer), unlink the segments it can no longer unlink. Every worker of the dead parent
    tries; the first one wins. A parent's pipe closes before the kernel reparents its children,
    so wait a moment for the reparenting."""
    deadline = time.monotonic() + 2.0
    while os.getppid() == parent_pid and time.monotonic() < deadline:
        time.sleep(0.01)
    if os.getppid() != parent_pid:
        with contextlib.suppress(Exception):
            sweep_owner(parent_pid)
    os._exit(0)


def serve(conn, parent_pid: int, bands_done, gate, steps, arrivals) -> None:
    """The worker's loop: answer the parent's messages in order, until ``Stop`` (or the parent's
    end of the pipe closes: then ``_orphaned``)."""
    global _GATE, _STEPS, _ARRIVALS
    _GATE, _STEPS, _ARRIVALS = gate, steps, arrivals
    init(parent_pid)
    try:
        conn.send(os.getpid())
        while True:
            msg = conn.recv()
            if isinstance(msg, Stop):
                return
            if isinstance(msg, Release):
                _ATTACHED.release(msg.names)
                continue
            answer = run_pass(conn, msg, bands_done)
            try:
                conn.send(answer)
            except (EOFError, OSError):
                raise
            except Exception as e:  # noqa: BLE001 - an exception that does not pickle
                conn.send(PassFailed(RuntimeError(f"{type(answer.error).__name__}: {answer.error} ({e})")))
    except (EOFError, OSError):  # the parent went away (or closed the pipe without a Stop)
        _orphaned(parent_pid)


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


def run_pass(conn, p: Pass, bands_done) -> PassDone | PassFailed:
    """Bands of one pass: ``p.first``, then whatever the token pipe (received from ``conn``
    when ``p.piped``) still holds."""
    fd = None
    done = []
    try:
        with _ATTACHED.arrays(p.src, p.dst) as (src, dst):
            if p.gate:  # only the engine's workers (serve) get such passes
                _ARRIVALS[p.filter] = p.gate
                _STEPS.value += 1  # arrived: attached, every earlier message handled
                wait_gate(_GATE, _ARRIVALS, p.gate)
                _STEPS.value += 1  # passed
            index = p.first
            while index is not None:
                t0 = time.perf_counter()
                band = p.plan[index]
                value_range = None
                if p.kind == "range":
                    value_range = band_range(src, band, p.kernel, p.border, p.implementation)
                else:
                    filter_band(src, dst, band, p.kernel, p.border, p.output, p.implementation,
                                value_range=p.value_range)
                done.append(BandDone(index, t0, time.perf_counter(), value_range))
                bands_done.value += 1
                if p.piped and fd is None:
                    fd = reduction.recv_handle(conn)  # sent right after the message: here by now
                index = claim(fd) if fd is not None else None
        return PassDone(p.filter, os.getpid(), tuple(done))
    except Exception as e:  # noqa: BLE001 - the parent re-raises it in the job
        if p.piped and fd is None:
            fd = reduction.recv_handle(conn)  # keep the stream in step: the pipe follows
        if fd is not None:
            empty(fd)  # the job failed: the group's other workers stop after their band
        return PassFailed(e)
    finally:
        if fd is not None:
            os.close(fd)
