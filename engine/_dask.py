"""The Dask backend: the engine's bands and band kernel, scheduled by Dask instead of the pool.

Same band plan (``plan_bands``), same band kernel (``filter_band``/``band_range``): only where
bands run and how their rows travel changes. Data flow of one job::

    caller (client)                 Dask graph (lazy, one task per band)     Dask workers
    ---------------                 ------------------------------------     ------------
    validate; plan_bands(H, kh, n)
    where the input rows come from:
      numpy, one-machine cluster    segment in (caller creates, fills) ----> attach once, read band rows
      numpy, any cluster            band blocks scattered -----------------> block_i (read rows
                                                                               [read_start, read_stop)
                                                                               modulo H)
      Zarr / TIFF store             the task reads its block itself -------> only its tiles
      Dask array (filter_dask)      its chunks + halo slices, sliced where
                                      the chunks live ---------------------> block_i
                                    normalize only: range_i per band,
                                      vr = min/max of all range_i ---------> one tiny task
                                    out_i = band kernel(block_i, vr) ------> rows [start, stop)
    where the output rows go:
      one-machine cluster           segment out (caller creates) <--------- written by the task
      any cluster                   gathered as they finish <-------------- out_i
      Zarr                          written by the band's own task (bands own whole chunks;
                                      otherwise rechunked by Dask first, so no chunk is shared)
      TIFF                          the caller writes tiles in order from a bounded window

A block holds exactly the band's read rows; ``local_band`` shifts the band to index into it.
For non-wrap borders the read range is clamped at the image edge, so the block's edge is the
image's edge exactly where OpenCV synthesizes border rows; for ``wrap`` the rows come modulo H
and the halo is in the block. The band kernel sees the same rows as in the process-pool engine,
so results are bit-identical to it (tests/test_dask.py checks every border and output).

The shared-memory transport is the process pool's data plane under Dask's scheduling, and is
built to cost Dask as little as possible per job: the caller submits one low-level graph (a
``Task`` per band, no ``dask.array``/``delayed`` wrapper, no optimization pass) with tasks pinned
to this host's workers; results are row counts, never gathered (only completion is awaited);
bands are the engine's plan with fewer, bigger bands on small images (``SHARED_BAND_PIXELS``:
a Dask task costs milliseconds where a pool band costs a pipe message); and, as in the pool,
segments and the workers' mappings of them are reused between jobs instead of being created,
mapped and faulted in again on every call.

Ownership: the caller creates and unlinks both segments of the shared-memory transport; it keeps
a few between jobs (``_SegmentPool``, like the engine's pool) and unlinks the rest in ``finally``.
Workers attach to a segment once and keep the mapping between tasks (``_MAPS``); they close it
when the caller says it unlinked the segment (``_release_maps``, sent without waiting) or, had
that word been lost, at their next new attachment, when they see its name gone from /dev/shm.
Workers never create or unlink a segment. ``scheduler="local"`` creates a LocalCluster
and closes it before returning. Failure: a worker that dies is replaced by its nanny and Dask
re-runs its tasks (bands are pure, band writes idempotent); a band that killed
``distributed.scheduler.allowed-failures`` workers raises ``WorkerError``. On any error or
Ctrl-C the job's futures are cancelled on the cluster.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable
import logging
import math
import os
import threading
import weakref

import numpy as np

from ._bands import Band, band_count, plan_bands
from ._compute import BORDERS, IMPLEMENTATIONS, OUTPUTS, band_range, filter_band
from ._engine import JobCancelled
from ._validate import check_choice, check_image, check_kernel, check_out, check_python_size

__all__ = [
    "INSTALL_HINT",
    "dask_available",
    "local_band",
    "row_runs",
    "take_rows",
    "filter_block",
    "block_range",
    "filter_image",
    "filter_dask",
    "filter_zarr",
]

INSTALL_HINT = 'the Dask backend needs `pip install "dask[array]" distributed` (see requirements-dev.txt)'
#: Bands per worker thread of a cluster for in-memory images (load balance vs per-task overhead).
TARGET_BAND_PIXELS = 1 << 22
#: Shared-memory bands are never copied, but each one is a Dask task: a few ms of scheduler and
#: worker overhead, where the process pool spends a pipe message. Fewer bands, then: at least
#: this many pixels each (still at least one band per worker thread).
SHARED_BAND_PIXELS = 1 << 23
_LOCAL_SCHEDULERS = ("synchronous", "threads")
_TIFF_TILE = 256


# -- optional imports ------------------------------------------------------------------------------
def dask_available() -> bool:
    """Whether the Dask backend can run here (``dask`` and ``distributed`` are installed).

    Cheap: nothing is imported. The dashboard calls it to decide whether to offer the backend.

    >>> isinstance(dask_available(), bool)
    True
    """
    try:
        return all(importlib.util.find_spec(m) is not None for m in ("dask", "distributed"))
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def _dask():
    """``(dask, dask.array, distributed)``, or an ImportError that says how to install them."""
    try:
        import dask
        import dask.array as da
        import distributed
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT}; importing it failed: {e}") from e
    return dask, da, distributed


# -- bands as small local arrays (pure) ------------------------------------------------------------
def local_band(band: Band) -> Band:
    """The same band, indexing into its block (the rows ``[read_start, read_stop)`` alone).

    >>> local_band(Band(1, 5, 10, 4, 11))
    Band(index=1, start=1, stop=6, read_start=0, read_stop=7)
    """
    return Band(band.index, band.start - band.read_start, band.stop - band.read_start, 0,
                band.read_stop - band.read_start)


def row_runs(band: Band, height: int) -> list[tuple[int, int]]:
    """Contiguous in-image row ranges that, concatenated, are the band's read rows modulo H.

    One run for a clamped (non-wrap) range; wrap halos add runs from the opposite edge.

    >>> row_runs(Band(0, 0, 5, -2, 7), 10)
    [(8, 10), (0, 7)]
    >>> row_runs(Band(0, 0, 3, -4, 7), 3)  # a kernel taller than the image
    [(2, 3), (0, 3), (0, 3), (0, 3), (0, 1)]
    """
    runs, r = [], band.read_start
    while r < band.read_stop:
        lo = r % height
        n = min(height - lo, band.read_stop - r)
        runs.append((lo, lo + n))
        r += n
    return runs


def take_rows(source, band: Band, height: int) -> np.ndarray:
    """The band's block from ``source`` (an (H, W, C) array, or anything sliceable by rows):
    a view when the read range is one run, else a copy."""
    runs = row_runs(band, height)
    if len(runs) == 1:
        lo, hi = runs[0]
        return np.asarray(source[lo:hi])
    return np.concatenate([np.asarray(source[lo:hi]) for lo, hi in runs])


# -- what runs on a worker -------------------------------------------------------------------------
_PREPARED = False


def _prepare_worker() -> None:
    """On a Dask worker, OpenCV uses one thread: Dask's worker threads are the parallelism."""
    global _PREPARED
    if _PREPARED:
        return
    _PREPARED = True
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return  # not on a worker (synchronous or threaded scheduler): leave OpenCV alone
    import cv2

    cv2.setNumThreads(1)


