"""The shared-memory transport of both backends: segments owned by this process, a pool that
keeps them between jobs, the descriptor that names an array in one, the worker side's mappings,
and the sweep of segments that killed processes left behind.

Ownership::

    parent (creator)                         /dev/shm                   workers (pool or Dask)
    ----------------                         --------                   ----------------------
    Segment()         --- shm_open(O_CREAT) -> pfl_<pid>_<hex>  <- Attachments.arrays(ref):
      (the resource tracker is kept out:                            open, unregister from the
      this module alone unlinks)                                    tracker, map once (pages
    SegmentPool.give() -- keeps a few mapped                        fault in as bands touch
      between jobs; evicts the rest:                                them); kept between tasks
                                                                 <- Attachments.release(names)
    Segment.release() --- unlink + close --> (gone)                 (told by on_retire; never
      and SegmentPool.on_retire(names)                              under a running task)
    sweep_stale()     --- unlink pfl_<pid>_* whose <pid> is not alive (a killed run)
                                                          <- sweep_owner(pid): a pool worker
                                                             whose parent died unlinks the
                                                             parent's segments, then exits

The parent unlinks every segment it created: in ``finally`` blocks during a job, when an array
it handed out is garbage-collected, and when its engine closes. A SIGKILLed parent cannot: its
pool workers notice and sweep its segments before they exit (``_worker._orphaned``), and every
engine sweeps stale segments of dead creators when it starts. Nothing else in /dev/shm is ever
touched: only names with our prefix whose creator process no longer exists.
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import shared_memory

import _posixshmem
import numpy as np

__all__ = ["PREFIX", "Segment", "SegmentRef", "SegmentPool", "Attachments", "attach", "sweep_stale", "sweep_owner",
           "our_segments", "live_segments"]

PREFIX = "pfl_"
_TRACKER_PATCH = threading.Lock()
SHM_DIR = "/dev/shm"


@contextlib.contextmanager
def _untracked():
    """Open or create a SharedMemory without telling the resource tracker.

    Python 3.11 registers every SharedMemory, in every process that opens it, with the one
    resource tracker they share; it would unlink the segment (or warn) when any of them exits,
    and concurrent register/unregister pairs from several workers unbalance its book-keeping.
    Ownership is explicit here instead, so the tracker is kept out of it (CPython gh-82300).
    """
    with _TRACKER_PATCH:
        saved = shared_memory.resource_tracker.register
        # The patch is process-wide for a moment: other threads' registrations (the semaphores
        # of a worker pool's queues) must still reach the tracker, or it fails on their unregister.
        shared_memory.resource_tracker.register = lambda name, rtype: (
            None if rtype == "shared_memory" else saved(name, rtype)
        )
        try:
            yield
        finally:
            shared_memory.resource_tracker.register = saved


_LIVE: set[str] = set()  # names this process created and has not unlinked yet


def live_segments() -> set[str]:
    """Segments this process owns right now (an engine's pool, shared arrays, running jobs)."""
    return set(_LIVE)


class Segment:
    """A named segment created (and later unlinked) by this process."""

    def __init__(self, nbytes: int):
        name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(6)}"
        with _untracked():
            self.shm = shared_memory.SharedMemory(name=name, create=True, size=max(1, int(nbytes)))
        self.name = name
        _LIVE.add(name)
        self.nbytes = int(nbytes)
        self._lock = threading.Lock()
        self._unlinked = False

    @property
    def buf(self):
        return self.shm.buf

    def unlink(self) -> None:
        """Remove the name from /dev/shm (memory stays valid while mapped). Idempotent."""
        with self._lock:
            if self._unlinked:
                return
            self._unlinked = True
            _LIVE.discard(self.name)
        try:
            # Not shm.unlink(): on 3.11 it also sends the tracker an unregister it never had.
            _posixshmem.shm_unlink(self.shm._name)  # noqa: SLF001
        except FileNotFoundError:
            pass

    def release(self) -> None:
        """Unlink, and unmap if no numpy array still exports the buffer."""
        self.unlink()
        try:
            self.shm.close()
        except BufferError:
            pass  # an array still views it: the mapping goes when that array does


@dataclass(frozen=True)
class SegmentRef:
    """Where an ``(H, W, C)`` array lies: what a worker needs to map it."""

    name: str
    shape: tuple
    dtype: str  # numpy dtype string, e.g. '|u1'
    offset: int = 0

    @classmethod
    def whole(cls, seg: "Segment", shape, dtype) -> "SegmentRef":
        """The array of ``shape`` and ``dtype`` that fills ``seg`` from its start."""
        return cls(seg.name, tuple(shape), np.dtype(dtype).str)

    def view(self, buf) -> np.ndarray:
        return np.ndarray(self.shape, np.dtype(self.dtype), buffer=buf, offset=self.offset)


