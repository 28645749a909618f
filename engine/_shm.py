"""Shared-memory segments owned by this process, and the sweep of stale ones.

Ownership::

    parent (creator)                         /dev/shm                   workers
    ----------------                         --------                   -------
    Segment.create()  --- shm_open(O_CREAT) -> pfl_<pid>_<hex>  <- attach() (open, unregister
      unregisters from the resource tracker:                        from the tracker, map)
      this module, not the tracker, unlinks                      <- detach() (close the map)
    Segment.release() --- unlink + close --> (gone)
    sweep_stale()     --- unlink pfl_<pid>_* whose <pid> is not alive (a killed run)

The parent unlinks every segment it created: in ``finally`` blocks during a job, when a
``shared_array`` is garbage-collected, and at ``Engine.close()``. A SIGKILLed parent cannot, so
every engine sweeps stale segments of dead creators when it starts. Nothing else in /dev/shm is
ever touched: only names with our prefix whose creator process no longer exists.
"""

from __future__ import annotations

import os
import secrets
import threading
import _posixshmem
from multiprocessing import resource_tracker, shared_memory

__all__ = ["PREFIX", "Segment", "attach", "sweep_stale", "our_segments"]

PREFIX = "pfl_"
SHM_DIR = "/dev/shm"


def _untrack(shm: shared_memory.SharedMemory) -> None:
    # Python 3.11 registers every SharedMemory with the resource tracker, which would unlink it
    # (or warn) when *any* process that touched it exits. Ownership is explicit here instead.
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001 (CPython's own name)
    except Exception:  # pragma: no cover - tracker not running
        pass


class Segment:
    """A named segment created (and later unlinked) by this process."""

    def __init__(self, nbytes: int):
        name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(6)}"
        self.shm = shared_memory.SharedMemory(name=name, create=True, size=max(1, int(nbytes)))
        _untrack(self.shm)
        self.name = name
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
        try:
            # Not shm.unlink(): on 3.11 it also unregisters from the tracker, a second time.
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
    shm = shared_memory.SharedMemory(name=name)
    _untrack(shm)
    return shm


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


def sweep_stale() -> list[str]:
    """Unlink segments of ours whose creating process is gone; return their names."""
    removed = []
    for name in our_segments():
        try:
            pid = int(name[len(PREFIX) :].split("_", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            os.unlink(os.path.join(SHM_DIR, name))
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed
