"""The Dask backend's shared-memory transport: the process pool's data plane (``_shm``) under
Dask's scheduling, for clusters whose workers all run on this host.

::

    caller                                         Dask workers on this host
    ------                                         -------------------------
    shared_memory_hosts(): a probe segment, once
      per set of workers: can each attach it? ---> attach, compare the token
    POOL.take(): input and output segments
      (kept between jobs, like the pool's)
    copy the image in
    one low-level graph, a task per band,
      pinned to these hosts -------------------->  ATTACHED.arrays(src, dst): attach once, keep
                                                   the mapping between tasks; filter_band on the
                                                   band, rows written in place; returns a count
    wait for every task (nothing gathered)
    copy the output out; POOL.give() both
    evicted segments: unlinked, then
      client.run(release, names) --------------->  ATTACHED.release(names) (never under a
                                                   running task; a name gone from /dev/shm is
                                                   closed at the next new attachment anyway)

Ownership: the caller creates and unlinks every segment; workers only attach. A segment goes
back to the pool only after a job whose tasks all finished (after a failure a task may still be
writing, so it is unlinked instead).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import weakref

import numpy as np

from ._dask_worker import global_range, probe, release, shared_filter, shared_range
from ._request import FilterRequest
from ._shm import Segment, SegmentPool, SegmentRef

__all__ = ["shared_memory_hosts", "filter_shared", "POOL"]


# -- in the caller -------------------------------------------------------------------------------
_HOSTS_CACHE: dict = {}


def shared_memory_hosts(client, workers=None) -> list[str] | None:
    """The hosts of the cluster's workers if every worker can attach to a segment this process
    creates (same machine, same /dev/shm), else None. Probed once per set of workers."""
    from distributed.comm import get_address_host

    workers = client.nthreads() if workers is None else workers
    if not workers:
        return None
    key = (id(client), frozenset(workers))
    if key not in _HOSTS_CACHE:
        token = secrets.token_bytes(16)
        seg = Segment(len(token))
        try:
            seg.buf[: len(token)] = token
            ok = client.run(probe, seg.name, token)
        finally:
            seg.release()
        hosts = sorted({get_address_host(a) for a in workers})
        _HOSTS_CACHE.clear()
        _HOSTS_CACHE[key] = hosts if ok and all(ok.values()) else None
    return _HOSTS_CACHE[key]


class _Users:
    """Which clients' workers may have mapped each segment: told to unmap it when it is retired."""

    def __init__(self):
        self._by_name: dict = {}
        self._lock = threading.Lock()

    def add(self, name: str, client) -> None:
        with self._lock:
            self._by_name.setdefault(name, weakref.WeakSet()).add(client)

    def retired(self, names) -> None:
        clients = {}
        with self._lock:
            for name in names:
                for c in self._by_name.pop(name, ()):
                    clients.setdefault(id(c), (c, []))[1].append(name)
        for c, gone in clients.values():
            if c.status == "running":
                with contextlib.suppress(Exception):  # best effort: workers also sweep on their own
                    c.run(release, gone, wait=False)


_USERS = _Users()
#: The transport's segments, kept between jobs.
POOL = SegmentPool(keep=2, max_bytes=1 << 30, on_retire=_USERS.retired)
_ATEXIT = threading.Lock()
_registered = False


def _take(nbytes: int, client) -> Segment:
    global _registered
    with _ATEXIT:
        if not _registered:
            import atexit

            atexit.register(POOL.clear)  # at exit workers end, or sweep, on their own
            _registered = True
    seg = POOL.take(nbytes)
    _USERS.add(seg.name, client)
    return seg


def filter_shared(client, img3, result, plan, request: FilterRequest, hosts, wait_all) -> None:
    """One low-level graph (a task per band; for ``normalize`` a range task per band and their
    reduction first), submitted as is: no optimization pass, no collection wrapper. Tasks may run
    only on this host's workers (a restarted worker on it qualifies); their results are band row
    counts, never gathered: ``wait_all(client, futures)`` waits for them."""
    from dask.task_spec import Task, TaskRef

    (kernel,) = request.kernels
    border, output, impl = request.border, request.output, request.implementation
    segs, ok = [], False
    try:
        src_seg = _take(img3.nbytes, client)
        segs.append(src_seg)
        dst_seg = _take(img3.nbytes, client)
        segs.append(dst_seg)
        src = SegmentRef.whole(src_seg, img3.shape, img3.dtype)
        dst = SegmentRef.whole(dst_seg, img3.shape, img3.dtype)
        np.copyto(src.view(src_seg.buf), img3)
        token = secrets.token_hex(8)
        graph, vr = {}, None
        if output == "normalize":
            ranges = [(f"pfl-range-{token}", b.index) for b in plan]
            for key, b in zip(ranges, plan):
                graph[key] = Task(key, shared_range, src, b, kernel, border, impl)
            vr = f"pfl-value-range-{token}"
            graph[vr] = Task(vr, global_range, *(TaskRef(key) for key in ranges))
            vr = TaskRef(vr)
        keys = [(f"pfl-band-{token}", b.index) for b in plan]
        for key, b in zip(keys, plan):
            graph[key] = Task(key, shared_filter, src, dst, b, kernel, border, output, impl, vr)
        futs = client.get(graph, keys, sync=False, workers=hosts, allow_other_workers=False)
        wait_all(client, futs)
        np.copyto(result, dst.view(dst_seg.buf))
        ok = True
    finally:
        if ok:
            for seg in segs:
                POOL.give(seg)
        else:
            POOL.retire(segs)