class SegmentPool:
    """Segments kept mapped between jobs (at most ``keep`` of them, ``max_bytes`` in all), so
    that copies and band writes touch pages that exist and that workers have mapped already.

    ``take(nbytes)`` gives a kept segment of exactly that size or a new one; ``give(seg)`` keeps
    it, evicting the oldest beyond the bounds; evicted segments are released (unlinked) and
    their names passed to ``on_retire``, which tells the workers to unmap them. Thread-safe.
    """

    def __init__(self, keep: int, max_bytes: int, on_retire: Callable[[list], None] | None = None):
        self.keep, self.max_bytes, self.on_retire = keep, max_bytes, on_retire
        self._free: collections.OrderedDict = collections.OrderedDict()  # name -> Segment, oldest first
        # reentrant, so that held_here() can tell: the garbage collector may run a finalizer
        # that gives a segment back while this thread is inside take() or give()
        self._lock = threading.RLock()

    def take(self, nbytes: int) -> "Segment":
        with self._lock:
            for name, seg in self._free.items():
                if seg.nbytes == nbytes:
                    del self._free[name]
                    return seg
        return Segment(nbytes)

    def give(self, seg: "Segment") -> None:
        evict = []
        with self._lock:
            self._free[seg.name] = seg
            while self._free and (len(self._free) > self.keep or self.nbytes() > self.max_bytes):
                evict.append(self._free.popitem(last=False)[1])
        self.retire(evict)

    def retire(self, segs) -> None:
        """Release ``segs`` now (unlink) and tell ``on_retire`` their names."""
        for seg in segs:
            seg.release()
        if segs and self.on_retire is not None:
            self.on_retire([seg.name for seg in segs])

    def clear(self) -> None:
        with self._lock:
            free, self._free = list(self._free.values()), collections.OrderedDict()
        self.retire(free)

    def nbytes(self) -> int:
        return sum(s.nbytes for s in list(self._free.values()))

    def held_here(self) -> bool:
        """This thread is inside ``take``/``give``/``clear`` (a finalizer must not give now)."""
        return self._lock._is_owned()  # noqa: SLF001 - RLock's own "held by this thread" test

    def names(self) -> set:
        return set(self._free)

    def __len__(self) -> int:
        return len(self._free)


def attach(name: str) -> shared_memory.SharedMemory:
    """Map a segment created by another process (workers only; they never unlink)."""
    with _untracked():
        return shared_memory.SharedMemory(name=name)


class Attachments:
    """A worker's mappings of the parent's segments, kept between tasks: mapping a segment and
    faulting its pages in on every task would cost more than a small band.

    ``arrays(*refs)`` maps what is not mapped yet and counts the task as a user until it ends; ``release(names)`` closes mappings the parent has unlinked, at once
    or when the last task using one ends (a numpy array on a closed mapping crashes the
    process). A Dask worker runs tasks on several threads, hence the lock and the counts; a
    pool worker runs one at a time. Mappings whose name is gone from /dev/shm (a release that
    never arrived) are closed when the next new segment is attached.

    Pages are not populated at attach (``MADV_POPULATE_WRITE``, tried): every worker of a job
    would fault in the whole 48 MiB input and output of a 16 MP image before its first band,
    7 to 260 ms that differed between a pair's workers, so B's first band started up to 300 ms
    after A's in the Filter lab. Faulted in by the bands, each worker maps only the rows it
    touches and both filters start together (16 MP pair, new segments: start gap 0.15-0.27 ms
    against 5-9 ms, wall within noise).
    """

    def __init__(self):
        self._maps: dict = {}  # name -> SharedMemory
        self._users: dict = {}  # name -> running tasks using it
        self._doomed: set = set()  # names to close as soon as no task uses them
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def arrays(self, *refs):
        names = [r.name for r in refs if r is not None]
        with self._lock:
            for name in names:
                if name not in self._maps:
                    self._close([n for n in self._maps if not os.path.exists(os.path.join(SHM_DIR, n))])
                    self._maps[name] = attach(name)
            for name in names:
                self._users[name] = self._users.get(name, 0) + 1
            arrays = [None if r is None else r.view(self._maps[r.name].buf) for r in refs]
        try:
            yield arrays
        finally:
            del arrays
            with self._lock:
                for name in names:
                    self._users[name] -= 1
                    if not self._users[name]:
                        del self._users[name]
                self._close([n for n in names if n in self._doomed])

    def release(self, names) -> None:
        with self._lock:
            self._close(names)

    def names(self) -> set:
        with self._lock:
            return set(self._maps)

    def _close(self, names) -> None:
        for name in names:
            if self._users.get(name):
                self._doomed.add(name)
                continue
            self._doomed.discard(name)
            shm = self._maps.pop(name, None)
            if shm is not None:
                with contextlib.suppress(BufferError):  # an array still exports it: unmapped when collected
                    shm.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def our_segments() -> list[str]:
    """Names in /dev/shm that carry this project's prefix (any creator)."""
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(PREFIX))
    except FileNotFoundError:  # pragma: no cover - not Linux
        return []


def sweep_dead_owners(folder: str, names, owner_pid) -> list[str]:
    """Unlink the files ``names`` in ``folder`` whose owner process (``owner_pid(name)``: None
    for a name that carries no pid, -1 for an owner known to be gone) is gone; return the names
    removed. Shared by the segment sweeps and the batch command's temp files."""
    removed = []
    for name in names:
        pid = owner_pid(name)
        if pid is None or pid == os.getpid() or (pid >= 0 and _pid_alive(pid)):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def _creator(name: str) -> int | None:
    try:
        return int(name[len(PREFIX) :].split("_", 1)[0])
    except ValueError:
        return None


def sweep_owner(pid: int) -> list[str]:
    """Unlink every segment that process ``pid`` created; for a worker whose parent died (it may
    still be a zombie, which ``sweep_stale`` would count as alive)."""
    prefix = f"{PREFIX}{pid}_"
    return sweep_dead_owners(SHM_DIR, [n for n in our_segments() if n.startswith(prefix)], lambda _n: -1)


def sweep_stale() -> list[str]:
    """Unlink segments of ours whose creating process is gone; return their names."""
    return sweep_dead_owners(SHM_DIR, our_segments(), _creator)
