"""The process engine: zero-copy shared arrays, pairs, timelines, jobs, worker death, close, sweep."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import weakref

import numpy as np
import psutil
import pytest

import engine
from engine import _shm, _worker

RNG = np.random.default_rng(99)


def rgb(h=96, w=80, c=3, dtype=np.uint8):
    return RNG.integers(0, np.iinfo(dtype).max + 1, (h, w, c), dtype=dtype)


def in_shm(name: str) -> bool:
    return os.path.exists(os.path.join(_shm.SHM_DIR, name))


def children() -> set[int]:
    """Live child processes of this one, without multiprocessing's resource tracker."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)  # noqa: SLF001
    out = set()
    for c in psutil.Process().children(recursive=True):
        try:
            if c.pid != tracker and c.status() != psutil.STATUS_ZOMBIE:
                out.add(c.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def slow_image(h=4096, w=1024):
    """Input for a job (SLOW) that keeps each worker busy for about half a second on an idle
    machine, in four bands: a cancelled or broken job still has bands to hand out."""
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


SLOW = dict(request=engine.FilterRequest([np.ones((9, 9)) / 81], implementation="numpy"))


# -- zero-copy ------------------------------------------------------------------------------------
@pytest.fixture
def count_segments(eng, monkeypatch):
    """How many scratch segments jobs ask for (input and output copies)."""
    calls = []
    real = eng._segment  # noqa: SLF001

    def counting(nbytes):
        calls.append(nbytes)
        return real(nbytes)

    monkeypatch.setattr(eng, "_segment", counting)
    return calls


def test_shared_arrays_in_and_out_match_plain_arrays(eng, count_segments):
    img = rgb(120, 70, 4, np.uint16)
    plain = eng.filter_image(img, "sobel", processes=3, output="abs")
    assert len(count_segments) == 2  # a plain array is copied in; the result is the output segment
    src = eng.shared_array(img.shape, img.dtype)
    assert src.shape == img.shape and src.dtype == img.dtype and not src.any()  # zeroed
    src[...] = img
    dst = eng.shared_array(img.shape, img.dtype)
    count_segments.clear()
    res = eng.filter_image(src, "sobel", processes=3, output="abs", out=dst)
    assert res is dst
    assert count_segments == []  # zero-copy both ways: no scratch segment at all
    assert np.array_equal(dst, plain)
    # shared in, plain out; plain in, shared out
    out = np.empty_like(img)
    assert eng.filter_image(src, "sobel", processes=2, output="abs", out=out) is out
    assert np.array_equal(out, plain) and len(count_segments) == 1
    dst[...] = 0
    assert eng.filter_image(img, "sobel", processes=1, output="abs", out=dst) is dst
    assert np.array_equal(dst, plain) and len(count_segments) == 2


def test_shared_two_d_and_views(eng):
    img = rgb(50, 40, 1)[:, :, 0]
    src = eng.shared_array(img.shape, np.uint8)
    src[...] = img
    dst = eng.shared_array(img.shape, np.uint8)
    assert eng.filter_image(src, "gaussian", processes=2, out=dst) is dst
    assert np.array_equal(dst, eng.filter_image(img, "gaussian", processes=1))
    # a contiguous slice of a shared array is shared too (rows 10..39)
    big = eng.shared_array((100, 40), np.uint8)
    big[10:40] = img[:30]
    out = eng.filter_image(big[10:40], "gaussian", processes=2)
    assert np.array_equal(out, eng.filter_image(img[:30].copy(), "gaussian", processes=1))


def test_shared_arrays_are_unlinked_when_collected(eng):
    before = _shm.live_segments()
    a = eng.shared_array((64, 64, 3), np.uint8)
    (name,) = _shm.live_segments() - before
    assert in_shm(name)
    view = a[5:]
    del a
    gc.collect()
    assert in_shm(name)  # a view still uses the memory
    view[...] = 7
    del view
    gc.collect()
    assert not in_shm(name) and name not in _shm.live_segments()


def test_shared_arrays_are_unlinked_at_close_and_stay_usable():
    with engine.Engine(max_workers=1) as e:
        before = _shm.live_segments()
        a = e.shared_array((8, 9), np.uint16)
        (name,) = _shm.live_segments() - before
        a[...] = 1000
        e.filter_image(a, "identity", processes=1)
    assert not in_shm(name)
    a += 1  # the mapping outlives the name
    assert int(a.sum()) == 1001 * 72


def test_filter_pair_equals_two_filter_image_calls(eng):
    img = rgb(130, 90, 3)
    for processes in [(1, 1), (2, 2), (1, 3), (3, 1)]:
        for border, output in [("replicate", "clip"), ("wrap", "normalize"), ("constant", "offset")]:
            pair = eng.filter_pair(img, "scharr_x", "gaussian_7x7", processes=processes, border=border, output=output)
            a, b = pair.outputs
            assert np.array_equal(a, eng.filter_image(img, "scharr_x", processes=2, border=border, output=output))
            assert np.array_equal(b, eng.filter_image(img, "gaussian_7x7", processes=2, border=border, output=output))
            assert pair.processes == processes
            assert [k.name for k in pair.kernels] == ["scharr_x", "gaussian_7x7"]


def test_filter_pair_into_shared_outputs(eng, count_segments):
    img = rgb(64, 64, 3)
    src = eng.shared_array(img.shape, img.dtype)
    src[...] = img
    outs = (eng.shared_array(img.shape, img.dtype), eng.shared_array(img.shape, img.dtype))
    res = eng.filter_pair(src, "sobel", "sobel_y", processes=(2, 2), out=outs)
    assert res.outputs[0] is outs[0] and res.outputs[1] is outs[1]
    assert count_segments == []
    assert np.array_equal(outs[1], eng.filter_image(img, "sobel_y", processes=1))


@pytest.mark.parametrize("implementation", ["opencv", "numpy", "python"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_normalize_does_not_depend_on_the_kernels_scale(eng, implementation, dtype):
    """``normalize`` stretches the response to full scale, so a kernel times a power of two
    (exact in float64) must give the same bits, from subnormal weights (2**-1064: each product
    would keep a few bits, and ``maxval / (max - min)`` overflow) to huge ones."""
    img = rgb(23, 17, 3, dtype)
    w = np.array([[3, -8, 1], [5, 2, -7], [-1, 6, 4]]) / 16  # 4 bits each: exact at every scale below
    want = eng.filter_image(img, w, processes=1, output="normalize", implementation=implementation)
    assert want.min() == 0 and want.max() == np.iinfo(dtype).max
    for power in (-1060, -1040, -1000, -300, 300, 1000):
        scaled = np.ldexp(w, power)
        assert np.array_equal(np.ldexp(scaled, -power), w)
        got = eng.filter_image(img, scaled, processes=2, output="normalize", implementation=implementation)
        assert np.array_equal(got, want), (power, int(np.abs(got.astype(int) - want).max()))


def test_normalize_stretches_a_subnormal_range():
    """A range ``max - min`` so small that ``maxval / (max - min)`` overflows is still stretched
    linearly (not to 0 and 255 only)."""
    from engine._compute import map_output

    tiny = 2.0**-1074
    got = map_output(np.array([0.0, 1.0, 2.0, 3.0]) * tiny, "normalize", np.uint8, (0.0, 3 * tiny))
    assert got.tolist() == [0, 85, 170, 255]


# -- the timeline and phases ----------------------------------------------------------------------
@pytest.mark.parametrize("output", ["clip", "normalize"])
def test_timeline_one_record_per_band(eng, output):
    img = rgb(400, 300, 3)
    kernels, processes = ("gaussian_11x11", "sobel"), (3, 1)
    workers_before = children()
    res = eng.filter_pair(img, *kernels, processes=processes, output=output)
    for fi, (k, p) in enumerate(zip(kernels, processes)):
        bands = eng.plan(img.shape, k, p)
        recs = sorted((r for r in res.timeline if r.filter == fi), key=lambda r: r.band)
        assert [r.band for r in recs] == list(range(len(bands)))  # one record per band
        assert [(r.first_row, r.last_row) for r in recs] == [(b.start, b.stop - 1) for b in bands]
        rows = [y for r in recs for y in range(r.first_row, r.last_row + 1)]
        assert rows == list(range(img.shape[0]))  # every row exactly once
        assert len({r.pid for r in recs}) <= p
    assert len(res.timeline) == sum(len(eng.plan(img.shape, k, p)) for k, p in zip(kernels, processes))
    pids_a = {r.pid for r in res.timeline if r.filter == 0}
    pids_b = {r.pid for r in res.timeline if r.filter == 1}
    assert not pids_a & pids_b  # each filter on its own group of processes
    assert pids_a | pids_b <= workers_before and os.getpid() not in pids_a | pids_b
    for r in res.timeline:
        assert 0 <= r.start < r.end <= res.phases.wall, r
    assert list(res.timeline) == sorted(res.timeline, key=lambda r: (r.start, r.filter, r.band))
    ph = res.phases
    assert min(ph.copy_in, ph.compute, ph.copy_out) >= 0
    assert ph.copy_in + ph.compute + ph.copy_out <= ph.wall + 1e-9
    assert len(res.filter_walls) == 2 and all(0 < w <= ph.wall for w in res.filter_walls)


# -- jobs -----------------------------------------------------------------------------------------
def test_submit_progress_state_and_result(eng):
    img = rgb(300, 200, 3)
    job = eng.submit(img, engine.FilterRequest(["gaussian"], output="normalize"), processes=2)
    assert isinstance(job, engine.Job)
    assert job.state() in ("waiting", "running", "done")
    res = job.result(timeout=60)
    assert job.done() and job.state() == "done" and not job.cancelled()
    bands = len(eng.plan(img.shape, "gaussian", 2))
    assert job.progress() == (2 * bands, 2 * bands)  # normalize: a range pass and a filter pass
    assert np.array_equal(res.outputs[0], eng.filter_image(img, "gaussian", processes=1, output="normalize"))
    assert job.cancel() is False  # too late
    assert job.exception(timeout=0) is None
    seen = []
    job.add_done_callback(seen.append)  # on a finished job: called at once
    assert seen == [job]
    one = eng.submit(img, engine.FilterRequest(["sobel", "emboss"]), processes=(1, 3))
    one.result(timeout=60)
    n = len(eng.plan(img.shape, "sobel", 1)) + len(eng.plan(img.shape, "emboss", 3))
    assert one.progress() == (n, n)


def test_progress_grows_while_running(eng):
    img = slow_image(1024, 512)
    job = eng.submit(img, **SLOW, processes=2)
    seen = set()
    while not job.done():
        seen.add(job.progress())
        time.sleep(0.002)
    total = job.progress()[1]
    assert job.progress() == (total, total) and total >= 1
    assert all(0 <= d <= total and t == total for d, t in seen)


def test_cancel_stops_a_job_and_leaves_nothing(eng):
    img = slow_image()
    before = _shm.live_segments()
    job = eng.submit(img, **SLOW, processes=2)
    wait_for(lambda: job.state() == "running", what="the job to start")
    t = time.monotonic()
    assert job.cancel() is True
    with pytest.raises(engine.JobCancelled, match=r"^job \d+ was cancelled"):
        job.result(timeout=60)
    assert time.monotonic() - t < 10  # within a band or two
    assert job.state() == "cancelled" and job.cancelled() and job.done()
    done, total = job.progress()
    assert done < total
    assert isinstance(job.exception(), engine.JobCancelled)
    # its scratch segments went back to the engine's pool (owned, unlinked at close), none is
    # left unowned; and the workers are ready for the next job
    assert _shm.live_segments() - before <= eng._scratch.names()  # noqa: SLF001
    small = rgb(30, 30)
    assert np.array_equal(eng.filter_image(small, "sobel", processes=4), eng.filter_image(small, "sobel", processes=1))


def test_jobs_over_max_workers_are_refused(eng):
    img = rgb(10, 10)
    with pytest.raises(ValueError, match=r"^processes must be an integer from 1 to 4 \(this engine's max_workers\), got 5$"):
        eng.submit(img, engine.FilterRequest(["sobel"]), processes=5)
    with pytest.raises(ValueError, match=r"^processes \(2, 3\) add up to 5, more than this engine's max_workers=4$"):
        eng.submit(img, engine.FilterRequest(["sobel", "sobel"]), processes=(2, 3))


def test_a_pair_with_default_processes_on_a_one_worker_engine_is_refused_not_queued_for_ever(eng):
    """Each filter of a pair needs a process of its own; with max_workers=1 the default counts
    (1, 1) could never be leased: the job waited for good, and every later job behind it."""
    img = rgb(10, 10)
    with engine.Engine(max_workers=1) as one:
        with pytest.raises(ValueError, match=r"^a pair runs each filter on processes of its own and needs "
                                             r"max_workers >= 2; this engine has max_workers=1$"):
            one.filter_pair(img, "sobel", "gaussian")
        assert np.array_equal(one.filter_image(img, "sobel"), eng.filter_image(img, "sobel"))


def test_an_idle_worker_that_dies_while_a_job_waits_is_replaced_not_handed_out(eng):
    """A job waiting for workers takes idle ones once enough are free; one that died in the
    meantime (OOM killer, kill -9) must be replaced, not handed to the job (a WorkerError)."""
    img = rgb(40, 30)
    want = eng.filter_image(img, "sobel", processes=1)
    with engine.Engine(max_workers=3) as e:
        e.filter_image(img, "sobel", processes=3)  # three idle workers
        held = e._lease(1, threading.Event())  # noqa: SLF001 - one worker busy, as in a running job
        try:
            job = e.submit(img, engine.FilterRequest(["sobel"]), processes=3)
            wait_for(lambda: job.state() == "waiting", what="the job to wait for a third worker")
            victim = e._idle[0]  # noqa: SLF001
            os.kill(victim.pid, signal.SIGKILL)
            victim.process.join(10)
            time.sleep(0.3)  # the job looks at the idle list while it waits
        finally:
            e._give_back(held)  # noqa: SLF001
        assert np.array_equal(job.result(timeout=60).outputs[0], want)
        assert victim.pid not in e.idle_workers() and len(e.idle_workers()) == 3


def test_an_engine_dropped_without_close_unlinks_its_pooled_segments():
    """``Engine(...)`` used and dropped without ``close()`` (a loop in a script, a notebook cell
    run again): its workers exit when their pipes close, and its pooled segments must go too
    (the workers sweep only a dead parent's; they stayed in /dev/shm after the process ended)."""
    img = rgb(64, 48, 3)
    e = engine.Engine(max_workers=2)
    e.filter_image(img, "sobel", processes=2, out=np.empty_like(img))  # pooled input and output segments
    pooled = set(e._scratch.names())  # noqa: SLF001
    pids = e.idle_workers()
    assert len(pooled) == 2 and all(in_shm(n) for n in pooled)
    del e
    gc.collect()
    assert not any(in_shm(n) for n in pooled)
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                             for p in pids), what="the dropped engine's workers to exit")


def test_a_segment_retired_while_a_worker_is_handed_back_is_unmapped_at_once(monkeypatch):
    """Between telling a returning worker what to unmap and putting it on the idle list, a
    segment may be retired (another session's array collected): the worker is told at once,
    not at its next job (it kept the memory mapped while idle, for as long as nobody ran)."""
    with engine.Engine(max_workers=1) as e:
        src = e.shared_array((64, 48, 3), np.uint8)
        src[...] = rgb(64, 48, 3)
        name = e._descriptor(src).name  # noqa: SLF001
        e.filter_image(src, "sobel", processes=1)  # the worker maps src
        (pid,) = e.idle_workers()
        assert _mapped(pid, name)
        box, calls, real = [src], [], engine.Engine._release_stale
        del src

        def release_stale(self, worker):
            real(self, worker)
            calls.append(worker)
            if len(calls) == 2 and box:  # the job's lease, then its give-back: now src is collected
                box.pop()
                gc.collect()
                assert name in worker.stale  # the worker is not idle yet: the name waits for it

        monkeypatch.setattr(engine.Engine, "_release_stale", release_stale)
        e.filter_image(rgb(64, 48, 3), "sobel", processes=1)
        monkeypatch.undo()
        assert not box
        wait_for(lambda: not _mapped(pid, name), timeout=10, what="the idle worker to unmap the retired segment")


def _mapped(pid: int, name: str) -> bool:
    """Whether process ``pid`` maps /dev/shm/``name``."""
    with open(f"/proc/{pid}/maps") as f:
        return f"/dev/shm/{name}" in f.read()


def test_a_job_waits_for_busy_workers_then_runs(eng):
    img = slow_image()
    first = eng.submit(img, **SLOW, processes=3)
    wait_for(lambda: first.state() == "running", what="the first job to start")
    fits = eng.submit(rgb(40, 40), engine.FilterRequest(["sobel"]), processes=1)  # one worker is still free: runs now
    assert fits.result(timeout=30).outputs[0].shape == (40, 40, 3)
    assert first.state() == "running", "the small job waited for the big one"
    second = eng.submit(rgb(40, 40), engine.FilterRequest(["sobel"]), processes=2)  # needs two: waits
    third = eng.submit(rgb(40, 40), engine.FilterRequest(["sobel"]), processes=1)  # FIFO: waits behind the second
    samples, total = 0, first.progress()[1]
    while first.state() == "running":
        states = (second.state(), third.state())
        # read after the states: bands still to do means first held its workers while they were read
        # (its state stays "running" while it hands them back, and second may start meanwhile)
        if first.progress()[0] < total:
            assert states == ("waiting", "waiting") and second.progress()[0] == 0
            samples += 1
        time.sleep(0.01)
    assert samples > 0
    first.result(timeout=60)
    assert second.result(timeout=60).outputs[0].shape == (40, 40, 3) and second.state() == "done"
    third.result(timeout=60)
    # a waiting job can be cancelled
    first = eng.submit(img, **SLOW, processes=4)
    wait_for(lambda: first.state() == "running", what="the job to start")
    waiting = eng.submit(rgb(40, 40), engine.FilterRequest(["sobel"]), processes=1)
    assert waiting.state() == "waiting"
    assert waiting.cancel() is True
    with pytest.raises(engine.JobCancelled, match=r"^job \d+ was cancelled while waiting for workers$"):
        waiting.result(timeout=10)
    assert waiting.state() == "cancelled" and waiting.progress()[0] == 0
    first.cancel()
    with pytest.raises(engine.JobCancelled):
        first.result(timeout=60)


# -- worker death ---------------------------------------------------------------------------------
def test_sigkill_of_a_worker_raises_worker_error_and_the_engine_recovers():
    before, segments = children(), set(_shm.our_segments())
    with engine.Engine(max_workers=2) as e:
        e.filter_image(rgb(8, 8), "sobel", processes=2)  # start both workers
        workers = children() - before
        assert len(workers) == 2
        job = e.submit(slow_image(), **SLOW, processes=2)
        wait_for(lambda: job.state() == "running", what="the job to start")
        time.sleep(0.1)  # mid-band
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        t = time.monotonic()
        with pytest.raises(engine.WorkerError, match=rf"worker process {victim} was killed with SIGKILL") as info:
            job.result(timeout=60)
        assert time.monotonic() - t < 5, "WorkerError took too long"
        assert "next job" in str(info.value)
        assert job.state() == "failed" and job.done()
        # the next job works, on a rebuilt worker
        img = rgb(60, 50)
        res = e.filter_pair(img, "sobel", "gaussian", processes=(1, 1))
        assert victim not in {r.pid for r in res.timeline}
        ref = e.filter_image(img, "sobel", processes=2)
        assert np.array_equal(res.outputs[0], ref)
        assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
    assert children() == before  # close() ended every worker, the replacement included
    mine = f"{_shm.PREFIX}{os.getpid()}_"  # other test runs on this machine make segments too
    left = {n for n in set(_shm.our_segments()) - segments if n.startswith(mine)}
    assert left <= _shm.live_segments() and not len(e._scratch), left  # noqa: SLF001 - nothing of the closed engine


def test_a_worker_killed_while_idle_is_replaced_before_the_next_job():
    """Killed between jobs (the OOM killer picks any process): the next job never sees it."""
    before = children()
    with engine.Engine(max_workers=2) as e:
        e.filter_image(rgb(8, 8), "sobel", processes=2)
        victim = sorted(children() - before)[0]
        os.kill(victim, signal.SIGKILL)
        # dead as its parent sees it (waitpid): /proc shows a zombie while its threads still exit
        wait_for(lambda: victim not in {p.pid for p in multiprocessing.active_children()}, what="the worker to die")
        img = rgb(60, 50)
        res = e.filter_pair(img, "sobel", "gaussian", processes=(1, 1))
        assert victim not in {r.pid for r in res.timeline}
        assert np.array_equal(res.outputs[0], e.filter_image(img, "sobel", processes=2))
        assert len(children() - before) == 2
    assert children() == before


def test_worker_terminated_by_other_signal():
    """SIGTERM is named as such (the cause table), on an engine of its own."""
    before = children()
    e = engine.Engine(max_workers=1)
    try:
        e.filter_image(rgb(8, 8), "sobel", processes=1)
        (worker,) = children() - before
        job = e.submit(slow_image(), **SLOW, processes=1)
        wait_for(lambda: job.state() == "running", what="the job to start")
        time.sleep(0.2)
        os.kill(worker, signal.SIGTERM)
        with pytest.raises(engine.WorkerError, match=rf"worker process {worker} was terminated by SIGTERM"):
            job.result(timeout=30)
        assert e.filter_image(rgb(8, 8), "identity", processes=1).shape == (8, 8, 3)
    finally:
        e.close()
    assert children() == before


def test_close_ends_every_worker_process():
    before = children()
    e = engine.Engine(max_workers=3)
    res = e.filter_pair(rgb(200, 100), "sobel", "gaussian", processes=(1, 2))
    workers = children() - before
    assert len(workers) == 3 and {r.pid for r in res.timeline} <= workers
    assert sorted(e.idle_workers()) == sorted(workers)
    e.close()
    assert children() == before
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in workers)
    assert e.idle_workers() == []


