"""How long a pair will take, before it runs: work units times a measured cost per unit.

A filter's work is ``pixels x colour channels x taps`` multiply-adds, where taps are what its
implementation actually runs: ``kh + kw`` for a separable kernel on OpenCV (a row and a column
pass), ``kh x kw`` for a 2-D one, the nonzero weights for ``numpy`` (one multiply-add per weight),
every weight for ``python``; ``normalize`` reads the image twice. The cost per unit is kept per
(implementation, 8 or 16 bits): it starts from the figures below and follows every finished run
(the sum of its bands' times, which is the serial work, divided by its units), so the estimate
learns this machine and its load. A pair's wall time is then the larger of each filter's work
over its processes (at most the CPUs, at most its bands) and both filters' work over the CPUs.

The starting figures were measured on this project's 2-CPU machine (2026-11-27, load average
about 2.5): ``Engine.submit`` with one process on RGB noise (2048² for OpenCV, 1024² for numpy,
96² for python), the bands' summed time over the units, in ns per unit: OpenCV 8-bit 0.12-0.2,
16-bit 0.6-1.9; numpy 9-19; the notebook's Python loops 300-460. The PRIOR values sit at the
slow end: a warning that comes early costs less than one that does not come.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

import engine

#: Starting cost per work unit, seconds, by (implementation, bits); updated by measurements.
PRIOR = {("opencv", 8): 0.2e-9, ("opencv", 16): 1.5e-9, ("numpy", 8): 18e-9, ("numpy", 16): 18e-9,
         ("python", 8): 450e-9, ("python", 16): 450e-9}
#: Handing a job to warm workers and getting the answer back (the engine's own overhead).
JOB_OVERHEAD = 0.005
#: Above this many seconds the page warns before a run.
WARN_SECONDS = 10.0
#: Weight of a new measurement in the running estimate (an exponential moving average).
LEARN = 0.5


def units(shape: tuple, kernel: engine.Kernel, implementation: str, output: str = "clip") -> float:
    """Multiply-adds of one filter on an image of ``shape`` (see the module's docstring)."""
    h, w = shape[:2]
    c = shape[2] if len(shape) > 2 else 1
    colour = c if c in (1, 3) else c - 1
    kh, kw = kernel.shape
    if implementation == "opencv":
        taps = kh + kw if kernel.separable else kh * kw
    elif implementation == "numpy":
        taps = max(1, int(np.count_nonzero(kernel.weights)))
    else:
        taps = kh * kw
    passes = 2 if output == "normalize" else 1
    return float(h) * w * colour * taps * passes


def bits(dtype) -> int:
    return 16 if np.dtype(dtype) == np.uint16 else 8


@dataclass(frozen=True)
class Estimate:
    filters: tuple[float, ...]  # seconds of each filter alone on its processes
    pair: float  # seconds of the whole job
    serial: tuple[float, ...]  # seconds of each filter on one process

    @property
    def long(self) -> bool:
        return self.pair > WARN_SECONDS


class Throughput:
    """Seconds per work unit by (implementation, bits), learned from finished runs. Shared by
    every session of the server (its ``st.cache_resource``); thread-safe."""

    def __init__(self, prior: dict | None = None):
        self._cost = dict(prior or PRIOR)
        self._lock = threading.Lock()
        self.measured: set = set()

    def cost(self, implementation: str, nbits: int) -> float:
        with self._lock:
            return self._cost.get((implementation, nbits), PRIOR[("numpy", 8)])

    def learn(self, implementation: str, nbits: int, seconds: float, work: float) -> None:
        """One filter's bands took ``seconds`` (summed) for ``work`` units."""
        if seconds <= 0 or work <= 0:
            return
        key = (implementation, nbits)
        with self._lock:
            new = seconds / work
            old = self._cost.get(key)
            self._cost[key] = new if old is None or key not in self.measured else (1 - LEARN) * old + LEARN * new
            self.measured.add(key)

    def learn_from(self, result: engine.JobResult, shape: tuple, dtype, output: str, implementation: str) -> None:
        """Every filter of a finished pair: its bands' time over its work."""
        for fi, k in enumerate(result.kernels):
            band_seconds = sum(r.end - r.start for r in result.timeline if r.filter == fi)
            # the timeline holds the filtering pass only (normalize's range pass is not in it);
            # tiny images are all overhead: they would teach a cost per unit far too high
            work = units(shape, k, implementation)
            if work >= 1e6:
                self.learn(implementation, bits(dtype), band_seconds, work)

    def estimate(self, shape: tuple, dtype, kernels, processes, bands, output: str, implementation: str,
                 cpus: int) -> Estimate:
        """The pair's time before it runs. ``bands``: how many bands each filter is cut into
        (``Engine.plan``), which caps the processes that can work on it."""
        cost = self.cost(implementation, bits(dtype))
        serial = tuple(units(shape, k, implementation, output) * cost for k in kernels)
        alone = tuple(s / max(1, min(p, b, cpus)) for s, p, b in zip(serial, processes, bands))
        pair = max(max(alone), sum(serial) / max(1, cpus)) + JOB_OVERHEAD
        return Estimate(tuple(a + JOB_OVERHEAD for a in alone), pair, serial)
