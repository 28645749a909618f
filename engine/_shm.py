"""Shared-memory segments owned by this process, and the sweep of stale ones.

Ownership::

    parent (creator)                         /dev/shm                   workers
    ----------------                         --------                   -------
    Segment.create()  --- shm_open(O_CREAT) -> pfl_<pid>_<hex>  <- attach() (open, unregister
      (the resource tracker is kept out:                            tracker, map)
      this module alone unlinks)                                 <- release() (close the map)
    Segment.release() --- unlink + close --> (gone)
    sweep_stale()     --- unlink pfl_<pid>_* whose <pid> is not alive (a killed run)

The parent unlinks every segment it created: in ``finally`` blocks during a job, when a
``shared_array`` is garbage-collected, and at ``Engine.close()``. A SIGKILLed parent cannot, so
every engine sweeps stale segments of dead creators when it starts. Nothing else in /dev/shm is
ever touched: only names with our prefix whose creator process no longer exists.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from multiprocessing import shared_memory

import _posixshmem

__all__ = ["PREFIX", "Segment", "attach", "sweep_stale", "our_segments", "live_segments"]

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


def attach(name: str) -> shared_memory.SharedMemory:
    """Map a segment created by another process (workers only; they never unlink)."""
    with _untracked():
        return shared_memory.SharedMemory(name=name)


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
    """Unlink the files ``names`` in ``folder`` whose owner process (``owner_pid(name)``, None
    for a name that carries no pid) is gone; return the names removed. Shared by the segment
    sweep and the batch command's temp files."""
    removed = []
    for name in names:
        pid = owner_pid(name)
        if pid is None or pid == os.getpid() or _pid_alive(pid):
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


def sweep_stale() -> list[str]:
    """Unlink segments of ours whose creating process is gone; return their names."""
    return sweep_dead_owners(SHM_DIR, our_segments(), _creator)