def _as3d(block: np.ndarray) -> np.ndarray:
    block = np.ascontiguousarray(block)
    return block if block.ndim == 3 else block[:, :, None]


def filter_block(block, band: Band, kernel, border: str, output: str, implementation: str,
                 value_range=None) -> np.ndarray:
    """Output rows ``[band.start, band.stop)`` computed from the band's block alone.

    ``block`` holds exactly the input rows ``[band.read_start, band.read_stop)`` (modulo H for
    ``wrap``), as ``take_rows`` gives them. Calls the engine's ``filter_band``.
    """
    _prepare_worker()
    src = _as3d(block)
    lb = local_band(band)
    if src.shape[0] != lb.read_stop:
        raise ValueError(f"block has {src.shape[0]} rows, band {band} reads {lb.read_stop}")
    dst = np.empty((lb.stop,) + src.shape[1:], src.dtype)  # rows above lb.start stay unused
    filter_band(src, dst, lb, kernel, border, output, implementation, value_range=value_range)
    return dst[lb.start :]


def block_range(block, band: Band, kernel, border: str, implementation: str) -> tuple[float, float]:
    """``band_range`` of the band from its block (for ``normalize``)."""
    _prepare_worker()
    return band_range(_as3d(block), local_band(band), kernel, border, implementation)


def _global_range(*ranges) -> tuple[float, float]:
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def _filter_read(source, band, height, kernel, border, output, implementation, value_range=None):
    return filter_block(take_rows(source, band, height), band, kernel, border, output, implementation, value_range)


def _range_read(source, band, height, kernel, border, implementation):
    return block_range(take_rows(source, band, height), band, kernel, border, implementation)


def _filter_store(source, dst, band, height, kernel, border, output, implementation, value_range=None) -> int:
    """Read, filter and write one band straight into the Zarr store; returns rows written."""
    rows = _filter_read(source, band, height, kernel, border, output, implementation, value_range)
    dst[band.start : band.stop] = rows.reshape((band.rows,) + tuple(dst.shape[1:]))
    return band.rows


# -- graphs ----------------------------------------------------------------------------------------
def _block(parts) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _range_parts(band, kernel, border, implementation, *parts):
    return block_range(_block(parts), band, kernel, border, implementation)


def _filter_parts(band, kernel, border, output, implementation, value_range, *parts):
    return filter_block(_block(parts), band, kernel, border, output, implementation, value_range)


def _band_tasks(parts, plan, kernel, border, output, implementation):
    """One lazy ``Delayed`` per band giving its output rows; for ``normalize`` the global range
    is reduced in the graph first. ``parts[i]`` lists what band i's block is the concatenation
    of (arrays, Futures or Delayeds)."""
    dask, _, _ = _dask()
    vr = None
    if output == "normalize":
        ranges = [dask.delayed(_range_parts, pure=False)(band, kernel, border, implementation, *p)
                  for p, band in zip(parts, plan)]
        vr = dask.delayed(_global_range, pure=False)(*ranges)
    return [dask.delayed(_filter_parts, pure=False)(band, kernel, border, output, implementation, vr, *p)
            for p, band in zip(parts, plan)]


def _parts_from_chunks(x3, plan, height):
    """Per band, the pieces of a Dask array that make its block: row chunks it covers whole are
    passed as they are, others are sliced by a task that Dask runs where the chunk lives, so
    that only halo rows travel between workers."""
    import operator

    dask, _, _ = _dask()
    x3 = x3.rechunk({1: -1, 2: -1})  # whole rows in every chunk (a no-op when already so)
    chunks = x3.to_delayed().ravel()
    bounds = np.cumsum((0,) + tuple(x3.chunks[0]))
    out = []
    for b in plan:
        parts = []
        for lo, hi in row_runs(b, height):
            i = int(np.searchsorted(bounds, lo, side="right")) - 1
            while lo < hi:
                c0, c1 = int(bounds[i]), int(bounds[i + 1])
                e = min(hi, c1)
                whole = lo == c0 and e == c1
                parts.append(chunks[i] if whole else dask.delayed(operator.getitem, pure=True)(chunks[i], slice(lo - c0, e - c0)))
                lo, i = e, i + 1
        out.append(parts)
    return out