def test_close_cancels_running_jobs():
    before = children()
    e = engine.Engine(max_workers=2)
    job = e.submit(slow_image(), **SLOW, processes=2)
    wait_for(lambda: job.state() == "running", what="the job to start")
    e.close()
    assert job.done() and job.state() == "cancelled"
    with pytest.raises(engine.JobCancelled):
        job.result(timeout=0)
    assert children() == before


# -- stale segments -------------------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not psutil.pid_exists(p.pid)
    return p.pid


def test_new_engine_sweeps_stale_segments_of_dead_creators():
    dead = _dead_pid()
    names = {
        "stale": f"{_shm.PREFIX}{dead}_abc",
        "live": f"{_shm.PREFIX}{os.getppid()}_abc",  # the creator (our parent) is alive
        "foreign": f"other_{dead}_abc",  # not our prefix: never touched
        "odd": f"{_shm.PREFIX}notapid_abc",  # our prefix, no pid: left alone
    }
    paths = {k: os.path.join(_shm.SHM_DIR, v) for k, v in names.items()}
    try:
        for p in paths.values():
            with open(p, "wb") as f:
                f.write(b"x")
        e = engine.Engine(max_workers=1)
        e.close()
        assert not os.path.exists(paths["stale"])
        assert os.path.exists(paths["live"]) and os.path.exists(paths["foreign"]) and os.path.exists(paths["odd"])
    finally:
        for p in paths.values():
            if os.path.exists(p):
                os.unlink(p)


