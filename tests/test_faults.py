"""Faults: workers killed mid-job, jobs cancelled at random points, Ctrl-C to the CLI.

* SIGKILL one worker of a running job, many times in a row: every job fails with
  ``engine.WorkerError`` within 5 s, the next job succeeds and matches the oracle, nothing is
  left in /dev/shm after ``close()``. 5 kills in CI, 20 with ``PFL_LONG=1``.
* A new worker killed while it starts, and SIGKILLs of random workers while three threads run
  pairs: every job ends right or with ``WorkerError``, never wrong (a worker whose pid message
  was never read is not handed out).
* ``job.cancel()`` after random (seeded) delays: ``JobCancelled`` or a correct result, no
  segment left, the workers stay healthy.
* SIGINT to the CLI's process group (what Ctrl-C in a terminal sends) at random points while it
  filters a big image: exit 130 with one line on stderr, every process started under it gone,
  none of its segments left.

* SIGKILL of the process that owns an engine: its workers exit and unlink its segments.

The dashboard server (SIGKILL, restart, sweep) is in tests/test_dashboard_reliability.py.
Figures: docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import psutil
import pytest

import engine
from _oracle import assert_close
from _proc import ROOT, cli_command, engine_children, child_pids, kill_marked, marked_env, segments_of, wait_gone
from engine import _shm

LONG = os.environ.get("PFL_LONG") == "1"
WORKER_ERROR_LIMIT = 5.0  # seconds from the kill to WorkerError (the bound)

#: A job that runs for seconds on 2 processes (numpy, 225 taps, 6.75 M values per filter),
#: so that a kill lands mid-flight.
BIG = np.random.default_rng(1).integers(0, 256, (1500, 1500, 3), dtype=np.uint8)
BOX15 = np.full((15, 15), 1 / 225)
CHECK = np.random.default_rng(2).integers(0, 256, (300, 200, 3), dtype=np.uint8)


def _own_segments_leaked(before: set[str]) -> set[str]:
    """This process's segments in /dev/shm that no live engine owns and that were not there before."""
    return set(segments_of(os.getpid())) - before - _shm.live_segments()


def kill_workers_mid_job(kills: int, seed: int = 6) -> dict:
    """Run ``kills`` jobs, SIGKILL one of their workers at a random point of each, and check
    the error, the recovery and the segments. Returns the figures for docs/reliability.md."""
    rng = random.Random(seed)
    baseline = child_pids()
    segs_before = set(segments_of(os.getpid()))
    delays, times, victims = [], [], []
    eng = engine.Engine(max_workers=4)
    try:
        eng.filter_pair(CHECK, "sobel", "gaussian", processes=(2, 2))  # start the four workers
        for i in range(kills):
            pair = i % 2 == 0
            job = eng.submit(BIG, engine.FilterRequest([BOX15, BOX15] if pair else [BOX15], implementation="numpy"), processes=(2, 2) if pair else 4)
            deadline = time.monotonic() + 30
            while job.state() != "running" and time.monotonic() < deadline:
                time.sleep(0.005)
            delay = rng.uniform(0.0, 0.4)
            time.sleep(delay)
            assert not job.done(), f"kill {i}: the job ended before the kill ({job.state()}): make it longer"
            workers = sorted(engine_children(baseline), key=lambda p: p.pid)
            assert len(workers) == 4, f"kill {i}: expected the job's 4 workers, found {[w.pid for w in workers]}"
            victim = rng.choice(workers)
            t0 = time.perf_counter()
            victim.send_signal(signal.SIGKILL)
            with pytest.raises(engine.WorkerError, match=rf"worker process {victim.pid}( of filter [AB])? was killed "
                                                         r"with SIGKILL.*the next job runs"):
                job.result(timeout=60)
            times.append(time.perf_counter() - t0)
            delays.append(delay)
            victims.append(victim.pid)
            assert job.state() == "failed"
            assert not _own_segments_leaked(segs_before), f"kill {i}: segments left by the failed job"
            # the next job runs, on rebuilt workers, and is right
            res = eng.filter_pair(CHECK, "sobel", "gaussian", processes=(2, 2))
            assert_close(res.outputs[0], CHECK, engine.KERNELS["sobel"].weights, "replicate", "clip", f"after kill {i}")
            assert_close(res.outputs[1], CHECK, engine.KERNELS["gaussian"].weights, "replicate", "clip", f"after kill {i}")
            assert victim.pid not in {r.pid for r in res.timeline}
    finally:
        eng.close()
    leaked = set(segments_of(os.getpid())) - segs_before - _shm.live_segments()
    assert not leaked, f"segments left after close(): {sorted(leaked)}"
    assert not engine_children(baseline), "worker processes alive after close()"
    figures = {"kills": kills, "recovered": len(times), "max_s": max(times), "mean_s": sum(times) / len(times),
               "segments_leaked": len(leaked)}
    print(f"\nSIGKILL figures: {figures}; kill delays after start {[round(d, 2) for d in delays]}")
    assert max(times) <= WORKER_ERROR_LIMIT, f"WorkerError took {max(times):.2f} s (limit {WORKER_ERROR_LIMIT} s): {times}"
    return figures


