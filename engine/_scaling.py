"""Scaling sweeps: one filter at several process counts, repeated; medians, speedup, efficiency, Amdahl.

``measure_scaling`` times the runs on an engine's process pool; ``Scaling`` holds them and derives
everything else, so the CLI (``python -m engine scaling``), the notebook, ``engine.plot.scaling``
and the dashboard's Scaling page (which times its own runs, one per rerun, and reads them back
through ``Scaling``) report the same numbers from the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._pool import Engine, JobResult, _wait, default_engine
from ._request import FilterRequest

__all__ = ["ScalingRun", "Scaling", "measure_scaling", "amdahl_fit", "amdahl_speedup"]


def amdahl_fit(processes, seconds, cpus: int) -> tuple[float, float] | None:
    """Fit ``T(p) = T1 * (s + (1 - s) / min(p, cpus))`` to measured times by least squares.

    Parameters
    ----------
    processes, seconds : array-like
        Process counts and the times measured with them (one pair per run or per median).
    cpus : int
        Cores that can work at once: beyond them extra processes share cores and add no
        parallelism, so ``p`` counts at most ``cpus``.

    Returns
    -------
    (T1, s) or None
        The fitted one-process time and serial fraction ``s`` in [0, 1]; None with fewer than
        two distinct effective process counts. At ``s`` = 0 or 1 (times falling faster than
        ``1 / p``, or rising), ``T1`` is the least-squares fit with ``s`` held there.

    Raises
    ------
    TypeError, ValueError
        ``cpus`` is not an integer >= 1, a process count is not one, ``seconds`` holds a
        negative or non-finite time, or the two differ in length.

    Examples
    --------
    >>> p = [1, 2, 4]
    >>> t = [10 * (0.2 + 0.8 / q) for q in p]
    >>> t1, s = amdahl_fit(p, t, cpus=4)
    >>> round(t1, 6), round(s, 6)
    (10.0, 0.2)
    """
    _check_count("cpus", cpus)
    p, t = np.asarray(processes, dtype=float), np.asarray(seconds, dtype=float)
    if p.ndim != 1 or t.ndim != 1 or len(p) != len(t):
        raise ValueError(f"processes and seconds must be 1-D and of one length, got {p.size} and {t.size}")
    if not np.all((p >= 1) & (p == np.round(p))):  # NaN fails both
        raise ValueError(f"processes must be integers >= 1, got {_listed(processes)}")
    if not np.all(np.isfinite(t) & (t >= 0)):
        raise ValueError(f"seconds must be finite and >= 0, got {_listed(seconds)}")
    p = np.minimum(p, cpus)
    if len(np.unique(p)) < 2:
        return None
    a_mat = np.column_stack([np.ones_like(p), 1.0 / p])
    (a, b), *_ = np.linalg.lstsq(a_mat, t, rcond=None)
    if a < 0 or b < 0:  # s outside [0, 1]: the best fit with a = 0 (s = 0) or b = 0 (s = 1), not a clipped one
        x = a_mat[:, 1]
        bounds = [(0.0, max(float(x @ t / (x @ x)), 0.0)), (max(float(t.mean()), 0.0), 0.0)]
        a, b = min(bounds, key=lambda ab: float(np.sum((ab[0] + ab[1] * x - t) ** 2)))
    a, b = float(a), float(b)
    t1 = a + b
    if t1 <= 0:
        return None
    return t1, min(max(a / t1, 0.0), 1.0)


def amdahl_speedup(p, s: float, cpus: int):
    """Amdahl's speedup ``1 / (s + (1 - s) / min(p, cpus))`` for serial fraction ``s``.

    >>> float(amdahl_speedup(4, 0.2, cpus=4))
    2.5
    """
    return 1.0 / (s + (1.0 - s) / np.minimum(np.asarray(p, dtype=float), cpus))


@dataclass(frozen=True)
class ScalingRun:
    """One timed run of a sweep.

    ``processes`` workers, repeat number ``repeat`` (from 1), ``seconds`` of wall time, and the
    engine's phases in seconds (NaN for a backend that has none) and band count (None then).
    A count below 1 or a time that is not finite and > 0 raises ``TypeError``/``ValueError``.
    """

    processes: int
    repeat: int
    seconds: float
    copy_in: float = math.nan
    compute: float = math.nan
    copy_out: float = math.nan
    bands: int | None = None

    def __post_init__(self):
        _check_count("processes", self.processes)
        _check_count("repeat", self.repeat)
        t = self.seconds
        rule = f"seconds must be a finite number > 0 (a run's wall time), got {t!r}"
        if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)):
            raise TypeError(rule)
        if not (math.isfinite(t) and t > 0):
            raise ValueError(rule)

    @classmethod
    def from_result(cls, result: JobResult, repeat: int) -> ScalingRun:
        """The run of a one-filter ``JobResult`` (``Engine.submit(image, FilterRequest([kernel]), ...)``)."""
        ph = result.phases
        return cls(int(result.processes[0]), repeat, ph.wall, ph.copy_in, ph.compute, ph.copy_out,
                   len(result.timeline))


@dataclass(frozen=True)
class Scaling:
    """The runs of one scaling sweep and what follows from them.

    Attributes
    ----------
    runs : tuple of ScalingRun
        Every recorded run (warm-ups are not recorded).
    cpus : int
        CPUs the runs could use; the Amdahl fit counts at most this many processes as parallel.
    kernel, implementation : str
        What ran, for labels.
    shape : tuple
        The image's shape.

    Notes
    -----
    Per process count ``p`` the time is the median over repeats, ``T(p)``. Speedup is
    ``T(1) / T(p)`` (when no run had 1 process, ``T(1)`` is taken as ``p0 * T(p0)`` for the fewest
    ``p0``: linear below it), efficiency is ``speedup / p``, and ``amdahl`` fits
    ``T(p) = T1 * (s + (1 - s) / min(p, cpus))`` to the medians (``amdahl_fit``).

    Examples
    --------
    >>> runs = [ScalingRun(p, 1, 0.2 + 0.8 / p) for p in (1, 2, 4)]
    >>> sc = Scaling(tuple(runs), cpus=4)
    >>> sc.processes.tolist(), sc.speedup.round(2).tolist()
    ([1, 2, 4], [1.0, 1.67, 2.5])
    >>> round(sc.serial_fraction, 3)
    0.2
    """

    runs: tuple
    cpus: int
    kernel: str = ""
    implementation: str = "opencv"
    shape: tuple = ()

    def __post_init__(self):
        runs = tuple(self.runs)
        if not runs or not all(isinstance(r, ScalingRun) for r in runs):
            raise ValueError(f"runs must be a non-empty sequence of ScalingRun, got {self.runs!r:.80}")
        _check_count("cpus", self.cpus)
        object.__setattr__(self, "runs", runs)

    @property
    def processes(self) -> np.ndarray:
        """The distinct process counts, ascending."""
        return np.unique([r.processes for r in self.runs])

    @property
    def medians(self) -> np.ndarray:
        """Median seconds per process count (aligned with ``processes``)."""
        by = {}
        for r in self.runs:
            by.setdefault(r.processes, []).append(r.seconds)
        return np.array([float(np.median(by[p])) for p in self.processes])

    @property
    def speedup(self) -> np.ndarray:
        p, t = self.processes, self.medians
        base = t[0] if p[0] == 1 else t[0] * p[0]
        return base / t

    @property
    def efficiency(self) -> np.ndarray:
        return self.speedup / self.processes

    @property
    def amdahl(self) -> tuple[float, float] | None:
        """``(T1, s)`` fitted to the medians, or None with fewer than two effective counts."""
        return amdahl_fit(self.processes, self.medians, self.cpus)

    @property
    def serial_fraction(self) -> float:
        """Amdahl's serial fraction ``s`` (NaN without a fit)."""
        fit = self.amdahl
        return fit[1] if fit else math.nan

    def table(self) -> list[dict]:
        """One row per process count: processes, median ms, speedup, efficiency, Amdahl's speedup."""
        s = self.serial_fraction
        return [
            {"processes": int(p), "ms": t * 1e3, "speedup": float(sp), "efficiency": float(e),
             "amdahl": float(amdahl_speedup(p, s, self.cpus)) if not math.isnan(s) else math.nan}
            for p, t, sp, e in zip(self.processes, self.medians, self.speedup, self.efficiency)
        ]

    def __str__(self) -> str:
        lines = [f"{'processes':>9}  {'median ms':>10}  {'speedup':>7}  {'efficiency':>10}"]
        for row in self.table():
            lines.append(f"{row['processes']:>9}  {row['ms']:>10.2f}  {row['speedup']:>6.2f}x  "
                         f"{row['efficiency']:>10.0%}")
        s = self.serial_fraction
        if math.isnan(s):
            lines.append("Amdahl fit: needs at least two process counts up to the CPUs")
        else:
            limit = f"at most {1 / s:.1f}x on any number of cores" if s > 0 else "no limit from serial work"
            lines.append(f"Amdahl serial fraction {s:.1%} on {self.cpus} CPUs: {limit}")
        return "\n".join(lines)