def test_every_worker_of_a_group_gets_a_band(eng, rng):
    """With as many bands as workers (a small image), each worker runs one band: the first
    worker must not be handed both while the second waits."""
    img = rng.integers(0, 256, (128, 96, 3), dtype=np.uint8)
    for _ in range(3):
        res = eng.filter_pair(img, "sobel", "gaussian", processes=(2, 2))
        for fi in (0, 1):
            recs = [r for r in res.timeline if r.filter == fi]
            assert len(recs) == 2
            assert len({r.pid for r in recs}) == 2, recs


def test_the_engine_keeps_no_result_alive(eng):
    """Once the caller drops a result, nothing of the engine's holds it (its job threads are
    reused: an idle one once kept its last job, and with it 2 results, alive)."""
    img = np.zeros((64, 64, 3), np.uint8)
    res = eng.filter_pair(img, "sobel", "gaussian", processes=(1, 1))
    refs = [weakref.ref(o) for o in res.outputs]
    del res
    deadline = time.monotonic() + 2
    while any(r() is not None for r in refs) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert all(r() is None for r in refs), "a result outlived every reference of the caller"


# -- results in shared memory (issue 11: no copy-out) ---------------------------------------------
def test_a_new_result_is_the_output_segment_and_returns_to_the_pool(eng, count_segments):
    """filter_image without ``out=`` hands back the segment the workers wrote (no copy-out):
    read in place by a later call, and pooled again, not leaked, once the caller drops it."""
    img = rgb(96, 80, 3)
    first = eng.filter_image(img, "gaussian", processes=2)
    name = eng._descriptor(first).name  # noqa: SLF001 - the engine owns the result's memory
    assert name in _shm.live_segments()
    count_segments.clear()
    again = eng.filter_image(first, "sobel", processes=2, output="abs")  # zero-copy input
    assert len(count_segments) == 1  # only the new result: the input is read in place
    assert np.array_equal(again, eng.filter_image(np.array(first), "sobel", processes=2, output="abs"))
    view = first[10:20]
    del first
    gc.collect()
    assert name in _shm.live_segments() and view.sum() >= 0  # a view keeps the memory alive
    del view, again
    gc.collect()
    eng.filter_image(np.zeros((2, 2), np.uint8), "identity", processes=1)  # takes returned segments
    assert name in _shm.live_segments()  # back in the engine's pool, not unlinked and not leaked
    count_segments.clear()
    eng.filter_image(img, "gaussian", processes=2)
    assert len(count_segments) == 2


