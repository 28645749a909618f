"""Validation at the public entry: once, before any process starts or memory is allocated.

Every message names the parameter, the rule and the bad value.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from ._compute import PYTHON_MAX_PIXELS
from ._kernels import KERNELS, MAX_KERNEL_SIDE, Kernel, check_weight_sum

__all__ = ["check_image", "check_kernel", "check_choice", "check_processes", "check_out", "check_python_size"]

DTYPES = (np.uint8, np.uint16)


def check_image(image, name: str = "image") -> np.ndarray:
    """Return ``image`` as a 3-D ``(H, W, C)`` view (no copy)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of shape (H, W) or (H, W, C), got {type(image).__name__}")
    if image.dtype not in DTYPES:
        raise ValueError(f"{name} dtype must be uint8 or uint16, got {image.dtype}")
    if image.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2-D (H, W) or 3-D (H, W, C), got {image.ndim}-D shape {image.shape}")
    if image.ndim == 3 and image.shape[2] not in (1, 2, 3, 4):
        raise ValueError(
            f"{name} must have 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) channels, got shape {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {image.shape}")
    return image if image.ndim == 3 else image[:, :, None]


def check_kernel(kernel, name: str = "kernel") -> Kernel:
    """A registry name, a ``Kernel`` or a 2-D array-like of finite real numbers, sides 1..31,
    whose absolute sum is below ``MAX_WEIGHT_SUM`` (1e303: no response overflows float64)."""
    if isinstance(kernel, str):
        if kernel in KERNELS:
            return KERNELS[kernel]
        raise ValueError(
            f"{name} {kernel!r} is not a known kernel; known: {', '.join(KERNELS)} "
            "(for custom weights pass an array or engine.parse_kernel(text))"
        )
    if isinstance(kernel, Kernel):
        w, label = kernel.weights, kernel.name
    else:
        if isinstance(kernel, (Mapping, set, bytes)) or kernel is None:
            raise TypeError(f"{name} must be a kernel name, a Kernel or a 2-D array of numbers, got {type(kernel).__name__}")
        w, label = _weights(kernel, name), "custom"
    if w.ndim != 2 or not (1 <= w.shape[0] <= MAX_KERNEL_SIDE and 1 <= w.shape[1] <= MAX_KERNEL_SIDE):
        raise ValueError(
            f"{name} must be 2-D with odd or even sides of 1..{MAX_KERNEL_SIDE}, got shape {tuple(w.shape)}"
        )
    if not np.isfinite(w).all():
        bad = w[~np.isfinite(w)][0]
        raise ValueError(f"{name} weights must be finite numbers, got {bad}")
    check_weight_sum(w, name)
    return kernel if isinstance(kernel, Kernel) else Kernel(label, w, f"custom {w.shape[0]}x{w.shape[1]} kernel", "user")


def _weights(kernel, name: str) -> np.ndarray:
    """Array-like ``kernel`` as float64 weights. Complex numbers are refused rather than cut to
    their real part, integers beyond float64's range rather than left to raise OverflowError."""
    try:
        raw = np.asarray(kernel)
    except (TypeError, ValueError):
        raise _not_numbers(kernel, name) from None
    complex_ = _complex(raw)
    if complex_:
        raise TypeError(f"{name} weights must be real numbers, got {complex_}")
    try:
        return raw.astype(np.float64, copy=False)
    except OverflowError:
        raise ValueError(
            f"{name} weights must be finite numbers within float64's range (about 1.8e308), got {_too_big(raw)}"
        ) from None
    except (TypeError, ValueError):
        raise _not_numbers(kernel, name) from None


def _not_numbers(kernel, name: str) -> TypeError:
    return TypeError(
        f"{name} must be a 2-D array of numbers (1x1 to {MAX_KERNEL_SIDE}x{MAX_KERNEL_SIDE}), got {kernel!r:.80}"
    )


def _complex(raw: np.ndarray) -> str:
    """The complex dtype of ``raw`` ('complex128'), or the type of a complex number among its
    objects ('complex'), or ''."""
    if raw.dtype.kind == "c":
        return str(raw.dtype)
    if raw.dtype == object:
        return next((type(v).__name__ for v in raw.flat if isinstance(v, (complex, np.complexfloating))), "")
    return ""


def _too_big(raw: np.ndarray) -> str:
    """The first of an object array's numbers that float64 cannot hold, in words."""
    for v in raw.flat:
        try:
            float(v)
        except OverflowError:
            if isinstance(v, numbers.Integral):
                return f"an integer of {math.floor(math.log10(abs(int(v)))) + 1:,} digits"
            return f"a {type(v).__name__} beyond it"
        except (TypeError, ValueError):
            continue
    return "a number beyond it"


def check_choice(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def _check_count(value, name: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer from 1 to {limit}, got {value!r} ({type(value).__name__})")
    if not 1 <= int(value) <= limit:
        raise ValueError(f"{name} must be an integer from 1 to {limit} (this engine's max_workers), got {value}")
    return int(value)


def check_processes(processes, n_filters: int, limit: int, default: tuple[int, ...]) -> tuple[int, ...]:
    """Process counts, one per filter; their sum may not exceed ``limit``."""
    if processes is None:
        if sum(default) > limit:  # a pair on an engine of one worker: each filter needs its own
            raise ValueError(
                f"a pair runs each filter on processes of its own and needs max_workers >= {sum(default)}; "
                f"this engine has max_workers={limit}"
            )
        return default
    if n_filters == 1 and not isinstance(processes, (tuple, list)):
        processes = (processes,)
    if not isinstance(processes, (tuple, list)) or len(processes) != n_filters:
        raise ValueError(
            f"processes must be {'an integer' if n_filters == 1 else 'a pair of integers (a, b)'}, got {processes!r}"
        )
    counts = tuple(_check_count(p, "processes" if n_filters == 1 else f"processes[{i}]", limit) for i, p in enumerate(processes))
    if sum(counts) > limit:
        raise ValueError(
            f"processes {counts} add up to {sum(counts)}, more than this engine's max_workers={limit}"
        )
    return counts


def check_python_size(image: np.ndarray, implementation: str) -> None:
    if implementation == "python" and image.shape[0] * image.shape[1] > PYTHON_MAX_PIXELS:
        raise ValueError(
            f"implementation 'python' runs the notebook's per-pixel loops and accepts images of at most "
            f"{PYTHON_MAX_PIXELS:,} pixels (256x256), got {image.shape[1]}x{image.shape[0]} = "
            f"{image.shape[0] * image.shape[1]:,}; use 'numpy' or 'opencv'"
        )


def check_out(out, image: np.ndarray, name: str = "out", shown_shape=None) -> np.ndarray | None:
    """``out`` must match the image's shape and dtype, be writable and not overlap it.
    Returns it as ``(H, W, C)``; ``shown_shape`` is the image's shape as the caller gave it."""
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray or None, got {type(out).__name__}")
    o = out if out.ndim == 3 else out[:, :, None] if out.ndim == 2 else out
    if o.shape != image.shape or out.dtype != image.dtype:
        shape = image.shape if shown_shape is None else tuple(shown_shape)
        raise ValueError(f"{name} must have the image's shape {shape} and dtype {image.dtype}, got {out.shape} {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writable")
    if np.shares_memory(out, image):
        raise ValueError(f"{name} must not share memory with the image (filters read neighbours that it would overwrite)")
    return o