def measure_scaling(image: np.ndarray, kernel, *, processes=None, repeats: int = 3, border: str = "replicate",
                    output: str = "clip", implementation: str = "opencv", engine=None) -> Scaling:
    """Time one filter at each process count, ``repeats`` times, on an engine's process pool.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` uint8 or uint16, as for ``filter_image``. It is copied into
        the engine's shared memory once; every run reads it there (copy-in is about zero).
    kernel : str, Kernel or array-like
        As for ``filter_image``.
    processes : sequence of int, optional
        Distinct process counts to time. Default: 1 up to twice the CPUs (at most the engine's
        ``max_workers``), so that the sweep shows what oversubscription does.
    repeats : int
        Runs per process count (each point of the result is their median), after one unrecorded
        warm-up at the most processes. Repeats are the outer loop, so slow drift spreads evenly.
    border, output, implementation : str
        As for ``filter_image``.
    engine : Engine, optional
        Where to run; default the engine behind ``filter_image``.

    Returns
    -------
    Scaling

    Raises
    ------
    TypeError, ValueError
        Invalid arguments, before any run; the message names the parameter.

    Examples
    --------
    >>> img = np.zeros((16, 16), np.uint8)
    >>> sc = measure_scaling(img, "gaussian", processes=[1, 2], repeats=1)
    >>> [(r.processes, r.repeat) for r in sc.runs]
    [(1, 1), (2, 1)]
    """
    if engine is not None and not isinstance(engine, Engine):
        raise TypeError(f"engine must be an engine.Engine or None, got {type(engine).__name__}")
    eng = engine if engine is not None else default_engine()
    request = FilterRequest([kernel], border=border, output=output, implementation=implementation)
    img = request.check_image(image)
    (k,) = request.kernels
    counts = _check_counts(processes, eng.max_workers, range(1, min(2 * eng.cpus, eng.max_workers) + 1))
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    shared = eng.shared_array(img.shape, img.dtype)
    shared[...] = img
    runs = []
    for rep in range(int(repeats) + 1):
        for p in counts if rep else (max(counts),):  # repeat 0: a warm-up, not recorded
            res = _wait(eng.submit(shared, request, processes=p))
            if rep:
                runs.append(ScalingRun.from_result(res, rep))
    return Scaling(tuple(runs), eng.cpus, k.name, implementation, tuple(image.shape))


def _check_counts(processes, limit: int, default) -> tuple[int, ...]:
    if processes is None:
        return tuple(default)
    rule = f"processes must be distinct integers from 1 to {limit} (the engine's max_workers)"
    if isinstance(processes, (str, bytes)) or not hasattr(processes, "__iter__"):
        raise TypeError(f"{rule}, got {processes!r}")
    counts = tuple(processes)
    if (not counts or len(set(counts)) != len(counts)
            or not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) and 1 <= p <= limit
                       for p in counts)):
        raise ValueError(f"{rule}, got {list(counts)!r}")
    return tuple(int(p) for p in counts)


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _listed(values) -> str:
    return f"{np.asarray(values).tolist()!r:.200}"
