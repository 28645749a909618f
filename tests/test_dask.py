"""The Dask backend (engine/_dask.py, engine/_batch.py): bit-identical to the process-pool engine.

Most tests share one LocalCluster of 2 single-threaded worker processes (module fixture, set
up before the per-test leak check and closed after the module). The worker-kill test and
``scheduler="local"`` start clusters of their own and must leave no process behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("dask.array")
pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")

import engine  # noqa: E402
from engine import _batch, _cli, _dask, _dask_shm, _dask_worker  # noqa: E402
from engine._bands import cluster_band_count, local_band, plan_bands, row_runs, take_rows  # noqa: E402

from _oracle import assert_close  # noqa: E402

pytestmark = pytest.mark.dask

BORDERS = list(engine.BORDERS)
OUTPUTS = list(engine.OUTPUTS)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    cluster = _dask.local_cluster(2)
    c = Client(cluster, set_as_default=False)
    c.run(os.getpid)  # every worker is up before the first test's leak snapshot
    yield c
    c.close()
    cluster.close()


def rand(shape, dtype, seed):
    r = np.random.default_rng(seed)
    return r.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def kernels(seed):
    """Separable, small 2-D, a 2-D kernel over OpenCV's DFT threshold, and tall/even ones."""
    r = np.random.default_rng(seed)
    return {"gaussian": "gaussian", "sobel": "sobel", "rand7x9": r.normal(size=(7, 9)),
            "tall12x3": r.normal(size=(12, 3)), "even4x2": r.normal(size=(4, 2))}


# -- the pure helpers ----------------------------------------------------------------------------
def test_row_runs_and_local_band_exhaustive():
    """Blocks hold exactly the band's read rows (modulo H for wrap), and the shifted band
    indexes into them, for every small height, kernel height and band count."""
    for h in range(1, 13):
        for kh in range(1, 10):
            for n in range(1, 6):
                for wrap in (False, True):
                    for b in plan_bands(h, kh, n, wrap=wrap):
                        runs = row_runs(b, h)
                        rows = np.concatenate([np.arange(lo, hi) for lo, hi in runs])
                        assert rows.tolist() == (np.arange(b.read_start, b.read_stop) % h).tolist()
                        assert all(0 <= lo < hi <= h for lo, hi in runs)
                        lb = local_band(b)
                        assert (lb.read_start, lb.read_stop) == (0, b.read_stop - b.read_start)
                        assert (lb.start, lb.stop) == (b.halo_top, b.halo_top + b.rows)
                        block = take_rows(np.arange(h)[:, None, None], b, h)
                        assert block[lb.start : lb.stop, 0, 0].tolist() == list(range(b.start, b.stop))


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("output", OUTPUTS)
def test_blocks_bit_identical_to_engine(eng, border, output):
    """Many small bands (halos cross band edges, kernels taller than a band) computed from
    their blocks alone, in-process: identical to the process-pool engine."""
    i = BORDERS.index(border) * 4 + OUTPUTS.index(output)
    dtype, c = [(np.uint8, 3), (np.uint16, 1), (np.uint8, 4), (np.uint16, 2)][i % 4]
    img = rand((41, 27, c), dtype, i)
    for name, k in kernels(i).items():
        want = eng.filter_image(img, k, processes=2, border=border, output=output)
        got = engine.filter_dask(img, k, border=border, output=output, band_rows=5).compute(scheduler="synchronous")
        assert np.array_equal(got, want), (name, border, output, dtype, c)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("c", [0, 1, 2, 3, 4])
def test_dtypes_and_channels(eng, dtype, c):
    shape = (33, 20) if c == 0 else (33, 20, c)
    img = rand(shape, dtype, c)
    for impl in ("opencv", "numpy"):
        want = eng.filter_image(img, "sobel", processes=2, border="wrap", output="offset", implementation=impl)
        got = engine.filter_image(img, "sobel", scheduler="synchronous", border="wrap", output="offset",
                                  implementation=impl)
        assert got.shape == img.shape and got.dtype == img.dtype
        assert np.array_equal(got, want), impl


