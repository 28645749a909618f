"""What runs on a Dask worker: the band kernel on a band's block, and on the caller's shared
memory (the ``_dask_shm`` transport). Tasks of both ``_dask`` graphs and ``_dask_shm`` graphs
call these; nothing here talks to a scheduler."""

from __future__ import annotations

import numpy as np

from ._bands import Band, local_band
from ._compute import band_range, filter_band
from ._shm import Attachments, SegmentRef, attach

__all__ = ["prepare_worker", "filter_block", "block_range", "global_range", "ATTACHED", "shared_range",
           "shared_filter", "release", "probe"]

_PREPARED = False


def prepare_worker() -> None:
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
    prepare_worker()
    src = _as3d(block)
    lb = local_band(band)
    if src.shape[0] != lb.read_stop:
        raise ValueError(f"block has {src.shape[0]} rows, band {band} reads {lb.read_stop}")
    dst = np.empty((lb.stop,) + src.shape[1:], src.dtype)  # rows above lb.start stay unused
    filter_band(src, dst, lb, kernel, border, output, implementation, value_range=value_range)
    return dst[lb.start :]


def block_range(block, band: Band, kernel, border: str, implementation: str) -> tuple[float, float]:
    """``band_range`` of the band from its block (for ``normalize``)."""
    prepare_worker()
    return band_range(_as3d(block), local_band(band), kernel, border, implementation)


def global_range(*ranges) -> tuple[float, float]:
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


# -- the shared-memory transport's tasks ------------------------------------------------------------
#: On a worker: this process's mappings of callers' segments, kept between tasks.
ATTACHED = Attachments()


def shared_range(src: SegmentRef, band, kernel, border, implementation):
    prepare_worker()
    with ATTACHED.arrays(src) as (a,):
        return band_range(a, band, kernel, border, implementation)


def shared_filter(src: SegmentRef, dst: SegmentRef, band, kernel, border, output, implementation,
                  value_range=None) -> int:
    """Exactly what a pool worker does with a band: ``filter_band`` on the shared arrays."""
    prepare_worker()
    with ATTACHED.arrays(src, dst) as (a, b):
        filter_band(a, b, band, kernel, border, output, implementation, value_range=value_range)
    return band.rows


async def release(names) -> None:
    """Close the mappings of segments the caller has unlinked. A coroutine, so that
    ``client.run(..., wait=False)`` can fire it without waiting for the workers."""
    ATTACHED.release(names)


def probe(name: str, token: bytes) -> bool:
    """Can this worker attach a segment the caller made (same host, same /dev/shm)?"""
    try:
        shm = attach(name)
    except Exception:  # noqa: BLE001 - any failure means: not this host's /dev/shm
        return False
    try:
        return bytes(shm.buf[: len(token)]) == token
    finally:
        shm.close()