def _source_tasks(source, plan, height, kernel, border, output, implementation, dst=None, value_range=None):
    """Per band, one task that reads its block from ``source`` itself (a store every worker can
    open): nothing but the band's rows ever travels. With ``dst``, the task also writes them."""
    dask, _, _ = _dask()
    vr = value_range
    if output == "normalize" and vr is None:
        ranges = [dask.delayed(_range_read, pure=False)(source, band, height, kernel, border, implementation)
                  for band in plan]
        vr = dask.delayed(_global_range, pure=False)(*ranges)
    if dst is None:
        return [dask.delayed(_filter_read, pure=False)(source, band, height, kernel, border, output, implementation, vr)
                for band in plan]
    return [dask.delayed(_filter_store, pure=False)(source, dst, band, height, kernel, border, output, implementation, vr)
            for band in plan]


def _stack(tasks, plan, width, channels, dtype):
    """The lazy (H, W, C) array whose chunks are the bands."""
    _, da, _ = _dask()
    return da.concatenate(
        [da.from_delayed(t, shape=(b.rows, width, channels), dtype=dtype) for t, b in zip(tasks, plan)], axis=0
    )


# -- schedulers ------------------------------------------------------------------------------------
def _check_scheduler(scheduler):
    """Validate ``scheduler`` up front; returns it. None is Dask's default scheduler."""
    if scheduler is None:
        _dask()
        return None
    if isinstance(scheduler, str):
        if scheduler == "local" or scheduler in _LOCAL_SCHEDULERS or "://" in scheduler:
            _dask()
            return scheduler
        raise ValueError(
            "scheduler must be a dask.distributed.Client, a cluster, a scheduler address like "
            f"'tcp://host:8786', 'local' (a LocalCluster of worker processes), 'threads' or 'synchronous'; got {scheduler!r}"
        )
    _, _, distributed = _dask()
    if isinstance(scheduler, distributed.Client) or hasattr(scheduler, "scheduler_address"):
        return scheduler
    raise TypeError(
        "scheduler must be a dask.distributed.Client, a cluster, an address string, 'local', 'threads' "
        f"or 'synchronous'; got {type(scheduler).__name__}"
    )


def local_cluster(n_workers: int | None = None, **kwargs):
    """A ``LocalCluster`` of single-threaded worker processes, quiet; its scheduler's HTTP
    server (always started) takes a free port instead of 8787, which may be taken."""
    from distributed import LocalCluster

    from ._engine import available_cpus

    opts = dict(n_workers=n_workers or available_cpus(), threads_per_worker=1, processes=True,
                dashboard_address=":0", silence_logs=logging.ERROR)
    opts.update(kwargs)
    return LocalCluster(**opts)


@contextlib.contextmanager
def _session(scheduler):
    """Yield a ``Client`` (or None for 'threads'/'synchronous'); close what this call created."""
    if scheduler is None or scheduler in _LOCAL_SCHEDULERS:
        yield None
        return
    _, _, distributed = _dask()
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    cluster = local_cluster() if scheduler == "local" else None
    try:
        target = cluster if cluster is not None else scheduler
        with distributed.Client(target, set_as_default=False) as client:
            yield client
    finally:
        if cluster is not None:
            cluster.close()


def _cluster_threads(client, workers=None) -> int:
    """Worker threads of the cluster (``workers``: ``_workers(client)``, when already known)."""
    if client is None:
        from ._engine import available_cpus

        return available_cpus()
    return max(1, sum((_workers(client) if workers is None else workers).values()))


def _worker_error(exc):
    from ._engine import WorkerError

    return WorkerError(
        f"a Dask worker died while running this job, and the task was retried until Dask's "
        f"'distributed.scheduler.allowed-failures' limit: likely out of memory (raise the workers' "
        f"memory_limit or use smaller bands), or killed ({exc})"
    )


@contextlib.contextmanager
def _guard(client, *futures_lists):
    """Cancel the job's futures on the cluster on any error (and Ctrl-C); KilledWorker -> WorkerError."""
    _, _, distributed = _dask()
    try:
        yield
    except distributed.KilledWorker as e:
        _cancel(client, futures_lists)
        raise _worker_error(e) from None
    except BaseException:
        _cancel(client, futures_lists)
        raise


def _cancel(client, futures_lists):
    if client is None:
        return
    futs = [f for fl in futures_lists for f in fl]
    if futs:
        with contextlib.suppress(Exception):
            client.cancel(futs)


def _compute(client, scheduler, tasks, on_result=None):
    """Run ``tasks``; ``on_result(i, value)`` as each finishes (in completion order with a
    cluster). Returns the values in order when ``on_result`` is None."""
    dask, _, _ = _dask()
    if client is None:
        values = dask.compute(*tasks, scheduler=scheduler or "threads")
        if on_result is None:
            return list(values)
        for i, v in enumerate(values):
            on_result(i, v)
        return None
    futs = client.compute(list(tasks))
    values = [None] * len(futs)
    _wait_all(client, futs, on_result or values.__setitem__)
    return values if on_result is None else None


# -- public entries --------------------------------------------------------------------------------
def _check_common(kernel, border, output, implementation):
    k = check_kernel(kernel)
    check_choice(border, "border", BORDERS)
    check_choice(output, "output", OUTPUTS)
    check_choice(implementation, "implementation", IMPLEMENTATIONS)
    return k