# -- on the cluster ------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["shm", "tcp"])
@pytest.mark.parametrize("border", BORDERS)
def test_cluster_bit_identical_to_engine(eng, client, transport, border):
    """Both transports, every border and output mapping (normalize reduced in the graph)."""
    for j, output in enumerate(OUTPUTS):
        dtype, c = [(np.uint8, 3), (np.uint16, 4), (np.uint8, 1), (np.uint16, 2)][j]
        img = rand((70, 45, c), dtype, j)
        for name, k in list(kernels(j).items())[1:4]:
            want = eng.filter_image(img, k, processes=2, border=border, output=output)
            request = engine.FilterRequest([k], border=border, output=output)
            got = _dask.filter_on_dask(img, request, scheduler=client, band_rows=9, transport=transport)
            assert np.array_equal(got, want), (name, output, transport)


def test_auto_transport_is_shared_memory_on_a_local_cluster(client):
    assert _dask_shm.shared_memory_hosts(client)


def test_shared_memory_plan_is_the_engines_with_fewer_small_bands():
    """Shared bands: the engine's band_count, but no band under SHARED_BAND_PIXELS unless
    there would be fewer bands than threads; copied bands keep one per TARGET_BAND_PIXELS."""
    for (h, w, threads), want in {(4096, 4096, 2): 2, (16384, 16384, 2): 4, (64, 64, 2): 2, (8192, 8192, 2): 4,
                                  (4096, 4096, 8): 8, (10, 10, 4): 4}.items():
        assert cluster_band_count(h, w, threads, shared=True) == want, (h, w, threads)
    assert cluster_band_count(16384, 16384, 2) == 64  # copied into blocks
    assert cluster_band_count(100, 10, 2, band_rows=9, shared=True) == 12


def test_workers_keep_their_attachments_until_the_segment_goes(eng, client):
    """Workers map the pooled segments once and reuse them; when the caller unlinks a segment
    it tells them, and they close their mapping."""
    img = rand((300, 200, 3), np.uint8, 3)
    want = eng.filter_image(img, "gaussian", processes=2)

    def mapped(until):  # the workers' mapped names, once ``until`` holds for them (the word is async)
        deadline = time.monotonic() + 10
        while True:
            names = set().union(*client.run(lambda: sorted(_dask_worker.ATTACHED.names())).values())
            if until(names) or time.monotonic() > deadline:
                return names

    for _ in range(3):
        got = _dask.filter_on_dask(img, engine.FilterRequest(["gaussian"]), scheduler=client, transport="shm")
        assert np.array_equal(got, want)
    pooled = {seg.name for seg in _dask_shm.POOL._free.values()}  # noqa: SLF001
    assert len(pooled) == 2
    assert mapped(lambda names: names == pooled) == pooled  # older segments were evicted and forgotten
    _dask_shm.POOL.clear()
    assert not mapped(lambda names: not names & pooled) & pooled


def test_a_mapping_is_closed_at_the_next_attach_and_never_under_a_running_task():
    """Without the caller's word (a closed client), the next new attachment sweeps a mapping
    of an unlinked segment; a mapping a task still uses is closed when that task ends."""
    from engine._shm import Attachments, Segment, SegmentRef

    att = Attachments()
    a, b, c = Segment(64), Segment(64), Segment(64)
    ref = {s.name: SegmentRef(s.name, (4, 4, 4), "|u1") for s in (a, b, c)}
    try:
        with att.arrays(ref[a.name]):
            pass
        a.release()
        with att.arrays(ref[b.name]) as (arr,):
            assert att.names() == {b.name}
            b.release()
            att.release([b.name])  # the caller's word, while the task runs
            with att.arrays(ref[c.name]):  # and a sweep
                pass
            arr[...] = 7  # still mapped: closing it here would crash the worker
            assert b.name in att.names()
        assert att.names() == {c.name} and not att._users and not att._doomed  # noqa: SLF001
    finally:
        for seg in (a, b, c):
            seg.release()
        att.release([c.name])
    asyncio.run(_dask_worker.release([]))  # the message the caller sends is a coroutine


