"""What the benchmark scripts share: the images and kernels they time, the notebook's algorithm,
interleaved timing (rotated rounds, medians), OpenCV called directly, and markdown tables."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from anywhere: the checkout's engine, not an installed one
    sys.path.insert(0, str(ROOT))

from engine import Kernel, PairResult  # noqa: E402

# -- images and kernels ------------------------------------------------------------------------

def bench_image(size: int, *, seed: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """``(size, size, 3)`` uint8 noise, filled in row chunks (no full-size temporary).

    >>> bench_image(4).shape, bench_image(4).dtype.name
    ((4, 4, 3), 'uint8')
    """
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.uint8) if out is None else out
    step = max(1, (1 << 20) // (size * 3))
    for y in range(0, size, step):
        img[y : y + step] = rng.integers(0, 256, img[y : y + step].shape, dtype=np.uint8)
    return img


def random_kernel(seed: int = 7) -> Kernel:
    """A random positive 5x5 summing to 1: a blur that is not separable (rank 5)."""
    w = np.random.default_rng(seed).uniform(0.0, 1.0, (5, 5))
    k = Kernel("random_5x5", w / w.sum(), "random positive 5x5 summing to 1 (not separable)", "benchmarks/_harness.py")
    if k.separable:  # pragma: no cover - a random 5x5 is rank 1 with probability 0
        raise RuntimeError("the random 5x5 kernel came out separable; change its seed")
    return k


# -- the notebook's algorithm ---------------------------------------------------------------------
# The course notebook this project grew from filtered with ``Pool.map(filtering, rows)``: an
# initializer put the image, the filter and the shared output (an ``mp.Array`` of bytes, viewed
# through ``np.frombuffer``) in module globals, and ``filtering(r)`` visited every pixel, channel
# and weight of row ``r``, indexing numpy arrays element by element and clamping rows and columns
# at the edges (our ``replicate``). Public solutions of that course assignment share this template.
# We have no copy of the notebook itself: this is our rendition of its algorithm, timed as "the
# notebook's algorithm". ``implementation="python"`` runs the same four loops over Python lists,
# which is ~40x faster than indexing numpy scalars; the bench reports both.

_nb: dict = {}


def _notebook_init(shared, image: np.ndarray, weights: np.ndarray) -> None:
    """The notebook's pool initializer: image, filter and shared output into module globals."""
    _nb.update(image=image, weights=weights, out=np.frombuffer(shared, dtype=np.uint8).reshape(image.shape))


def _notebook_row(r: int) -> None:
    """The notebook's ``filtering(r)``: one output row, pixel by pixel, weight by weight."""
    image, my_filter, out = _nb["image"], _nb["weights"], _nb["out"]
    rows, cols, depth = image.shape
    filter_rows, filter_cols = my_filter.shape
    top, left = filter_rows // 2, filter_cols // 2
    frow = np.zeros((cols, depth))
    for i in range(cols):
        for j in range(depth):
            total = 0.0
            for a in range(filter_rows):
                rr = min(max(r + a - top, 0), rows - 1)
                for b in range(filter_cols):
                    cc = min(max(i + b - left, 0), cols - 1)
                    total += my_filter[a][b] * image[rr][cc][j]
            frow[i][j] = total
    out[r] = np.clip(np.rint(frow), 0, 255)


def notebook_filter(image: np.ndarray, weights) -> np.ndarray:
    """The notebook's algorithm on one process: uint8 ``(H, W, C)``, replicate border, clip.

    >>> img = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    >>> bool((notebook_filter(img, [[0, 0, 0], [0, 1, 0], [0, 0, 0]]) == img).all())
    True
    """
    import ctypes
    import multiprocessing

    shared = multiprocessing.RawArray(ctypes.c_ubyte, image.size)  # the notebook's mp.Array, lock-free
    _notebook_init(shared, image, np.asarray(weights, dtype=np.float64))
    try:
        for r in range(image.shape[0]):
            _notebook_row(r)
        return _nb["out"].copy()
    finally:
        _nb.clear()


# -- timing ------------------------------------------------------------------------------------

