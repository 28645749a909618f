"""Kernels as named data: the registry, the text parser and the separability test."""

from __future__ import annotations

import math
import re
import types
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

__all__ = ["Kernel", "KERNELS", "parse_kernel", "MAX_KERNEL_SIDE", "SEPARABLE_RTOL", "F32_MAX_ERROR"]

MAX_KERNEL_SIDE = 31
#: A kernel is run as two 1-D passes (rank 1) when its best rank-1 approximation
#: ``outer(column, row)`` differs from it by at most this fraction of ``sum |w|`` (sum of absolute
#: differences of the weights): any output moves by at most 1e-7 of the largest possible response,
#: 0.013 of a level at 16 bits with ``sum |w| = 2``. The notebook's Gaussian, printed to 8
#: decimals, is rank 1 to 5e-8.
SEPARABLE_RTOL = 1e-7
#: The sums run in float32 only where their worst-case rounding error,
#: ``maxval * sum |w| * taps * 2**-24`` gray levels, is at most this; in float64 elsewhere.
F32_MAX_ERROR = 0.25


def _readonly(a: np.ndarray, dtype=np.float64) -> np.ndarray:
    a = np.array(a, dtype=dtype, copy=True)
    a.setflags(write=False)
    return a


def _mirror_exact(v: np.ndarray, even: bool) -> np.ndarray:
    """``v`` made exactly symmetric (``even``) or antisymmetric, averaging mirrored pairs."""
    return (v + v[::-1]) / 2 if even else (v - v[::-1]) / 2


def _mirror_kind(a: np.ndarray, axis: int) -> bool | None:
    """True if ``a`` is symmetric along ``axis`` within ``SEPARABLE_RTOL``, False if antisymmetric,
    None if neither."""
    scale = SEPARABLE_RTOL * float(np.abs(a).sum())
    flipped = np.flip(a, axis)
    if np.abs(a - flipped).sum() <= scale:
        return True
    if np.abs(a + flipped).sum() <= scale:
        return False
    return None


