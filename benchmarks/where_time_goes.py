"""Where a zero-copy job's time goes, beside OpenCV's own threads (the notes under the engine
tables of docs/benchmarks.md quote this script's output).

    .venv/bin/python benchmarks/where_time_goes.py            # 4096x4096 RGB, both kernels
    .venv/bin/python benchmarks/where_time_goes.py --size 2048

Two tables, each measured side by side in one run:

1. **The band kernel alone**, in this process, one OpenCV thread: ``filter_band`` over the plan of
   1, 2, 4, 8 and 16 bands against OpenCV best (one ``cv2.sepFilter2D`` / ``cv2.filter2D`` call on
   the whole image with ``Kernel.opencv_weights``, uint8 to uint8, as the targets call it), and
   against OpenCV on the float32 route over the whole image (``_harness.interleave``: rotated
   rounds, medians), and against OpenCV best reading and writing ``/dev/shm`` segments instead
   of numpy's heap arrays (what shared memory's pages cost). What each inner band edge costs
   (its halo rows).
2. **One 2-process zero-copy job** on a warm ``Engine(max_workers=2)`` against OpenCV with 2
   threads into a preallocated ``dst`` (OpenCV best) (interleaved the same way, medians): the job's wall
   time cut at its timeline (submit to the first band's start, the workers' busy time, the gaps
   between a worker's bands, the last band's end to the caller holding the result).
3. **The same job against the barest 2-process design**, in the same interleaved rounds: two
   warm spawned processes attached to one shared input and one shared output; a call sends each
   one message, each makes one OpenCV best call on its half of the rows straight into the output
   and answers. No halo rows, edge fix-ups, timeline, leasing or job thread: its rows at the
   inner edge are not even right, so it is a floor that no exact engine reaches, and its ratio
   to OpenCV best on 1 thread is what two processes can buy on this machine at all.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
from multiprocessing import shared_memory

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
    segs = [shared_memory.SharedMemory(create=True, size=img.nbytes) for _ in range(2)]
    try:
        shm_src, shm_dst = (np.ndarray(img.shape, img.dtype, s.buf) for s in segs)
        shm_src[...] = img
        shm_dst[...] = 0
        for k in kernels:
            rows += _band_kernel_rows(cv, img, dst, shm_src, shm_dst, k, rounds)
        del shm_src, shm_dst
    finally:
        for s in segs:
            s.close()
            s.unlink()
    return md_table(["kernel", "run", "ms", "x OpenCV best", "ms per inner band edge"], rows)


def _band_kernel_rows(cv, img, dst, shm_src, shm_dst, k, rounds) -> list:
    """The band kernel table's rows for kernel ``k``."""
    rows = []
    response = np.empty(img.shape, np.float32)
    copy = None if k.separable else np.empty(img.shape, np.float32)
    cands = {
        "OpenCV best": Candidate(lambda k=k: cv.best(img, k, dst), cv.threads(1, img, k)),
        "OpenCV, float32 route": Candidate(lambda k=k, r=response, c=copy: cv.float_route(img, k, dst, r, c),
                                           cv.threads(1, img, k)),
        "OpenCV best, /dev/shm in and out": Candidate(lambda k=k: cv.best(shm_src, k, shm_dst), cv.threads(1, img, k)),
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
    return rows


def _bare_worker(conn, names, shape, half, kernel) -> None:
    """One process of ``BareProcesses``: OpenCV best on rows ``half`` of the shared input, per message."""
    cv = OpenCV()
    cv.cv2.setNumThreads(1)
    segs = [shared_memory.SharedMemory(name=n) for n in names]
    src, dst = (np.ndarray(shape, np.uint8, s.buf) for s in segs)
    lo, hi = half
    try:
        while conn.recv():
            cv.best(src[lo:hi], kernel, dst[lo:hi])
            conn.send(True)
    finally:
        del src, dst
        for s in segs:
            s.close()


class BareProcesses:
    """Two warm processes, one OpenCV call each on half of a shared image (see the docstring,
    table 3). This process creates and unlinks both segments; the processes attach and close."""

    def __init__(self, img, kernel):
        self.segs = [shared_memory.SharedMemory(create=True, size=img.nbytes) for _ in range(2)]
        np.ndarray(img.shape, img.dtype, self.segs[0].buf)[...] = img
        ctx, h = mp.get_context("spawn"), img.shape[0]
        self.conns, self.procs = [], []
        for lo, hi in ((0, h // 2), (h // 2, h)):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_bare_worker, daemon=True, args=(
                theirs, [s.name for s in self.segs], img.shape, (lo, hi), kernel))
            p.start()
            self.conns.append(mine)
            self.procs.append(p)

    def run(self):
        for c in self.conns:
            c.send(True)
        for c in self.conns:
            c.recv()

    def same_as(self, out, kernel) -> bool:
        """Whether its output equals ``out`` but for the rows near its inner edge (the same
        filter, the same work)."""
        h, reach = out.shape[0], kernel.shape[0]
        mine = np.ndarray(out.shape, out.dtype, self.segs[1].buf)
        keep = np.r_[0 : h // 2 - reach, h // 2 + reach : h]
        same = np.array_equal(mine[keep], out[keep])
        del mine
        return same

    def close(self):
        for c, p in zip(self.conns, self.procs):
            c.send(False)
            p.join(10)
        for s in self.segs:
            s.close()
            s.unlink()


def job_table(img, kernels, rounds) -> tuple[str, str]:
    cv = OpenCV()
    rows, bare_rows = [], []
    with Engine(max_workers=2) as eng:
        src = eng.shared_array(img.shape, img.dtype)
        src[...] = img
        out = eng.shared_array(img.shape, img.dtype)
        dst = np.empty_like(img)
        for k in kernels:
            results = []
            bare = BareProcesses(img, k)
            try:
                cands = {
                    "job": Candidate(lambda k=k: results.append(eng.submit(src, FilterRequest([k]), processes=2, out=(out,)).result())),
                    "cv": Candidate(lambda k=k: cv.best(img, k, dst), cv.threads(2, img, k)),
                    "bare": Candidate(bare.run),
                    "cv1": Candidate(lambda k=k: cv.best(img, k, dst), cv.threads(1, img, k)),
                }
                walls = interleave(cands, rounds, f"2-process job {k.name}")  # its warm-up: workers attach
                if not bare.same_as(out, k):
                    raise SystemExit(f"the bare design's output differs from the engine's ({k.name})")
            finally:
                bare.close()
            job, bare_ms, one = (walls[n].median() * 1e3 for n in ("job", "bare", "cv1"))
            bare_rows.append([k.name, f"{job:.1f}", f"{bare_ms:.1f}", f"{job / bare_ms:.3f}x", f"{one:.1f}",
                              f"{job / one:.3f}x", f"{bare_ms / one:.3f}x"])
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
    return (md_table(["kernel", "job wall ms", "OpenCV best, 2 threads ms", "ratio", "job start to first band ms",
                      "busiest worker's bands ms", "its gaps ms", "last band to job end ms",
                      "the rest ms (submit, waking the caller, the other worker's lag)"], rows),
            md_table(["kernel", "job wall ms", "bare 2 processes ms", "job / bare", "OpenCV best, 1 thread ms",
                      "job / 1 thread", "bare / 1 thread"], bare_rows))


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
    job, bare = job_table(img, kernels, a.rounds)
    print(job + "\n")
    print(f"### The same job against the barest 2-process design, same rounds, medians\n")
    print(bare + "\n")
    print(f"CPU: {cpu_line()}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
