"""The process-pool engine: warm worker processes, shared-memory bands, jobs you can cancel.

Data flow of one job (``filter_pair``; ``filter_image`` is the same with one filter)::

    caller thread            job thread (parent)                worker slots (processes)
    -------------            -------------------                ------------------------
    submit() -- validate --> lease slots (wait if busy)
                             input segment  <- copy image, in  (skipped: shared_array input)
                               row blocks on one thread per CPU
                             output segments A, B              (skipped: shared_array out=)
                             plan_bands(A), plan_bands(B)
                             pass of A: band i to slot i ---->  group A: slots 0..a-1
                               bands a.. as tokens in a pipe    attach(input, output), run the
                             pass of B: the same ----------->   band kernel, write rows
                                                                [start, stop) straight into
                                                                the output segment; then read
                                                                the next band's token from the
                                                                pass's pipe until it is empty
                             <--- one answer per slot: [(band, t0, t1)]; progress() reads
                                  each worker's shared bands_done counter meanwhile
                             outputs: a new array IS its output
                               segment (owned like a
                               shared_array, pooled again when
                               the caller drops it); a numpy
                               out= is copied into, in row blocks
                             finally: pool the input segment,
                               tell slots to unmap retired ones,
                               return slots to the engine
    result() <-------------- PairResult(outputs, timeline, phases, routes)

Ownership: this process creates and unlinks every segment (``_shm.Segment``) and every token
pipe (the workers get a duplicate of its read end for one pass and close it); workers only
attach. A slot is one worker process (spawn start method) and the parent's end of a pipe to it:
each filter runs on its own group of processes. A pass hands each worker of the group its first
band; the rest wait in the token pipe, and a worker that finishes a band takes the next token
itself, with no round trip to the parent (a read of a 2-byte token is atomic, so no band runs
twice). Cancel empties the pipe: every worker stops after its band. The job thread waits on
every busy slot's pipe and process sentinel at once (``multiprocessing.connection.wait``). A
slot whose process dies (SIGKILL, OOM killer, crash) shows as EOF on its pipe: the job fails at
once with ``WorkerError`` naming the exit signal; the job's other busy workers are killed rather
than waited for (see ``_stop``), and fresh slots replace all of them for the next job.
At most ``max_workers`` processes exist at any time; jobs that need more than are free wait
in FIFO order (``Job.state() == "waiting"``).
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import itertools
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import weakref
from multiprocessing import connection, reduction, resource_tracker
from dataclasses import dataclass

import numpy as np

from . import _worker
from ._bands import band_count, plan_bands
from ._compute import BORDERS, IMPLEMENTATIONS, OUTPUTS, route
from ._kernels import Kernel
from ._shm import Segment, sweep_stale
from ._validate import check_choice, check_image, check_kernel, check_out, check_processes, check_python_size

__all__ = ["Engine", "Job", "PairResult", "BandRecord", "Phases", "WorkerError", "JobCancelled", "available_cpus"]

#: Upper bound of Engine(max_workers=...): enough to show oversubscription, not enough to let a
#: typo start thousands of processes.
MAX_WORKERS_PER_CPU = 8
MAX_WORKERS_FLOOR = 16
#: Scratch segments kept between jobs: copy-in and copy-out then hit pages that are already
#: mapped in this process and in every worker, instead of faulting in fresh ones each time.
POOL_SEGMENTS = 6
POOL_BYTES = 1 << 30
_START_TIMEOUT = 120.0


class WorkerError(RuntimeError):
    """A worker process died while running a job. The engine replaces it; retrying works."""


class _Died(Exception):
    """A worker's pipe is closed (EOF, or EPIPE on send): its process is gone."""

    def __init__(self, slot):
        super().__init__(slot.pid)
        self.slot = slot


class JobCancelled(cf.CancelledError):
    """``Job.result()`` of a job that was cancelled."""


def available_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BandRecord:
    """One band of one filter: rows ``first_row..last_row`` (inclusive) on process ``pid``,
    from ``start`` to ``end`` seconds after the job started."""

    filter: int
    band: int
    first_row: int
    last_row: int
    pid: int
    start: float
    end: float


@dataclass(frozen=True)
class Phases:
    """Seconds spent copying the input in, computing, copying outputs out, and in all."""

    copy_in: float
    compute: float
    copy_out: float
    wall: float