def separable_factors(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(column, row)`` with ``outer(column, row) ~= weights`` within ``SEPARABLE_RTOL``, or
    ``None`` when the kernel is not rank 1 (or is all zeros).

    The factors are what OpenCV runs fast: each exactly symmetric or antisymmetric when the
    kernel is so along that axis (OpenCV's 8-bit ``sepFilter2D`` takes its vectorized code only
    then, or for float32 factors), oriented so that each sums to >= 0 (for a zero sum: its first
    nonzero weight is positive), with equal lengths (each is a singular vector times the
    square root of the singular value).

    >>> column, row = separable_factors(np.outer([1, 2, 1], [1, 0, -1]))
    >>> bool((column == column[::-1]).all()), bool((row == -row[::-1]).all()), row[0] > 0
    (True, True, np.True_)
    """
    w = np.asarray(weights, dtype=np.float64)
    total = float(np.abs(w).sum())
    if not total or not math.isfinite(total):
        return None
    u, s, vt = np.linalg.svd(w)
    column, row = u[:, 0] * math.sqrt(s[0]), vt[0] * math.sqrt(s[0])
    if np.abs(np.outer(column, row) - w).sum() > SEPARABLE_RTOL * total:
        return None
    for kind, axis in ((_mirror_kind(w, 0), "column"), (_mirror_kind(w, 1), "row")):
        if kind is not None:
            if axis == "column":
                column = _mirror_exact(column, kind)
            else:
                row = _mirror_exact(row, kind)

    def sign(v):
        total = v.sum()
        if abs(total) > 1e-12 * np.abs(v).sum():
            return 1.0 if total > 0 else -1.0
        return 1.0 if v[np.flatnonzero(v)[0]] > 0 else -1.0

    if sign(column) < 0:  # flip both: the product stays; then the row sums to >= 0 too if it can
        column, row = -column, -row
    return _readonly(column + 0.0), _readonly(row + 0.0)  # + 0.0: no -0.0 at an antisymmetric centre


@dataclass(frozen=True, eq=False)
class Kernel:
    """A named correlation kernel.

    ``weights`` is a read-only float64 2-D array. It is correlated with the image (not flipped),
    anchored at ``(kh // 2, kw // 2)`` like ``scipy.ndimage.correlate`` with ``origin=0``.
    ``separable`` says whether the ``opencv`` implementation runs it as a row and a column pass
    (``cv2.sepFilter2D``) instead of a 2-D pass (``cv2.filter2D``); ``factors`` are then the
    ``(column, row)`` passes (see ``separable_factors``).
    """

    name: str
    weights: np.ndarray
    description: str = ""
    source: str = ""
    separable: bool = field(init=False)
    factors: tuple[np.ndarray, np.ndarray] | None = field(init=False, repr=False)

    def __post_init__(self):
        w = _readonly(self.weights)
        object.__setattr__(self, "weights", w)
        f = separable_factors(w) if w.ndim == 2 and w.size and np.isfinite(w).all() else None
        object.__setattr__(self, "factors", f)
        object.__setattr__(self, "separable", f is not None)
        object.__setattr__(self, "_cv", {})

    @property
    def shape(self) -> tuple[int, int]:
        return self.weights.shape

    def precision(self, dtype) -> type:
        """``np.float32`` when float32 sums stay within ``F32_MAX_ERROR`` gray levels of the
        exact response for images of ``dtype`` (worst case ``maxval * sum |w| * taps * 2**-24``),
        else ``np.float64``.

        >>> KERNELS["gaussian"].precision(np.uint16).__name__, Kernel("big", np.ones((9, 9))).precision(np.uint16).__name__
        ('float32', 'float64')
        """
        key = ("precision", np.dtype(dtype))
        got = self._cv.get(key)  # asked for every band: computed once per dtype
        if got is None:
            maxval = float(np.iinfo(dtype).max)
            bound = maxval * float(np.abs(self.weights).sum()) * self.weights.size * 2.0**-24
            got = self._cv[key] = np.float32 if bound <= F32_MAX_ERROR else np.float64
        return got

    def rescaled(self) -> "Kernel":
        """This kernel times the power of two that brings its largest ``|weight|`` into [1, 2)
        (itself if it is there already, or all zeros). ``normalize`` computes with it: stretching
        to full scale cancels any positive factor, and a power of two scales every product and
        sum exactly; so tiny (even subnormal) weights keep all of float64's bits, and
        ``maxval / (max - min)`` cannot overflow. Bits are the same as from the kernel itself
        wherever its own sums neither underflow nor overflow.

        >>> Kernel("tiny", [[2.0**-1070, -2.0**-1072]]).rescaled().weights.tolist()
        [[1.0, -0.25]]
        """
        got = self._cv.get("rescaled")
        if got is None:
            top = float(np.abs(self.weights).max(initial=0.0))
            power = 1 - math.frexp(top)[1] if top and math.isfinite(top) else 0
            if power == 0:
                return self  # not cached: the cache would hold the kernel itself
            got = self._cv["rescaled"] = Kernel(self.name, np.ldexp(self.weights, power), self.description, self.source)
        return got

    def opencv_weights(self, dtype) -> tuple[np.ndarray, ...]:
        """What OpenCV is called with for images of ``dtype``, in ``precision(dtype)``: the
        ``(column, row)`` factors when separable, else ``(weights,)``. float32 factors of a
        symmetric kernel stay exactly symmetric (rounding is the same for mirrored values). A
        one-row kernel is passed as its weights: OpenCV's ``sepFilter2D`` with a one-tap column
        runs unvectorized code, 15x slower than ``filter2D`` with the row (1024x1024 RGB)."""
        dt = np.dtype(dtype)
        got = self._cv.get(dt)
        if got is None:
            p = self.precision(dt)
            parts = self.factors if self.separable and self.shape[0] > 1 else (self.weights,)
            got = self._cv[dt] = tuple(_readonly(a, p) for a in parts)
        return got

    @property
    def mirrored_factors(self) -> bool:
        """Separable, with each factor exactly symmetric, antisymmetric or a single tap: what
        OpenCV's 8-bit ``sepFilter2D`` runs vectorized (``benchmarks/routes.py``)."""
        got = self._cv.get("mirrored")
        if got is None:
            got = self._cv["mirrored"] = self.separable and all(
                len(f) == 1 or np.array_equal(f, f[::-1]) or np.array_equal(f, -f[::-1]) for f in self.factors)
        return got

    def __eq__(self, other):
        return isinstance(other, Kernel) and self.name == other.name and np.array_equal(self.weights, other.weights)

    def __hash__(self):
        return hash((self.name, self.weights.shape, self.weights.tobytes()))


def _gaussian(size: int) -> np.ndarray:
    # OpenCV's getGaussianKernel rule for sigma when none is given, sampled and normalized.
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


_NOTEBOOK = "the original course notebook"
_SOBEL = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=float)
_PREWITT = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], dtype=float)
_SCHARR = np.array([[3, 0, -3], [10, 0, -10], [3, 0, -3]], dtype=float)
_identity5 = np.zeros((5, 5))
_identity5[2, 2] = 1.0
# The notebook's 5x5 Gaussian: the central 5x5 of the sampled sigma = 0.84089642 Gaussian
# (Wikipedia's "Gaussian blur" example matrix). It sums to 0.99673, as in the notebook.
_NOTEBOOK_GAUSSIAN = np.array(
    [
        [0.00078633, 0.00655965, 0.01330373, 0.00655965, 0.00078633],
        [0.00655965, 0.05472157, 0.11098164, 0.05472157, 0.00655965],
        [0.01330373, 0.11098164, 0.22508352, 0.11098164, 0.01330373],
        [0.00655965, 0.05472157, 0.11098164, 0.05472157, 0.00655965],
        [0.00078633, 0.00655965, 0.01330373, 0.00655965, 0.00078633],
    ]
)

