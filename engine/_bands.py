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

from dataclasses import dataclass

__all__ = ["Band", "halo", "plan_bands", "band_count"]

#: Below this many pixels a band is not worth a round trip to a worker.
MIN_BAND_PIXELS = 1 << 18
#: Bands per worker process when the image is large enough: an idle worker takes the next band,
#: so a worker that falls behind hands its second band to one that is free. A band edge costs
#: only its halo rows (``_compute._cv_float_rows``); four a worker measured no faster.
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
