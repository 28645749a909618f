"""What the benchmark scripts share: the images and kernels they time, the notebook's algorithm,
interleaved timing (rotated rounds, medians), OpenCV called directly, and markdown tables."""

from __future__ import annotations

import functools
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from anywhere: the checkout's engine, not an installed one
    sys.path.insert(0, str(ROOT))

from engine import Kernel, JobResult  # noqa: E402
from engine._kernels import SEPARABLE_RTOL  # noqa: E402

# -- images and kernels ------------------------------------------------------------------------

def bench_image(size: int, *, dtype=np.uint8, seed: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """``(size, size, 3)`` noise over ``dtype``'s whole range, filled in row chunks (no full-size
    temporary).

    >>> bench_image(4).shape, bench_image(4).dtype.name, bench_image(4, dtype=np.uint16).dtype.name
    ((4, 4, 3), 'uint8', 'uint16')
    """
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), dtype) if out is None else out
    top = int(np.iinfo(img.dtype).max)
    step = max(1, (1 << 20) // (size * 3))
    for y in range(0, size, step):
        img[y : y + step] = rng.integers(0, top, img[y : y + step].shape, dtype=img.dtype, endpoint=True)
    return img


def random_kernel(size: int = 5, seed: int = 7) -> Kernel:
    """A random positive ``size`` x ``size`` kernel summing to 1: a blur that is not separable."""
    w = np.random.default_rng(seed).uniform(0.0, 1.0, (size, size))
    k = Kernel(f"random_{size}x{size}", w / w.sum(), f"random positive {size}x{size} summing to 1 (not separable)",
               "benchmarks/_harness.py")
    if k.separable:  # pragma: no cover - a random kernel is rank 1 with probability 0
        raise RuntimeError(f"the random {size}x{size} kernel came out separable; change its seed")
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
    spans: list = field(default_factory=list)  # JobResult.filter_walls per call

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
            if isinstance(res, JobResult):
                out[n].phases.append(res.phases)
                out[n].spans.append(res.filter_walls)
            del res
    return out


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class OpenCV:
    """OpenCV called directly, ``BORDER_REPLICATE``, the thread count set outside the timed call.

    ``best`` is the reference the tables and targets divide by: the fastest direct call a
    knowledgeable user writes for the engine's result (the weights of ``Kernel.opencv_weights``:
    float32, exactly symmetric factors for separable kernels, float64 only where float32 sums
    would err). The other calls are labelled extra rows."""

    def __init__(self):
        import cv2

        self.cv2 = cv2
        self.border = cv2.BORDER_REPLICATE

    def _filter(self, image, weights, dst=None, ddepth=-1):
        """``sepFilter2D`` for ``weights = (column, row)``, ``filter2D`` for ``(weights,)``."""
        if len(weights) == 2:
            column, row = weights
            return self.cv2.sepFilter2D(image, ddepth, row, column, dst=dst, borderType=self.border)
        return self.cv2.filter2D(image, ddepth, weights[0], dst=dst, borderType=self.border)

    def best(self, image, kernel: Kernel, dst=None):
        return self._filter(image, kernel.opencv_weights(image.dtype), dst)

    def naive(self, image, kernel: Kernel, dst=None):
        """float64 weights as a user passes them without knowing OpenCV's fast paths: a separable
        kernel's factors straight from the SVD (not exactly symmetric), else the weights."""
        return self._filter(image, naive_factors(kernel.weights) if kernel.separable else (kernel.weights,), dst)

    def float_route(self, image, kernel: Kernel, dst, response, copy=None):
        """The engine's ``float32`` route (``engine.ROUTES``) on the whole image at once: the
        response into float32 (2-D kernels from a float32 copy of the input), then rounded and
        saturated into ``dst``. ``response``, ``copy``: preallocated float32."""
        weights = kernel.opencv_weights(image.dtype)
        if len(weights) == 1:
            np.copyto(copy, image)
            image = copy
        self._filter(image, weights, response, self.cv2.CV_32F)
        depth = self.cv2.CV_8U if dst.dtype == np.uint8 else self.cv2.CV_16U
        return self.cv2.addWeighted(response, 1.0, response, 0.0, 0.0, dst=dst, dtype=depth)

    def gaussian_blur(self, image, ksize: int, sigma: float, dst=None):
        return self.cv2.GaussianBlur(image, (ksize, ksize), sigma, dst=dst, borderType=self.border)

    def threads(self, n: int, image, kernel: Kernel):
        """A ``Candidate.setup``: ``n`` OpenCV threads, the pool (re)started by an untimed call."""
        def setup():
            if self.cv2.getNumThreads() != n:
                self.cv2.setNumThreads(n)
                self.best(image[: min(len(image), 1024)], kernel)
        return setup

    def name(self, kernel: Kernel) -> str:
        return "cv2.sepFilter2D" if kernel.separable else "cv2.filter2D"


def naive_factors(weights) -> tuple[np.ndarray, np.ndarray]:
    """``(column, row)`` of the SVD's first singular pair, float64, as a tutorial computes them."""
    u, s, vt = np.linalg.svd(np.asarray(weights, dtype=np.float64))
    return u[:, 0] * np.sqrt(s[0]), vt[0] * np.sqrt(s[0])


# -- checks ------------------------------------------------------------------------------------

def compare(a: np.ndarray, b: np.ndarray, step: int = 512) -> tuple[int, int]:
    """``(values that differ, largest difference)`` of two integer images, a strip at a time."""
    count = worst = 0
    for y in range(0, len(a), step):
        d = np.abs(a[y : y + step].astype(np.int32) - b[y : y + step])
        count += int(np.count_nonzero(d))
        worst = max(worst, int(d.max()))
    return count, worst


def differs(a, b) -> str:
    """``compare`` in words: "identical" or "N values differ (max d)"."""
    n, worst = compare(a, b)
    return "identical" if n == 0 else f"{n:,} values differ (max {worst})"


def exact_error(image: np.ndarray, out: np.ndarray, kernel: Kernel, step: int = 256) -> float | None:
    """Largest ``|out - exact|`` in gray levels, where ``exact`` is the float64 correlation by
    ``scipy.ndimage.correlate`` (replicate border), clipped to the dtype's range: 0.5 is a
    correct rounding. A strip at a time with its real halo rows. ``None`` without scipy."""
    try:
        from scipy import ndimage
    except ImportError:
        return None
    kh = kernel.shape[0]
    top, bottom = kh // 2, kh - 1 - kh // 2
    maxval = float(np.iinfo(out.dtype).max)
    worst = 0.0
    for y in range(0, len(image), step):
        lo, hi = max(y - top, 0), min(y + step + bottom, len(image))
        slab = image[lo:hi].astype(np.float64)
        for c in range(image.shape[2]):
            f = ndimage.correlate(slab[:, :, c], kernel.weights, mode="nearest")[y - lo : y - lo + step]
            np.clip(f, 0, maxval, out=f)
            worst = max(worst, float(np.abs(out[y : y + step, :, c] - f).max()))
    return worst


def exact_tolerance(kernel: Kernel, dtype) -> float:
    """The exactness rule's bound on ``exact_error``: a correct rounding (0.5) plus the worst
    float32 rounding error of the sums, ``maxval * sum |w| * taps * 2**-24`` (the engine uses
    float32 only where that is at most ``F32_MAX_ERROR``), plus the rank-1 factors' allowance."""
    w = kernel.weights
    return 0.5 + float(np.iinfo(dtype).max) * float(np.abs(w).sum()) * (w.size * 2.0**-24 + SEPARABLE_RTOL)


# -- the machine -------------------------------------------------------------------------------

#: The vector extensions named in every table (``/proc/cpuinfo`` flags): those OpenCV's filters
#: and numpy dispatch on, x86 and ARM.
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_fp16",
              "asimd", "sve", "sve2")