def test_a_failed_band_raises_its_error(client):
    """The shared-memory transport never fetches results: errors must still surface."""
    import operator

    with pytest.raises(ZeroDivisionError):
        _dask.wait_all(client, [client.submit(operator.truediv, 1, 0, pure=False)])


def test_public_entry_and_out(eng, client):
    img = rand((64, 48, 3), np.uint8, 7)
    out = np.empty_like(img)
    res = engine.filter_image(img, "gaussian", scheduler=client, border="mirror", out=out)
    assert res is out
    assert np.array_equal(out, eng.filter_image(img, "gaussian", processes=2, border="mirror"))


def test_wrap_with_kernel_taller_than_a_chunk(eng, client):
    """dask-image's ndfilters took wrap halos from the wrong rows (its issue #242). Here the
    input is chunked 4 rows at a time and the kernel is 15 rows tall: halos span several
    chunks and wrap around the image, from the engine's one band plan."""
    import dask.array as da

    img = rand((40, 30, 3), np.uint8, 242)
    w = np.random.default_rng(242).normal(size=(15, 3))
    x = da.from_array(img, chunks=(4, 30, 3))
    want = eng.filter_image(img, w, processes=2, border="wrap")
    lazy = engine.filter_dask(x, w, border="wrap", band_rows=8)
    assert lazy.chunks[0] == tuple(b.rows for b in plan_bands(40, 15, 5, wrap=True))
    got = client.compute(lazy).result()
    assert np.array_equal(got, want)
    assert_close(got, img, w, "wrap", "clip", "wrap 15x3 on 4-row chunks")
    # and a kernel taller than the whole image
    w2 = np.random.default_rng(1).normal(size=(31, 1)) / 10
    small = rand((9, 5, 1), np.uint8, 9)
    got2 = engine.filter_dask(da.from_array(small, chunks=(2, 5, 1)), w2, border="wrap").compute(scheduler="synchronous")
    assert np.array_equal(got2, eng.filter_image(small, w2, processes=1, border="wrap"))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_against_scipy_oracle(client, dtype):
    img = rand((50, 38, 4), dtype, 3)
    w = np.random.default_rng(3).normal(size=(5, 5))
    for border in BORDERS:
        got = engine.filter_image(img, w, scheduler=client, border=border)
        assert_close(got, img, w, border, "clip", border)
    got = engine.filter_image(img, "sobel", scheduler=client, output="normalize")
    assert_close(got, img, engine.KERNELS["sobel"].weights, "replicate", "normalize", "normalize")


def test_normalize_range_is_reduced_in_the_graph():
    lazy = engine.filter_dask(rand((40, 20, 3), np.uint8, 0), "sobel", output="normalize", band_rows=10)
    names = [str(k) for k in dict(lazy.__dask_graph__())]
    assert sum("_range_parts" in n for n in names) == 4 and any("global_range" in n for n in names)


# -- stores ----------------------------------------------------------------------------------------
def test_zarr_round_trip(eng, client, tmp_path):
    img = rand((300, 70, 3), np.uint16, 11)
    src = zarr.create_array(str(tmp_path / "in.zarr"), shape=img.shape, dtype=img.dtype, chunks=(32, 32, 3))
    src[...] = img
    seen = []
    for border, output in [("wrap", "normalize"), ("reflect", "abs")]:
        want = eng.filter_image(img, "sobel", processes=2, border=border, output=output)
        dst = tmp_path / f"out-{border}.zarr"
        engine.filter_zarr(str(tmp_path / "in.zarr"), str(dst), "sobel", scheduler=client, border=border,
                           output=output, progress=lambda d, t: seen.append((d, t)))
        z = zarr.open_array(str(dst), mode="r")
        assert np.array_equal(z[...], want)
        assert 300 % z.chunks[0] == 0 and seen[-1][0] == seen[-1][1] > 1  # bands own whole chunks
        # a dst whose row chunks do not line up with the bands: rechunked, same result
        odd = zarr.create_array(str(tmp_path / f"odd-{border}.zarr"), shape=img.shape, dtype=img.dtype, chunks=(7, 70, 3))
        engine.filter_zarr(src, odd, "sobel", scheduler=client, border=border, output=output, band_rows=20)
        assert np.array_equal(odd[...], want)
    with pytest.raises(ValueError, match="dst must have src's shape"):
        bad = zarr.create_array(str(tmp_path / "bad.zarr"), shape=(10, 10, 3), dtype=np.uint16, chunks=(5, 5, 3))
        engine.filter_zarr(src, bad, "sobel", scheduler="synchronous")
    with pytest.raises(ValueError, match="must not be the same store"):
        engine.filter_zarr(str(tmp_path / "in.zarr"), str(tmp_path / "in.zarr"), "sobel", scheduler="synchronous")