def test_a_result_collected_inside_the_pools_bookkeeping_is_pooled_after_it(eng, monkeypatch):
    """The garbage collector may free a result (held in a reference cycle) at any allocation,
    also while the segment pool holds its lock: the segment goes back to the pool afterwards
    instead of re-entering the pool from the finalizer (which deadlocked the job thread)."""
    real, real_give, reentered = _shm.SegmentPool.nbytes, _shm.SegmentPool.give, []

    def nbytes(self):  # an automatic collection at this allocation, made certain
        gc.collect()
        return real(self)

    def give(self, seg):  # a give from inside the pool's bookkeeping may find its dict mid-iteration
        reentered.append(self.held_here())
        return real_give(self, seg)

    gc.disable()
    try:
        res = eng.filter_image(rgb(64, 48, 3), "box_3x3", processes=1)
        name = eng._descriptor(res).name  # noqa: SLF001
        cycle = [res]
        cycle.append(cycle)
        del res, cycle  # only a collection frees it now
        monkeypatch.setattr(_shm.SegmentPool, "nbytes", nbytes)
        monkeypatch.setattr(_shm.SegmentPool, "give", give)
        job = eng.submit(rgb(20, 10, 3), engine.FilterRequest(["identity"]), processes=1)
        assert job.result(timeout=30).outputs[0].shape == (20, 10, 3)  # no deadlock
    finally:
        gc.enable()
    monkeypatch.undo()
    eng.filter_image(np.zeros((2, 2), np.uint8), "identity", processes=1)  # takes returned segments
    assert reentered and not any(reentered)
    assert name in eng._scratch.names() and name in _shm.live_segments()  # noqa: SLF001 - pooled, not leaked


