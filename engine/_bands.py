"""Row bands with halo rows: the one place where band and halo arithmetic lives.

A kernel of height ``kh`` anchored at row ``kh // 2`` (scipy's ``origin=0``, OpenCV's default
anchor) reads ``kh // 2`` rows above each output row and ``kh - 1 - kh // 2`` rows below it.
A band that writes output rows ``[start, stop)`` therefore reads input rows
``[start - top, stop + bottom)``. Rows outside ``[0, height)`` do not exist:

* for ``wrap`` the band keeps the unclamped range and the reader takes rows modulo ``height``
  (the halo comes from the opposite edge);
* for every other border the range is clamped to the image, and the band kernel synthesizes the
  missing rows with the border rule (OpenCV does it at the edge of the view it is given, which
  is then exactly the image edge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Band", "halo", "plan_bands", "band_count", "default_processes", "cluster_band_count", "store_band_count",
           "local_band", "row_runs", "take_rows", "MIN_BAND_PIXELS"]

#: Below this many pixels a band is not worth a round trip to a worker.
MIN_BAND_PIXELS = 1 << 18
#: On a Dask cluster, bands copied into blocks: at least one per this many pixels (load balance
#: against per-task overhead).
TARGET_BAND_PIXELS = 1 << 22
#: On a Dask cluster, bands read and written in shared memory are never copied, but each is a
#: Dask task (a few ms of scheduler and worker overhead, where the pool spends a pipe message):
#: at most one per this many pixels (and still at least one per worker thread).
SHARED_BAND_PIXELS = 1 << 23
#: Bands per worker process when the image is large enough: an idle worker takes the next band,
#: so a worker that falls behind hands its second band to one that is free. A band edge costs
#: only its halo rows (the direct route redoes them, float32 chunks read them again); four a
#: worker measured no faster.
BANDS_PER_PROCESS = 2


@dataclass(frozen=True)
class Band:
    """Output rows ``[start, stop)`` of one band and the input rows ``[read_start, read_stop)``
    it reads (halo included). ``read_*`` may lie outside the image only for ``wrap``."""

    index: int
    start: int
    stop: int
    read_start: int
    read_stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def halo_top(self) -> int:
        """Rows read above ``start``."""
        return self.start - self.read_start

    @property
    def halo_bottom(self) -> int:
        """Rows read below ``stop``."""
        return self.read_stop - self.stop


def halo(kernel_size: int) -> tuple[int, int]:
    """Rows (or columns) a kernel of this size reads before and after the anchor."""
    return kernel_size // 2, kernel_size - 1 - kernel_size // 2


def plan_bands(height: int, kernel_height: int, n_bands: int, *, wrap: bool = False) -> tuple[Band, ...]:
    """Split ``height`` rows into at most ``n_bands`` contiguous bands with halo rows.

    Bands differ in height by at most one row and are longer than either halo (so fewer bands
    come back when the image is short for the kernel; one band may then be the whole image). Every output row belongs
    to exactly one band.

    Examples
    --------
    >>> [(b.start, b.stop, b.read_start, b.read_stop) for b in plan_bands(10, 3, 2)]
    [(0, 5, 0, 6), (5, 10, 4, 10)]
    >>> [(b.read_start, b.read_stop) for b in plan_bands(10, 3, 2, wrap=True)]
    [(-1, 6), (4, 11)]
    """
    if height < 1 or kernel_height < 1 or n_bands < 1:
        raise ValueError(
            f"height, kernel_height and n_bands must be >= 1, got {height}, {kernel_height}, {n_bands}"
        )
    top, bottom = halo(kernel_height)
    # Longer than either halo: then a band at the image edge holds every row that the border
    # rule reflects or replicates from, so the edge of its view is the image's edge.
    min_rows = max(top, bottom) + 1
    n = max(1, min(n_bands, height // min_rows))
    base, extra = divmod(height, n)
    bands = []
    start = 0
    for i in range(n):
        stop = start + base + (1 if i < extra else 0)
        lo, hi = start - top, stop + bottom
        if not wrap:
            lo, hi = max(lo, 0), min(hi, height)
        bands.append(Band(i, start, stop, lo, hi))
        start = stop
    return tuple(bands)


def band_count(height: int, width: int, processes: int) -> int:
    """How many bands the engine cuts for ``processes`` workers: ``BANDS_PER_PROCESS`` per
    worker on big images, fewer (but at least one per worker) when bands would get tiny."""
    by_size = max(1, (height * width) // MIN_BAND_PIXELS)
    n = min(processes * BANDS_PER_PROCESS, max(processes, by_size))
    return max(1, min(n, height))


def default_processes(height: int, width: int, cpus: int) -> int:
    """Workers for one filter when the caller names none: every CPU, but at most one per
    ``MIN_BAND_PIXELS``. Below that a second process costs more (waking it, a second band
    edge) than its half of the work saves for the usual kernels: a warm 512x512 RGB
    ``gaussian`` took 2.0 ms on one process and 2.4 ms on two (``benchmarks/bench_engine.py
    --sizes 512``); a 2-D 5x5, four times the work per pixel, still gained a little from the
    second (4.2 against 3.8 ms). By pixels alone, so that the same image always gets the same
    count. An explicit ``processes=`` is always honoured."""
    return max(1, min(cpus, (height * width) // MIN_BAND_PIXELS))


def cluster_band_count(height: int, width: int, threads: int, *, band_rows: int | None = None,
                       shared: bool = False) -> int:
    """Bands for a Dask cluster of ``threads`` worker threads: ``band_rows`` rows each when
    given; else the pool's rule (``band_count``) with at least one band per
    ``TARGET_BAND_PIXELS`` when bands are copied into blocks, or at most one per
    ``SHARED_BAND_PIXELS`` (and one per thread) when they are ``shared`` in place.

    >>> cluster_band_count(4096, 4096, 2), cluster_band_count(4096, 4096, 2, shared=True), cluster_band_count(100, 10, 2, band_rows=30)
    (4, 2, 4)
    """
    threads = max(1, threads)
    if band_rows is not None:
        n = math.ceil(height / band_rows)
    elif shared:
        n = min(band_count(height, width, threads), max(threads, height * width // SHARED_BAND_PIXELS))
    else:
        n = max(band_count(height, width, threads), math.ceil(height * width / TARGET_BAND_PIXELS))
    return max(1, min(n, height))


def _near_divisor(m: int, target: int) -> int | None:
    """The divisor of ``m`` closest to ``target``, if one lies within a factor 2 of it."""
    divs = {d for i in range(1, math.isqrt(m) + 1) if m % i == 0 for d in (i, m // i)}
    best = min(divs, key=lambda d: (abs(d - target), -d))
    return best if target / 2 <= best <= 2 * target else None


def store_band_count(height: int, width: int, threads: int, *, band_rows: int | None = None,
                     row_chunk: int | None = None, src_chunk: int | None = None) -> int:
    """Bands for a Zarr or TIFF store: made of whole row chunks of both stores whenever the
    height allows (every band then owns whole chunks of the output and writes them itself; no
    two tasks share a chunk), else ``cluster_band_count``. ``row_chunk`` None: the output is
    created afterwards, with the bands' height.

    >>> store_band_count(4096, 4096, 2, row_chunk=256), 4096 % store_band_count(4096, 4096, 2, row_chunk=256)
    (4, 0)
    """
    if band_rows is not None:
        return cluster_band_count(height, width, threads, band_rows=band_rows)
    target = max(band_count(height, width, threads), math.ceil(height * width / TARGET_BAND_PIXELS))
    for unit in (math.lcm(row_chunk or 1, src_chunk or 1), row_chunk or 1):
        if height % unit == 0 and height // unit >= min(target, threads):  # enough bands for the workers
            n = _near_divisor(height // unit, min(target, height // unit))
            if n is not None:
                return n
    return cluster_band_count(height, width, threads)


# -- a band as a small array of its own (the Dask backend's blocks) ------------------------------
def local_band(band: Band) -> Band:
    """The same band, indexing into its block (the rows ``[read_start, read_stop)`` alone).

    >>> local_band(Band(1, 5, 10, 4, 11))
    Band(index=1, start=1, stop=6, read_start=0, read_stop=7)
    """
    return Band(band.index, band.start - band.read_start, band.stop - band.read_start, 0,
                band.read_stop - band.read_start)


def row_runs(band: Band, height: int) -> list[tuple[int, int]]:
    """Contiguous in-image row ranges that, concatenated, are the band's read rows modulo H.

    One run for a clamped range; a halo from the opposite edge adds runs.

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
