"""The Dask backend against dask-image and the process-pool engine, side by side in one run.

    .venv/bin/python benchmarks/bench_dask.py                       # 4096 and 16384 RGB, the tables
    .venv/bin/python benchmarks/bench_dask.py --markdown docs/benchmarks.md
    .venv/bin/python benchmarks/bench_dask.py --zarr 32768          # the big Zarr case, peak memory
    .venv/bin/python benchmarks/bench_dask.py --quick               # a smoke run (1024 only)

Everything runs on one LocalCluster (2 worker processes x 1 thread, as the tests use) and one
process-pool ``Engine(max_workers=2)``, on the same images: random RGB uint8, ``gaussian``
(separable 5x5) and a seeded random non-separable 5x5. Times are the best of ``--repeats``.

Two ways to hold the data, each with its own table:

* numpy in, numpy out: what ``engine.filter_image`` does. The engine copies through shared
  memory; this backend's ``scheduler=client`` does the same on a one-machine cluster
  (``transport="shm"``) and, as on a remote cluster, scatters band blocks and gathers rows
  (``transport="tcp"``); dask-image gets the same row chunks scattered, runs
  ``dask_image.ndfilters.correlate`` (a 3-D kernel of depth 1, mode ``nearest``) and is gathered
  chunk by chunk.
* data already on the cluster: the input is a persisted Dask array (row chunks = the bands);
  ``engine.filter_dask(x)`` and dask-image's ``correlate(x)`` are persisted and waited for; the
  engine gets ``shared_array`` input and ``out=`` (its zero-copy path).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine  # noqa: E402
from engine import _dask  # noqa: E402

START, END = "<!-- dask-bench:start -->", "<!-- dask-bench:end -->"


def best(fn, repeats):
    times = []
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def kernels():
    rng = np.random.default_rng(5)
    return {"gaussian": engine.KERNELS["gaussian"].weights, "random 5x5": rng.normal(size=(5, 5))}


def scattered(client, img, plan):
    """``img`` as a Dask array whose row chunks are the bands, its chunks on the workers."""
    import dask.array as da

    futs = client.scatter([img[b.start : b.stop] for b in plan], hash=False)
    x = da.concatenate([da.from_delayed(f, (b.rows,) + img.shape[1:], img.dtype) for f, b in zip(futs, plan)])
    return x, futs


def gather_into(client, lazy, out):
    """Compute ``lazy`` chunk by chunk into ``out`` (no whole-image concatenation on a worker)."""
    offs = np.cumsum((0,) + lazy.chunks[0])
    futs = client.compute(lazy.to_delayed().ravel().tolist())
    for i, f in enumerate(futs):
        out[offs[i] : offs[i + 1]] = f.result()
    del futs


def persist_wait(client, lazy):
    y = client.persist(lazy)
    from distributed import futures_of

    for f in futures_of(y):
        f.result()
    del y


def run_tables(sizes, repeats, client, eng):
    import dask_image.ndfilters as dif

    rows_e2e, rows_res = [], []
    for n in sizes:
        img = np.random.default_rng(n).integers(0, 256, (n, n, 3), dtype=np.uint8)
        reps = repeats if n <= 8192 else max(1, repeats - 1)
        for kname, w in kernels().items():
            k = engine.Kernel(kname, w)
            plan = _dask._plan(n, n, k, "replicate", threads=2)
            out = np.empty_like(img)
            # warm every path once (workers import, OpenCV, pages)
            engine.filter_image(img[:512], k, scheduler=client)
            eng.filter_image(img[:512], k, processes=2)
            t_eng = best(lambda: eng.filter_image(img, k, processes=2, out=out), reps)
            ref = out.copy()
            t_shm = best(lambda: _dask.filter_image(img, k, scheduler=client, out=out, transport="shm"), reps)
            assert np.array_equal(out, ref), "shm transport differs from the engine"
            t_tcp = best(lambda: _dask.filter_image(img, k, scheduler=client, out=out, transport="tcp"), reps)
            assert np.array_equal(out, ref), "tcp transport differs from the engine"

            def dask_image_e2e():
                x, futs = scattered(client, img, plan)
                gather_into(client, dif.correlate(x, w[:, :, None], mode="nearest"), out)
                del x, futs

            t_di = best(dask_image_e2e, reps)
            rows_e2e.append((n, kname, len(plan), t_eng, t_shm, t_tcp, t_di))
            print(f"{n} {kname}: engine {t_eng:.3f}  shm {t_shm:.3f}  tcp {t_tcp:.3f}  dask-image {t_di:.3f}", flush=True)

            # data resident on the cluster / in shared memory
            src, dst = eng.shared_array(img.shape, img.dtype), eng.shared_array(img.shape, img.dtype)
            src[...] = img
            t_eng0 = best(lambda: eng.filter_image(src, k, processes=2, out=dst), reps)
            del src, dst
            x, futs = scattered(client, img, plan)
            t_ours = best(lambda: persist_wait(client, engine.filter_dask(x, k, band_rows=plan[0].rows)), reps)
            t_di0 = best(lambda: persist_wait(client, dif.correlate(x, w[:, :, None], mode="nearest")), reps)
            del x, futs
            rows_res.append((n, kname, len(plan), t_eng0, t_ours, t_di0))
            print(f"{n} {kname} resident: engine zero-copy {t_eng0:.3f}  filter_dask {t_ours:.3f}  dask-image {t_di0:.3f}", flush=True)
        del img, out, ref
        gc.collect()
    return rows_e2e, rows_res


def markdown(rows_e2e, rows_res, repeats, command, load):
    lines = [
        f"Measured with `{command}` on this 2-core machine (shared with other work: 1-minute load "
        f"average {load[0]:.1f} at the start, {load[1]:.1f} at the end; above 2, other processes competed for the cores), "
        f"one LocalCluster of 2 worker processes x 1 thread and one `Engine(max_workers=2)`; "
        f"best of {repeats} (of {max(1, repeats - 1)} at 16384); RGB uint8, seconds.",
        "",
        "**numpy in, numpy out** (`engine.filter_image(img, k, scheduler=client)` is the `shm` column on a "
        "one-machine cluster; `tcp` is what it does on a remote cluster; dask-image gets the same row chunks "
        "scattered and is gathered the same way):",
        "",
        "| image | kernel | bands | process-pool engine | Dask backend, shm | Dask backend, tcp | dask-image | "
        "dask-image / backend (tcp) | dask-image / backend (shm) | backend (shm) / engine |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, kname, nb, te, ts, tt, td in rows_e2e:
        lines.append(f"| {n}x{n} | {kname} | {nb} | {te:.3f} | {ts:.3f} | {tt:.3f} | {td:.3f} | "
                     f"**{td / tt:.1f}x** | **{td / ts:.1f}x** | **{ts / te:.2f}x** |")
    lines += [
        "",
        "**data already on the cluster** (input persisted as row chunks = bands; outputs persisted, not "
        "gathered; the engine with `shared_array` input and `out=`):",
        "",
        "| image | kernel | bands | engine, zero-copy | `filter_dask(x).persist()` | dask-image `correlate(x).persist()` | "
        "dask-image / backend | backend / engine |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n, kname, nb, te, to, td in rows_res:
        lines.append(f"| {n}x{n} | {kname} | {nb} | {te:.3f} | {to:.3f} | {td:.3f} | **{td / to:.1f}x** | **{to / te:.2f}x** |")
    return "\n".join(lines)


def write_section(path, body):
    """Replace only the text between the dask-bench markers (create the file if missing)."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    block = f"{START}\n{body}\n{END}"
    if START in text and END in text:
        a, b = text.index(START), text.index(END) + len(END)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n## Dask backend (scale-out)\n\n" + block + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class PeakRSS:
    """Samples this process's and every descendant's RSS every 0.2 s."""

    def __init__(self):
        import psutil

        self.me = psutil.Process()
        self.parent = self.worker = self.total = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                p = self.me.memory_info().rss
                kids = []
                for c in self.me.children(recursive=True):
                    try:
                        kids.append(c.memory_info().rss)
                    except psutil.NoSuchProcess:
                        pass
                self.parent = max(self.parent, p)
                self.worker = max(self.worker, max(kids, default=0))
                self.total = max(self.total, p + sum(kids))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.2)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def run_zarr(n, client, eng, folder):
    """Filter an n x n RGB Zarr store into another; report time and peak memory; check strips."""
    import zarr

    src_path, dst_path = os.path.join(folder, "in.zarr"), os.path.join(folder, "out.zarr")
    shutil.rmtree(src_path, ignore_errors=True)
    shutil.rmtree(dst_path, ignore_errors=True)
    rows = 512
    src = zarr.create_array(src_path, shape=(n, n, 3), dtype=np.uint8, chunks=(rows, 4096, 3))
    t = time.perf_counter()
    for y in range(0, n, rows):  # written strip by strip: never the whole image in memory
        src[y : y + rows] = np.random.default_rng(y).integers(0, 256, (rows, n, 3), dtype=np.uint8)
    t_make = time.perf_counter() - t
    done = []
    with PeakRSS() as mem:
        t = time.perf_counter()
        engine.filter_zarr(src_path, dst_path, "gaussian", scheduler=client, progress=lambda d, tot: done.append(d))
        t_filter = time.perf_counter() - t
    dst = zarr.open_array(dst_path, mode="r")
    for y in (0, n // 2 - 3, n - 64):  # interior rows of a strip: identical to the engine's
        lo, hi = max(0, y - 8), min(n, y + 72)
        strip = np.asarray(src[lo:hi])
        ref = eng.filter_image(strip, "gaussian", processes=2)
        a, b = max(y, 2) if y else 0, min(y + 64, n - 2) if y + 64 < n else n
        assert np.array_equal(np.asarray(dst[a:b]), ref[a - lo : b - lo]), f"rows {a}..{b} differ"
    gib = 2.0**30
    return dict(n=n, make=t_make, filter=t_filter, bands=len(done), chunks=dst.chunks, parent=mem.parent / gib,
                worker=mem.worker / gib, total=mem.total / gib, image=n * n * 3 / gib)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[4096, 16384])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1024x1024 once: a smoke run")
    p.add_argument("--markdown", default=None, help="write the tables into this file between the dask-bench markers")
    p.add_argument("--zarr", type=int, default=None, metavar="N", help="instead: filter an N x N RGB Zarr store")
    p.add_argument("--folder", default=None, help="where --zarr puts its stores (default: a temp folder)")
    args = p.parse_args(argv)
    from distributed import Client

    with _dask.local_cluster(2) as cluster, Client(cluster, set_as_default=False) as client, \
            engine.Engine(max_workers=2) as eng:
        if args.zarr:
            folder = args.folder or tempfile.mkdtemp(prefix="pfl-zarr-")
            try:
                r = run_zarr(args.zarr, client, eng, folder)
            finally:
                if args.folder is None:
                    shutil.rmtree(folder, ignore_errors=True)
            print(f"| {r['n']}x{r['n']} RGB uint8 ({r['image']:.1f} GiB) | gaussian | {r['bands']} bands, Zarr chunks "
                  f"{r['chunks']} | {r['filter']:.1f} s | caller peak RSS {r['parent']:.2f} GiB | largest worker "
                  f"{r['worker']:.2f} GiB | all processes {r['total']:.2f} GiB | (writing the input took {r['make']:.1f} s) |")
            return 0
        sizes, repeats = ([1024], 1) if args.quick else (args.sizes, args.repeats)
        load0 = os.getloadavg()[0]
        e2e, res = run_tables(sizes, repeats, client, eng)
        load = (load0, os.getloadavg()[0])
    command = "python benchmarks/bench_dask.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    body = markdown(e2e, res, repeats, command.replace(" --markdown docs/benchmarks.md", ""), load)
    print(body)
    if args.markdown:
        write_section(args.markdown, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