def test_an_array_collected_while_a_worker_message_is_written_does_not_deadlock(eng, monkeypatch):
    """A collection may free an engine array (held in a reference cycle) while this thread writes
    a message to an idle worker: the array's finalizer unlinks its segment and would tell the
    same worker to unmap it, waiting on the pipe lock this thread holds, for good. It puts that
    off instead, and the next job finishes it."""
    eng.filter_image(rgb(64, 48, 3), "gaussian", processes=2)  # two idle workers
    victim = eng.shared_array((16, 16, 1), np.uint8)
    name = eng._descriptor(victim).name  # noqa: SLF001
    cycle = [victim]
    cycle.append(cycle)
    del victim  # only a collection frees it now
    real_send = type(eng._idle[0].conn).send  # noqa: SLF001

    def send(conn, obj):  # an automatic collection at this allocation, made certain
        gc.collect()
        return real_send(conn, obj)

    gc.disable()
    try:
        monkeypatch.setattr(type(eng._idle[0].conn), "send", send)  # noqa: SLF001
        trigger = eng.shared_array((16, 16, 1), np.uint8)
        freeing = threading.Thread(target=_drop, args=([trigger],), daemon=True)
        del trigger, cycle
        freeing.start()
        freeing.join(20)
        assert not freeing.is_alive(), "the thread that freed the array is stuck on a worker's pipe lock"
    finally:
        gc.enable()
        monkeypatch.undo()
    assert in_shm(name)  # put off, not lost
    img = rgb(64, 48, 3)
    assert np.array_equal(eng.filter_image(img, "sobel", processes=2), eng.filter_image(img, "sobel", processes=1))
    assert not in_shm(name) and name not in _shm.live_segments()