def test_tiled_tiff(eng, client, tmp_path):
    img = rand((200, 150, 3), np.uint8, 12)
    tifffile.imwrite(tmp_path / "in.tif", img, tile=(64, 64), photometric="rgb")
    want = eng.filter_image(img, "gaussian", processes=2, border="mirror", output="clip")
    engine.filter_zarr(str(tmp_path / "in.tif"), str(tmp_path / "out.tif"), "gaussian", scheduler=client, border="mirror")
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        assert tf.pages[0].is_tiled
        assert np.array_equal(tf.asarray(), want)
    engine.filter_zarr(str(tmp_path / "in.tif"), str(tmp_path / "out.zarr"), "gaussian", scheduler=client, border="mirror")
    assert np.array_equal(zarr.open_array(str(tmp_path / "out.zarr"))[...], want)
    gray = rand((90, 70), np.uint16, 13)
    tifffile.imwrite(tmp_path / "g.tif", gray, tile=(32, 32))
    engine.filter_zarr(str(tmp_path / "g.tif"), str(tmp_path / "g-out.tif"), "sobel", scheduler=client, output="normalize")
    assert np.array_equal(tifffile.imread(tmp_path / "g-out.tif"), eng.filter_image(gray, "sobel", processes=2, output="normalize"))


def test_killed_worker_job_completes_and_nothing_is_lost(eng, tmp_path):
    """SIGKILL a Dask worker after two bands were written: Dask reschedules its bands on the
    survivor and on the worker its nanny restarts; every band of the store is right."""
    from distributed import Client

    img = rand((512, 384, 3), np.uint8, 5)
    w = np.random.default_rng(5).normal(size=(13, 13))
    src = zarr.create_array(str(tmp_path / "in.zarr"), shape=img.shape, dtype=img.dtype, chunks=(32, 384, 3))
    src[...] = img
    want = eng.filter_image(img, w, processes=2, implementation="numpy")
    killed = []
    with _dask.local_cluster(2) as cluster, Client(cluster, set_as_default=False) as c:
        pids = c.run(os.getpid)

        def kill(done, total):
            if done == 2 and not killed:  # mid-job: 2 of 16 bands written
                assert total == 16
                victim = sorted(pids.values())[0]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        t0 = time.monotonic()
        engine.filter_zarr(src, str(tmp_path / "out.zarr"), w, scheduler=c, implementation="numpy", band_rows=32,
                           progress=kill)
        assert killed and time.monotonic() - t0 < 60
        assert killed[0] not in c.run(os.getpid).values()  # the job finished without that process
    assert np.array_equal(zarr.open_array(str(tmp_path / "out.zarr"))[...], want)


def test_killed_worker_error_is_clear():
    """When Dask gives up on a band (allowed-failures), the caller gets a WorkerError."""
    from distributed import KilledWorker

    with pytest.raises(engine.WorkerError, match="a Dask worker died.*allowed-failures"):
        with _dask._guard(None):
            raise KilledWorker("band-3", SimpleNamespace(address="tcp://127.0.0.1:1"), 1)


def test_scheduler_local_creates_and_closes_its_cluster(eng):
    img = rand((64, 40, 3), np.uint8, 8)
    got = engine.filter_image(img, "sobel", scheduler="local", output="abs")
    assert np.array_equal(got, eng.filter_image(img, "sobel", processes=2, output="abs"))