_REGISTRY = [
    Kernel("identity", _identity5, "5x5 with a 1 in the centre: returns the image unchanged", _NOTEBOOK),
    Kernel("edge_x", [[0.5, 0, -0.5]], "horizontal central difference: vertical edges", _NOTEBOOK),
    Kernel("edge_y", [[0.5], [0], [-0.5]], "vertical central difference: horizontal edges", _NOTEBOOK),
    Kernel("sobel", _SOBEL, "Sobel in x: vertical edges, smoothed along them", _NOTEBOOK),
    Kernel("gaussian", _NOTEBOOK_GAUSSIAN, "5x5 Gaussian blur, sigma 0.84 (sums to 0.9967)", _NOTEBOOK),
    Kernel("box_3x3", np.full((3, 3), 1 / 9), "3x3 mean: every neighbour counts the same", "classic"),
    Kernel("box_5x5", np.full((5, 5), 1 / 25), "5x5 mean: a stronger, blockier blur", "classic"),
    Kernel("gaussian_3x3", np.outer([1, 2, 1], [1, 2, 1]) / 16, "3x3 binomial Gaussian blur", "classic"),
    Kernel("gaussian_7x7", _gaussian(7), "7x7 Gaussian blur, sigma 1.4 (OpenCV's rule)", "cv2.getGaussianKernel"),
    Kernel("gaussian_11x11", _gaussian(11), "11x11 Gaussian blur, sigma 2.0 (OpenCV's rule)", "cv2.getGaussianKernel"),
    Kernel("sharpen", [[0, -1, 0], [-1, 5, -1], [0, -1, 0]], "adds the Laplacian back: crisper edges", "classic"),
    Kernel("laplacian", [[0, 1, 0], [1, -4, 1], [0, 1, 0]], "second derivative: edges in every direction", "classic"),
    Kernel("sobel_y", _SOBEL.T, "Sobel in y: horizontal edges", "Sobel-Feldman"),
    Kernel("prewitt_x", _PREWITT, "Prewitt in x: vertical edges, box-smoothed", "Prewitt"),
    Kernel("prewitt_y", _PREWITT.T, "Prewitt in y: horizontal edges, box-smoothed", "Prewitt"),
    Kernel("scharr_x", _SCHARR, "Scharr in x: vertical edges, better rotation symmetry", "Scharr"),
    Kernel("scharr_y", _SCHARR.T, "Scharr in y: horizontal edges", "Scharr"),
    Kernel("emboss", [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], "relief lit from the bottom right", "classic"),
    Kernel("motion_blur", np.eye(9) / 9, "9-pixel diagonal streak, like a moving camera", "classic"),
    Kernel("outline", [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], "keeps only outlines (8-neighbour Laplacian)", "classic"),
]