@pytest.mark.timeout(120)
def test_sigkill_a_worker_mid_job_5_times():
    kill_workers_mid_job(5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_a_worker_mid_job_20_times_in_a_row():
    kill_workers_mid_job(20, seed=20)


@pytest.mark.timeout(120)
def test_a_worker_that_dies_while_starting_fails_its_job_and_no_unstarted_worker_is_handed_out(monkeypatch):
    """A new worker killed before it reports its pid (the OOM killer, a kill -9 while it still
    imports): that job fails with WorkerError, and the other new workers of the same lease, whose
    pid message was never read, must not go to the next job: each would answer the next pass with
    its pid, then stay one message behind for ever (a job ending while a band still writes its
    output: wrong results)."""
    real, calls = engine._pool._Worker.ready, []  # noqa: SLF001

    def ready(self, timeout=engine._pool._START_TIMEOUT):  # noqa: SLF001
        calls.append(self)
        if len(calls) == 1:
            self.process.kill()
            self.process.join()
        return real(self, timeout)

    eng = engine.Engine(max_workers=4)
    try:
        monkeypatch.setattr(engine._pool._Worker, "ready", ready)  # noqa: SLF001
        with pytest.raises(engine.WorkerError, match="failed to start"):
            eng.filter_pair(CHECK, "sobel", "gaussian", processes=(2, 2))
        monkeypatch.undo()
        assert len(calls) == 1 and all(w.pid is not None for w in eng._idle)  # noqa: SLF001
        for i in range(3):
            res = eng.filter_pair(CHECK, "sobel", "gaussian", processes=(2, 2))
            assert_close(res.outputs[0], CHECK, engine.KERNELS["sobel"].weights, "replicate", "clip", f"job {i}")
            assert_close(res.outputs[1], CHECK, engine.KERNELS["gaussian"].weights, "replicate", "clip", f"job {i}")
    finally:
        eng.close()


@pytest.mark.timeout(300)
def test_random_kills_while_three_threads_run_pairs_give_no_wrong_result():
    """SIGKILL a random worker every 0.3-0.7 s while three threads run pairs (1+1 and 2+2): a
    kill can land on a worker mid-band, idle, or still starting. Every job ends with the right
    result or WorkerError, never a wrong one; nothing is left after close(). 5 s in CI, 30 s
    with PFL_LONG=1 (docs/reliability.md)."""
    seconds = 30 if LONG else 5
    baseline = child_pids()
    segs_before = set(segments_of(os.getpid()))
    eng = engine.Engine(max_workers=8)
    counts, other, lock = {"ok": 0, "worker_error": 0, "wrong": 0}, [], threading.Lock()
    try:
        ref = (eng.filter_image(CHECK, "gaussian_11x11", processes=1), eng.filter_image(CHECK, "sobel", processes=1))
        stop = time.monotonic() + seconds

        def run(seed):
            rnd = random.Random(seed)
            while time.monotonic() < stop:
                try:
                    res = eng.filter_pair(CHECK, "gaussian_11x11", "sobel", processes=rnd.choice([(1, 1), (2, 2)]))
                    key = "ok" if all(np.array_equal(o, r) for o, r in zip(res.outputs, ref)) else "wrong"
                except engine.WorkerError:
                    key = "worker_error"
                except Exception as e:  # noqa: BLE001 - reported below
                    with lock:
                        other.append(repr(e))
                    continue
                with lock:
                    counts[key] += 1

        def killer():
            rnd = random.Random(9)
            while time.monotonic() < stop:
                time.sleep(rnd.uniform(0.3, 0.7))
                workers = engine_children(baseline)
                if workers:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        rnd.choice(workers).send_signal(signal.SIGKILL)

        threads = [threading.Thread(target=run, args=(s,)) for s in range(3)] + [threading.Thread(target=killer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        eng.close()
    print(f"\nrandom kills ({seconds} s): {counts}, other errors {other[:3]}")
    assert counts["wrong"] == 0 and not other, (counts, other[:3])
    assert counts["ok"] > 0 and counts["worker_error"] > 0, counts
    assert not set(segments_of(os.getpid())) - segs_before - _shm.live_segments()
    assert not engine_children(baseline), "worker processes alive after close()"


# -- cancel at random points ---------------------------------------------------------------------
MID = np.random.default_rng(3).integers(0, 256, (600, 500, 3), dtype=np.uint8)


@pytest.mark.timeout(180)
def test_cancel_at_random_points(eng):
    """Cancel 12 jobs (40 with PFL_LONG=1) after random delays: each ends as cancelled (or done,
    if it finished first, with the right result) within a few bands; workers and segments survive."""
    rng = random.Random(11)
    # the job's time: the median of 3 after a warm-up run (a slow first run made most jobs end
    # before their cancel)
    runs = [eng.filter_pair(MID, BOX15, "sobel", processes=(2, 2), implementation="numpy") for _ in range(4)]
    want = runs[0]
    workers = sorted(eng.idle_workers())
    full = sorted(r.phases.wall for r in runs[1:])[1]
    segs_before = set(segments_of(os.getpid()))
    outcomes, latencies = {"cancelled": 0, "done": 0}, []
    for i in range(40 if LONG else 12):
        job = eng.submit(MID, engine.FilterRequest([BOX15, "sobel"], implementation="numpy"), processes=(2, 2))
        time.sleep(rng.uniform(0, 1.1 * full))
        t0 = time.perf_counter()
        job.cancel()
        try:
            res = job.result(timeout=30)
        except engine.JobCancelled:
            outcomes["cancelled"] += 1
            assert job.state() == "cancelled" and job.cancelled()
        else:
            outcomes["done"] += 1
            for got, exp in zip(res.outputs, want.outputs):
                np.testing.assert_array_equal(got, exp)
        latencies.append(time.perf_counter() - t0)
        assert not _own_segments_leaked(segs_before), f"cancel {i}: segments left"
    assert sorted(eng.idle_workers()) == workers, "a cancel cost a worker"
    res = eng.filter_pair(MID, BOX15, "sobel", processes=(2, 2), implementation="numpy")
    for got, exp in zip(res.outputs, want.outputs):
        np.testing.assert_array_equal(got, exp)
    print(f"\ncancel figures: {outcomes}, max latency {max(latencies):.2f} s, job {full:.2f} s")
    assert outcomes["cancelled"] >= 5
    assert max(latencies) < 10


@pytest.mark.timeout(60)
def test_cancel_while_waiting_for_workers(eng):
    busy = eng.submit(MID, engine.FilterRequest([BOX15, BOX15], implementation="numpy"), processes=(2, 2))
    waiting = eng.submit(MID, engine.FilterRequest(["sobel"]), processes=2)
    time.sleep(0.1)
    assert waiting.state() == "waiting"
    assert waiting.cancel()
    with pytest.raises(engine.JobCancelled, match="cancelled while waiting for workers"):
        waiting.result(timeout=5)
    assert waiting.progress()[0] == 0
    res = busy.result(timeout=120)
    np.testing.assert_array_equal(res.outputs[0], res.outputs[1])
    assert not busy.cancel()  # already finished


# -- Ctrl-C to the CLI ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def big_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("ctrlc") / "big.png"
    img = np.random.default_rng(4).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)
    engine.save_image(img, path)
    return path


CTRL_C_LIMIT = 5.0  # seconds from SIGINT to the CLI's exit
BOX15_TEXT = ";".join([" ".join(["1/225"] * 15)] * 15)


def _sigint_as_in_a_terminal():
    """A job started in the background (``cmd &``, nohup) inherits SIGINT ignored, and Python
    then rightly keeps ignoring it; a terminal's foreground job has it at its default. The CLI
    here is that foreground job, whatever started the test run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ctrl_c_cli(big_png, out, delay: float) -> tuple[int, str, list, list, bool, float]:
    """Start the CLI in its own process group, wait until it runs (it has started a child),
    wait ``delay`` more, send SIGINT to the group as a terminal does, and collect the outcome."""
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(
        cli_command("filter", big_png, out, "--kernel", BOX15_TEXT, "--implementation", "numpy", "--processes", "2"),
        cwd=ROOT, env=marked_env(mark), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=_sigint_as_in_a_terminal,
    )
    try:
        p = psutil.Process(proc.pid)
        deadline = time.monotonic() + 30
        while not p.children() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        interrupted = proc.poll() is None
        t0 = time.perf_counter()
        if interrupted:
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        latency = time.perf_counter() - t0
        procs, segs = wait_gone(mark, proc.pid)
        return proc.returncode, err, procs, segs, interrupted, latency
    finally:
        kill_marked(mark)


@pytest.mark.timeout(240)
def test_ctrl_c_in_the_cli_at_random_points(big_png, tmp_path):
    rng = random.Random(5)
    n = 20 if LONG else 6
    # the first three land while the workers are still being spawned (importing numpy)
    delays = [0.03, 0.07, 0.12] + [rng.uniform(0, 3.0) for _ in range(n - 3)]
    codes, latencies = [], []
    for i, delay in enumerate(delays):
        code, err, procs, segs, interrupted, latency = _ctrl_c_cli(big_png, tmp_path / f"out{i}.png", delay)
        lines = err.splitlines()
        assert not procs, f"Ctrl-C after {delay:.2f} s left processes: {procs}"
        assert not segs, f"Ctrl-C after {delay:.2f} s left segments: {segs}"
        if interrupted and code != 0:
            assert code == 130, (delay, code, err)
            assert lines == ["interrupted: the job was cancelled and its workers stopped"], (delay, err)
            assert not (tmp_path / f"out{i}.png").exists()
            latencies.append(latency)
        else:  # it finished before the signal
            assert code == 0 and err == "", (delay, code, err)
        codes.append(code)
    assert latencies, f"no run was interrupted by its SIGINT (exit codes {codes}): every job ended first"
    print(f"\nCtrl-C figures: {n} runs, exit codes {codes}, SIGINT to exit max {max(latencies):.2f} s")
    assert codes.count(130) >= n // 2
    # Ctrl-C stops the job's workers instead of waiting for their bands (seconds each here)
    assert max(latencies) < CTRL_C_LIMIT, f"the CLI took {max(latencies):.2f} s to exit after Ctrl-C: {latencies}"


OWNER = """
import sys, numpy as np, engine
if __name__ == "__main__":
    eng = engine.Engine(max_workers=2)
    shared = eng.shared_array((300, 200, 3), np.uint8)
    result = eng.filter_image(np.zeros((300, 200, 3), np.uint8), "sobel", processes=2, out=shared)
    print("ready", flush=True)
    sys.stdin.read()  # until killed
"""


def test_a_killed_owners_workers_unlink_its_segments_and_exit():
    """SIGKILL leaves the owner no chance to unlink (a Jupyter kernel killed at shutdown, the OOM
    killer): its workers see the parent gone, sweep its segments and exit."""
    mark = uuid.uuid4().hex
    owner = subprocess.Popen([sys.executable, "-c", OWNER], cwd=ROOT, env=marked_env(mark), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "ready"
        held = segments_of(owner.pid)
        assert len(held) >= 2, held  # the shared array, the pooled input segment
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=10)
        procs, segs = wait_gone(mark, owner.pid, timeout=10)
        assert not procs, f"workers of the killed owner still alive: {procs}"
        assert not segs, f"segments of the killed owner left in /dev/shm: {segs}"
    finally:
        if owner.poll() is None:
            owner.kill()
        kill_marked(mark)