@functools.cache
def cpu_line() -> str:
    """The CPU model and its vector extensions, as every table names them, e.g.
    ``Intel(R) Xeon(R) Processor (family 6 model 143); SIMD: sse4_2 avx avx2 fma avx512f ...;
    OpenCV baseline SSE SSE2 SSE3, dispatched SSE4.1 ... AVX512-SKX``."""
    info: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if info:
                        break  # the first processor is enough
                    continue
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = info.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in info and "model" in info:
        model += f" (family {info['cpu family']} model {info['model']})"
    elif "CPU part" in info:
        model += f" (implementer {info.get('CPU implementer', '?')} part {info['CPU part']})"
    flags = set((info.get("flags") or info.get("Features") or "").split())
    text = f"{model}; SIMD: {' '.join(f for f in SIMD_FLAGS if f in flags) or 'none of ' + ' '.join(SIMD_FLAGS)}"
    try:
        import cv2

        features = cv2.getCPUFeaturesLine().split()
    except (ImportError, AttributeError):
        return text
    # OpenCV's markers: none = baseline, "*" = dispatched at run time, "?" = built but absent here
    baseline = [f for f in features if not f.startswith("*") and not f.endswith("?")]
    dispatched = [f[1:] for f in features if f.startswith("*") and not f.endswith("?")]
    absent = [f.strip("*?") for f in features if f.endswith("?")]
    text += f"; OpenCV baseline {' '.join(baseline) or '–'}, dispatched {' '.join(dispatched) or '–'}"
    return text + (f" (built, not on this CPU: {' '.join(absent)})" if absent else "")


def environment(load_start, extra=()) -> list:
    """Rows of the environment table: date, CPU, memory, load, software, commit, then ``extra``."""
    import cv2

    versions = [f"Python {platform.python_version()}", f"numpy {np.__version__}", f"OpenCV {cv2.__version__}"]
    for name, module in (("scipy", "scipy"), ("Pillow", "PIL")):
        try:
            versions.append(f"{name} {__import__(module).__version__}")
        except ImportError:
            versions.append(f"{name}: not installed")
    commit = "?"
    try:
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or "?"
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "engine", "benchmarks"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        if dirty:
            commit += " (engine/ or benchmarks/ has uncommitted changes)"
    except (OSError, subprocess.SubprocessError):
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return [
        ("date (UTC)", time.strftime("%Y-%m-%d %H:%M", time.gmtime())),
        ("CPU", cpu_line()),
        ("CPUs", f"{len(os.sched_getaffinity(0))} available to this process (`os.sched_getaffinity`), "
                 f"{os.cpu_count()} on the machine"),
        ("memory", f"{ram:.1f} GiB"),
        ("load average (1 min) at start / end",
         f"{load_start[0]:.2f} / {os.getloadavg()[0]:.2f} (when above the CPU count, other work competed for the cores)"),
        ("software", ", ".join(versions)),
        ("commit", commit),
        *extra,
    ]


# -- formatting --------------------------------------------------------------------------------

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