# -- validation and the optional dependency ---------------------------------------------------------
def test_validation_messages(client):
    img = rand((8, 8, 3), np.uint8, 0)
    with pytest.raises(ValueError, match="scheduler must be .*'tcp://host:8786', 'local'.*got 'bogus'"):
        engine.filter_image(img, "sobel", scheduler="bogus")
    with pytest.raises(TypeError, match="scheduler must be a dask.distributed.Client.*got int"):
        engine.filter_image(img, "sobel", scheduler=3)
    with pytest.raises(ValueError, match="processes applies to the process-pool engine"):
        engine.filter_image(img, "sobel", scheduler=client, processes=2)
    with pytest.raises(ValueError, match="border must be one of"):
        engine.filter_image(img, "sobel", scheduler=client, border="torus")
    with pytest.raises(ValueError, match="band_rows must be a positive integer"):
        engine.filter_dask(img, "sobel", band_rows=0)
    with pytest.raises(ValueError, match="dtype must be uint8 or uint16, got float32"):
        engine.filter_dask(img.astype(np.float32), "sobel")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        engine.filter_zarr("/nonexistent/in.zarr", "/tmp/x.zarr", "sobel")


def test_without_dask_the_engine_works_and_says_how_to_install():
    """A fresh interpreter where dask and distributed cannot be imported."""
    code = r"""
import sys, numpy as np
for name in ("dask", "distributed", "dask_image"):
    sys.modules[name] = None  # import fails, as when they are not installed
import engine
img = np.zeros((8, 8, 3), np.uint8)
assert engine.dask_available() is False
assert engine.filter_image(img, "sobel", processes=1).shape == img.shape
try:
    engine.filter_image(img, "sobel", scheduler="local")
except ImportError as e:
    print(e)
"""
    env = dict(os.environ, PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert 'the Dask backend needs `pip install "dask[array]" distributed`' in res.stdout


def test_dask_available(monkeypatch):
    import importlib.util

    assert engine.dask_available() is True
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "distributed" else real(n, *a))
    assert engine.dask_available() is False


# -- batch -----------------------------------------------------------------------------------------
def _folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    engine.save_image(rand((40, 30, 3), np.uint8, 1), d / "rgb.png")
    engine.save_image(rand((35, 25, 1), np.uint16, 2), d / "gray16.png")
    engine.save_image(rand((30, 20, 4), np.uint8, 3), d / "rgba.tif")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (d / "notes.txt").write_text("not an image")
    return d


def test_batch_cli_bad_file_resume_and_progress(eng, client, tmp_path, capsys):
    d, out = _folder(tmp_path), tmp_path / "out"
    args = ["batch", str(d), str(out), "--kernel", "sobel", "--output", "abs", "--border", "wrap",
            "--scheduler", client.scheduler.address]
    assert _cli.main(args) == 1
    text = capsys.readouterr().out
    assert "broken.png: skipped, bad image" in text and "[4/4]" in text
    assert "batch: 4 image(s)" in text and "3 filtered, 0 already done, 1 skipped as bad (broken.png)" in text
    assert "1 non-image file(s) ignored" in text
    for name in ("rgb.png", "gray16.png", "rgba.tif"):
        src = engine.load_image(d / name)
        want = eng.filter_image(src, "sobel", processes=2, output="abs", border="wrap")
        assert np.array_equal(engine.load_image(out / name), want), name
    # resume: one output lost, a temp file of a killed run left behind; nothing else is redone
    (out / "rgb.png").unlink()
    (out / ".rgb.png.tmp-999999-abcd").write_bytes(b"partial")
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert _cli.main(args) == 1
    text = capsys.readouterr().out
    assert "1 filtered, 2 already done, 1 skipped as bad" in text
    assert sorted(p.name for p in out.iterdir()) == ["gray16.png", "rgb.png", "rgba.tif"]
    for name in ("gray16.png", "rgba.tif"):
        assert (out / name).stat().st_mtime_ns == mtimes[name]
    # the process-pool engine (no --scheduler) gives the same files; an all-good folder exits 0
    (d / "broken.png").unlink()
    out2 = tmp_path / "out2"
    assert _cli.main(["batch", str(d), str(out2), "--kernel", "sobel", "--output", "abs", "--border", "wrap",
                      "--processes", "2"]) == 0
    for name in ("rgb.png", "gray16.png", "rgba.tif"):
        assert (out2 / name).read_bytes() == (out / name).read_bytes(), name