@dataclass(frozen=True)
class PairResult:
    outputs: tuple
    timeline: tuple
    phases: Phases
    kernels: tuple
    processes: tuple
    filter_walls: tuple = ()  # per filter: first band start .. last band end, seconds
    routes: tuple = ()  # per filter: how its bands were computed (``engine.ROUTES``)

    def __iter__(self):  # a, b = engine.filter_pair(...)
        return iter(self.outputs)


def _death_cause(exitcode) -> str:
    if exitcode is None:
        return "closed its pipe and stopped responding (its exit status is not known yet)"
    if exitcode == -signal.SIGKILL:
        return "was killed with SIGKILL: likely out of memory (the kernel's OOM killer) or a kill -9"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if -exitcode in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE):
            return f"crashed ({name})"
        return f"was terminated by {name}"
    return f"exited unexpectedly with code {exitcode}"


class _Slot:
    """One worker process and the parent's end of its pipe.

    The protocol, in order on the pipe: the worker sends its pid once started; then the parent
    sends ``("pass", spec, first band, piped)`` and, when ``piped``, the read end of the pass's
    token pipe (the worker answers once, ``("ok", (filter, pid, bands))`` or ``("error",
    exception)``), ``("release", names)`` (no answer) or ``None`` (exit). A worker that dies
    closes its end: the parent sees the pipe at EOF and the process's sentinel ready.
    ``bands_done`` counts the bands this worker has finished, ever: shared memory that only the
    worker writes, read by ``Job.progress()``.
    """

    def __init__(self, ctx):
        self.conn, child = ctx.Pipe(duplex=True)
        self.bands_done = ctx.RawValue("q", 0)
        self.process = ctx.Process(
            target=_worker.serve, args=(child, os.getpid(), self.bands_done), name="pfl-worker", daemon=True
        )
        # Started with SIGINT blocked, as multiprocessing's resource tracker is: a Ctrl-C to the
        # terminal's process group while the worker still imports would print a
        # KeyboardInterrupt traceback. _worker.serve ignores SIGINT, then unblocks it. The
        # tracker is started first: starting it unblocks SIGINT again.
        resource_tracker.ensure_running()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            child.close()
        self.pid = None
        self.busy = 0  # 1 while a pass is running on it
        self.broken = False
        self.stale: list[str] = []  # segments unlinked since this worker last unmapped

    def ready(self, timeout=_START_TIMEOUT):
        if self.pid is None:
            try:
                if not self.conn.poll(timeout):
                    raise TimeoutError
                self.pid = self.conn.recv()
            except (EOFError, OSError, TimeoutError):
                self.broken = True
                raise WorkerError(
                    "a worker process failed to start. Workers are spawned and re-import your main "
                    "module: in a script, call the engine under `if __name__ == \"__main__\":`"
                ) from None
        return self

    def start(self, spec, first: int, tokens: int | None) -> None:
        """Start a pass on this worker at band ``first``; ``tokens``: the read end of the
        pass's token pipe, if it has more bands than workers."""
        try:
            self.conn.send(("pass", spec, first, tokens is not None))
            if tokens is not None:
                reduction.send_handle(self.conn, tokens, self.pid)
        except OSError:
            self.broken = True
            raise _Died(self) from None
        self.busy = 1

    def receive(self):
        """The next answer; ``_Died`` if the worker died. Re-raises a band's exception."""
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            self.broken = True
            raise _Died(self) from None
        self.busy -= 1
        if kind == "error":
            raise value
        return value

    def release(self, names) -> None:
        """Tell the worker to unmap segments (in order: before its next pass)."""
        if names:
            try:
                self.conn.send(("release", names))
            except OSError:
                self.broken = True

    def exitcode(self):
        self.process.join(timeout=1.0)
        return self.process.exitcode

    def shutdown(self, kill=False):
        if self.process.is_alive():
            if kill:
                self.process.kill()
            else:
                try:
                    self.conn.send(None)
                except OSError:
                    pass
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.conn.close()


