"""The Dask backend: the engine's bands and band kernel, scheduled by Dask instead of the pool.

Same band plan (``_bands``), same band kernel (``filter_band``/``band_range``): only where bands
run and how their rows travel changes; this module decides that for images in memory and Dask
arrays. ``_dask_shm`` is the shared-memory transport (the pool's data plane under Dask's
scheduling), ``_stores`` the Zarr and TIFF stores. Data flow of one job::

    caller (client)                 Dask graph (one task per band)           Dask workers
    ---------------                 ------------------------------           ------------
    FilterRequest; plan_bands(H, kh, cluster_band_count(...))
    where the input rows come from:
      numpy, one-machine cluster    segment in (caller creates, fills) ----> attach once, read band rows
                                      (_dask_shm)
      numpy, any cluster            band blocks scattered -----------------> block_i (read rows
                                                                               [read_start, read_stop)
                                                                               modulo H)
      Zarr / TIFF store (_stores)   the task reads its block itself -------> only its tiles
      Dask array (filter_dask)      its chunks + halo slices, sliced where
                                      the chunks live ---------------------> block_i
                                    normalize only: range_i per band,
                                      vr = min/max of all range_i ---------> one tiny task
                                    out_i = band kernel(block_i, vr) ------> rows [start, stop)
    where the output rows go:
      one-machine cluster           segment out (caller creates) <--------- written by the task
      any cluster                   gathered as they finish <-------------- out_i
      Zarr / TIFF                   see _stores

A block holds exactly the band's read rows; ``local_band`` shifts the band to index into it.
For borders OpenCV extrapolates, the read range is clamped at the image edge, so the block's edge
is the image's edge exactly where OpenCV synthesizes border rows; for ``wrap`` the rows come
modulo H and the halo is in the block. The band kernel sees the same rows as in the process-pool
engine, so results are bit-identical to it (tests/test_dask.py checks every border and output).

Failure: a worker that dies is replaced by its nanny and Dask re-runs its tasks (bands are pure,
band writes idempotent); a band that killed ``distributed.scheduler.allowed-failures`` workers
raises ``WorkerError``. On any error or Ctrl-C the job's futures are cancelled on the cluster.
``scheduler="local"`` creates a LocalCluster and closes it before returning.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging

import numpy as np

from ._bands import cluster_band_count, plan_bands, row_runs, take_rows
from ._dask_worker import block_range, filter_block, global_range
from ._errors import JobCancelled, WorkerError
from ._options import BORDER
from ._request import FilterRequest
from ._validate import check_choice, check_out

__all__ = ["INSTALL_HINT", "dask_available", "filter_on_dask", "filter_dask", "local_cluster"]

INSTALL_HINT = 'the Dask backend needs `pip install "dask[array]" distributed` (see requirements-dev.txt)'
_LOCAL_SCHEDULERS = ("synchronous", "threads")


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


def _block(parts) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _range_parts(band, kernel, border, implementation, *parts):
    return block_range(_block(parts), band, kernel, border, implementation)


def _filter_parts(band, kernel, border, output, implementation, value_range, *parts):
    return filter_block(_block(parts), band, kernel, border, output, implementation, value_range)


def _band_tasks(parts, plan, request: FilterRequest):
    """One lazy ``Delayed`` per band giving its output rows; for ``normalize`` the global range
    is reduced in the graph first. ``parts[i]`` lists what band i's block is the concatenation
    of (arrays, Futures or Delayeds)."""
    dask, _, _ = _dask()
    (kernel,) = request.kernels
    border, output, implementation = request.border, request.output, request.implementation
    vr = None
    if output == "normalize":
        ranges = [dask.delayed(_range_parts, pure=False)(band, kernel, border, implementation, *p)
                  for p, band in zip(parts, plan)]
        vr = dask.delayed(global_range, pure=False)(*ranges)
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
        status = getattr(scheduler, "status", None)
        status = getattr(status, "name", status)  # a Client's is a str, a cluster's an enum
        if status in ("closing", "closed", "failed"):
            raise ValueError(f"scheduler must be a running Client or cluster; got a {type(scheduler).__name__} "
                             f"that is {status}")
        return scheduler
    raise TypeError(
        "scheduler must be a dask.distributed.Client, a cluster, an address string, 'local', 'threads' "
        f"or 'synchronous'; got {type(scheduler).__name__}"
    )


def local_cluster(n_workers: int | None = None, **kwargs):
    """A ``LocalCluster`` of single-threaded worker processes, quiet; its scheduler's HTTP
    server (always started) takes a free port instead of 8787, which may be taken."""
    from distributed import LocalCluster

    from ._pool import available_cpus

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
    """Worker threads of the cluster (``workers``: ``client.nthreads()``, when already known)."""
    if client is None:
        from ._pool import available_cpus

        return available_cpus()
    return max(1, sum((client.nthreads() if workers is None else workers).values()))


def _workers(client):
    """``client.nthreads()`` (None without a client); a cluster without workers is refused:
    scatter and compute would wait for one forever."""
    if client is None:
        return None
    workers = client.nthreads()
    if not workers:
        raise ValueError(f"scheduler has no workers ({client.scheduler.address}); start some (cluster.scale(n)) "
                         f"or wait for them (client.wait_for_workers(n)) first")
    return workers


def _worker_error(exc):
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


def _run_tasks(client, scheduler, tasks, on_result=None):
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
    wait_all(client, futs, on_result or values.__setitem__)
    return values if on_result is None else None


def _check_band_rows(band_rows):
    if band_rows is None:
        return None
    if isinstance(band_rows, bool) or not isinstance(band_rows, (int, np.integer)) or band_rows < 1:
        raise ValueError(f"band_rows must be a positive integer (output rows per band), got {band_rows!r}")
    return int(band_rows)


def filter_on_dask(image, request: FilterRequest, *, scheduler, out=None, band_rows=None,
                   transport="auto") -> np.ndarray:
    """``engine.filter_image(..., scheduler=...)``: the same result, computed on a Dask cluster.

    ``transport`` says how pixels reach the workers: ``"shm"`` (a shared-memory segment the
    caller creates and unlinks; workers on this host attach to it, as the process pool does),
    ``"tcp"`` (each band's block is scattered to a worker and its rows gathered back: any
    cluster), or ``"auto"``: ``"shm"`` when every worker can attach to this host's segments.
    """
    from . import _dask_shm

    img3 = request.check_image(image)
    (k,) = request.kernels
    o = check_out(out, img3, shown_shape=image.shape)
    band_rows = _check_band_rows(band_rows)
    check_choice(transport, "transport", ("auto", "shm", "tcp"))
    _check_scheduler(scheduler)
    h, w, c = img3.shape
    result = o if o is not None else np.empty(img3.shape, img3.dtype)
    with _session(scheduler) as client:
        workers = _workers(client)
        threads = _cluster_threads(client, workers)
        hosts = _dask_shm.shared_memory_hosts(client, workers) if client is not None and transport != "tcp" else None
        if transport == "shm" and hosts is None:
            raise RuntimeError("transport='shm' needs every Dask worker on this host (sharing /dev/shm); "
                               "use transport='tcp' or 'auto'")
        n = cluster_band_count(h, w, threads, band_rows=band_rows, shared=hosts is not None)
        plan = plan_bands(h, k.shape[0], n, wrap=BORDER[request.border].wraps)
        if hosts is not None:
            _dask_shm.filter_shared(client, img3, result, plan, request, hosts, wait_all)
        else:
            blocks = [np.ascontiguousarray(take_rows(img3, b, h)) for b in plan]
            scattered = []
            if client is not None:
                # Straight to the workers (not through the scheduler inside the graph); no hashing.
                scattered = blocks = client.scatter(blocks, hash=False)
            with _guard(client, scattered):
                tasks = _band_tasks([[b] for b in blocks], plan, request)

                def put(i, rows):
                    result[plan[i].start : plan[i].stop] = rows

                _run_tasks(client, scheduler if client is None else None, tasks, on_result=put)
            del scattered, blocks
    if out is not None:
        return out
    return result.reshape(image.shape)


def wait_all(client, futs, on_result=None):
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
    if any(np.isnan(n) for n in x.shape):
        raise ValueError(f"image must have known chunk sizes (call image.compute_chunk_sizes() first), got shape {x.shape}")
    proxy = np.lib.stride_tricks.as_strided(np.zeros(1, x.dtype), shape=x.shape, strides=(0,) * x.ndim)
    request = FilterRequest([kernel], border=border, output=output, implementation=implementation)
    request.check_image(proxy)
    band_rows = _check_band_rows(band_rows)
    squeeze = x.ndim == 2
    x3 = x[:, :, None] if squeeze else x
    h, w, c = x3.shape
    plan = plan_bands(h, request.kernels[0].shape[0], cluster_band_count(h, w, 1, band_rows=band_rows),
                      wrap=BORDER[border].wraps)
    parts = _parts_from_chunks(x3, plan, h)
    res = _stack(_band_tasks(parts, plan, request), plan, w, c, x.dtype)
    return res[:, :, 0] if squeeze else res