def test_batch_cli_usage_errors(tmp_path, capsys, monkeypatch):
    d = _folder(tmp_path)
    assert _cli.main(["batch", str(tmp_path / "missing"), str(tmp_path / "o"), "--kernel", "sobel"]) == 2
    assert "input folder" in capsys.readouterr().err
    assert _cli.main(["batch", str(d), str(d), "--kernel", "sobel"]) == 2
    assert _cli.main(["batch", str(d), str(tmp_path / "o"), "--kernel", "nope"]) == 2
    assert _cli.main(["batch", str(d), str(tmp_path / "o"), "--kernel", "sobel", "--scheduler", "yarn"]) == 2

    def no_dask():
        raise ImportError(_dask.INSTALL_HINT)

    monkeypatch.setattr(_dask, "_dask", no_dask)
    assert _cli.main(["batch", str(d), str(tmp_path / "o"), "--kernel", "sobel", "--scheduler", "local"]) == 2
    assert "pip install" in capsys.readouterr().err


def test_output_names_never_collide():
    names = ["a.png", "a.jpg", "a.bmp", "b.JPG", "c.tiff"]
    out = _batch.output_names(names)
    assert len(set(out.values())) == len(names)
    assert out["a.png"] == "a.png" and out["c.tiff"] == "c.tiff" and out["b.JPG"] == "b.png"


def test_tasks_cancelled_on_the_cluster_raise_instead_of_returning_garbage(client):
    """Someone else cancelling the job's futures (client.cancel) must not yield a half-written
    image: the call raises engine.JobCancelled, and the next call is correct again."""
    import threading

    from distributed import Future

    img = rand((1500, 1500, 3), np.uint8, 7)
    box = {}

    def run():
        try:
            box["out"] = engine.filter_image(img, np.ones((31, 31)) / 961, scheduler=client, implementation="numpy")
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 30
    while not client.futures and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.futures, "the job never reached the cluster"
    client.cancel([Future(k, client) for k in list(client.futures)])
    t.join(60)
    assert not t.is_alive()
    assert isinstance(box.get("error"), engine.JobCancelled), box
    small = rand((40, 30, 3), np.uint8, 8)
    assert np.array_equal(engine.filter_image(small, "sobel", scheduler=client), _dask_free_reference(small))


def _dask_free_reference(img):
    from engine._compute import filter_band

    out = np.empty_like(img)
    (band,) = plan_bands(img.shape[0], 3, 1)
    filter_band(img, out, band, engine.KERNELS["sobel"], "replicate", "clip", "opencv")
    return out


# -- review fixes ------------------------------------------------------------------------------------
def test_zarr_refuses_dst_that_is_src_under_another_name(tmp_path):
    """The same store given as an array and a path, twice as one array, or through a symlink:
    the bands would overwrite rows other bands still read, and the input would be lost."""
    img = rand((64, 40, 3), np.uint8, 21)
    path = str(tmp_path / "in.zarr")
    src = zarr.create_array(path, shape=img.shape, dtype=img.dtype, chunks=(16, 40, 3))
    src[...] = img
    os.symlink(path, tmp_path / "link.zarr")
    for s, d in [(src, src), (src, path), (path, zarr.open_array(path, mode="r+")), (path, str(tmp_path / "link.zarr")),
                 (tmp_path / "in.zarr", str(tmp_path / "sub" / ".." / "in.zarr"))]:
        with pytest.raises(ValueError, match="dst must not be the same store as src .*in.zarr"):
            engine.filter_zarr(s, d, "gaussian", scheduler="synchronous")
        assert np.array_equal(src[...], img)


