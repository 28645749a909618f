"""``FilterRequest``: what to compute, validated once, before any process starts or memory is
allocated. The process pool, the Dask backend, the batch command, the CLI and the dashboard all
build one and hand it on; where the bands run (processes, a cluster) is the backend's business."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._compute import route
from ._kernels import Kernel
from ._options import BORDERS, IMPLEMENTATIONS, OUTPUTS
from ._validate import check_choice, check_image, check_kernel, check_python_size

__all__ = ["FilterRequest"]


@dataclass(frozen=True)
class FilterRequest:
    """One or two filters to run on an image, with the options they share.

    Parameters
    ----------
    kernels : sequence of one or two kernels
        Each a name from ``KERNELS``, a ``Kernel`` or 2-D finite weights with sides 1..31;
        stored as ``Kernel`` objects.
    border : str
        A key of ``BORDERS``.
    output : str
        A key of ``OUTPUTS``.
    implementation : str
        A key of ``IMPLEMENTATIONS``.

    Raises
    ------
    TypeError, ValueError
        On construction; the message names the parameter, the rule and the bad value.

    Examples
    --------
    >>> req = FilterRequest(["sobel", [[1, 2, 1]]], output="abs")
    >>> [k.name for k in req.kernels], req.routes(np.uint8)
    (['sobel', 'custom'], ('direct', 'direct'))
    >>> FilterRequest("sobel")
    Traceback (most recent call last):
    ...
    ValueError: kernels must be a list of one or two kernels, got 'sobel'
    """

    kernels: tuple[Kernel, ...]
    border: str = "replicate"
    output: str = "clip"
    implementation: str = "opencv"

    def __post_init__(self):
        ks = self.kernels
        if isinstance(ks, (str, Kernel)) or not isinstance(ks, (list, tuple)) or not 1 <= len(ks) <= 2:
            raise ValueError(f"kernels must be a list of one or two kernels, got {ks!r:.80}")
        names = ["kernel"] if len(ks) == 1 else ["kernels[0]", "kernels[1]"]
        object.__setattr__(self, "kernels", tuple(check_kernel(k, n) for k, n in zip(ks, names)))
        check_choice(self.border, "border", BORDERS)
        check_choice(self.output, "output", OUTPUTS)
        check_choice(self.implementation, "implementation", IMPLEMENTATIONS)

    def check_image(self, image, name: str = "image") -> np.ndarray:
        """``image`` as a validated ``(H, W, C)`` view (no copy), within what the implementation accepts."""
        img3 = check_image(image, name)
        check_python_size(img3, self.implementation)
        return img3

    def routes(self, dtype) -> tuple[str, ...]:
        """How each kernel's bands are computed for images of ``dtype`` (keys of ``ROUTES``)."""
        return tuple(route(k, dtype, self.border, self.output, self.implementation) for k in self.kernels)
