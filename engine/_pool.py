"""The process-pool engine: warm worker processes, shared-memory bands, jobs you can cancel.

Data flow of one job (``filter_pair``; ``filter_image`` is the same with one filter)::

    caller thread            job thread (parent)                worker processes
    -------------            -------------------                ----------------
    submit() -- validate --> lease workers (wait if busy)
                             input segment  <- copy image, in  (skipped: shared_array input)
                               row blocks on one thread per CPU
                             output segments A, B              (skipped: shared_array out=)
                             plan_bands(A), plan_bands(B)
                             pass of A: band i to worker i ---->  group A: workers 0..a-1
                               bands a.. as tokens in a pipe    attach(input, output), run the
                             pass of B: the same ----------->   band kernel, write rows
                             (sent in turn: A0, B0, A1, B1...;
                              a pair's A0 and B0 wait at the
                              gate, opened when both are there;
                              A1, B1.. once both are past it)
                                                                [start, stop) straight into
                                                                the output segment; then read
                                                                the next band's token from the
                                                                pass's pipe until it is empty
                             <--- one answer per worker: PassDone(its bands, each with
                                  start and end); progress() reads each worker's shared
                                  bands_done counter meanwhile
                             outputs: a new array IS its output
                               segment (owned like a
                               shared_array, pooled again when
                               the caller drops it); a numpy
                               out= is copied into, in row blocks
                             finally: return workers to the engine
                               (a broken one is killed first),
                               pool the scratch segments, tell
                               workers to unmap retired ones
    result() <-------------- JobResult(outputs, timeline, phases, routes)

Ownership: this process creates and unlinks every segment (``_shm.Segment``) and every token
pipe (the workers get a duplicate of its read end for one pass and close it); workers only
attach (and, if this process was SIGKILLed, unlink its segments before they exit:
``_worker._orphaned``). A ``_Worker`` is one spawned process and this process's end of a pipe to
it: each filter runs on its own group of them. A pass hands each worker of the group its first
band; the rest wait in the token pipe, and a worker that finishes a band takes the next token
itself, with no round trip to the parent (a read of a 2-byte token is atomic, so no band runs
twice). Cancel empties the pipe: every worker stops after its band. The job thread waits on
every busy worker's pipe and process sentinel at once (``multiprocessing.connection.wait``). A
worker whose process dies (SIGKILL, OOM killer, crash) shows as EOF on its pipe: the job fails at
once with ``WorkerError`` naming the exit signal; the job's other busy workers are killed rather
than waited for (see ``_stop``), and fresh workers replace all of them for the next job.
At most ``max_workers`` processes exist at any time; jobs that need more than are free wait
in FIFO order (``Job.state() == "waiting"``).
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import contextlib
import dataclasses
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
from ._bands import band_count, default_processes, plan_bands
from ._errors import JobCancelled, WorkerError
from ._options import BORDER
from ._request import FilterRequest
from ._shm import Segment, SegmentPool, SegmentRef, sweep_stale
from ._timeline import TIMELINE_STYLE
from ._validate import check_out, check_processes

__all__ = ["Engine", "Job", "JobResult", "BandRecord", "Phases", "available_cpus", "default_engine"]

#: Upper bound of Engine(max_workers=...): enough to show oversubscription, not enough to let a
#: typo start thousands of processes.
MAX_WORKERS_PER_CPU = 8
MAX_WORKERS_FLOOR = 16
#: Scratch segments kept between jobs: copy-in and copy-out then hit pages that are already
#: mapped in this process and in every worker, instead of faulting in fresh ones each time.
POOL_SEGMENTS = 6
POOL_BYTES = 1 << 30
_START_TIMEOUT = 120.0
#: Longest wait for a pair's first workers to pass the gate before the job thread lets them
#: through and sends the others: a safety valve; a worker that misses it only starts out of step.
_GATE_WAIT = 0.05
#: The job thread's sleep between looks at the gate's counters (it must not take a CPU from them).
_STEP_POLL = 0.0001


class _Died(Exception):
    """A worker's pipe is closed (EOF, or EPIPE on send): its process is gone."""

    def __init__(self, worker):
        super().__init__(worker.pid)
        self.worker = worker