@pytest.mark.parametrize("band_rows", [16, 24])
def test_zarr_sharded_dst_no_shard_written_by_two_bands(eng, client, tmp_path, band_rows):
    """A sharded dst (zarr v3): its ``chunks`` are the inner chunks, but a write rewrites the
    whole shard. Bands that own chunks of one shard lost each other's rows."""
    img = rand((512, 300, 3), np.uint8, 22)
    src = zarr.create_array(str(tmp_path / "in.zarr"), shape=img.shape, dtype=img.dtype, chunks=(64, 300, 3))
    src[...] = img
    want = eng.filter_image(img, "sobel", processes=2)
    for sched in (client, "threads"):
        dst = zarr.create_array(str(tmp_path / "out.zarr"), shape=img.shape, dtype=img.dtype, chunks=(16, 300, 3),
                                shards=(256, 300, 3), overwrite=True)
        engine.filter_zarr(src, dst, "sobel", scheduler=sched, band_rows=band_rows)
        assert np.array_equal(zarr.open_array(str(tmp_path / "out.zarr"))[...], want), sched


def test_a_closed_client_or_cluster_is_refused_by_name(client, tmp_path):
    """A closed Client gave AttributeError: 'NoneType' object has no attribute 'ncores'."""
    from distributed import Client

    img = rand((20, 20, 3), np.uint8, 23)
    closed = Client(client.scheduler.address, set_as_default=False)
    closed.close()
    with pytest.raises(ValueError, match="scheduler must be a running Client or cluster; got a Client that is closed"):
        engine.filter_image(img, "sobel", scheduler=closed)
    with pytest.raises(ValueError, match="scheduler must be a running Client or cluster; got a Client that is closed"):
        engine.filter_zarr(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), "sobel", scheduler=closed)
    assert not (tmp_path / "out.zarr").exists()
    cluster = _dask.local_cluster(1)
    cluster.close()
    with pytest.raises(ValueError, match="scheduler must be a running Client or cluster; got a LocalCluster that is closed"):
        engine.filter_image(img, "sobel", scheduler=cluster)


@pytest.mark.parametrize("chunks, shown", [((0, 40, 3), r"\(0, 40, 3\)"), ((16, 40), r"\(16, 40\)"),
                                           ((16.5, 40, 3), r"\(16.5, 40, 3\)"), ("abc", "'abc'"),
                                           ((True, 40, 3), r"\(True, 40, 3\)")])
def test_zarr_bad_chunks_refused_before_dst_is_created(tmp_path, chunks, shown):
    """They reached zarr.create_array (ZeroDivisionError, zarr's own messages) after it had
    made the store: an empty dst was left behind."""
    img = rand((64, 40, 3), np.uint8, 24)
    src = zarr.create_array(str(tmp_path / "in.zarr"), shape=img.shape, dtype=img.dtype, chunks=(16, 40, 3))
    src[...] = img
    with pytest.raises(ValueError, match=rf"chunks must be 3 positive integers, one per axis of src's shape \(64, 40, 3\); got {shown}"):
        engine.filter_zarr(src, str(tmp_path / "out.zarr"), "sobel", scheduler="synchronous", chunks=chunks)
    assert not (tmp_path / "out.zarr").exists()


def test_filter_dask_unknown_chunk_sizes_refused_by_name():
    """A Dask array whose row count is unknown (boolean indexing) raised TypeError: 'float'
    object cannot be interpreted as an integer."""
    import dask.array as da

    x = da.from_array(rand((30, 20, 3), np.uint8, 25), chunks=(7, 20, 3))
    x = x[x[:, 0, 0] >= 0]
    with pytest.raises(ValueError, match=r"image must have known chunk sizes \(call image.compute_chunk_sizes\(\) "
                                         r"first\), got shape \(nan, 20, 3\)"):
        engine.filter_dask(x, "sobel")
    got = engine.filter_dask(x.compute_chunk_sizes(), "sobel", band_rows=4).compute(scheduler="synchronous")
    assert np.array_equal(got, _dask_free_reference(x.compute()))


