"""Where a zero-copy job's time goes, beside OpenCV's own threads (the notes under the engine
tables of docs/benchmarks.md quote this script's output).

    .venv/bin/python benchmarks/where_time_goes.py            # 4096x4096 RGB, both kernels
    .venv/bin/python benchmarks/where_time_goes.py --size 2048

Two tables, each measured side by side in one run:

1. **The band kernel alone**, in this process, one OpenCV thread: ``filter_band`` over the plan of
   1, 2, 4, 8 and 16 bands against OpenCV best (one ``cv2.sepFilter2D`` / ``cv2.filter2D`` call on
   the whole image with ``Kernel.opencv_weights``, uint8 to uint8, as the targets call it), and
   against OpenCV on the float32 route over the whole image (``_harness.interleave``: rotated
   rounds, medians). What each inner band edge costs (its halo rows).
2. **One 2-process zero-copy job** on a warm ``Engine(max_workers=2)`` against OpenCV with 2
   threads into a preallocated ``dst`` (OpenCV best) (interleaved the same way, medians): the job's wall
   time cut at its timeline (submit to the first band's start, the workers' busy time, the gaps
   between a worker's bands, the last band's end to the caller holding the result).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
from _harness import Candidate, OpenCV, bench_image, cpu_line, interleave, md_table, random_kernel

from engine import FilterRequest  # noqa: E402
from engine import KERNELS, Engine
from engine._bands import plan_bands
from engine._compute import filter_band


def band_kernel_table(img, kernels, rounds) -> str:
    cv = OpenCV()
    dst = np.empty_like(img)
    rows = []
    for k in kernels:
        response = np.empty(img.shape, np.float32)
        copy = None if k.separable else np.empty(img.shape, np.float32)
        cands = {
            "OpenCV best": Candidate(lambda k=k: cv.best(img, k, dst), cv.threads(1, img, k)),
            "OpenCV, float32 route": Candidate(lambda k=k, r=response, c=copy: cv.float_route(img, k, dst, r, c),
                                               cv.threads(1, img, k)),
        }
        for n in (1, 2, 4, 8, 16):
            plan = plan_bands(img.shape[0], k.shape[0], n)
            cands[f"{len(plan)} bands"] = Candidate(
                lambda plan=plan, k=k: [filter_band(img, dst, b, k, "replicate", "clip", "opencv") for b in plan],
                cv.threads(1, img, k))
        med = {name: v.median() for name, v in interleave(cands, rounds, f"band kernel {k.name}").items()}
        base, one = med["OpenCV best"], med["1 bands"]
        for name, m in med.items():
            n = int(name.split()[0]) if name.endswith("bands") else None
            edge = f"{(m - one) / (n - 1) * 1e3:.2f}" if n and n > 1 else "–"
            rows.append([k.name, name, f"{m * 1e3:.1f}", f"{m / base:.3f}x", edge])
    return md_table(["kernel", "run", "ms", "x OpenCV best", "ms per inner band edge"], rows)


def job_table(img, kernels, rounds) -> str:
    cv = OpenCV()
    rows = []
    with Engine(max_workers=2) as eng:
        src = eng.shared_array(img.shape, img.dtype)
        src[...] = img
        out = eng.shared_array(img.shape, img.dtype)
        dst = np.empty_like(img)
        for k in kernels:
            results = []
            cands = {
                "job": Candidate(lambda k=k: results.append(eng.submit(src, FilterRequest([k]), processes=2, out=(out,)).result())),
                "cv": Candidate(lambda k=k: cv.best(img, k, dst), cv.threads(2, img, k)),
            }
            walls = interleave(cands, rounds, f"2-process job {k.name}")  # its warm-up: workers attach
            cut = {key: [] for key in ("first", "busy", "gaps", "tail")}
            for res in results[1:]:
                by_pid = {}
                for b in sorted(res.timeline, key=lambda b: b.start):
                    by_pid.setdefault(b.pid, []).append(b)
                cut["first"].append(min(b.start for b in res.timeline))
                cut["busy"].append(max(sum(b.end - b.start for b in bs) for bs in by_pid.values()))
                cut["gaps"].append(max(sum(y.start - x.end for x, y in zip(bs, bs[1:])) for bs in by_pid.values()))
                cut["tail"].append(res.phases.wall - max(b.end for b in res.timeline))
            med = {key: statistics.median(v) * 1e3 for key, v in cut.items()}
            med["wall"], med["cv"] = walls["job"].median() * 1e3, walls["cv"].median() * 1e3
            rows.append([k.name, f"{med['wall']:.1f}", f"{med['cv']:.1f}", f"{med['wall'] / med['cv']:.3f}x",
                         f"{med['first']:.2f}", f"{med['busy']:.1f}", f"{med['gaps']:.2f}", f"{med['tail']:.2f}",
                         f"{med['wall'] - med['first'] - med['busy'] - med['gaps'] - med['tail']:.2f}"])
    return md_table(["kernel", "job wall ms", "OpenCV best, 2 threads ms", "ratio", "job start to first band ms",
                     "busiest worker's bands ms", "its gaps ms", "last band to job end ms",
                     "the rest ms (submit, waking the caller, the other worker's lag)"], rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args(argv)
    img = bench_image(a.size)
    kernels = [KERNELS["gaussian"], random_kernel()]
    print(f"### The band kernel alone, {a.size}x{a.size} RGB, one process, one OpenCV thread\n")
    print(band_kernel_table(img, kernels, max(3, a.rounds // 3)) + "\n")
    print(f"### One 2-process zero-copy job, {a.size}x{a.size} RGB, medians of {a.rounds} rounds\n")
    print(job_table(img, kernels, a.rounds) + "\n")
    print(f"CPU: {cpu_line()}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
