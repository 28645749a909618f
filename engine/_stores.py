"""Images in stores: ``filter_zarr`` reads Zarr or (tiled) TIFF and writes Zarr or tiled TIFF,
band by band on Dask, so that no process ever holds the whole image.

::

    caller                                           Dask workers
    ------                                           ------------
    FilterRequest; open src (only its header)
    plan_bands(H, kh, store_band_count(...)):
      bands made of whole row chunks when possible
    Zarr out, bands aligned with its chunks: one
      task per band ------------------------------>  read the band's rows (halo included) from
                                                     src, filter_band, write its own whole
                                                     chunks of dst
    Zarr out, not aligned: the bands rechunked to
      dst's rows by Dask, then stored (no chunk
      written by two tasks)
    TIFF out: a bounded window of band tasks ----->  read and filter, rows back to the caller
      the caller writes 256x256 tiles in order
      into a temp file, renamed when complete
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import numpy as np

from ._bands import plan_bands, store_band_count, take_rows
from ._dask import (_LOCAL_SCHEDULERS, _check_band_rows, _check_scheduler, _cluster_threads, _dask, _run_tasks, _session,
                    _stack, _workers)
from ._dask_worker import block_range, filter_block, global_range
from ._options import BORDER
from ._request import FilterRequest

__all__ = ["filter_zarr", "TiffRows"]

_TIFF_TILE = 256


def _filter_read(source, band, height, kernel, border, output, implementation, value_range=None):
    return filter_block(take_rows(source, band, height), band, kernel, border, output, implementation, value_range)


def _range_read(source, band, height, kernel, border, implementation):
    return block_range(take_rows(source, band, height), band, kernel, border, implementation)


def _filter_store(source, dst, band, height, kernel, border, output, implementation, value_range=None) -> int:
    """Read, filter and write one band straight into the Zarr store; returns rows written."""
    rows = _filter_read(source, band, height, kernel, border, output, implementation, value_range)
    dst[band.start : band.stop] = rows.reshape((band.rows,) + tuple(dst.shape[1:]))
    return band.rows


def _source_tasks(source, plan, height, kernel, border, output, implementation, dst=None, value_range=None):
    """Per band, one task that reads its block from ``source`` itself (a store every worker can
    open): nothing but the band's rows ever travels. With ``dst``, the task also writes them."""
    dask, _, _ = _dask()
    vr = value_range
    if output == "normalize" and vr is None:
        ranges = [dask.delayed(_range_read, pure=False)(source, band, height, kernel, border, implementation)
                  for band in plan]
        vr = dask.delayed(global_range, pure=False)(*ranges)
    if dst is None:
        return [dask.delayed(_filter_read, pure=False)(source, band, height, kernel, border, output, implementation, vr)
                for band in plan]
    return [dask.delayed(_filter_store, pure=False)(source, dst, band, height, kernel, border, output, implementation, vr)
            for band in plan]


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
        try:
            z = zarr.open_array(os.fspath(src), mode="r")
        except (ValueError, OSError) as e:  # zarr's errors derive from these
            raise ValueError(f"src {os.fspath(src)!r} is not a Zarr array or a .tif/.tiff file ({e})") from None
    elif isinstance(src, zarr.Array):
        z = src
    else:
        raise TypeError(f"src must be a path to a Zarr array or a .tif/.tiff file, or a zarr.Array; got {type(src).__name__}")
    return z


def _location(store):
    """Where a store's array lives, to tell two spellings of one store apart: the real path of
    a path or of a ``zarr.Array`` on local storage (symlinks resolved), else the store object and
    the array's path in it; None for anything else."""
    if isinstance(store, (str, os.PathLike)):
        return os.path.realpath(store)
    root = getattr(getattr(store, "store", None), "root", None)
    if root is not None:
        return os.path.realpath(os.path.join(os.fspath(root), store.path))
    return (id(store.store), store.path) if hasattr(store, "store") and hasattr(store, "path") else None


def _plan(h, w, kernel, border, threads, *, band_rows=None, row_chunk=None, src_chunk=None):
    n = store_band_count(h, w, threads, band_rows=band_rows, row_chunk=row_chunk, src_chunk=src_chunk)
    return plan_bands(h, kernel.shape[0], n, wrap=BORDER[border].wraps)


def _row_chunk(source) -> int | None:
    chunks = getattr(source, "chunks", None)
    return int(chunks[0]) if chunks else None