@dataclass
class Samples:
    """Wall times of one candidate (seconds) and, for engine candidates, each call's phases."""

    wall: list = field(default_factory=list)
    phases: list = field(default_factory=list)
    spans: list = field(default_factory=list)  # PairResult.filter_walls per call

    def median(self) -> float:
        return statistics.median(self.wall)

    def phase(self, name: str) -> float | None:
        return statistics.median(getattr(p, name) for p in self.phases) if self.phases else None

    def other(self) -> float | None:
        """Median of wall minus the three phases: validation, the job thread, leasing workers,
        waking the caller: the fixed cost of one call."""
        if not self.phases:
            return None
        return statistics.median(w - (p.copy_in + p.compute + p.copy_out) for w, p in zip(self.wall, self.phases))

    def span(self, i: int) -> float | None:
        return statistics.median(s[i] for s in self.spans) if self.spans else None


@dataclass
class Candidate:
    run: Callable[[], object]
    setup: Callable[[], None] | None = None  # untimed, before every timed call (e.g. cv2 threads)


def interleave(candidates: dict, repeats: int, label: str = "") -> dict:
    """Time every candidate ``repeats`` times, round-robin with the order rotated each round,
    after one untimed warm-up call each. Returns ``name -> Samples``."""
    names = list(candidates)
    out = {n: Samples() for n in names}
    for n in names:
        c = candidates[n]
        if c.setup:
            c.setup()
        c.run()
    for r in range(repeats):
        progress(f"{label} round {r + 1}/{repeats}")
        k = r % len(names)
        for n in names[k:] + names[:k]:
            c = candidates[n]
            if c.setup:
                c.setup()
            t0 = time.perf_counter()
            res = c.run()
            t1 = time.perf_counter()
            out[n].wall.append(t1 - t0)
            if isinstance(res, PairResult):
                out[n].phases.append(res.phases)
                out[n].spans.append(res.filter_walls)
            del res
    return out


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class OpenCV:
    """OpenCV called directly, with its thread count set outside the timed call."""

    def __init__(self, cv2):
        self.cv2 = cv2

    def call(self, image, kernel: Kernel, dst=None):
        cv2 = self.cv2
        if kernel.separable:
            column, row = kernel.factors
            return cv2.sepFilter2D(image, -1, row, column, dst=dst, borderType=cv2.BORDER_REPLICATE)
        return cv2.filter2D(image, -1, kernel.weights, dst=dst, borderType=cv2.BORDER_REPLICATE)

    def call_float(self, image, kernel: Kernel, dst, response, copy=None):
        """The engine's route through OpenCV (``_compute._cv_float_rows``) on the whole image at
        once: the response into float32 (2-D kernels from a float32 copy of the input), then
        rounded and saturated into ``dst``. ``response``, ``copy``: preallocated float32."""
        cv2 = self.cv2
        if kernel.separable:
            column, row = kernel.factors
            cv2.sepFilter2D(image, cv2.CV_32F, row, column, dst=response, borderType=cv2.BORDER_REPLICATE)
        else:
            np.copyto(copy, image)
            cv2.filter2D(copy, -1, kernel.weights, dst=response, borderType=cv2.BORDER_REPLICATE)
        depth = cv2.CV_8U if image.dtype == np.uint8 else cv2.CV_16U
        return cv2.addWeighted(response, 1.0, response, 0.0, 0.0, dst=dst, dtype=depth)

    def threads(self, n: int, image, kernel):
        def setup():
            if self.cv2.getNumThreads() != n:
                self.cv2.setNumThreads(n)
                self.call(image[: min(len(image), 1024)], kernel)  # (re)start its thread pool untimed
        return setup

    def name(self, kernel: Kernel) -> str:
        return "cv2.sepFilter2D" if kernel.separable else "cv2.filter2D"

    def float_name(self, kernel: Kernel) -> str:
        return "`sepFilter2D` into float32" if kernel.separable else "a float32 copy, `filter2D`"


def fmt_ms(seconds) -> str:
    """Milliseconds, three significant digits where it matters.

    >>> fmt_ms(0.00123), fmt_ms(0.0456), fmt_ms(1.5), fmt_ms(123.4), fmt_ms(None)
    ('1.23', '45.6', '1,500', '123,400', '–')
    """
    if seconds is None:
        return "–"
    v = seconds * 1e3
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_x(ratio) -> str:
    return "–" if ratio is None else f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.2f}x"


def md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