def test_out_of_the_wrong_shape_names_the_image_shape_as_given(eng):
    """For a 2-D image the message said the image's shape was (H, W, 1), as the pool does not."""
    img = rand((30, 20), np.uint8, 26)
    msg = r"out must have the image's shape \(30, 20\) and dtype uint8, got \(30, 21\) uint8"
    with pytest.raises(ValueError, match=msg):
        eng.filter_image(img, "sobel", processes=1, out=np.zeros((30, 21), np.uint8))
    with pytest.raises(ValueError, match=msg):
        engine.filter_image(img, "sobel", scheduler="synchronous", out=np.zeros((30, 21), np.uint8))


def test_zarr_paths_that_are_not_zarr_arrays_are_named(tmp_path):
    """A dst path that is a plain file raised FileExistsError: [Errno 17] File exists; a folder
    or a Zarr group gave zarr's messages, which named neither src nor dst."""
    img = rand((16, 8, 3), np.uint8, 27)
    src = zarr.create_array(str(tmp_path / "in.zarr"), shape=img.shape, dtype=img.dtype, chunks=(8, 8, 3))
    src[...] = img
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "folder").mkdir()
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    for name in ("notes.txt", "folder", "group.zarr"):
        p = str(tmp_path / name)
        with pytest.raises(ValueError, match=f"dst {p!r} exists but is not a Zarr array"):
            engine.filter_zarr(src, p, "sobel", scheduler="synchronous")
        with pytest.raises(ValueError, match=f"src {p!r} is not a Zarr array"):
            engine.filter_zarr(p, str(tmp_path / "out.zarr"), "sobel", scheduler="synchronous")
    assert (tmp_path / "notes.txt").read_text() == "keep me" and not (tmp_path / "out.zarr").exists()


def test_zarr_in_memory_dst_refused_on_a_cluster(eng, client):
    """Workers write into their own unpickled copies of a MemoryStore: the call returned and
    dst stayed all zeros. The threaded schedulers share the caller's memory and keep working."""
    img = rand((64, 30, 3), np.uint8, 28)
    src = zarr.array(img, chunks=(16, 30, 3))

    def memory_dst():
        return zarr.create_array(zarr.storage.MemoryStore(), shape=img.shape, dtype=img.dtype, chunks=(16, 30, 3))

    with pytest.raises(ValueError, match="dst is a zarr.Array in memory .*MemoryStore.*the cluster's workers would "
                                         "write into copies of it"):
        engine.filter_zarr(src, memory_dst(), "sobel", scheduler=client)
    want = eng.filter_image(img, "sobel", processes=2)
    for sched in ("threads", "synchronous", None):
        dst = memory_dst()
        engine.filter_zarr(src, dst, "sobel", scheduler=sched)
        assert np.array_equal(dst[...], want), sched


def test_a_cluster_without_workers_is_refused_instead_of_hanging(tmp_path):
    """scatter and compute wait for a worker forever: the call never returned."""
    import threading

    from distributed import Client, LocalCluster

    img = rand((20, 20, 3), np.uint8, 29)
    src = zarr.array(img, store=str(tmp_path / "in.zarr"), chunks=(10, 20, 3))
    msg = r"scheduler has no workers \(tcp://127.0.0.1:\d+\); start some \(cluster.scale\(n\)\) or wait for them"
    with LocalCluster(n_workers=0, dashboard_address=":0", silence_logs=40) as cluster, \
            Client(cluster, set_as_default=False) as c:
        for call in (lambda: engine.filter_image(img, "sobel", scheduler=c),
                     lambda: engine.filter_zarr(src, str(tmp_path / "out.zarr"), "sobel", scheduler=c)):
            box = {}

            def run(call=call, box=box):
                try:
                    call()
                except BaseException as e:  # noqa: BLE001
                    box["error"] = e

            t = threading.Thread(target=run, daemon=True)
            t.start()
            t.join(30)
            hung = t.is_alive()
            if hung:
                c.cancel(list(c.futures.values()), force=True)
            assert not hung, "the call did not return in 30 s"
            with pytest.raises(ValueError, match=msg):
                raise box["error"]
