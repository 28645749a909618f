"""How far apart a pair's first bands start, the engine alone (no browser, no Streamlit): the
figure that ``bench_dashboard.py --parts gaps`` reads in the page, without the page.

    .venv/bin/python benchmarks/start_gap.py                       # 4096² RGB, 1+1 and 2+2
    .venv/bin/python benchmarks/start_gap.py --size 2048 --jobs 50
    .venv/bin/python benchmarks/start_gap.py --busy 2             # with two busy processes

One warm ``Engine``; for each process pair, ``--jobs`` calls of ``filter_pair(gaussian_11x11,
sobel)`` (the dashboard benchmark's scenario) on the same numpy image, the first ``--warm`` of them
untimed; per job the gap is |A's first band start - B's first band start| from its timeline.
``--busy N`` runs N processes meanwhile that compute for 0.5-4 ms and sleep for 0.2-3 ms in turn,
as a browser and a server busy with the same click do: the case where a worker waiting at the
gate may find its CPU taken.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import statistics
import time

from _harness import bench_image, cpu_line, md_table

from engine import KERNELS, Engine, FilterRequest

KERNELS_AB = ("gaussian_11x11", "sobel")


def gaps(eng: Engine, img, processes: tuple[int, int], jobs: int, warm: int) -> tuple[list, list]:
    """Start gaps and pair walls (seconds) of ``jobs - warm`` jobs."""
    req = FilterRequest([KERNELS[k] for k in KERNELS_AB])
    out, walls = [], []
    for i in range(jobs):
        res = eng.submit(img, req, processes=processes).result()
        first = [min(r.start for r in res.timeline if r.filter == fi) for fi in (0, 1)]
        if i >= warm:
            out.append(abs(first[0] - first[1]))
            walls.append(res.phases.wall)
    return out, walls


def busy(seed: int, stop) -> None:
    """Compute for 0.5-4 ms, sleep for 0.2-3 ms, until ``stop`` is set."""
    r = random.Random(seed)
    while not stop.is_set():
        t, d = time.perf_counter(), r.uniform(0.5e-3, 4e-3)
        while time.perf_counter() - t < d:
            pass
        time.sleep(r.uniform(0.2e-3, 3e-3))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--jobs", type=int, default=30)
    p.add_argument("--warm", type=int, default=5)
    p.add_argument("--pairs", nargs="+", default=["1+1", "2+2"], help="process pairs, e.g. 1+1 2+2")
    p.add_argument("--busy", type=int, default=0, help="busy processes running meanwhile (default 0)")
    args = p.parse_args(argv)
    pairs = [tuple(int(n) for n in s.split("+")) for s in args.pairs]
    img = bench_image(args.size)
    rows = []
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    with Engine(max_workers=max(sum(pr) for pr in pairs)) as eng:
        for pr in pairs:
            gaps(eng, img, pr, 1, 1)  # start the workers before the busy processes
        others = [ctx.Process(target=busy, args=(i, stop), daemon=True) for i in range(args.busy)]
        for proc in others:
            proc.start()
        try:
            for pr in pairs:
                g, w = gaps(eng, img, pr, args.jobs, args.warm)
                rows.append([f"{args.size}² RGB", " + ".join(KERNELS_AB), f"{pr[0]} + {pr[1]}", args.busy, len(g),
                             f"**{statistics.median(g) * 1e3:.3f} ms**", sum(x > 1e-3 for x in g),
                             f"{max(g) * 1e3:.3f} ms", f"{statistics.median(w) * 1e3:.1f} ms"])
        finally:
            stop.set()
            for proc in others:
                proc.join()
    print(md_table(["image", "A + B", "processes A + B", "busy processes", "jobs", "start gap, median",
                    "jobs over 1 ms", "max", "pair wall, median"], rows))
    print(f"\nCPU: {cpu_line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