class _JobThreads:
    """Daemon threads that run jobs, kept between jobs: starting a thread costs ~0.3 ms, a
    tenth of a small job. Daemon threads, so that interpreter exit never waits for a job (the
    default engine's atexit ``close()`` cancels them); ``close()`` ends the idle ones."""

    def __init__(self):
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = 0

    def run(self, fn) -> None:
        with self._lock:
            start = self._idle == 0
            if start:
                self._count += 1
            else:
                self._idle -= 1
        self._work.put(fn)
        if start:
            threading.Thread(target=self._loop, name="pfl-job", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn = self._work.get()
            if fn is None:
                return
            fn()
            del fn  # an idle thread must not keep its last job (and the job's result) alive
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        with self._lock:
            n, self._count, self._idle = self._count, 0, 0
        for _ in range(n):
            self._work.put(None)


class _Shared:
    """Segment + the base array of an ``Engine.shared_array``."""

    def __init__(self, segment: Segment, base: np.ndarray):
        self.segment = segment
        self.lo = base.__array_interface__["data"][0]
        self.hi = self.lo + base.nbytes


class Job:
    """A submitted job. ``result()`` gives a ``PairResult`` (one output for one kernel)."""

    _ids = itertools.count(1)

    def __init__(self, engine, image, kernels, processes, border, output, implementation, outs, user, bands=None):
        self.id = next(Job._ids)
        self._user_image, self._user_outs = user  # what the caller passed: returned as given
        self._engine = engine
        self._image, self._kernels, self._processes = image, kernels, processes
        self._border, self._output, self._impl, self._outs = border, output, implementation, outs
        self._future: cf.Future = cf.Future()
        self._cancel = threading.Event()
        self._abort = False  # Ctrl-C: kill the busy workers instead of waiting for their bands
        self._state = "waiting"
        self._counters = ()  # (worker's bands_done, its value when the job leased it)
        self._done_bands = None  # frozen when the job ends
        h, w = image.shape[:2]
        wrap = border == "wrap"
        self._plans = tuple(
            plan_bands(h, k.shape[0], bands or band_count(h, w, p), wrap=wrap) for k, p in zip(kernels, processes)
        )
        passes = 2 if output == "normalize" else 1
        self._total = passes * sum(len(p) for p in self._plans)
        self.routes = tuple(route(k, image.dtype, border, output, implementation) for k in kernels)

    # -- the handle ---------------------------------------------------------------------------
    def cancel(self) -> bool:
        """Ask the job to stop; it stops within one band. False if it had already finished."""
        if self._future.done():
            return False
        self._cancel.set()
        self._engine._wake()
        return True

    def done(self) -> bool:
        return self._future.done()

    def cancelled(self) -> bool:
        return self._state == "cancelled"

    def progress(self) -> tuple[int, int]:
        """``(bands done, bands total)``; ``normalize`` counts its two passes."""
        done = self._done_bands
        if done is None:
            done = sum(c.value - base for c, base in self._counters)
        return done, self._total

    def state(self) -> str:
        """``waiting`` (for free workers), ``running``, ``done``, ``failed`` or ``cancelled``."""
        return self._state

    def result(self, timeout: float | None = None) -> PairResult:
        return self._future.result(timeout)

    def exception(self, timeout: float | None = None):
        return self._future.exception(timeout)

    def add_done_callback(self, fn):
        self._future.add_done_callback(lambda _f: fn(self))

    def _settled(self, timeout):
        """Wait until the job has cleaned up and ended (its result or error is set)."""
        cf.wait([self._future], timeout=timeout)

    # -- the work -----------------------------------------------------------------------------
    def _run(self):
        eng = self._engine
        slots, temps = [], []
        try:
            slots = eng._lease(sum(self._processes), self._cancel)
            if slots is None:
                raise JobCancelled(f"job {self.id} was cancelled while waiting for workers")
            self._counters = tuple((s.bands_done, s.bands_done.value) for s in slots)
            self._state = "running"
            outcome, ok = self._execute(slots, temps), True
        except BaseException as e:  # noqa: BLE001 - every failure must reach result()
            outcome, ok = e, False
        finally:
            # Clean up *before* anyone waiting on result() wakes: no band is still running
            # (see _drain), so pooled segments can be reused and nothing is left in /dev/shm.
            self._done_bands = self.progress()[0]
            for seg in temps:
                eng._recycle(seg)
            eng._give_back(slots or [])
            self._image = self._outs = self._user_image = self._user_outs = None
        if ok:
            self._state = "done"
            self._future.set_result(outcome)
        else:
            self._state = "cancelled" if isinstance(outcome, JobCancelled) else "failed"
            self._future.set_exception(outcome)

    def _execute(self, slots, temps) -> PairResult:
        eng = self._engine
        t_start = time.perf_counter()
        image = self._image
        src_desc = eng._descriptor(image)
        if src_desc is None:
            seg = eng._segment(image.nbytes)
            temps.append(seg)
            eng._copy(np.ndarray(image.shape, image.dtype, buffer=seg.buf), image)
            src_desc = (seg.name, 0, image.shape, image.dtype.str)
        t_in = time.perf_counter()
        dst_descs, views, results = [], [], {}
        for fi, o in enumerate(self._outs):
            d = eng._descriptor(o) if o is not None else None
            if d is None:
                seg = eng._segment(image.nbytes)
                temps.append(seg)
                if o is None:
                    results[fi] = seg  # the workers' output becomes the caller's array: no copy-out
                d = (seg.name, 0, image.shape, image.dtype.str)
                views.append(np.ndarray(image.shape, image.dtype, buffer=seg.buf))
            else:
                views.append(None)
            dst_descs.append(d)

        records, ranges = [], {}
        groups, start = [], 0
        for p in self._processes:
            groups.append(slots[start : start + p])
            start += p
        group_of = {id(slot): fi for fi, g in enumerate(groups) for slot in g}
        pipes = {}  # filter index -> read end of its running pass's token pipe (parent's copy)

        def start_pass(fi, kind, value_range=None):
            plan = self._plans[fi]
            spec = (kind, fi, plan, src_desc, dst_descs[fi], self._kernels[fi], self._border, self._output,
                    self._impl, value_range)
            workers = groups[fi][: len(plan)]
            tokens = None
            if len(plan) > len(workers):
                tokens, w = os.pipe()
                pipes[fi] = tokens
                try:
                    os.set_blocking(tokens, False)
                    os.write(w, b"".join(i.to_bytes(_worker.TOKEN_BYTES, "little") for i in range(len(workers), len(plan))))
                finally:
                    os.close(w)
            for first, slot in enumerate(workers):
                slot.start(spec, first, tokens)

        def stop_passes():
            for fd in pipes.values():
                _worker.empty(fd)

        def on_answer(answer):
            fi, pid, done = answer
            for bi, t0, t1, rng in done:
                band = self._plans[fi][bi]
                if rng is not None:
                    ranges.setdefault(fi, []).append(rng)
                else:
                    records.append(BandRecord(fi, bi, band.start, band.stop - 1, pid, t0 - t_start, t1 - t_start))
            if any(s.busy for s in groups[fi]):
                return
            if fi in pipes:
                os.close(pipes.pop(fi))
            if ranges.get(fi) and len(ranges[fi]) == len(self._plans[fi]) and not self._cancel.is_set():
                # normalize: every band's range is in; the second pass maps with the global one
                rs = ranges.pop(fi)
                start_pass(fi, "filter", (min(r[0] for r in rs), max(r[1] for r in rs)))

        t_compute = time.perf_counter()
        try:
            for fi in range(len(groups)):
                start_pass(fi, "range" if self._output == "normalize" else "filter")
            while any(s.busy for s in slots):
                if self._cancel.is_set():
                    stop_passes()
                    if self._abort:
                        self._stop(slots)
                        raise JobCancelled(f"job {self.id} was interrupted; its busy workers were stopped")
                for slot in _answering([s for s in slots if s.busy], timeout=0.05):
                    if slot.busy and slot.conn.poll():
                        on_answer(slot.receive())
        except _Died as e:
            self._stop(slots)
            which = f" of filter {'AB'[group_of[id(e.slot)]]}" if len(groups) > 1 else ""
            raise WorkerError(
                f"worker process {e.slot.pid}{which} {_death_cause(e.slot.exitcode())}; the job was stopped and "
                "the engine replaces the worker, so the next job runs"
            ) from None
        except BaseException:
            stop_passes()
            self._drain(slots)
            raise
        finally:
            for fd in pipes.values():
                os.close(fd)
        if self._cancel.is_set():
            raise JobCancelled(f"job {self.id} was cancelled")
        t_out = time.perf_counter()
        outputs = []
        for fi, o in enumerate(self._outs):
            user = self._user_outs[fi]
            if fi in results:  # a new array: the output segment itself, owned like a shared_array
                temps.remove(results[fi])
                outputs.append(eng._adopt(results[fi], views[fi]).reshape(self._user_image.shape))
            elif views[fi] is None:  # workers wrote straight into the caller's shared array
                outputs.append(user)
            else:  # the caller's own numpy array
                eng._copy(o, views[fi])
                outputs.append(user)
        t_end = time.perf_counter()
        walls = []
        for fi in range(len(groups)):
            rs = [r for r in records if r.filter == fi]
            walls.append(max(r.end for r in rs) - min(r.start for r in rs))
        return PairResult(
            outputs=tuple(outputs),
            timeline=tuple(sorted(records, key=lambda r: (r.start, r.filter, r.band))),
            phases=Phases(t_in - t_start, t_out - t_compute, t_end - t_out, t_end - t_start),
            kernels=tuple(self._kernels),
            processes=tuple(self._processes),
            filter_walls=tuple(walls),
            routes=self.routes,
        )

    @staticmethod
    def _stop(slots):
        """After a worker died, or on Ctrl-C: kill the job's busy workers instead of draining
        them (a band can run for many seconds; neither WorkerError nor Ctrl-C should wait for
        it). Dead before the job's segments are recycled, they write nothing after it;
        give-back replaces them."""
        busy = [s for s in slots if s.busy or s.broken]
        for slot in busy:
            slot.broken = True
            if slot.process.is_alive():
                slot.process.kill()
        for slot in busy:
            slot.process.join(timeout=5)

    @staticmethod
    def _drain(slots, timeout=60.0):
        """Wait for bands still running on healthy workers, so that none writes into a segment
        (or a caller's ``out``) after the job has ended. A band is short; a worker that does not
        finish one within ``timeout`` is marked broken and killed when it is given back."""
        deadline = time.monotonic() + timeout
        for slot in slots:
            while slot.busy and not slot.broken:
                try:
                    if not slot.conn.poll(max(0.0, deadline - time.monotonic())):
                        slot.broken = True
                        break
                    slot.receive()
                except _Died:
                    pass  # receive marked it broken
                except BaseException:  # noqa: BLE001 - the job already failed; this band's error is moot
                    pass


class Engine:
    """Warm worker processes for filtering; a context manager.

    Parameters
    ----------
    max_workers : int, optional
        Most worker processes alive at once. Default: twice ``available_cpus()``, so that a demo
        can show oversubscription. Jobs asking for more processes in all are refused.
    """

    def __init__(self, max_workers: int | None = None):
        self.cpus = available_cpus()
        if max_workers is None:
            max_workers = 2 * self.cpus
        limit = max(MAX_WORKERS_FLOOR, MAX_WORKERS_PER_CPU * self.cpus)
        if isinstance(max_workers, bool) or not isinstance(max_workers, (int, np.integer)) or not 1 <= max_workers <= limit:
            raise ValueError(
                f"max_workers must be an integer from 1 to {limit} ({MAX_WORKERS_PER_CPU} per CPU: each worker "
                f"is a whole Python process), got {max_workers!r}"
            )
        self.max_workers = int(max_workers)
        self._ctx = mp.get_context("spawn")
        self._cond = threading.Condition()
        self._idle: list[_Slot] = []
        self._alive = 0  # slots idle + leased + starting
        self._queue: collections.deque = collections.deque()  # waiting jobs' tickets, FIFO
        self._jobs: "weakref.WeakSet[Job]" = weakref.WeakSet()
        self._shared: dict[int, _Shared] = {}
        self._pool: collections.OrderedDict = collections.OrderedDict()  # name -> free Segment
        self._all_slots: "weakref.WeakSet[_Slot]" = weakref.WeakSet()
        self._threads = _JobThreads()
        self._copiers: cf.ThreadPoolExecutor | None = None  # made on the first big copy
        self._returned: collections.deque = collections.deque()  # (key, reuse) of put-off _forget calls
        self._closed = False
        sweep_stale()

    # -- context manager ------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"Engine(max_workers={self.max_workers}, alive={self._alive}, closed={self._closed})"

    # -- public API -----------------------------------------------------------------------------
    def filter_image(self, image, kernel, *, processes=None, border="replicate", output="clip",
                     implementation="opencv", out=None) -> np.ndarray:
        """Correlate ``image`` with ``kernel`` on ``processes`` workers; see ``engine.filter_image``."""
        job = self.submit(image, [kernel], processes=processes, border=border, output=output,
                          implementation=implementation, out=None if out is None else (out,))
        return _wait(job).outputs[0]

    def filter_pair(self, image, kernel_a, kernel_b, *, processes=None, border="replicate", output="clip",
                    implementation="opencv", out=None) -> PairResult:
        """Run two filters at the same time on separate process groups; see ``engine.filter_pair``."""
        job = self.submit(image, [kernel_a, kernel_b], processes=processes, border=border, output=output,
                          implementation=implementation, out=out)
        return _wait(job)

    def serial_time(self, image, kernel, *, border="replicate", output="clip", implementation="opencv",
                    repeats: int = 3) -> float:
        """Seconds of the best serial code for this filter: the band kernel on the whole image as
        one band, on one worker process (one OpenCV thread), best of ``repeats`` runs. On the
        ``direct`` route that is one OpenCV call (``engine.ROUTES``); it is the reference that
        parallel speedup is read against (the Filter lab and Scaling pages draw it)."""
        if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 100:
            raise ValueError(f"repeats must be an integer from 1 to 100, got {repeats!r}")
        best = None
        for _ in range(repeats):
            job = self.submit(image, [kernel], processes=1, border=border, output=output,
                              implementation=implementation, _bands=1)
            res = _wait(job)
            band = sum(r.end - r.start for r in res.timeline)
            best = band if best is None else min(best, band)
        return best

    def submit(self, image, kernels, *, processes=None, border="replicate", output="clip",
               implementation="opencv", out=None, _bands=None) -> Job:
        """Start one or two filters in the background and return a ``Job`` at once.

        ``kernels`` is a list of one or two kernels; ``processes`` an int (one kernel) or a pair.
        Everything is validated here, before any process starts or memory is allocated.
        """
        img3 = check_image(image)
        if isinstance(kernels, (str, Kernel)) or not isinstance(kernels, (list, tuple)) or not 1 <= len(kernels) <= 2:
            raise ValueError(f"kernels must be a list of one or two kernels, got {kernels!r:.80}")
        ks = tuple(check_kernel(k, "kernel" if len(kernels) == 1 else f"kernels[{i}]") for i, k in enumerate(kernels))
        check_choice(border, "border", BORDERS)
        check_choice(output, "output", OUTPUTS)
        check_choice(implementation, "implementation", IMPLEMENTATIONS)
        check_python_size(img3, implementation)
        default = (self.cpus,) if len(ks) == 1 else (max(1, self.cpus // 2), max(1, self.cpus - self.cpus // 2))
        default = tuple(min(d, self.max_workers // len(ks) or 1) for d in default)
        procs = check_processes(processes, len(ks), self.max_workers, default)
        if out is None:
            outs = (None,) * len(ks)
        else:
            if not isinstance(out, (tuple, list)) or len(out) != len(ks):
                raise ValueError(f"out must be a tuple of {len(ks)} arrays (or None), got {type(out).__name__}")
            outs = tuple(check_out(o, img3, "out" if len(ks) == 1 else f"out[{i}]", image.shape) for i, o in enumerate(out))
            if len(outs) == 2 and outs[0] is not None and outs[1] is not None and np.shares_memory(outs[0], outs[1]):
                raise ValueError("out[0] and out[1] must not share memory")
        if self._closed:
            raise RuntimeError("this Engine is closed; create a new one")
        user = (image, tuple(out) if out is not None else outs)
        job = Job(self, img3, ks, procs, border, output, implementation, outs, user, bands=_bands)
        self._jobs.add(job)
        self._threads.run(job._run)
        return job

    def plan(self, image_shape, kernel, processes: int, *, border: str = "replicate") -> tuple:
        """The bands this engine cuts for one filter of ``kernel`` on ``processes`` workers
        (what ``submit`` will run; idle workers take the next band, so which worker runs
        which band is decided at run time)."""
        k = check_kernel(kernel)
        check_choice(border, "border", BORDERS)
        (p,) = check_processes(processes, 1, self.max_workers, (self.cpus,))
        h, w = int(image_shape[0]), int(image_shape[1])
        return plan_bands(h, k.shape[0], band_count(h, w, p), wrap=border == "wrap")

    def workers(self) -> list[int]:
        """PIDs of the worker processes alive now (idle ones; leased ones are busy in a job)."""
        with self._cond:
            return [s.pid for s in self._idle if s.pid is not None]

    def shared_array(self, shape, dtype) -> np.ndarray:
        """A zeroed array whose memory is an engine-owned shared-memory segment.

        Pass it as ``image`` or ``out=`` and no pixel is copied between processes. The segment
        is unlinked when the array (and every view of it) is garbage-collected, or at
        ``close()``; after ``close()`` the array stays usable in this process.
        """
        if self._closed:
            raise RuntimeError("this Engine is closed; create a new one")
        dt = np.dtype(dtype)
        if dt not in (np.uint8, np.uint16):
            raise ValueError(f"dtype must be uint8 or uint16, got {dt}")
        shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"shape must be positive sizes, got {shape}")
        seg = Segment(int(np.prod(shape)) * dt.itemsize)
        arr = np.ndarray(shape, dt, buffer=seg.buf)
        key = id(seg)
        with self._cond:
            self._shared[key] = _Shared(seg, arr)
        weakref.finalize(arr, self._forget, key)
        return arr

    def close(self) -> None:
        """Cancel running jobs, end every worker process, unlink every segment. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        for job in list(self._jobs):
            job.cancel()
        for job in list(self._jobs):
            job._settled(timeout=15)
        self._threads.close()
        with self._cond:
            idle, self._idle = self._idle, []
            shared = list(self._shared.values())  # kept: _forget unmaps each once its array is collected
            pool, self._pool = list(self._pool.values()), collections.OrderedDict()
        for slot in idle:
            slot.shutdown()
        for sh in shared:
            sh.segment.unlink()  # the name goes now; unmapping under a live array would crash it
        for seg in pool:
            seg.release()
        self._take_returned()
        if self._copiers is not None:
            self._copiers.shutdown()

    # -- internals ----------------------------------------------------------------------------
    def _segment(self, nbytes: int) -> Segment:
        """A scratch segment of exactly ``nbytes``: a pooled one (its pages already mapped in
        this process and in the workers) or a new one."""
        self._take_returned()
        with self._cond:
            for name, seg in self._pool.items():
                if seg.nbytes == nbytes:
                    del self._pool[name]
                    return seg
        return Segment(nbytes)

    def _recycle(self, seg: Segment) -> None:
        """Keep a job's scratch segment for the next job (at most POOL_SEGMENTS, POOL_BYTES)."""
        self._take_returned()
        self._pool_segment(seg)

    def _pool_segment(self, seg: Segment) -> None:
        with self._cond:
            if not self._closed:
                self._pool[seg.name] = seg
            evict = []
            while self._pool and (
                self._closed or len(self._pool) > POOL_SEGMENTS or sum(x.nbytes for x in self._pool.values()) > POOL_BYTES
            ):
                evict.append(self._pool.popitem(last=False)[1])
            if self._closed and seg.name not in [e.name for e in evict] and seg.name not in self._pool:
                evict.append(seg)
        self._retire(evict)

    def _retire(self, segments) -> None:
        """Unlink segments now; workers unmap them before their next task."""
        if not segments:
            return
        names = [seg.name for seg in segments]
        for seg in segments:
            seg.release()
        with self._cond:
            for slot in self._all_slots:
                slot.stale.extend(names)

    def _forget(self, key, reuse=False):
        """An array from ``shared_array`` (or a job's result, ``reuse``) was garbage-collected:
        unlink its segment (a result's goes back to the pool). Runs wherever the garbage
        collector does; if that is inside this engine's own bookkeeping (this thread holds the
        lock, maybe mid-iteration over the pool), it is finished later by ``_take_returned``."""
        if self._cond._is_owned():  # noqa: SLF001 - Condition's own "held by this thread" test
            self._returned.append((key, reuse))
            return
        with self._cond:
            sh = self._shared.pop(key, None)
        if sh is None:
            return
        if reuse and not self._closed:
            self._pool_segment(sh.segment)
        else:
            self._retire([sh.segment])  # workers that mapped it unmap it too, before their next task

    def _adopt(self, seg: Segment, arr: np.ndarray) -> np.ndarray:
        """Hand a job's output segment to the caller as ``arr``: owned like a ``shared_array``
        (zero-copy as the input of a later job), and back in the pool when ``arr`` is collected."""
        key = id(seg)
        with self._cond:
            self._shared[key] = _Shared(seg, arr)
        weakref.finalize(arr, self._forget, key, True)
        return arr

    def _take_returned(self) -> None:
        """Finish the collections that ``_forget`` had to put off."""
        while True:
            try:
                key, reuse = self._returned.popleft()
            except IndexError:
                return
            self._forget(key, reuse)

    #: Copies smaller than this run on the calling thread: a thread hand-off costs ~50 us.
    PARALLEL_COPY_BYTES = 4 << 20

    def _copy(self, dst: np.ndarray, src: np.ndarray) -> None:
        """``dst[...] = src`` in row blocks on one thread per CPU: numpy releases the GIL, and one
        thread copies 48 MB in ~11 ms where two take ~6.5 (the workers are idle meanwhile)."""
        n = min(self.cpus, 8)
        if src.nbytes < self.PARALLEL_COPY_BYTES or n < 2 or len(src) < n:
            np.copyto(dst, src)
            return
        with self._cond:
            if self._copiers is None:
                self._copiers = cf.ThreadPoolExecutor(n, thread_name_prefix="pfl-copy")
            pool = self._copiers
        edges = np.linspace(0, len(src), n + 1).astype(int)
        parts = [pool.submit(np.copyto, dst[a:b], src[a:b]) for a, b in zip(edges[:-1], edges[1:])]
        for f in parts:
            f.result()

    def _descriptor(self, a):
        """``(segment, offset, shape, dtype)`` if ``a`` lies in one of our segments (C-contiguous)."""
        if a is None or not a.flags.c_contiguous:
            return None
        lo = a.__array_interface__["data"][0]
        with self._cond:
            for sh in self._shared.values():
                if sh.lo <= lo and lo + a.nbytes <= sh.hi:
                    shape = a.shape if a.ndim == 3 else a.shape + (1,)
                    return (sh.segment.name, lo - sh.lo, shape, a.dtype.str)
        return None

    def _wake(self):
        with self._cond:
            self._cond.notify_all()

    def _lease(self, n, cancel):
        """Take ``n`` ready slots, starting processes as needed; FIFO among waiting jobs.
        Returns None when cancelled while waiting."""
        ticket = object()
        with self._cond:
            # a worker that died while idle (OOM killer, kill -9) is replaced, not handed out
            dead = [s for s in self._idle if not s.process.is_alive()]
            for s in dead:
                self._idle.remove(s)
                self._alive -= 1
            self._queue.append(ticket)
            try:
                while True:
                    if self._closed or cancel.is_set():
                        return None
                    if self._queue[0] is ticket and len(self._idle) + self.max_workers - self._alive >= n:
                        break
                    self._cond.wait(0.1)
                take = self._idle[:n]
                del self._idle[:n]
                new = n - len(take)
                self._alive += new
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
        for s in dead:
            s.shutdown()
        try:
            fresh = [_Slot(self._ctx) for _ in range(new)]
            with self._cond:
                self._all_slots.update(fresh)
        except BaseException:
            with self._cond:
                self._alive -= new
                self._idle.extend(take)
            raise
        slots = take + fresh
        try:
            for s in fresh:
                s.ready()
        except BaseException:
            self._give_back(slots)
            raise
        for s in take:
            with self._cond:
                stale, s.stale = s.stale, []
            s.release(stale)
        return slots

    def _give_back(self, slots):
        keep = []
        for slot in slots:
            if slot.broken or slot.busy or not slot.process.is_alive():
                slot.shutdown(kill=True)
                with self._cond:
                    self._alive -= 1
                continue
            with self._cond:
                stale, slot.stale = slot.stale, []
            slot.release(stale)  # in order, before its next band
            keep.append(slot)
        with self._cond:
            if self._closed:
                drop = keep
            else:
                self._idle.extend(keep)
                drop = []
            self._cond.notify_all()
        for slot in drop:
            slot.shutdown()
            with self._cond:
                self._alive -= 1


def _answering(slots, timeout):
    """The slots among ``slots`` whose pipe has an answer or whose process has ended."""
    by_handle = {}
    for slot in slots:
        by_handle[slot.conn] = by_handle[slot.process.sentinel] = slot
    woke = connection.wait(list(by_handle), timeout=timeout)
    return list({id(by_handle[h]): by_handle[h] for h in woke}.values())


def _wait(job: Job) -> PairResult:
    """Block on a job; Ctrl-C cancels it at once, killing its busy workers (they are replaced
    for the next job; no orphan band, no leaked segment), and re-raises."""
    try:
        while True:
            try:
                return job.result(timeout=0.5)
            except cf.TimeoutError:
                continue
    except KeyboardInterrupt:
        job._abort = True
        job.cancel()
        job._settled(timeout=15)
        raise


_default_engine: Engine | None = None
_default_lock = threading.Lock()


def default_engine() -> Engine:
    """The engine behind the module-level functions: created on first use, closed at exit."""
    global _default_engine
    with _default_lock:
        if _default_engine is None or _default_engine._closed:
            _default_engine = Engine()
            atexit.register(_default_engine.close)
        return _default_engine
