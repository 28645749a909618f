"""The route calibration report: is the route the engine takes the fastest on this CPU?

    .venv/bin/python benchmarks/routes.py                      # 2048x2048 RGB, every kernel class
    .venv/bin/python benchmarks/routes.py --quick              # a smoke run: 256², a few kernels
    .venv/bin/python benchmarks/routes.py --markdown /tmp/routes.md

The band kernel computes a request (kernel, dtype, border, output) by one of several routes
(``engine.ROUTES``); ``engine._compute.routes`` lists every route that computes it within the
exactness rule and ``route`` picks one from the request alone, by a table calibrated on one CPU
(e.g. ``DIRECT_2D_TAPS``). This script checks that table on another CPU: for each kernel class
(the registry, random 2-D 3x3/5x5/7x7, random asymmetric separable 3 and 5) x dtype (uint8,
uint16) x output (clip, abs, offset), on one RGB noise image as one band on one OpenCV thread,
it times every eligible route (``filter_band(..., how=r)``; interleaved rounds with the order
rotated, medians), says which one the engine takes, whether that is the fastest (and by how much
it is slower if not), and how many output values differ between the routes (routes may round a
value within float32's error of a .5 tie differently).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from _harness import (Candidate, bench_image, compare, cpu_line, environment, fmt_ms, fmt_x, interleave, md_table,
                      random_kernel)

from engine import KERNELS, Kernel, plan_bands
from engine._compute import filter_band, route, routes

DTYPES = (np.uint8, np.uint16)
OUTPUTS = ("clip", "abs", "offset")
BORDER = "replicate"


def random_separable(size: int, seed: int) -> Kernel:
    """``outer(column, row)`` of two random factors with mixed signs: neither symmetric nor
    antisymmetric (OpenCV's generic separable code), scaled so that ``sum |w| = 1``."""
    rng = np.random.default_rng(seed)
    w = np.outer(rng.uniform(-1, 1, size), rng.uniform(-1, 1, size))
    return Kernel(f"random_sep_{size}", w / np.abs(w).sum(), f"random asymmetric separable {size}x{size}",
                  "benchmarks/routes.py")


def kernel_classes(quick: bool) -> list[tuple[str, Kernel]]:
    """``(class, kernel)`` pairs: the registry, random 2-D kernels, random asymmetric separable ones."""
    if quick:
        return [("registry", KERNELS["gaussian"]), ("registry", KERNELS["laplacian"]),
                ("random 2-D", random_kernel(5)), ("random separable", random_separable(3, 1))]
    return ([("registry", k) for k in KERNELS.values()]
            + [("random 2-D", random_kernel(n, seed)) for n, seed in ((3, 3), (5, 7), (7, 11))]
            + [("random separable", random_separable(n, seed)) for n, seed in ((3, 1), (5, 2))])


def measure(images: dict, kernel: Kernel, dtype, output: str, rounds: int) -> dict:
    """Every eligible route of one request on one band, one thread: medians, the engine's route,
    and each other route's output against it."""
    img = images[np.dtype(dtype)]
    band = plan_bands(img.shape[0], kernel.shape[0], 1)[0]
    eligible = routes(kernel, img.dtype, BORDER, output)
    outs = {r: np.empty_like(img) for r in eligible}
    cands = {r: Candidate(lambda r=r: filter_band(img, outs[r], band, kernel, BORDER, output, "opencv", how=r))
             for r in eligible}
    samples = interleave(cands, rounds, f"{kernel.name} {img.dtype.name} {output}")
    chosen = route(kernel, img.dtype, BORDER, output)
    return {"median": {r: s.median() for r, s in samples.items()}, "chosen": chosen,
            "differ": {r: compare(outs[r], outs[chosen]) for r in eligible if r != chosen}}


def _row(cls: str, kernel: Kernel, dtype, output: str, m: dict) -> list:
    med, chosen = m["median"], m["chosen"]
    fastest = min(med, key=med.get)
    slower = med[chosen] / med[fastest]
    kind = "separable" if kernel.separable else "2-D"
    times = " · ".join(f"{r} {fmt_ms(t)}" for r, t in med.items())
    bits = "; ".join(f"{r}: {'identical' if n == 0 else f'{n:,} (max {d})'}" for r, (n, d) in m["differ"].items())
    return [f"`{kernel.name}`", cls, f"{kernel.shape[0]}x{kernel.shape[1]} {kind}", np.dtype(dtype).name, output,
            times, chosen, fastest, "fastest" if fastest == chosen else f"{fmt_x(slower)} the fastest's time",
            bits or "– (one route)"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=None, help="square RGB image (default 2048; --quick: 256)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per request (default 5; --quick: 2)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 256², four kernels, 2 rounds")
    p.add_argument("--markdown", default=None, help="also write the report to this file")
    a = p.parse_args(argv)
    size = a.size or (256 if a.quick else 2048)
    rounds = a.rounds or (2 if a.quick else 5)
    import cv2

    load_start = os.getloadavg()
    saved = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        images = {np.dtype(dt): bench_image(size, dtype=dt) for dt in DTYPES}
        rows, slow = [], []
        for cls, k in kernel_classes(a.quick):
            for dt in DTYPES:
                for output in OUTPUTS:
                    m = measure(images, k, dt, output, rounds)
                    rows.append(_row(cls, k, dt, output, m))
                    best = min(m["median"].values())
                    slow.append((m["median"][m["chosen"]] / best, f"`{k.name}` {np.dtype(dt).name} {output}"))
    finally:
        cv2.setNumThreads(saved)
    table = md_table(["kernel", "class", "shape", "dtype", "output", "ms per route (median)", "engine's route",
                      "fastest", "engine's route vs fastest", "values that differ from the engine's route's (max)"],
                     rows)
    fastest = sum(s <= 1.0 for s, _ in slow)
    worst, where = max(slow)
    options = (("--quick", a.quick), (f"--size {a.size}", a.size), (f"--rounds {a.rounds}", a.rounds))
    command = " ".join(["python benchmarks/routes.py"] + [flag for flag, given in options if given])
    text = (f"### Route calibration, {size}x{size} RGB noise, one band, one OpenCV thread\n\n{table}\n\n"
            f"The engine's route is the fastest in {fastest} of {len(slow)} requests; at worst it takes "
            f"{fmt_x(worst)} the fastest route's time ({where}). Medians of {rounds} interleaved rounds per request "
            f"(border {BORDER}); bits compare each route's output with the engine's route's. Made by `{command}`. "
            f"CPU: {cpu_line()}.")
    print(text)
    if a.markdown:
        env = md_table(["", ""], environment(load_start))
        with open(a.markdown, "w", encoding="utf-8") as f:
            f.write(f"{env}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