#: Read-only mapping ``name -> Kernel``: the notebook's five filters, then the library.
KERNELS = types.MappingProxyType({k.name: k for k in _REGISTRY})

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?(/[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?)?$")
#: Longest kernel text parse_kernel reads: 31x31 weights of up to 64 characters each, and then some.
MAX_KERNEL_TEXT = 100_000
_MAX_TOKEN = 64
_ZERO = re.compile(r"^[+-]?[0.]*([eE][+-]?\d+)?$")


def _number(token: str, row: int) -> float:
    """One weight of kernel text: a decimal or a fraction of two, as float64. Each side is read
    as float64 first (a fast parse), so that an exponent like 1e9999999 is refused at once
    rather than expanded into a ten-million-digit integer by ``Fraction``; a fraction of two
    float64 numbers is then divided exactly and rounded once."""
    if len(token) > _MAX_TOKEN:
        raise ValueError(f"kernel text: {token[:20] + '...'!r} in row {row} has {len(token):,} characters; a weight "
                         f"has at most {_MAX_TOKEN}")
    if not _NUMBER.match(token):
        raise ValueError(f"kernel text: {token!r} in row {row} is not a number (use decimals or fractions like 1/16)")
    num, _, den = token.partition("/")
    sides = [float(num)] + ([float(den)] if den else [])
    if not all(math.isfinite(x) for x in sides):
        raise ValueError(f"kernel text: {token!r} in row {row} is not finite (float64 numbers reach about 1.8e308)")
    if not den:
        return sides[0]
    if sides[1] == 0:
        if _ZERO.match(den):
            raise ValueError(f"kernel text: {token!r} in row {row} divides by zero")
        raise ValueError(f"kernel text: {token!r} in row {row} divides by {den}, below the smallest float64 number "
                         "(about 4.9e-324)")
    try:
        value = float(Fraction(num) / Fraction(den))
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise ValueError(f"kernel text: {token!r} in row {row} is not finite (float64 numbers reach about 1.8e308)")
    return value


#: Kernels must have ``sum |w|`` below this. Responses to 16-bit pixels reach ``sum |w| * 65535``
#: (6.6e307 here), ``normalize`` stretches by their range ``max - min`` (up to twice that, 1.3e308)
#: and ``offset`` adds 32768: every one stays below float64's largest number, about 1.8e308.
MAX_WEIGHT_SUM = 1e303


def check_weight_sum(weights: np.ndarray, name: str) -> None:
    """Refuse weights with ``sum |w| >= MAX_WEIGHT_SUM``: a response, or the range ``normalize``
    divides by, would overflow float64 to inf or nan (and differ with the band split)."""
    with np.errstate(over="ignore"):
        total = float(np.abs(weights).sum())
    if not total < MAX_WEIGHT_SUM:
        amount = f"{total:.3g}" if math.isfinite(total) else "over 1.8e+308"
        raise ValueError(
            f"{name} weights are too large: their absolute sum is {amount} (largest |weight| "
            f"{float(np.abs(weights).max()):.3g}), at or above {MAX_WEIGHT_SUM:.0e}, where a response to 16-bit "
            f"pixels (up to sum |w| x 65535) or their range overflows float64; scale them down so that sum |w| "
            f"stays below {MAX_WEIGHT_SUM:.0e}"
        )

def parse_kernel(text: str, *, name: str = "custom") -> Kernel:
    """Parse a kernel typed as text.

    Rows are separated by line breaks (``\\n``, ``\\r\\n`` or ``\\r``) or ``;``, numbers by
    spaces or commas; fractions such as ``1/16`` and brackets (``[[1, 2], [3, 4]]``) are accepted.

    Raises
    ------
    ValueError
        On empty or overlong text, a token that is not a finite float64 number (or is over 64
        characters), ragged rows, or a side over 31.

    Examples
    --------
    >>> parse_kernel("1 2 1; 2 4 2; 1 2 1").weights.sum()
    np.float64(16.0)
    >>> parse_kernel("1/4, 1/2, 1/4").weights.tolist()
    [[0.25, 0.5, 0.25]]
    """
    if not isinstance(text, str):
        raise TypeError(f"kernel text must be a str, got {type(text).__name__}")
    if len(text) > MAX_KERNEL_TEXT:
        raise ValueError(f"kernel text is too long: at most {MAX_KERNEL_TEXT:,} characters (sides up to "
                         f"{MAX_KERNEL_SIDE}), got {len(text):,}")
    # "] [" and "]," end a row (as numpy prints "[[1 2] [3 4]]" on one line), other brackets go
    cleaned = re.sub(r"\]\s*,?\s*\[", ";", text).replace("],", ";").replace("[", " ").replace("]", " ")
    # any line break ends a row: "\r" alone (pasted from old Mac files), "\r\n", "\u2028"...
    rows = [r for line in cleaned.splitlines() for r in line.split(";") if r.strip(" \t,")]
    if not rows:
        raise ValueError("kernel text is empty: type rows of numbers, e.g. '1 2 1; 2 4 2; 1 2 1'")
    for token in ("nan", "inf"):
        if token in cleaned.lower():
            raise ValueError(f"kernel text: weights must be finite numbers, got {token!r}")
    parsed = []
    for i, r in enumerate(rows, start=1):
        tokens = [t for t in re.split(r"[\s,]+", r.strip()) if t]
        parsed.append([_number(t, i) for t in tokens])
    widths = {len(r) for r in parsed}
    if len(widths) != 1:
        counts = ", ".join(f"row {i}: {len(r)}" for i, r in enumerate(parsed, start=1))
        raise ValueError(f"kernel text: every row needs the same number of weights, got {counts}")
    weights = np.array(parsed, dtype=np.float64)
    check_weight_sum(weights, "kernel text:")
    if max(weights.shape) > MAX_KERNEL_SIDE:
        raise ValueError(
            f"kernel text: sides must be 1..{MAX_KERNEL_SIDE}, got shape {weights.shape}"
        )
    return Kernel(name, weights, f"custom {weights.shape[0]}x{weights.shape[1]} kernel", "user")