def _check_band_rows(band_rows):
    if band_rows is None:
        return None
    if isinstance(band_rows, bool) or not isinstance(band_rows, (int, np.integer)) or band_rows < 1:
        raise ValueError(f"band_rows must be a positive integer (output rows per band), got {band_rows!r}")
    return int(band_rows)


def _plan(height, width, kernel, border, *, threads=None, band_rows=None, shared=False):
    """The engine's band plan, with a band count for a cluster: ``band_rows`` rows per band when
    given, else the process-pool engine's rule for ``threads`` workers, with at least one band
    per ``TARGET_BAND_PIXELS`` when bands are copied into blocks, or at most one per
    ``SHARED_BAND_PIXELS`` (and one per thread) when they are ``shared`` (read and written in
    place)."""
    threads = threads or 1
    if band_rows is not None:
        n = math.ceil(height / band_rows)
    elif shared:
        n = min(band_count(height, width, threads), max(threads, height * width // SHARED_BAND_PIXELS))
    else:
        n = max(band_count(height, width, threads), math.ceil(height * width / TARGET_BAND_PIXELS))
    return plan_bands(height, kernel.shape[0], max(1, min(n, height)), wrap=border == "wrap")


def filter_image(image, kernel, *, scheduler, border="replicate", output="clip", implementation="opencv",
                 out=None, band_rows=None, transport="auto") -> np.ndarray:
    """``engine.filter_image(..., scheduler=...)``: the same result, computed on a Dask cluster.

    ``transport`` says how pixels reach the workers: ``"shm"`` (a shared-memory segment the
    caller creates and unlinks; workers on this host attach to it, as the process pool does),
    ``"tcp"`` (each band's block is scattered to a worker and its rows gathered back: any
    cluster), or ``"auto"``: ``"shm"`` when every worker can attach to this host's segments.
    """
    img3 = check_image(image)
    k = _check_common(kernel, border, output, implementation)
    check_python_size(img3, implementation)
    o = check_out(out, img3)
    band_rows = _check_band_rows(band_rows)
    check_choice(transport, "transport", ("auto", "shm", "tcp"))
    _check_scheduler(scheduler)
    h, w, c = img3.shape
    result = o if o is not None else np.empty(img3.shape, img3.dtype)
    with _session(scheduler) as client:
        workers = _workers(client) if client is not None else None
        threads = _cluster_threads(client, workers)
        hosts = _shared_memory_hosts(client, workers) if client is not None and transport != "tcp" else None
        if transport == "shm" and hosts is None:
            raise RuntimeError("transport='shm' needs every Dask worker on this host (sharing /dev/shm); "
                               "use transport='tcp' or 'auto'")
        plan = _plan(h, w, k, border, threads=threads, band_rows=band_rows, shared=hosts is not None)
        if hosts is not None:
            _filter_shared(client, img3, result, plan, k, border, output, implementation, hosts)
        else:
            blocks = [np.ascontiguousarray(take_rows(img3, b, h)) for b in plan]
            scattered = []
            if client is not None:
                # Straight to the workers (not through the scheduler inside the graph); no hashing.
                scattered = blocks = client.scatter(blocks, hash=False)
            with _guard(client, scattered):
                tasks = _band_tasks([[b] for b in blocks], plan, k, border, output, implementation)

                def put(i, rows):
                    result[plan[i].start : plan[i].stop] = rows

                _compute(client, scheduler if client is None else None, tasks, on_result=put)
            del scattered, blocks
    if out is not None:
        return out
    return result.reshape(image.shape)


# -- the shared-memory transport -------------------------------------------------------------------
# Worker side. A worker keeps its attachments between tasks, as the process pool's workers do:
# mapping a segment and faulting its pages into the worker's page tables on every task cost
# more than the band itself on small images. A mapping is closed when the caller says it has
# unlinked the segment (``_release_maps``, best effort) or, failing that, when the worker next
# attaches a new segment and finds the old name gone from /dev/shm; never while a task of this
# worker uses it (numpy arrays on a closed mapping crash the process): then the last such task
# closes it when it ends.
_MAPS: dict = {}  # segment name -> SharedMemory, this worker's attachments
_USERS: dict = {}  # segment name -> how many running tasks of this worker use it
_DOOMED: set = set()  # names to close as soon as no task uses them
_MAPS_LOCK = threading.Lock()


@contextlib.contextmanager
def _mapped(*descs):
    """On a worker: the (H, W, C) arrays in the caller's segments ``desc = (name, shape, dtype)``,
    for one task (the mappings stay for the next one)."""
    from ._shm import SHM_DIR, attach

    names = [name for name, _, _ in descs]
    with _MAPS_LOCK:
        for name in names:
            if name not in _MAPS:
                _close_maps([n for n in _MAPS if not os.path.exists(os.path.join(SHM_DIR, n))])
                _MAPS[name] = attach(name)
        for name in names:
            _USERS[name] = _USERS.get(name, 0) + 1
        arrays = [np.ndarray(shape, np.dtype(dtype), buffer=_MAPS[name].buf) for name, shape, dtype in descs]
    try:
        yield arrays
    finally:
        del arrays
        with _MAPS_LOCK:
            for name in names:
                _USERS[name] -= 1
                if not _USERS[name]:
                    del _USERS[name]
            _close_maps([n for n in names if n in _DOOMED])


def _close_maps(names) -> None:
    """Close these mappings now, or when the last task using one ends. Hold ``_MAPS_LOCK``."""
    for name in names:
        if _USERS.get(name):
            _DOOMED.add(name)
            continue
        _DOOMED.discard(name)
        shm = _MAPS.pop(name, None)
        if shm is not None:
            with contextlib.suppress(BufferError):  # something still exports it: unmapped when collected
                shm.close()


async def _release_maps(names) -> None:
    """On a worker: close the mappings of segments the caller has unlinked. A coroutine, so
    that ``client.run(..., wait=False)`` can fire it without waiting for the workers."""
    with _MAPS_LOCK:
        _close_maps(names)


def _shared_range(src_desc, band, kernel, border, implementation):
    _prepare_worker()
    with _mapped(src_desc) as (src,):
        return band_range(src, band, kernel, border, implementation)


def _shared_filter(src_desc, dst_desc, band, kernel, border, output, implementation, value_range=None) -> int:
    """Exactly what a process-pool worker does with a band: ``filter_band`` on the shared arrays."""
    _prepare_worker()
    with _mapped(src_desc, dst_desc) as (src, dst):
        filter_band(src, dst, band, kernel, border, output, implementation, value_range=value_range)
    return band.rows


def _probe_segment(name: str, token: bytes) -> bool:
    try:
        from ._shm import attach

        shm = attach(name)
    except Exception:  # noqa: BLE001 - any failure means: not this host's /dev/shm
        return False
    try:
        return bytes(shm.buf[: len(token)]) == token
    finally:
        shm.close()


_HOSTS_CACHE: dict = {}


def _workers(client) -> dict:
    """Every worker's address and thread count, in one short round trip."""
    return client.nthreads()


def _shared_memory_hosts(client, workers=None) -> list[str] | None:
    """The hosts of the cluster's workers if every worker can attach to a segment this process
    creates (same machine, same /dev/shm), else None. Probed once per set of workers."""
    import secrets

    from ._shm import Segment

    workers = _workers(client) if workers is None else workers
    if not workers:
        return None
    key = (id(client), frozenset(workers))
    if key not in _HOSTS_CACHE:
        token = secrets.token_bytes(16)
        seg = Segment(len(token))
        try:
            seg.buf[: len(token)] = token
            ok = client.run(_probe_segment, seg.name, token)
        finally:
            seg.release()
        hosts = sorted({_host_of(a) for a in workers})
        _HOSTS_CACHE.clear()
        _HOSTS_CACHE[key] = hosts if ok and all(ok.values()) else None
    return _HOSTS_CACHE[key]


def _host_of(address: str) -> str:
    from distributed.comm import get_address_host

    return get_address_host(address)


class _SegmentPool:
    """The shared-memory transport's scratch segments, kept between jobs (at most ``keep`` of
    them, ``max_bytes`` in all): copy-in, the workers' band writes and copy-out then touch pages
    that already exist and are already mapped in the workers. This process creates and unlinks
    every one of them, and then asks the clusters that used it to close their workers' mappings.
    A segment goes back to the pool only after a job whose tasks all finished (after a failure
    a task may still be writing, so it is unlinked instead)."""

    def __init__(self, keep=2, max_bytes=1 << 30):
        self.keep, self.max_bytes = keep, max_bytes
        self._free: list = []
        self._users: dict = {}  # segment name -> the Clients whose workers may have mapped it
        self._lock = threading.Lock()
        self._atexit = False

    def take(self, nbytes: int, client):
        from ._shm import Segment

        with self._lock:
            for i, seg in enumerate(self._free):
                if seg.nbytes == nbytes:
                    seg = self._free.pop(i)
                    break
            else:
                seg = None
            if not self._atexit:
                import atexit

                atexit.register(self.clear, notify=False)  # workers exit, or sweep, on their own
                self._atexit = True
        seg = seg or Segment(nbytes)
        with self._lock:
            self._users.setdefault(seg.name, weakref.WeakSet()).add(client)
        return seg

    def give(self, seg) -> None:
        evict = [seg]
        with self._lock:
            if seg.nbytes <= self.max_bytes:
                self._free.append(seg)
                evict = []
                while len(self._free) > self.keep or sum(x.nbytes for x in self._free) > self.max_bytes:
                    evict.append(self._free.pop(0))
        self.release(evict)

    def release(self, segs, notify=True) -> None:
        """Unlink ``segs`` now; tell their clusters' workers to close their mappings."""
        clients = {}
        for seg in segs:
            seg.release()
            with self._lock:
                users = self._users.pop(seg.name, ())
            for c in users:
                clients.setdefault(id(c), (c, []))[1].append(seg.name)
        for c, names in clients.values():
            if notify and c.status == "running":
                with contextlib.suppress(Exception):  # best effort: workers also sweep on their own
                    c.run(_release_maps, names, wait=False)

    def clear(self, notify=True) -> None:
        with self._lock:
            free, self._free = self._free, []
        self.release(free, notify)


_POOL = _SegmentPool()


def _filter_shared(client, img3, result, plan, kernel, border, output, implementation, hosts):
    """The shared-memory transport: the engine's data plane, Dask's scheduling. One low-level
    graph (a task per band; for ``normalize`` a range task per band and their reduction first),
    submitted as is: no optimization pass, no collection wrapper. Tasks may run only on this
    host's workers (a restarted worker on it qualifies); their results are band row counts, never
    gathered."""
    import secrets

    from dask.task_spec import Task, TaskRef

    segs, ok = [], False
    try:
        src_seg = _POOL.take(img3.nbytes, client)
        segs.append(src_seg)
        dst_seg = _POOL.take(img3.nbytes, client)
        segs.append(dst_seg)
        np.ndarray(img3.shape, img3.dtype, buffer=src_seg.buf)[...] = img3
        src = (src_seg.name, img3.shape, img3.dtype.str)
        dst = (dst_seg.name, img3.shape, img3.dtype.str)
        token = secrets.token_hex(8)
        graph, vr = {}, None
        if output == "normalize":
            ranges = [(f"pfl-range-{token}", b.index) for b in plan]
            for key, b in zip(ranges, plan):
                graph[key] = Task(key, _shared_range, src, b, kernel, border, implementation)
            vr = f"pfl-value-range-{token}"
            graph[vr] = Task(vr, _global_range, *(TaskRef(key) for key in ranges))
            vr = TaskRef(vr)
        keys = [(f"pfl-band-{token}", b.index) for b in plan]
        for key, b in zip(keys, plan):
            graph[key] = Task(key, _shared_filter, src, dst, b, kernel, border, output, implementation, vr)
        futs = client.get(graph, keys, sync=False, workers=hosts, allow_other_workers=False)
        _wait_all(client, futs)
        np.copyto(result, np.ndarray(img3.shape, img3.dtype, buffer=dst_seg.buf))
        ok = True
    finally:
        if ok:
            for seg in segs:
                _POOL.give(seg)
        else:
            _POOL.release(segs)


def _wait_all(client, futs, on_result=None):
    """Wait for futures as they finish; cancel them all on any error; KilledWorker -> WorkerError.
    Results are fetched only for ``on_result(i, value)``."""
    _, _, distributed = _dask()
    index = {f.key: i for i, f in enumerate(futs)}
    with _guard(client, futs):
        for item in distributed.as_completed(futs, with_results=on_result is not None, loop=client.loop):
            fut, value = item if on_result is not None else (item, None)
            if fut.status == "cancelled":
                # Cancelled on the cluster by someone else (client.cancel): as_completed hands
                # such futures back without an error, but their band was never written.
                raise JobCancelled("the job's Dask tasks were cancelled on the cluster; no result") from None
            if fut.status == "error":
                fut.result()  # raises the task's exception
            if on_result is not None:
                on_result(index[fut.key], value)
            fut.release()


def filter_dask(image, kernel, *, border: str = "replicate", output: str = "clip", implementation: str = "opencv",
                band_rows: int | None = None) -> "dask.array.Array":  # noqa: F821 - imported lazily
    """Correlate a Dask (or numpy) array lazily: a ``dask.array.Array`` whose chunks are bands.

    Parameters
    ----------
    image : dask.array.Array or numpy.ndarray
        ``(H, W)`` or ``(H, W, C)``, uint8 or uint16, C in 1..4, any chunking (each band's
        rows are sliced out of it, halo included).
    kernel, border, output, implementation
        As in ``engine.filter_image``.
    band_rows : int, optional
        Output rows per band (the result's row chunks). Default: about 4 Mpixels per band.

    Returns
    -------
    dask.array.Array
        Same shape and dtype, nothing computed yet. ``normalize`` reduces the global
        (min, max) inside the graph. Compute it with any scheduler (``.compute()``,
        ``client.compute``, ``.to_zarr``).

    Examples
    --------
    >>> import numpy as np
    >>> lazy = filter_dask(np.zeros((64, 48, 3), np.uint8), "gaussian", band_rows=16)
    >>> lazy.chunks[0], lazy.compute(scheduler="synchronous").shape
    ((16, 16, 16, 16), (64, 48, 3))
    """
    _, da, _ = _dask()
    x = image if isinstance(image, da.Array) else da.asarray(image)
    proxy = np.lib.stride_tricks.as_strided(np.zeros(1, x.dtype), shape=x.shape, strides=(0,) * x.ndim)
    check_image(proxy)
    k = _check_common(kernel, border, output, implementation)
    check_python_size(proxy if proxy.ndim == 3 else proxy[:, :, None], implementation)
    band_rows = _check_band_rows(band_rows)
    squeeze = x.ndim == 2
    x3 = x[:, :, None] if squeeze else x
    h, w, c = x3.shape
    plan = _plan(h, w, k, border, band_rows=band_rows)
    parts = _parts_from_chunks(x3, plan, h)
    res = _stack(_band_tasks(parts, plan, k, border, output, implementation), plan, w, c, x.dtype)
    return res[:, :, 0] if squeeze else res


# -- stores: Zarr and TIFF -------------------------------------------------------------------------
def _stores():
    """The ``zarr`` module, or an ImportError that says how to install the store extras."""
    try:
        import tifffile  # noqa: F401 - TIFF sources and outputs
        import zarr
    except ImportError as e:
        raise ImportError(f"filter_zarr needs `pip install zarr tifffile` (see requirements-dev.txt); {e}") from e
    return zarr


def _is_tiff(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).lower().endswith((".tif", ".tiff"))


class TiffRows:
    """Rows of a TIFF's first image, read through tifffile's Zarr view of its tiles or strips
    (only the tiles a row range touches are decoded). Picklable: workers reopen the file."""

    def __init__(self, path):
        self.path = os.fspath(path)
        import tifffile

        with tifffile.TiffFile(self.path) as tf:
            series = tf.series[0]
            if series.axes not in ("YX", "YXS"):
                raise ValueError(
                    f"TIFF {self.path!r} must hold one 2-D image (axes YX or YXS, samples interleaved), "
                    f"got axes {series.axes!r} with shape {series.shape}"
                )
            self.shape, self.dtype = tuple(series.shape), np.dtype(series.dtype)
            page = series.keyframe
            self.chunks = (page.tilelength if page.is_tiled else page.rowsperstrip,) + self.shape[1:]
        self._z = None

    def __getstate__(self):
        return {"path": self.path, "shape": self.shape, "dtype": self.dtype, "chunks": self.chunks, "_z": None}

    def __getitem__(self, rows):
        if self._z is None:
            import tifffile
            import zarr

            self._z = zarr.open(tifffile.imread(self.path, aszarr=True), mode="r")
        return self._z[rows]


def _open_source(src):
    """A row-sliceable source that every worker can reopen: a Zarr array or ``TiffRows``."""
    if _is_tiff(src):
        if not os.path.isfile(src):
            raise FileNotFoundError(f"src TIFF {os.fspath(src)!r} does not exist")
        return TiffRows(src)
    import zarr

    if isinstance(src, (str, os.PathLike)):
        if not os.path.exists(src):
            raise FileNotFoundError(f"src Zarr store {os.fspath(src)!r} does not exist")
        z = zarr.open_array(os.fspath(src), mode="r")
    elif isinstance(src, zarr.Array):
        z = src
    else:
        raise TypeError(f"src must be a path to a Zarr array or a .tif/.tiff file, or a zarr.Array; got {type(src).__name__}")
    return z


def _near_divisor(m: int, target: int) -> int | None:
    """The divisor of ``m`` closest to ``target``, if one lies within a factor 2 of it."""
    divs = {d for i in range(1, math.isqrt(m) + 1) if m % i == 0 for d in (i, m // i)}
    best = min(divs, key=lambda d: (abs(d - target), -d))
    return best if target / 2 <= best <= 2 * target else None


def _plan_for_store(h, w, k, border, band_rows, row_chunk, threads, src_chunk=None):
    """Bands made of whole row chunks of both stores whenever the height allows: every band
    then owns whole Zarr chunks of ``dst`` and writes them itself (no two tasks share a chunk),
    and reads ``src`` chunks that are mostly its own. ``row_chunk=None``: ``dst`` is created
    afterwards, with the bands' height."""
    if band_rows is not None:
        return _plan(h, w, k, border, band_rows=band_rows)
    target = max(band_count(h, w, threads), math.ceil(h * w / TARGET_BAND_PIXELS))
    for unit in (math.lcm(row_chunk or 1, src_chunk or 1), row_chunk or 1):
        if h % unit == 0 and h // unit >= min(target, threads):  # enough bands for the workers
            n = _near_divisor(h // unit, min(target, h // unit))
            if n is not None:
                return plan_bands(h, k.shape[0], n, wrap=border == "wrap")
    return _plan(h, w, k, border, threads=threads)


def _row_chunk(source) -> int | None:
    chunks = getattr(source, "chunks", None)
    return int(chunks[0]) if chunks else None


def _aligned(plan, row_chunk) -> bool:
    return all(b.start % row_chunk == 0 for b in plan)


def filter_zarr(src, dst, kernel, *, scheduler=None, border: str = "replicate", output: str = "clip",
                implementation: str = "opencv", band_rows: int | None = None, chunks: tuple | None = None,
                progress: Callable[[int, int], None] | None = None) -> None:
    """Filter an image stored as Zarr (or TIFF) into Zarr (or TIFF), band by band on Dask.

    No process ever holds the whole image: each band's task reads its own rows (halo included)
    from ``src`` and, for Zarr output, writes its rows into ``dst``; for TIFF output the caller
    writes tiles in order from a bounded window of finished bands.

    Parameters
    ----------
    src : str, os.PathLike or zarr.Array
        A Zarr array (path or object) or a ``.tif``/``.tiff`` file (tiled or stripped; read
        through tifffile's Zarr view, so only the tiles a band touches are decoded), of shape
        ``(H, W)`` or ``(H, W, C)``, uint8 or uint16, C in 1..4. Workers open it themselves:
        it must be on storage they share with the caller.
    dst : str, os.PathLike or zarr.Array
        The output: a Zarr path (created with ``src``'s shape and dtype when missing, else it
        must match them), a ``zarr.Array``, or a ``.tif``/``.tiff`` path (written tiled,
        256x256, by the caller). Never the same store as ``src``.
    kernel, border, output, implementation
        As in ``engine.filter_image``; results are bit-identical to it.
    scheduler : Client, cluster, str or None
        A ``dask.distributed.Client``, a cluster, a scheduler address ``'tcp://host:8786'``,
        ``'local'`` (a LocalCluster of worker processes, created and closed here),
        ``'threads'``/``'synchronous'``, or None for Dask's default scheduler.
    band_rows : int, optional
        Output rows per band. Default: whole Zarr chunks of ``dst``, about 4 Mpixels per band.
    chunks : tuple, optional
        Chunk shape of a ``dst`` Zarr created here. Default: ``(band rows, min(W, 4096), C)``.
    progress : callable, optional
        ``progress(bands_done, bands_total)``, called in the caller as bands finish.

    Raises
    ------
    TypeError, ValueError, FileNotFoundError
        Bad arguments or stores, before any task runs.
    ImportError
        Dask is not installed (the message says how to install it).
    WorkerError
        A band kept killing workers (Dask's allowed-failures); finished bands stay written.

    Notes
    -----
    Bands line up with ``dst``'s row chunks when the height allows it, and then each band's
    task writes its own whole chunks; otherwise the bands are rechunked to ``dst``'s rows by
    Dask before writing, so that no two tasks ever write the same chunk. A rerun after a failure
    rewrites every band (band writes are idempotent).
    """
    k = _check_common(kernel, border, output, implementation)
    band_rows = _check_band_rows(band_rows)
    _check_scheduler(scheduler)
    _, da, _ = _dask()
    zarr = _stores()
    source = _open_source(src)
    shape, dtype = tuple(source.shape), np.dtype(source.dtype)
    proxy = np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape))
    img3 = check_image(proxy, "src")
    check_python_size(img3, implementation)
    h, w, c = img3.shape
    shape = tuple(shape)
    if isinstance(src, (str, os.PathLike)) and isinstance(dst, (str, os.PathLike)) and \
            os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError(f"dst must not be the same store as src (filters read rows a band would overwrite): {os.fspath(dst)!r}")

    tiff_out = _is_tiff(dst)
    if tiff_out:
        folder = os.path.dirname(os.path.abspath(dst))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"dst folder {folder!r} does not exist")
    elif not isinstance(dst, (str, os.PathLike, zarr.Array)):
        raise TypeError(f"dst must be a path (Zarr or .tif/.tiff) or a zarr.Array, got {type(dst).__name__}")

    with _session(scheduler) as client:
        threads = _cluster_threads(client)
        if tiff_out:
            target, row_chunk = None, _TIFF_TILE
            plan = _plan_for_store(h, w, k, border, band_rows, row_chunk, threads, _row_chunk(source))
        else:
            plan = None
            if isinstance(dst, zarr.Array) or os.path.exists(dst):
                target = _open_dst(dst, shape, dtype)
            else:
                plan = _plan_for_store(h, w, k, border, band_rows, None, threads, _row_chunk(source))
                target = zarr.create_array(os.fspath(dst), shape=shape, dtype=dtype,
                                           chunks=tuple(chunks) if chunks else (plan[0].rows, min(w, 4096)) + shape[2:])
            row_chunk = target.chunks[0]
            plan = plan or _plan_for_store(h, w, k, border, band_rows, row_chunk, threads, _row_chunk(source))
        sched = scheduler if client is None else None
        total, done = len(plan), [0]

        def tick(*_):
            done[0] += 1
            if progress is not None:
                progress(done[0], total)

        if tiff_out:
            _write_tiff(dst, client, sched, source, plan, h, (h, w, c), dtype, k, border, output, implementation, tick)
        elif _aligned(plan, row_chunk):
            tasks = _source_tasks(source, plan, h, k, border, output, implementation, dst=target)
            _compute(client, sched, tasks, on_result=tick)
        else:
            tasks = _source_tasks(source, plan, h, k, border, output, implementation)
            arr = _stack(tasks, plan, w, c, dtype).rechunk((row_chunk, w, c))
            arr = arr if len(shape) == 3 else arr[:, :, 0]
            stores = da.store(arr, target, lock=False, compute=False, return_stored=False)
            _compute(client, sched, [stores])
            if progress is not None:
                progress(total, total)


def _open_dst(dst, shape, dtype):
    import zarr

    z = dst if isinstance(dst, zarr.Array) else zarr.open_array(os.fspath(dst), mode="r+")
    if tuple(z.shape) != tuple(shape) or np.dtype(z.dtype) != dtype:
        raise ValueError(f"dst must have src's shape {tuple(shape)} and dtype {dtype}, got {tuple(z.shape)} {z.dtype}")
    return z


def _write_tiff(path, client, sched, source, plan, height, shape3, dtype, k, border, output, impl, tick):
    """Write a tiled TIFF in the caller, tile row by tile row, from a bounded window of bands."""
    import tifffile

    h, w, c = shape3
    vr = None
    if output == "normalize":  # the range pass first (a graph of its own), then the bands
        ranges = _compute(client, sched, [_range_task(source, b, height, k, border, impl) for b in plan])
        vr = _global_range(*ranges)
    window = 2 * _cluster_threads(client)

    def bands():
        for i in range(0, len(plan), window):
            part = plan[i : i + window]
            tasks = _source_tasks(source, part, height, k, border, output, impl, value_range=vr)
            yield from _compute(client, sched, tasks)

    def tiles():
        pending, filled = np.empty((0, w, c), dtype), 0
        for rows in bands():
            tick()
            pending = np.concatenate([pending, rows]) if len(pending) else rows
            while len(pending) >= _TIFF_TILE or (filled + len(pending) == h and len(pending)):
                strip, pending = pending[:_TIFF_TILE], pending[_TIFF_TILE:]
                filled += len(strip)
                for x0 in range(0, w, _TIFF_TILE):
                    tile = np.zeros((_TIFF_TILE, _TIFF_TILE, c), dtype)
                    part = strip[:, x0 : x0 + _TIFF_TILE]
                    tile[: part.shape[0], : part.shape[1]] = part
                    yield tile

    photometric = "rgb" if c >= 3 else "minisblack"
    extrasamples = ("unassalpha",) if c in (2, 4) else None
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    try:
        tifffile.imwrite(tmp, tiles(), shape=(h, w, c) if c > 1 else (h, w), dtype=dtype, tile=(_TIFF_TILE, _TIFF_TILE),
                         photometric=photometric, extrasamples=extrasamples, compression="zlib", bigtiff=h * w * c * dtype.itemsize > 2**31)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _range_task(source, band, height, k, border, impl):
    dask, _, _ = _dask()
    return dask.delayed(_range_read, pure=False)(source, band, height, k, border, impl)