def _drop(holder: list) -> None:
    """Free the one array in ``holder`` on this thread (its finalizer runs here)."""
    holder.pop()


def test_a_pairs_passes_go_to_the_filters_workers_in_turn(eng, monkeypatch):
    """A0, B0, A1, B1: with more workers than CPUs the first ones sent take the CPUs, so each
    filter starts on one at once (sent A0, A1, B0, B1, B waited a time slice)."""
    sent, real = [], engine._pool._Worker.start  # noqa: SLF001

    def start(self, message, tokens):
        sent.append((message.filter, message.first))
        return real(self, message, tokens)

    monkeypatch.setattr(engine._pool._Worker, "start", start)  # noqa: SLF001
    eng.filter_pair(rgb(64, 40, 3), "gaussian", "sobel", processes=(1, 3))
    assert sent == [(0, 0), (1, 0), (1, 1), (1, 2)]
    sent.clear()
    eng.filter_pair(rgb(64, 40, 3), "gaussian", "sobel", processes=(2, 2))
    assert sent == [(0, 0), (1, 0), (0, 1), (1, 1)]


def test_a_pairs_first_bands_wait_for_each_other_at_the_gate_without_the_parent(eng, monkeypatch):
    """The job thread may lose the GIL for milliseconds between A's and B's first sends (a
    Streamlit script runs in the same process); A's first band waits at the gate until B's first
    worker is there too, and the two let each other through: here B's pass goes out 0.3 s after
    A's and the parent never opens the gate, yet neither first band starts before B's pass was
    sent, and the pair is not held until the worker's safety valve (``GATE_TIMEOUT``, 5 s)."""
    sent, starts = [], []
    real_start, real_init = engine._pool._Worker.start, engine._pool._Passes.__init__  # noqa: SLF001

    def start(self, message, tokens):
        if message.filter == 1 and message.gate:
            time.sleep(0.3)
            sent.append(time.perf_counter())
        return real_start(self, message, tokens)

    def init(self, job, workers, src, dsts, t_start):
        starts.append(t_start)
        real_init(self, job, workers, src, dsts, t_start)

    opened = []
    monkeypatch.setattr(engine._pool._Worker, "start", start)  # noqa: SLF001
    monkeypatch.setattr(engine._pool._Passes, "__init__", init)  # noqa: SLF001
    monkeypatch.setattr(engine.Engine, "_open_gate", lambda self, number: opened.append(number))
    img = rgb(64, 40, 3)
    res = eng.filter_pair(img, "gaussian", "sobel", processes=(1, 1))
    assert len(sent) == 1 and len(opened) == 1
    firsts = [starts[0] + min(r.start for r in res.timeline if r.filter == fi) for fi in (0, 1)]
    assert min(firsts) >= sent[0]
    assert max(firsts) - sent[0] < 0.5 * _worker.GATE_TIMEOUT
    np.testing.assert_array_equal(res.outputs[0], eng.filter_image(img, "gaussian"))
    opened.clear()
    eng.filter_image(img, "gaussian", processes=2)  # one filter: nothing to wait for
    assert opened == []


