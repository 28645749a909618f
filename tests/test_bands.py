"""The band planner on its own, exhaustively on small sizes, before any process touches it."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine import plan_bands

HEIGHTS = range(1, 41)
N_BANDS = range(1, 13)


def halo(k):
    return k // 2, k - 1 - k // 2


def check_plan(height, k, n, wrap):
    bands = plan_bands(height, k, n, wrap=wrap)
    where = f"plan_bands({height}, {k}, {n}, wrap={wrap}) = {bands}"
    top, bottom = halo(k)
    assert isinstance(bands, tuple) and all(isinstance(b, engine.Band) for b in bands), where
    assert 1 <= len(bands) <= n, where
    # every output row once, in order, indexed 0..len-1
    assert [b.index for b in bands] == list(range(len(bands))), where
    assert bands[0].start == 0 and bands[-1].stop == height, where
    assert all(a.stop == b.start for a, b in zip(bands, bands[1:])), where
    sizes = [b.rows for b in bands]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1, where
    # longer than either halo, unless it is the only band
    if len(bands) > 1:
        assert min(sizes) > max(top, bottom), where
    # as many bands as asked for, unless one more would make some band too short
    if len(bands) < n:
        assert height // (len(bands) + 1) <= max(top, bottom), where
    for b in bands:
        lo, hi = b.start - top, b.stop + bottom
        if wrap:
            assert (b.read_start, b.read_stop) == (lo, hi), where
            assert (b.halo_top, b.halo_bottom) == (top, bottom), where
            # the halo rows, taken modulo the height, come from the opposite edge
            rows = np.arange(b.read_start, b.read_stop) % height
            assert rows[top : top + b.rows].tolist() == list(range(b.start, b.stop)), where
            if b.start == 0 and top:
                assert rows[:top].tolist() == [(height - top + i) % height for i in range(top)], where
            if b.stop == height and bottom:
                assert rows[top + b.rows :].tolist() == [i % height for i in range(bottom)], where
        else:
            assert (b.read_start, b.read_stop) == (max(lo, 0), min(hi, height)), where
            assert 0 <= b.read_start <= b.start < b.stop <= b.read_stop <= height, where
    return bands


@pytest.mark.parametrize("wrap", [False, True], ids=["clamped", "wrap"])
@pytest.mark.parametrize("k", range(1, 32))
def test_plan_bands_exhaustive(k, wrap):
    for height in HEIGHTS:
        for n in N_BANDS:
            check_plan(height, k, n, wrap)


def test_each_output_row_sees_exactly_its_kernel_rows():
    """Rows a band reads, by the border rule, are the rows the oracle's kernel would read."""
    for height in (1, 2, 5, 13):
        for k in (1, 2, 3, 8, 31):
            top, bottom = halo(k)
            for n in (1, 3, 7):
                for b in plan_bands(height, k, n, wrap=True):
                    read = list(range(b.read_start, b.read_stop))
                    for y in range(b.start, b.stop):
                        j = y - b.read_start  # y's position among the rows read
                        assert read[j - top : j + bottom + 1] == list(range(y - top, y + bottom + 1))


def test_docstring_examples_by_hand():
    assert [(b.start, b.stop, b.read_start, b.read_stop) for b in plan_bands(10, 3, 2)] == [(0, 5, 0, 6), (5, 10, 4, 10)]
    assert [(b.read_start, b.read_stop) for b in plan_bands(10, 3, 2, wrap=True)] == [(-1, 6), (4, 11)]
    # an even kernel (k = 4) reads two rows above its anchor and one below
    assert [(b.read_start, b.read_stop) for b in plan_bands(8, 4, 2, wrap=True)] == [(-2, 5), (2, 9)]
    # a kernel taller than the image: one band, the whole image
    (only,) = plan_bands(5, 31, 4)
    assert (only.start, only.stop, only.read_start, only.read_stop) == (0, 5, 0, 5)
    (only,) = plan_bands(5, 31, 4, wrap=True)
    assert (only.read_start, only.read_stop) == (-15, 20)
    # one row per band when the kernel has no halo
    assert [b.rows for b in plan_bands(4, 1, 12)] == [1, 1, 1, 1]


@pytest.mark.parametrize("args", [(0, 3, 2), (10, 0, 2), (10, 3, 0), (-1, 3, 2), (10, -3, 2), (10, 3, -1)])
def test_plan_bands_refuses_non_positive_sizes(args):
    with pytest.raises(ValueError, match=r"height, kernel_height and n_bands must be >= 1, got"):
        plan_bands(*args)


def test_engine_plan_balances_big_images(eng):
    """More bands than workers on big images: a worker that finishes early takes the next one."""
    for p in (1, 2, 3, 4):
        for shape in [(2048, 2048), (4096, 4096, 3), (8192, 1024)]:
            bands = eng.plan(shape, "gaussian", p)
            assert len(bands) > p, (shape, p, len(bands))
            check_plan(shape[0], 5, len(bands), False)
    # small images are not cut into bands thinner than useful, but every worker gets one
    assert len(eng.plan((64, 64), "gaussian", 4)) == 4
    assert len(eng.plan((3, 64), "sobel", 4)) == 1  # 3 rows, halo 1: one band
    # wrap keeps the unclamped halo
    b = eng.plan((100, 100), "gaussian", 2, border="wrap")
    assert b[0].read_start == -2 and b[-1].read_stop == 102
    assert eng.plan((100, 100), np.ones((4, 3)), 1)[0].read_stop == 100


def test_engine_plan_validates_its_arguments(eng):
    with pytest.raises(ValueError, match="not a known kernel"):
        eng.plan((10, 10), "nope", 1)
    with pytest.raises(ValueError, match=r"border must be one of 'replicate', 'reflect', 'mirror', 'wrap', 'constant'"):
        eng.plan((10, 10), "sobel", 1, border="edge")
    with pytest.raises(ValueError, match=r"processes must be an integer from 1 to 4"):
        eng.plan((10, 10), "sobel", 0)
    with pytest.raises(ValueError, match=r"processes must be an integer from 1 to 4"):
        eng.plan((10, 10), "sobel", 5)
