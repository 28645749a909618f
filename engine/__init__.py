"""Parallel Filter Lab's engine: correlate images with small kernels over shared-memory row bands.

The public surface is what ``__all__`` lists, plus the submodule ``engine.plot`` (matplotlib
figures), imported on first use so that ``import engine`` never imports matplotlib; see
``engine/README.md`` for a tour.
"""

from __future__ import annotations

import numpy as np

from ._bands import Band, plan_bands
from ._dask import dask_available, filter_dask  # import Dask only when called
from ._errors import ImageError, JobCancelled, WorkerError
from ._image import MAX_PIXELS, load_image, save_image
from ._kernels import KERNELS, Kernel, parse_kernel
from ._options import BORDERS, IMPLEMENTATIONS, OUTPUTS, ROUTES
from ._pool import BandRecord, Engine, Job, JobResult, Phases, available_cpus, default_engine
from ._request import FilterRequest
from ._stores import filter_zarr
from ._scaling import Scaling, ScalingRun, amdahl_fit, amdahl_speedup, measure_scaling
from ._timeline import TIMELINE_STYLE

__all__ = [
    "load_image",
    "save_image",
    "ImageError",
    "MAX_PIXELS",
    "Kernel",
    "KERNELS",
    "parse_kernel",
    "BORDERS",
    "OUTPUTS",
    "IMPLEMENTATIONS",
    "ROUTES",
    "FilterRequest",
    "filter_image",
    "filter_pair",
    "Engine",
    "Job",
    "JobCancelled",
    "JobResult",
    "BandRecord",
    "Phases",
    "WorkerError",
    "Band",
    "plan_bands",
    "available_cpus",
    "filter_zarr",
    "filter_dask",
    "dask_available",
    "measure_scaling",
    "Scaling",
    "ScalingRun",
    "amdahl_fit",
    "amdahl_speedup",
    "TIMELINE_STYLE",
]


def __getattr__(name: str):
    # ``engine.plot`` imports matplotlib: only when someone asks for it.
    if name == "plot":
        import importlib

        return importlib.import_module(".plot", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def filter_image(image: np.ndarray, kernel, *, processes: int | None = None, border: str = "replicate",
                 output: str = "clip", implementation: str = "opencv", out: np.ndarray | None = None,
                 scheduler=None) -> np.ndarray:
    """Correlate an image with a kernel on worker processes, band by band.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)``, uint8 or uint16, C in 1..4 (an alpha channel, C = 2 or 4,
        is copied unchanged). An array from ``Engine.shared_array`` is not copied in.
    kernel : str, Kernel or array-like
        A name from ``KERNELS``, a ``Kernel``, or 2-D finite real weights with sides 1..31 and
        ``sum |w| < 1e303`` (no response overflows float64).
    processes : int, optional
        Worker processes, 1..``max_workers``. Default: every CPU this process may use, at most
        one per 262,144 pixels (512x512): a smaller image finishes sooner on fewer.
    border : {'replicate', 'reflect', 'mirror', 'wrap', 'constant'}
        What lies past the edge; see ``BORDERS`` (scipy names: nearest, reflect, mirror, wrap,
        constant with zeros).
    output : {'clip', 'abs', 'normalize', 'offset'}
        How float responses become the image's dtype; see ``OUTPUTS``.
    implementation : {'opencv', 'numpy', 'python'}
        What computes each band; see ``IMPLEMENTATIONS``.
    out : numpy.ndarray, optional
        Receives the result (same shape and dtype). A ``shared_array`` receives it straight
        from the workers.
    scheduler : dask.distributed.Client, cluster or str, optional
        Run the bands on Dask instead of the process pool (needs the Dask extras): a
        ``Client``, a cluster, a scheduler address ``'tcp://host:8786'``, or ``'local'`` (a
        ``LocalCluster`` of worker processes, created and closed by this call). Same result,
        bit for bit; ``processes`` must then be None. See ``docs/scale-out.md``.

    Returns
    -------
    numpy.ndarray
        Same shape and dtype as ``image``: ``out`` itself when given, else a new array whose
        memory is the engine's shared segment that the workers wrote (no copy-out; passed to
        another call it is read in place, like an ``Engine.shared_array``).

    Raises
    ------
    TypeError, ValueError
        Invalid arguments, before any work starts; the message names the parameter.
    WorkerError
        A worker process died during the job.
    ImportError
        ``scheduler`` was given but Dask is not installed (the message says how to install it).

    Notes
    -----
    Correlation, not convolution: ``out[y, x] = sum_ij w[i, j] * in[y + i - kh//2, x + j - kw//2]``,
    exactly ``scipy.ndimage.correlate(..., origin=0)``. Every output equals that response,
    computed in float64, rounded to nearest, except where the response lies within the
    arithmetic's error of a .5 tie (float32 sums are used only where that error is at most a
    quarter level: ``Kernel.precision``); there it may round either way. How a request is
    computed (``JobResult.routes``, see ``ROUTES``) depends on the request alone, so results are
    bit-identical for every process count and run.

    Examples
    --------
    >>> img = np.zeros((4, 5, 1), np.uint8); img[1, 2] = 100
    >>> filter_image(img, [[0, 0, 1]], processes=1)[1, :, 0].tolist()
    [0, 100, 0, 0, 0]
    """
    if scheduler is not None:
        if processes is not None:
            raise ValueError(f"processes applies to the process-pool engine; with scheduler=... the cluster's "
                             f"workers run the bands, so pass processes=None (got {processes!r})")
        from ._dask import filter_on_dask

        request = FilterRequest([kernel], border=border, output=output, implementation=implementation)
        return filter_on_dask(image, request, scheduler=scheduler, out=out)
    return default_engine().filter_image(image, kernel, processes=processes, border=border, output=output,
                                         implementation=implementation, out=out)


def filter_pair(image: np.ndarray, kernel_a, kernel_b, *, processes: tuple[int, int] | None = None,
                border: str = "replicate", output: str = "clip", implementation: str = "opencv",
                out: tuple | None = None) -> JobResult:
    """Run two filters on the same image at the same time, each on its own worker processes.

    ``processes=(a, b)`` (default: the CPUs split between them, at least one each, and at
    most one per 262,144 pixels each). The input is copied into shared memory once and read
    by both groups. Returns a ``JobResult`` with
    ``outputs`` (two arrays), ``timeline`` (one ``BandRecord`` per band) and ``phases``.
    Other parameters as in ``filter_image``; ``out=(a, b)``.
    """
    return default_engine().filter_pair(image, kernel_a, kernel_b, processes=processes, border=border,
                                        output=output, implementation=implementation, out=out)