def available_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_max_workers(cpus: int | None = None) -> int:
    """``Engine()``'s ``max_workers``: twice the CPUs, so that a demo can show oversubscription."""
    return 2 * (available_cpus() if cpus is None else cpus)


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
class JobResult:
    """What a job gives back, for one filter or a pair: per filter its output, its process count,
    its band span (``filter_walls``: first band's start to last band's end, seconds) and its route
    (``engine.ROUTES``); every band's ``BandRecord`` (``timeline``); the job's ``Phases``."""

    outputs: tuple
    timeline: tuple
    phases: Phases
    kernels: tuple
    processes: tuple
    filter_walls: tuple = ()
    routes: tuple = ()

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


#: ``depth``: how many worker pipes this thread is writing now (``_Worker._writing``). A garbage
#: collection may run a finalizer (``Engine._forget``) in the middle of a write; the finalizer
#: then puts its messages off, since sending one to the same worker would wait on this thread's
#: own lock for good.
_SENDING = threading.local()


class _Worker:
    """One worker process and the parent's end of its pipe (the messages: ``_worker``'s header).

    A worker that dies closes its end: the parent sees the pipe at EOF and the process's
    sentinel ready. ``bands_done`` counts the bands this worker has finished, ever: shared
    memory that only the worker writes, read by ``Job.progress()``.
    """

    def __init__(self, ctx, gate, arrivals):
        self.conn, child = ctx.Pipe(duplex=True)
        self.bands_done = ctx.RawValue("q", 0)
        self.gate_steps = ctx.RawValue("q", 0)  # only the worker writes it: _Passes.send
        self.process = ctx.Process(
            target=_worker.serve, args=(child, os.getpid(), self.bands_done, gate, self.gate_steps, arrivals),
            name="pfl-worker", daemon=True
        )
        # Started with SIGINT blocked, as multiprocessing's resource tracker is: a Ctrl-C to the
        # terminal's process group while the worker still imports would print a
        # KeyboardInterrupt traceback. _worker.init ignores SIGINT, then unblocks it. The
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
        self._sending = threading.Lock()  # a job's thread and a retiring one may both write the pipe

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

    def start(self, job: "_worker.Pass", tokens: int | None) -> None:
        """Start a pass on this worker; ``tokens``: the read end of the pass's token pipe (sent
        after the message when ``job.piped``)."""
        try:
            with self._writing():
                self.conn.send(job)
                if tokens is not None:
                    reduction.send_handle(self.conn, tokens, self.pid)
        except OSError:
            self.broken = True
            raise _Died(self) from None
        self.busy = 1

    @contextlib.contextmanager
    def _writing(self):
        """Hold this worker's pipe for one message (and its token pipe), counted in ``_SENDING``."""
        with self._sending:
            _SENDING.depth = getattr(_SENDING, "depth", 0) + 1
            try:
                yield
            finally:
                _SENDING.depth -= 1

    def receive(self) -> "_worker.PassDone":
        """The pass's answer; ``_Died`` if the worker died. Re-raises a band's exception."""
        try:
            answer = self.conn.recv()
        except (EOFError, OSError):
            self.broken = True
            raise _Died(self) from None
        self.busy -= 1
        if isinstance(answer, _worker.PassFailed):
            raise answer.error
        return answer

    def release(self, names) -> None:
        """Tell the worker to unmap segments (in order: before its next pass)."""
        if names:
            try:
                with self._writing():
                    self.conn.send(_worker.Release(tuple(names)))
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
                    with self._writing():
                        self.conn.send(_worker.Stop())
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
    """A submitted job. ``result()`` gives a ``JobResult`` (one output for one kernel)."""

    _ids = itertools.count(1)

    def __init__(self, engine, image, request: FilterRequest, processes, outs, user, bands=None):
        self.id = next(Job._ids)
        self._user_image, self._user_outs = user  # what the caller passed: returned as given
        self._engine = engine
        self._image, self._request, self._processes, self._outs = image, request, processes, outs
        self._future: cf.Future = cf.Future()
        self._cancel = threading.Event()
        self._abort = False  # Ctrl-C: kill the busy workers instead of waiting for their bands
        self._state = "waiting"
        self._counters = ()  # (worker's bands_done, its value when the job leased it)
        self._done_bands = None  # frozen when the job ends
        h, w = image.shape[:2]
        wraps = BORDER[request.border].wraps
        self._plans = tuple(plan_bands(h, k.shape[0], bands or band_count(h, w, p), wrap=wraps)
                            for k, p in zip(request.kernels, processes))
        passes = 2 if request.output == "normalize" else 1
        self._total = passes * sum(len(p) for p in self._plans)
        self.routes = request.routes(image.dtype)

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

    def result(self, timeout: float | None = None) -> JobResult:
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
        workers, temps = [], []
        try:
            workers = eng._lease(sum(self._processes), self._cancel)
            if workers is None:
                raise JobCancelled(f"job {self.id} was cancelled while waiting for workers")
            self._counters = tuple((w.bands_done, w.bands_done.value) for w in workers)
            self._state = "running"
            outcome, ok = self._execute(workers, temps), True
        except BaseException as e:  # noqa: BLE001 - every failure must reach result()
            outcome, ok = e, False
        finally:
            # Clean up *before* anyone waiting on result() wakes: no band is still running
            # (see _drain), so pooled segments can be reused and nothing is left in /dev/shm.
            self._done_bands = self.progress()[0]
            # workers first: a broken one (a band that outran _drain) is killed and joined here,
            # so no band can still write into a segment once it is back in the pool
            eng._give_back(workers or [])
            for seg in temps:
                eng._recycle(seg)
            self._image = self._outs = self._user_image = self._user_outs = None
        if ok:
            self._state = "done"
            self._future.set_result(outcome)
        else:
            self._state = "cancelled" if isinstance(outcome, JobCancelled) else "failed"
            self._future.set_exception(outcome)

    def _execute(self, workers, temps) -> JobResult:
        t_start = time.perf_counter()
        src, dsts, views, results = self._segments(temps)
        t_compute = time.perf_counter()
        passes = _Passes(self, workers, src, dsts, t_start)
        passes.run()
        if self._cancel.is_set():
            raise JobCancelled(f"job {self.id} was cancelled")
        t_out = time.perf_counter()
        outputs = self._outputs(views, results, temps)
        t_end = time.perf_counter()
        return JobResult(
            outputs=tuple(outputs),
            timeline=tuple(sorted(passes.records, key=lambda r: (r.start, r.filter, r.band))),
            phases=Phases(t_compute - t_start, t_out - t_compute, t_end - t_out, t_end - t_start),
            kernels=self._request.kernels,
            processes=tuple(self._processes),
            filter_walls=passes.walls(),
            routes=self.routes,
        )

    def _segments(self, temps):
        """The input's and each output's place in shared memory: the caller's own shared arrays
        where given (zero-copy), else pooled segments (listed in ``temps``); a numpy input is
        copied in. ``results``: filter index -> segment that becomes the caller's new array."""
        eng, image = self._engine, self._image
        src = eng._descriptor(image)
        if src is None:
            seg = eng._segment(image.nbytes)
            temps.append(seg)
            src = SegmentRef.whole(seg, image.shape, image.dtype)
            eng._copy(src.view(seg.buf), image)
        dsts, views, results = [], [], {}
        for fi, o in enumerate(self._outs):
            d = eng._descriptor(o) if o is not None else None
            view = None
            if d is None:
                seg = eng._segment(image.nbytes)
                temps.append(seg)
                if o is None:
                    results[fi] = seg  # the workers' output becomes the caller's array: no copy-out
                d = SegmentRef.whole(seg, image.shape, image.dtype)
                view = d.view(seg.buf)
            dsts.append(d)
            views.append(view)
        return src, dsts, views, results

    def _outputs(self, views, results, temps) -> list:
        """What the caller gets: a new array is its output segment itself (owned like a
        ``shared_array``); a shared ``out=`` was written in place; a numpy ``out=`` is copied into."""
        outputs = []
        for fi, o in enumerate(self._outs):
            if fi in results:
                temps.remove(results[fi])
                outputs.append(self._engine._adopt(results[fi], views[fi]).reshape(self._user_image.shape))
            else:
                if views[fi] is not None:
                    self._engine._copy(o, views[fi])
                outputs.append(self._user_outs[fi])
        return outputs

    @staticmethod
    def _stop(workers):
        """After a worker died, or on Ctrl-C: kill the job's busy workers instead of draining
        them (a band can run for many seconds; neither WorkerError nor Ctrl-C should wait for
        it). Dead before the job's segments are recycled, they write nothing after it;
        give-back replaces them."""
        busy = [w for w in workers if w.busy or w.broken]
        for worker in busy:
            worker.broken = True
            if worker.process.is_alive():
                worker.process.kill()
        for worker in busy:
            worker.process.join(timeout=5)

    @staticmethod
    def _drain(workers, timeout=60.0):
        """Wait for bands still running on healthy workers, so that none writes into a segment
        (or a caller's ``out``) after the job has ended. A band is short; a worker that does not
        finish one within ``timeout`` is marked broken and killed when it is given back."""
        deadline = time.monotonic() + timeout
        for worker in workers:
            while worker.busy and not worker.broken:
                try:
                    if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
                        worker.broken = True
                        break
                    worker.receive()
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
            max_workers = default_max_workers(self.cpus)
        limit = max(MAX_WORKERS_FLOOR, MAX_WORKERS_PER_CPU * self.cpus)
        if isinstance(max_workers, bool) or not isinstance(max_workers, (int, np.integer)) or not 1 <= max_workers <= limit:
            raise ValueError(
                f"max_workers must be an integer from 1 to {limit} ({MAX_WORKERS_PER_CPU} per CPU: each worker "
                f"is a whole Python process), got {max_workers!r}"
            )
        self.max_workers = int(max_workers)
        self._ctx = mp.get_context("spawn")
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._alive = 0  # workers idle + leased + starting
        self._queue: collections.deque = collections.deque()  # waiting jobs' tickets, FIFO
        self._jobs: "weakref.WeakSet[Job]" = weakref.WeakSet()
        self._shared: dict[int, _Shared] = {}
        self._scratch = SegmentPool(POOL_SEGMENTS, POOL_BYTES, on_retire=_weakly(self._unmap_everywhere))
        # an engine dropped without close(): its pooled segments go with it (its workers see
        # their pipes close and exit; they sweep only a dead parent's segments)
        weakref.finalize(self, self._scratch.clear).atexit = False
        self._all_workers: "weakref.WeakSet[_Worker]" = weakref.WeakSet()
        self._threads = _JobThreads()
        self._copiers: cf.ThreadPoolExecutor | None = None  # made on the first big copy
        self._returned: collections.deque = collections.deque()  # (key, reuse) of put-off _forget calls
        # a pair's first bands wait here until both filters' first workers have arrived (_Passes.send)
        self._gate = self._ctx.RawValue("q", 0)
        # each filter's first worker writes its pair's number here on arriving at the gate
        self._arrivals = self._ctx.RawArray("q", 2)
        self._gate_numbers = itertools.count(1)
        self._gate_lock = threading.Lock()
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
        request = FilterRequest([kernel], border=border, output=output, implementation=implementation)
        job = self.submit(image, request, processes=processes, out=None if out is None else (out,))
        return _wait(job).outputs[0]

    def filter_pair(self, image, kernel_a, kernel_b, *, processes=None, border="replicate", output="clip",
                    implementation="opencv", out=None) -> JobResult:
        """Run two filters at the same time on separate process groups; see ``engine.filter_pair``."""
        request = FilterRequest([kernel_a, kernel_b], border=border, output=output, implementation=implementation)
        return _wait(self.submit(image, request, processes=processes, out=out))

    def serial_time(self, image, kernel, *, border="replicate", output="clip", implementation="opencv",
                    repeats: int = 3) -> float:
        """Seconds of the best serial code for this filter: the band kernel on the whole image as
        one band, on one worker process (one OpenCV thread), best of ``repeats`` runs. On the
        ``direct`` route that is one OpenCV call (``engine.ROUTES``); it is the reference that
        parallel speedup is read against (the Filter lab and Scaling pages draw it)."""
        if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 100:
            raise ValueError(f"repeats must be an integer from 1 to 100, got {repeats!r}")
        request = FilterRequest([kernel], border=border, output=output, implementation=implementation)
        best = None
        for _ in range(repeats):
            res = _wait(self.submit(image, request, processes=1, _bands=1))
            band = sum(r.end - r.start for r in res.timeline)
            best = band if best is None else min(best, band)
        return best

    def submit(self, image, request: FilterRequest, *, processes=None, out=None, _bands=None) -> Job:
        """Start a request's one or two filters in the background and return a ``Job`` at once.

        ``processes`` is an int (one kernel) or a pair (default: the CPUs, split between two, at
        most one process per ``MIN_BAND_PIXELS`` of the image: ``_bands.default_processes``);
        ``out`` a tuple of one array per kernel (or None: new arrays). Everything is validated
        here, before any process starts or memory is allocated.
        """
        if not isinstance(request, FilterRequest):
            raise TypeError(f"request must be an engine.FilterRequest (for example FilterRequest(['sobel'], "
                            f"output='abs')), got {type(request).__name__}")
        img3 = request.check_image(image)
        n = len(request.kernels)
        procs = check_processes(processes, n, self.max_workers, self._default_processes(img3.shape, n))
        if out is None:
            outs = (None,) * n
        else:
            if not isinstance(out, (tuple, list)) or len(out) != n:
                got = (f"{len(out)} array{'s' if len(out) != 1 else ''}" if isinstance(out, (tuple, list))
                       else type(out).__name__)
                raise ValueError(f"out must be a tuple of {n} array{'s' if n > 1 else ''} (one per kernel) or None, got {got}")
            outs = tuple(check_out(o, img3, "out" if n == 1 else f"out[{i}]", image.shape) for i, o in enumerate(out))
            if n == 2 and outs[0] is not None and outs[1] is not None and np.shares_memory(outs[0], outs[1]):
                raise ValueError("out[0] and out[1] must not share memory")
        if self._closed:
            raise RuntimeError("this Engine is closed; create a new one")
        user = (image, tuple(out) if out is not None else outs)
        job = Job(self, img3, request, procs, outs, user, bands=_bands)
        self._jobs.add(job)
        self._threads.run(job._run)
        return job

    def plan(self, image_shape, kernel, processes: int | None = None, *, border: str = "replicate") -> tuple:
        """The bands this engine cuts for one filter of ``kernel`` on ``processes`` workers
        (what ``submit`` will run; idle workers take the next band, so which worker runs
        which band is decided at run time)."""
        (k,) = FilterRequest([kernel], border=border).kernels
        h, w = int(image_shape[0]), int(image_shape[1])
        (p,) = check_processes(processes, 1, self.max_workers, self._default_processes((h, w), 1))
        return plan_bands(h, k.shape[0], band_count(h, w, p), wrap=BORDER[border].wraps)

    def idle_workers(self) -> list[int]:
        """PIDs of the worker processes alive now (idle ones; leased ones are busy in a job)."""
        with self._cond:
            return [w.pid for w in self._idle if w.pid is not None]

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
        sides = shape if isinstance(shape, (tuple, list)) else (shape,)
        if not sides or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in sides):
            raise ValueError(f"shape must be positive integer sizes, e.g. (height, width, 3), got {shape!r}")
        shape = tuple(int(n) for n in sides)
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
        for worker in idle:
            worker.shutdown()
        for sh in shared:
            sh.segment.unlink()  # the name goes now; unmapping under a live array would crash it
        self._scratch.clear()
        self._take_returned()
        if self._copiers is not None:
            self._copiers.shutdown()

    # -- internals ----------------------------------------------------------------------------
    def _segment(self, nbytes: int) -> Segment:
        """A scratch segment of exactly ``nbytes``: a pooled one (its pages already mapped in
        this process and in the workers) or a new one."""
        self._take_returned()
        return self._scratch.take(nbytes)

    def _recycle(self, seg: Segment) -> None:
        """Keep a job's scratch segment for the next job (at most POOL_SEGMENTS, POOL_BYTES)."""
        self._take_returned()
        if self._closed:
            self._scratch.retire([seg])
        else:
            self._scratch.give(seg)

    def _unmap_everywhere(self, names) -> None:
        """Workers unmap segments that were unlinked: idle ones now, busy ones before their
        next pass (a mapping kept by an idle worker would hold the memory until its next job)."""
        with self._cond:
            idle = [w for w in self._idle if w.pid is not None]
            for worker in self._all_workers:
                if worker not in idle:
                    worker.stale.extend(names)
        for worker in idle:
            worker.release(names)

    def _forget(self, key, reuse=False):
        """An array from ``shared_array`` (or a job's result, ``reuse``) was garbage-collected:
        unlink its segment (a result's goes back to the pool). Runs wherever the garbage
        collector does; if that is inside this engine's own bookkeeping (this thread holds the
        engine's or the pool's lock, maybe mid-iteration), it is finished later by
        ``_take_returned`` (giving it back there would deadlock on the lock this thread holds); so
        it is if this thread is writing a worker's pipe (``_SENDING``)."""
        if self._cond._is_owned() or self._scratch.held_here() or getattr(_SENDING, "depth", 0):  # noqa: SLF001
            self._returned.append((key, reuse))
            return
        with self._cond:
            sh = self._shared.pop(key, None)
        if sh is None:
            return
        if reuse:
            self._recycle(sh.segment)
        else:
            self._scratch.retire([sh.segment])  # and every worker that mapped it unmaps it

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

    def _descriptor(self, a) -> SegmentRef | None:
        """Where ``a`` lies if it is (C-contiguous) in one of our shared arrays, else None."""
        if a is None or not a.flags.c_contiguous:
            return None
        lo = a.__array_interface__["data"][0]
        with self._cond:
            for sh in self._shared.values():
                if sh.lo <= lo and lo + a.nbytes <= sh.hi:
                    shape = a.shape if a.ndim == 3 else a.shape + (1,)
                    return SegmentRef(sh.segment.name, tuple(shape), a.dtype.str, lo - sh.lo)
        return None

    def _wake(self):
        with self._cond:
            self._cond.notify_all()

    def _gate_number(self) -> int:
        with self._gate_lock:
            return next(self._gate_numbers)

    def _open_gate(self, number: int) -> None:
        """Let through the workers waiting for ``number`` (and any lower number: jobs of other
        sessions may open theirs out of order, so the value only grows)."""
        with self._gate_lock:
            if self._gate.value < number:
                self._gate.value = number

    def _lease(self, n, cancel):
        """Take ``n`` ready workers, starting processes as needed; FIFO among waiting jobs.
        Returns None when cancelled while waiting."""
        ticket, dead, take = object(), [], ()
        with self._cond:
            self._queue.append(ticket)
            try:
                while True:
                    if self._closed or cancel.is_set():
                        take = None
                        break
                    # a worker that died while idle (OOM killer, kill -9), also while this job
                    # waited, is replaced, not handed out
                    for worker in [w for w in self._idle if not w.process.is_alive()]:
                        self._idle.remove(worker)
                        self._alive -= 1
                        dead.append(worker)
                    if self._queue[0] is ticket and len(self._idle) + self.max_workers - self._alive >= n:
                        break
                    self._cond.wait(0.1)
                if take is not None:
                    take = self._idle[:n]
                    del self._idle[:n]
                    new = n - len(take)
                    self._alive += new
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
        for worker in dead:
            worker.shutdown()
        if take is None:
            return None
        try:
            fresh = [_Worker(self._ctx, self._gate, self._arrivals) for _ in range(new)]
            with self._cond:
                self._all_workers.update(fresh)
        except BaseException:
            with self._cond:
                self._alive -= new
                self._idle.extend(take)
            raise
        workers = take + fresh
        try:
            for worker in fresh:
                worker.ready()
        except BaseException:
            self._give_back(workers)
            raise
        for worker in take:
            self._release_stale(worker)
        return workers

    def _default_processes(self, shape, n: int) -> tuple[int, ...]:
        """Process counts when the caller names none: the CPUs (split between two filters, at
        least one each), at most one per ``MIN_BAND_PIXELS`` of the image, within max_workers."""
        split = (self.cpus,) if n == 1 else (max(1, self.cpus // 2), max(1, self.cpus - self.cpus // 2))
        useful = default_processes(shape[0], shape[1], self.cpus)
        return tuple(min(d, useful, self.max_workers // n or 1) for d in split)

    def _release_stale(self, worker) -> None:
        """Tell ``worker`` to unmap the segments retired while it was busy."""
        with self._cond:
            stale, worker.stale = worker.stale, []
        worker.release(stale)

    def _give_back(self, workers):
        """Return leased workers to the idle list; shut down the ones that cannot take a pass:
        broken, busy, dead, or never read as started (``pid is None``: a lease failed while its
        new workers started, and their pid message still waits in the pipe: handed out, such a
        worker would answer a pass with it and stay one message behind)."""
        keep = []
        for worker in workers:
            if worker.broken or worker.busy or worker.pid is None or not worker.process.is_alive():
                worker.shutdown(kill=True)
                with self._cond:
                    self._alive -= 1
                continue
            self._release_stale(worker)  # in order, before its next band
            keep.append(worker)
        with self._cond:
            if self._closed:
                drop = keep
            else:
                self._idle.extend(keep)
                drop = []
            self._cond.notify_all()
        for worker in keep if not drop else ():
            self._release_stale(worker)  # retired since the first call, before it was idle
        for worker in drop:
            worker.shutdown()
            with self._cond:
                self._alive -= 1


class _Passes:
    """The compute phase of one job: each filter's passes on its own group of workers.

    A pass hands each worker of the group its first band; the rest wait as tokens in a pipe
    that the workers read themselves. Every worker answers once per pass. ``normalize`` runs a
    range pass first, then the filter pass with the global (min, max). Cancel empties the
    pipes; a dead worker fails the job with ``WorkerError`` after the job's other busy workers
    are killed (``Job._stop``).
    """

    def __init__(self, job: Job, workers, src: SegmentRef, dsts, t_start: float):
        self.job, self.workers, self.src, self.dsts, self.t_start = job, workers, src, dsts, t_start
        self.groups, start = [], 0
        for p in job._processes:
            self.groups.append(workers[start : start + p])
            start += p
        self.group_of = {id(w): fi for fi, g in enumerate(self.groups) for w in g}
        self.pipes: dict = {}  # filter index -> read end of its running pass's token pipe
        self.ranges: dict = {}  # filter index -> band value ranges of its range pass
        self.records: list = []

    def run(self) -> None:
        job = self.job
        try:
            kind = "range" if job._request.output == "normalize" else "filter"
            self.send(*(self.passes(fi, kind) for fi in range(len(self.groups))))
            while any(w.busy for w in self.workers):
                if job._cancel.is_set():
                    self.stop()
                    if job._abort:
                        job._stop(self.workers)
                        raise JobCancelled(f"job {job.id} was interrupted; its busy workers were stopped")
                for w in _answering([w for w in self.workers if w.busy], timeout=0.05):
                    if w.busy and w.conn.poll():
                        self.on_answer(w.receive())
        except _Died as e:
            job._stop(self.workers)
            which = f" of filter {TIMELINE_STYLE.letter(self.group_of[id(e.worker)])}" if len(self.groups) > 1 else ""
            raise WorkerError(
                f"worker process {e.worker.pid}{which} {_death_cause(e.worker.exitcode())}; the job was stopped and "
                "the engine replaces the worker, so the next job runs"
            ) from None
        except BaseException:
            self.stop()
            job._drain(self.workers)
            raise
        finally:
            for fd in self.pipes.values():
                os.close(fd)

    def passes(self, fi: int, kind: str, value_range=None) -> list:
        """A pass of filter ``fi``: ``(worker, message, token pipe)`` for each worker that gets a
        first band; the rest of the bands go into the pass's token pipe, made here."""
        job, req = self.job, self.job._request
        plan = job._plans[fi]
        workers = self.groups[fi][: len(plan)]
        tokens = None
        if len(plan) > len(workers):
            tokens, w = os.pipe()
            self.pipes[fi] = tokens
            try:
                os.set_blocking(tokens, False)
                os.write(w, b"".join(i.to_bytes(_worker.TOKEN_BYTES, "little") for i in range(len(workers), len(plan))))
            finally:
                os.close(w)
        return [(worker, _worker.Pass(fi, kind, plan, self.src, self.dsts[fi] if kind == "filter" else None,
                                      req.kernels[fi], req.border, req.output, req.implementation, value_range,
                                      first, tokens is not None), tokens)
                for first, worker in enumerate(workers)]

    def send(self, *passes) -> None:
        """Start passes, taking the filters' workers in turn (A's first, B's first, A's second,
        ...): with more workers than CPUs, the first ones sent take the CPUs, so each filter
        gets one of them at once rather than A all of them and B a time slice later.

        With two filters, the first worker of each waits at the gate until the other has arrived
        (``_worker``'s header: the job thread may lose the GIL between two sends, or B's worker
        may still be unmapping the last image's segments). This thread sleeps meanwhile, leaving
        the CPUs to them, until both have passed or ``_GATE_WAIT``; then it lets the pair's
        number through the engine's gate (in a ``finally``: after a failed send or a death, the
        worker left waiting goes on) and sends the other workers: a woken worker would take the
        CPU of one still at the gate."""
        rounds = [[m for m in ms if m is not None] for ms in itertools.zip_longest(*passes)] or [[]]
        eng = self.job._engine
        number = eng._gate_number() if len(passes) > 1 else 0
        first = [(worker, worker.gate_steps.value) for worker, _, _ in rounds[0]] if number else []
        try:
            for worker, message, tokens in rounds[0]:
                worker.start(dataclasses.replace(message, gate=number) if number else message, tokens)
            if number:
                _await_passed(first)
        finally:
            if number:
                eng._open_gate(number)
        for worker, message, tokens in (m for ms in rounds[1:] for m in ms):
            worker.start(message, tokens)

    def stop(self) -> None:
        for fd in self.pipes.values():
            _worker.empty(fd)

    def on_answer(self, answer: "_worker.PassDone") -> None:
        fi = answer.filter
        plan = self.job._plans[fi]
        for b in answer.bands:
            band = plan[b.index]
            if b.value_range is not None:
                self.ranges.setdefault(fi, []).append(b.value_range)
            else:
                self.records.append(BandRecord(fi, b.index, band.start, band.stop - 1, answer.pid,
                                               b.start - self.t_start, b.end - self.t_start))
        if any(w.busy for w in self.groups[fi]):
            return
        if fi in self.pipes:
            os.close(self.pipes.pop(fi))
        if len(self.ranges.get(fi, ())) == len(plan) and not self.job._cancel.is_set():
            # normalize: every band's range is in; the second pass maps with the global one
            rs = self.ranges.pop(fi)
            self.send(self.passes(fi, "filter", (min(r[0] for r in rs), max(r[1] for r in rs))))

    def walls(self) -> tuple:
        """Per filter: its first band's start to its last band's end, seconds."""
        out = []
        for fi in range(len(self.groups)):
            rs = [r for r in self.records if r.filter == fi]
            out.append(max(r.end for r in rs) - min(r.start for r in rs))
        return tuple(out)


def _weakly(method):
    """``method`` (bound) without keeping its object alive: a call after it was collected does nothing."""
    ref = weakref.WeakMethod(method)

    def call(*args):
        m = ref()
        if m is not None:
            m(*args)

    return call


def _await_passed(workers, timeout: float = _GATE_WAIT) -> None:
    """Until every ``(worker, steps before)`` has passed the gate (two steps: arrived, passed),
    sleeping ``_STEP_POLL`` between looks (the CPUs are the waiting workers'); at most
    ``timeout``: a worker that died never arrives, and the job finds out from its pipe."""
    deadline = time.monotonic() + timeout
    while not all(w.gate_steps.value >= n + 2 for w, n in workers) and time.monotonic() < deadline:
        time.sleep(_STEP_POLL)


def _answering(workers, timeout):
    """The workers among ``workers`` whose pipe has an answer or whose process has ended."""
    by_handle = {}
    for worker in workers:
        by_handle[worker.conn] = by_handle[worker.process.sentinel] = worker
    woke = connection.wait(list(by_handle), timeout=timeout)
    return list({id(by_handle[h]): by_handle[h] for h in woke}.values())


def _wait(job: Job) -> JobResult:
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