def test_a_failed_send_lets_the_worker_waiting_at_the_gate_go_at_once(eng, monkeypatch):
    """B's first pass fails to go out: A's first worker, already waiting at the gate, must not
    wait for B (or until its 5 s safety valve): the job thread lets the pair through in a
    ``finally``, the job fails fast, and the next pair is right (no message left unread)."""
    real_start = engine._pool._Worker.start  # noqa: SLF001

    def start(self, message, tokens):
        if message.filter == 1 and message.gate:
            raise RuntimeError("send failed (test)")
        return real_start(self, message, tokens)

    img = rgb(64, 40, 3)
    monkeypatch.setattr(engine._pool._Worker, "start", start)  # noqa: SLF001
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="send failed"):
        eng.filter_pair(img, "gaussian", "sobel", processes=(1, 1))
    assert time.monotonic() - t0 < 0.5 * _worker.GATE_TIMEOUT
    monkeypatch.undo()
    a, b = eng.filter_pair(img, "gaussian", "sobel", processes=(1, 1))
    np.testing.assert_array_equal(a, eng.filter_image(img, "gaussian"))
    np.testing.assert_array_equal(b, eng.filter_image(img, "sobel"))


def test_the_first_workers_pass_the_gate_together_and_the_others_go_once_they_passed(eng, monkeypatch):
    """Jobs of several sessions may open their gates out of order: the value never goes back (a
    lower one would hold a later pair's workers until the safety valve). The two first workers
    pass once both have arrived (B's may still be unmapping the last image's segments: here it
    reads a long Release first); with more workers than CPUs the second round goes out once
    both are past it."""
    earlier, later = eng._gate_number(), eng._gate_number()  # noqa: SLF001
    eng._open_gate(later)  # noqa: SLF001
    eng._open_gate(earlier)  # noqa: SLF001
    assert eng._gate.value == later  # noqa: SLF001
    sent, real = [], engine._pool._Worker.start  # noqa: SLF001

    def start(self, message, tokens):
        firsts = [(w, n) for w, m, n in sent if m.gate]
        sent.append((self, message, self.gate_steps.value))
        if message.filter == 1 and message.gate:  # B's first worker: a few ms of work before the pass
            self.release(tuple(f"{_shm.PREFIX}not-mapped-{i}" for i in range(10_000)))
        if not message.gate:
            assert all(w.gate_steps.value == n + 2 for w, n in firsts), "a second-round pass went out too early"
        return real(self, message, tokens)

    def open_gate(self, number):
        at_open.extend(w.gate_steps.value - n for w, m, n in sent if m.gate)
        real_open(self, number)

    at_open, real_open = [], engine.Engine._open_gate
    monkeypatch.setattr(engine._pool._Worker, "start", start)  # noqa: SLF001
    monkeypatch.setattr(engine.Engine, "_open_gate", open_gate)
    eng.filter_pair(rgb(64, 40, 3), "gaussian", "sobel", processes=(2, 2))
    assert [(m.filter, m.first, bool(m.gate)) for _, m, _ in sent] == [(0, 0, True), (1, 0, True), (0, 1, False),
                                                                      (1, 1, False)]
    assert at_open == [2, 2]  # the job thread let the pair through only once both had passed by themselves


