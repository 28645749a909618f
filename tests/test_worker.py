"""A worker's pass, run in this process: bands claimed from the token pipe, one answer, errors.

The engine hands each worker of a group its first band and puts the other bands, as tokens, in a
pipe that the group's workers read themselves (``engine._worker``). Here one "worker" runs a pass
over a real segment with the same socket pair and file-descriptor passing the engine uses.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from multiprocessing import reduction

import numpy as np
import pytest

from engine import KERNELS, _shm, _worker
from engine._bands import plan_bands
from engine._compute import filter_band

IMG = np.random.default_rng(3).integers(0, 256, (64, 48, 3), dtype=np.uint8)


@pytest.fixture
def segments():
    made = []

    def make(array):
        seg = _shm.Segment(array.nbytes)
        np.ndarray(array.shape, array.dtype, buffer=seg.buf)[...] = array
        made.append(seg)
        return seg, _shm.SegmentRef.whole(seg, array.shape, array.dtype)

    yield make
    _worker._ATTACHED.release([seg.name for seg in made])  # noqa: SLF001
    for seg in made:
        seg.release()


def run_pass(kind, fi, plan, src, dst, kernel, border, output, impl, first, tokens):
    """``_worker.run_pass`` as the engine drives it; returns (answer, bands counted, the pipe's
    leftover token or None, whether the socket still holds unread data)."""
    spec = _worker.Pass(fi, kind, tuple(plan), src, dst, kernel, border, output, impl, None, first, bool(tokens))
    parent, child = mp.Pipe(duplex=True)
    counter = mp.RawValue("q", 0)
    r = None
    try:
        if tokens:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.write(w, b"".join(i.to_bytes(_worker.TOKEN_BYTES, "little") for i in tokens))
            os.close(w)
            reduction.send_handle(parent, r, os.getpid())
        answer = _worker.run_pass(child, spec, counter)
        return answer, counter.value, _worker.claim(r) if r is not None else None, child.poll(0)
    finally:
        if r is not None:
            os.close(r)
        parent.close()
        child.close()


def test_a_pass_runs_its_first_band_then_every_token_once(segments):
    k = KERNELS["gaussian"]
    _, src = segments(IMG)
    out_seg, dst = segments(np.zeros_like(IMG))
    plan = plan_bands(IMG.shape[0], k.shape[0], 5)
    answer, counted, left, unread = run_pass("filter", 1, plan, src, dst, k, "replicate", "clip", "opencv", 2, [0, 1, 3, 4])
    assert isinstance(answer, _worker.PassDone) and (answer.filter, answer.pid) == (1, os.getpid())
    done = answer.bands
    assert [d.index for d in done] == [2, 0, 1, 3, 4]  # the first band, then the tokens in order
    assert all(d.start <= d.end for d in done) and all(d.value_range is None for d in done)
    assert counted == 5 and left is None and not unread
    want = np.zeros_like(IMG)
    filter_band(IMG, want, plan_bands(IMG.shape[0], k.shape[0], 1)[0], k, "replicate", "clip", "opencv")
    assert np.array_equal(np.ndarray(IMG.shape, IMG.dtype, buffer=out_seg.buf), want)


def test_a_range_pass_answers_each_bands_range(segments):
    _, src = segments(IMG)
    plan = plan_bands(IMG.shape[0], 3, 2)
    answer, counted, _, _ = run_pass("range", 0, plan, src, None, KERNELS["sobel"], "mirror", "normalize", "numpy", 0, [1])
    assert isinstance(answer, _worker.PassDone) and counted == 2 and [d.index for d in answer.bands] == [0, 1]
    assert all(d.value_range[0] <= d.value_range[1] for d in answer.bands)


def test_a_failed_pass_empties_the_pipe_and_answers_the_error(segments):
    _, dst = segments(np.zeros_like(IMG))
    missing = _shm.SegmentRef("pfl_0_missing", IMG.shape, IMG.dtype.str)  # no such segment
    plan = plan_bands(IMG.shape[0], 5, 4)
    answer, counted, left, unread = run_pass("filter", 0, plan, missing, dst, KERNELS["gaussian"], "replicate", "clip",
                                             "opencv", 0, [1, 2, 3])
    assert isinstance(answer, _worker.PassFailed) and isinstance(answer.error, FileNotFoundError)
    # the group's other workers find the pipe empty; the pipe's fd was read off the socket
    assert counted == 0 and left is None and not unread


def test_claim_reads_whole_tokens_and_none_when_empty():
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        os.write(w, (7).to_bytes(2, "little") + (300).to_bytes(2, "little"))
        assert [_worker.claim(r), _worker.claim(r), _worker.claim(r)] == [7, 300, None]
        os.write(w, (1).to_bytes(2, "little") * 3)
        _worker.empty(r)
        assert _worker.claim(r) is None
    finally:
        os.close(r)
        os.close(w)


def test_wait_gate_returns_once_the_number_is_open_and_gives_up_after_its_timeout():
    ctx = mp.get_context("spawn")
    gate, nobody = ctx.RawValue("q", 4), ctx.RawArray("q", 2)  # no filter has arrived
    t0 = time.monotonic()
    _worker.wait_gate(gate, nobody, 4, timeout=30)  # open: 4 >= 4
    _worker.wait_gate(gate, nobody, 3, timeout=30)  # an older pair's number
    assert time.monotonic() - t0 < 5
    t0 = time.monotonic()
    _worker.wait_gate(gate, nobody, 5, timeout=0.2)  # never opened: the safety valve lets the band run
    assert time.monotonic() - t0 >= 0.2


def test_the_gate_holds_the_cpu_first_then_yields(monkeypatch):
    """A first worker keeps its CPU while the other is on its way (``hold``), then yields it."""
    yields = []
    monkeypatch.setattr(_worker.os, "sched_yield", lambda: yields.append(time.monotonic()))
    ctx = mp.get_context("spawn")
    gate, arrivals = ctx.RawValue("q", 0), ctx.RawArray("q", 2)
    t0 = time.monotonic()
    _worker.wait_gate(gate, arrivals, 1, timeout=0.05, hold=0.02)
    assert time.monotonic() - t0 >= 0.05
    assert yields and min(yields) - t0 >= 0.02  # none while held, then yielding between looks
    yields.clear()
    _worker.wait_gate(gate, arrivals, 1, timeout=0.02, hold=1.0)  # held for the whole wait
    assert not yields


def test_wait_gate_lets_a_pair_through_once_both_filters_have_arrived():
    """A pair's two first workers let each other through: both ``arrivals`` slots must hold the
    pair's number (an older pair's number in one slot is not an arrival)."""
    ctx = mp.get_context("spawn")
    gate, arrivals = ctx.RawValue("q", 0), ctx.RawArray("q", 2)
    arrivals[0], arrivals[1] = 7, 6  # B's slot still holds the last pair's number
    t0 = time.monotonic()
    _worker.wait_gate(gate, arrivals, 7, timeout=0.2)
    assert time.monotonic() - t0 >= 0.2
    arrivals[1] = 7
    t0 = time.monotonic()
    _worker.wait_gate(gate, arrivals, 7, timeout=30)
    assert time.monotonic() - t0 < 5