def _write_unit(z) -> tuple:
    """The shape a write to ``z`` rewrites whole: its shards when sharded (its ``chunks`` are
    then the inner chunks, and two tasks writing chunks of one shard lose each other's rows)."""
    return tuple(getattr(z, "shards", None) or z.chunks)


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
        must match them), a ``zarr.Array`` (in memory only with 'threads', 'synchronous' or
        None: cluster workers cannot write into it), or a ``.tif``/``.tiff`` path (written
        tiled, 256x256, by the caller). Never the same store as ``src``.
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
        ``progress(bands_done, bands_total)``, called in the caller. How often depends on where
        bands run and on ``dst``: with a cluster (a Client, a cluster, an address, 'local') and
        a Zarr ``dst`` whose row chunks line up with the bands, as each band finishes; with
        None, 'threads' or 'synchronous' Dask computes the bands in one call, so every call
        comes at its end; a Zarr ``dst`` not aligned with the bands gets one call at the end;
        a TIFF ``dst`` one call per band as each window of bands is written.

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
    Bands line up with ``dst``'s row chunks (its shards, when sharded) when the height allows
    it, and then each band's task writes its own whole chunks; otherwise the bands are rechunked
    to ``dst``'s rows by Dask before writing, so that no two tasks ever write the same chunk. A rerun after a failure
    rewrites every band (band writes are idempotent).
    """
    request = FilterRequest([kernel], border=border, output=output, implementation=implementation)
    (k,) = request.kernels
    band_rows = _check_band_rows(band_rows)
    _check_scheduler(scheduler)
    _, da, _ = _dask()
    zarr = _stores()
    source = _open_source(src)
    shape, dtype = tuple(source.shape), np.dtype(source.dtype)
    proxy = np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape))
    img3 = request.check_image(proxy, "src")
    h, w, c = img3.shape
    shape = tuple(shape)
    _check_chunks(chunks, shape)
    where = _location(dst)
    if where is not None and where == _location(src):
        raise ValueError(f"dst must not be the same store as src (filters read rows a band would overwrite): "
                         f"{where if isinstance(where, str) else dst!r}")

    tiff_out = _is_tiff(dst)
    if tiff_out:
        folder = os.path.dirname(os.path.abspath(dst))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"dst folder {folder!r} does not exist")
    elif not isinstance(dst, (str, os.PathLike, zarr.Array)):
        raise TypeError(f"dst must be a path (Zarr or .tif/.tiff) or a zarr.Array, got {type(dst).__name__}")
    elif isinstance(dst, zarr.Array) and isinstance(dst.store, zarr.storage.MemoryStore) and \
            scheduler is not None and scheduler not in _LOCAL_SCHEDULERS:
        raise ValueError("dst is a zarr.Array in memory (a MemoryStore): the cluster's workers would write into "
                         "copies of it, and it would stay empty; give a path on storage they share, or "
                         "scheduler='threads' or 'synchronous'")

    with _session(scheduler) as client:
        threads = _cluster_threads(client, _workers(client))
        if tiff_out:
            target, row_chunk = None, _TIFF_TILE
            plan = _plan(h, w, k, border, threads, band_rows=band_rows, row_chunk=row_chunk, src_chunk=_row_chunk(source))
        else:
            plan = None
            if isinstance(dst, zarr.Array) or os.path.exists(dst):
                target = _open_dst(dst, shape, dtype)
            else:
                plan = _plan(h, w, k, border, threads, band_rows=band_rows, src_chunk=_row_chunk(source))
                target = zarr.create_array(os.fspath(dst), shape=shape, dtype=dtype,
                                           chunks=tuple(chunks) if chunks else (plan[0].rows, min(w, 4096)) + shape[2:])
            row_chunk = _write_unit(target)[0]
            plan = plan or _plan(h, w, k, border, threads, band_rows=band_rows, row_chunk=row_chunk,
                                 src_chunk=_row_chunk(source))
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
            _run_tasks(client, sched, tasks, on_result=tick)
        else:
            tasks = _source_tasks(source, plan, h, k, border, output, implementation)
            arr = _stack(tasks, plan, w, c, dtype).rechunk((row_chunk, w, c))
            arr = arr if len(shape) == 3 else arr[:, :, 0]
            stores = da.store(arr, target, lock=False, compute=False, return_stored=False)
            _run_tasks(client, sched, [stores])
            if progress is not None:
                progress(total, total)


def _check_chunks(chunks, shape) -> None:
    if chunks is None:
        return
    ok = isinstance(chunks, (tuple, list)) and len(chunks) == len(shape) and all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in chunks)
    if not ok:
        raise ValueError(f"chunks must be {len(shape)} positive integers, one per axis of src's shape {shape}; "
                         f"got {chunks!r}")


def _open_dst(dst, shape, dtype):
    import zarr

    try:
        z = dst if isinstance(dst, zarr.Array) else zarr.open_array(os.fspath(dst), mode="r+")
    except (ValueError, OSError) as e:  # zarr's errors derive from these
        raise ValueError(f"dst {os.fspath(dst)!r} exists but is not a Zarr array ({e}); give a new path or a "
                         f"Zarr array of src's shape and dtype") from None
    if tuple(z.shape) != tuple(shape) or np.dtype(z.dtype) != dtype:
        raise ValueError(f"dst must have src's shape {tuple(shape)} and dtype {dtype}, got {tuple(z.shape)} {z.dtype}")
    return z


def _write_tiff(path, client, sched, source, plan, height, shape3, dtype, k, border, output, impl, tick):
    """Write a tiled TIFF in the caller, tile row by tile row, from a bounded window of bands."""
    import tifffile

    h, w, c = shape3
    vr = None
    if output == "normalize":  # the range pass first (a graph of its own), then the bands
        ranges = _run_tasks(client, sched, [_range_task(source, b, height, k, border, impl) for b in plan])
        vr = global_range(*ranges)
    window = 2 * _cluster_threads(client)

    def bands():
        for i in range(0, len(plan), window):
            part = plan[i : i + window]
            tasks = _source_tasks(source, part, height, k, border, output, impl, value_range=vr)
            yield from _run_tasks(client, sched, tasks)

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