def test_numpy_out_is_written_and_two_d_results_keep_their_shape(eng):
    img = rgb(300, 64, 1)[:, :, 0]
    out = np.empty_like(img)
    assert eng.filter_image(img, "sobel", processes=2, out=out) is out
    res = eng.filter_image(img, "sobel", processes=2)
    assert res.shape == img.shape and np.array_equal(res, out)


def test_copies_in_row_blocks_on_several_threads(eng, monkeypatch):
    """Big copies (input in, a numpy ``out=`` out) are split over threads, bit for bit."""
    monkeypatch.setattr(type(eng), "PARALLEL_COPY_BYTES", 1)
    img = rgb(257, 33, 3)
    out = np.empty_like(img)
    assert np.array_equal(eng.filter_image(img, "box_3x3", processes=2, out=out),
                          eng.filter_image(img.copy(), "box_3x3", processes=1))
    src, dst = rgb(5, 7, 3), np.zeros((5, 7, 3), np.uint8)
    eng._copy(dst, src)  # noqa: SLF001
    assert np.array_equal(dst, src)


def test_routes_are_reported_and_depend_on_the_request_alone(eng):
    img8, img16 = rgb(40, 30, 3), rgb(40, 30, 3, np.uint16)
    res = eng.filter_pair(img8, "gaussian", "laplacian", processes=(1, 2), output="abs")
    assert res.routes == ("direct", "direct")
    assert eng.filter_pair(img16, "gaussian", "motion_blur", processes=(2, 1)).routes == ("float32", "general")
    assert eng.filter_pair(img8, "gaussian", "sobel", output="normalize", processes=(1, 1)).routes == ("general",) * 2
    assert eng.filter_pair(img8, "gaussian", "sobel", implementation="numpy", processes=(1, 1)).routes == ("numpy",) * 2
    assert set(engine.ROUTES) == {"direct", "float32", "general", "numpy", "python"}


def test_serial_time_is_one_band_on_one_worker(eng):
    img = rgb(200, 300, 3)
    t = eng.serial_time(img, "gaussian", repeats=2)
    assert 0 < t < 5
    with pytest.raises(ValueError, match=r"^repeats must be an integer from 1 to 100, got 0$"):
        eng.serial_time(img, "gaussian", repeats=0)
    with pytest.raises(ValueError, match=r"^kernel 'nope' is not a known kernel"):
        eng.serial_time(img, "nope")


def _deleted_mappings(pids) -> int:
    """Mappings of unlinked segments of ours in these processes (still holding their memory)."""
    n = 0
    for pid in pids:
        with open(f"/proc/{pid}/maps") as f:
            n += sum(1 for line in f if f"/dev/shm/{_shm.PREFIX}" in line and "(deleted)" in line)
    return n


def test_workers_unmap_a_shared_array_the_caller_dropped():
    """A dropped ``shared_array`` is unmapped by the workers that used it, not only unlinked:
    otherwise a server that makes a new input (or out=) array per image keeps every old one's
    memory alive inside its workers (the dashboard, issue 13)."""
    with engine.Engine(max_workers=2) as e:
        img = rgb(256, 64)
        for _ in range(4):
            src = e.shared_array(img.shape, img.dtype)
            src[...] = img
            outs = (e.shared_array(img.shape, img.dtype), e.shared_array(img.shape, img.dtype))
            e.filter_pair(src, "sobel", "gaussian", processes=(1, 1), out=outs)
            del src, outs
            gc.collect()
        # idle workers are told at once, not at their next job
        deadline = time.monotonic() + 5
        while _deleted_mappings(e.idle_workers()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _deleted_mappings(e.idle_workers()) == 0
