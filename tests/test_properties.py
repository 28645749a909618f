"""Hypothesis: any shape, dtype, values, kernel, border, output, implementation and process count.

Properties: the result is within one gray level of the oracle (tests/_oracle.py), alpha is
copied unchanged, and every process count gives the same bits as one process.

Examples per property: ``PFL_HYPOTHESIS_EXAMPLES`` (default 150, the CI run). A nightly-style
run goes much further::

    PFL_HYPOTHESIS_EXAMPLES=10000 .venv/bin/python -m pytest tests/test_properties.py
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import engine
from _oracle import assert_close, color_channels, correlate

EXAMPLES = int(os.environ.get("PFL_HYPOTHESIS_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

DTYPES = st.sampled_from([np.uint8, np.uint16])
#: Weights: zero, or 1e-3 <= |w| <= 8 of either sign; now and then the whole kernel is scaled by a
#: power of two (``SCALES``), down to subnormal weights and up to sums near the largest accepted.
WEIGHT = st.one_of(st.just(0.0), st.floats(1e-3, 8.0), st.floats(-8.0, -1e-3), st.sampled_from([1.0, -1.0, 0.5, 1 / 3]))
SCALES = st.one_of(st.just(0), st.just(0), st.just(0), st.sampled_from([-1066, -1030, -600, 600, 990]))


@st.composite
def images(draw):
    dtype = draw(DTYPES)
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    c = draw(st.sampled_from([0, 1, 2, 3, 4]))  # 0: a 2-D image
    top = int(np.iinfo(dtype).max)
    values = st.one_of(st.integers(0, top), st.sampled_from([0, 1, top - 1, top]))
    return draw(arrays(dtype, (h, w) if c == 0 else (h, w, c), elements=values))


@st.composite
def kernels(draw):
    kh, kw = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    return np.ldexp(draw(arrays(np.float64, (kh, kw), elements=WEIGHT)), draw(SCALES))


def well_posed(img, w, border, output) -> bool:
    """``normalize`` stretches the response's range to the full scale. When that range is a
    rounding error of the sums (a mathematically flat response computed in another order),
    no two float implementations agree; a range that is exactly 0 must still give 0."""
    if output != "normalize":
        return True
    f = correlate(img, w, border)
    spread = float(f.max() - f.min())
    scale = float(np.abs(w).sum()) * float(np.iinfo(img.dtype).max)
    return spread == 0 or spread > 1e-7 * scale


@SETTINGS
@given(img=images(), w=kernels(), border=st.sampled_from(list(engine.BORDERS)),
       output=st.sampled_from(list(engine.OUTPUTS)), implementation=st.sampled_from(list(engine.IMPLEMENTATIONS)),
       processes=st.integers(1, 4))
def test_filter_image_matches_the_oracle_on_any_process_count(eng, img, w, border, output, implementation, processes):
    c = img.shape[2] if img.ndim == 3 else 1
    if implementation == "python":  # the teaching loops: keep each example small
        assume(img.shape[0] * img.shape[1] * color_channels(c) * w.size <= 40_000)
    assume(well_posed(img, w, border, output))
    opts = dict(border=border, output=output, implementation=implementation)
    got = eng.filter_image(img, w, processes=processes, **opts)
    note(f"shape {img.shape} {img.dtype}, kernel {w.shape}, {opts}, processes={processes}")
    assert_close(got, img, w, border, output, "engine vs oracle")
    if processes != 1:
        assert np.array_equal(got, eng.filter_image(img, w, processes=1, **opts)), "differs from processes=1"


@SETTINGS
@given(img=images(), a=kernels(), b=kernels(), border=st.sampled_from(list(engine.BORDERS)),
       output=st.sampled_from(list(engine.OUTPUTS)), implementation=st.sampled_from(["opencv", "numpy"]),
       processes=st.tuples(st.integers(1, 2), st.integers(1, 2)))
def test_filter_pair_is_two_filter_image_calls(eng, img, a, b, border, output, implementation, processes):
    opts = dict(border=border, output=output, implementation=implementation)
    pair = eng.filter_pair(img, a, b, processes=processes, **opts)
    assert np.array_equal(pair.outputs[0], eng.filter_image(img, a, processes=1, **opts))
    assert np.array_equal(pair.outputs[1], eng.filter_image(img, b, processes=1, **opts))
    assert all(o.shape == img.shape and o.dtype == img.dtype for o in pair.outputs)


@SETTINGS
@given(text_rows=st.lists(st.lists(st.one_of(st.integers(-99, 99), st.fractions(max_denominator=64)), min_size=1, max_size=6),
                          min_size=1, max_size=6),
       row_sep=st.sampled_from(["; ", "\n", ";\n", " ;"]), num_sep=st.sampled_from([" ", ", ", ",", "  "]))
def test_parse_kernel_reads_what_it_is_given(text_rows, row_sep, num_sep):
    width = len(text_rows[0])
    text = row_sep.join(num_sep.join(str(v) for v in row) for row in text_rows)
    if any(len(r) != width for r in text_rows):
        with pytest.raises(ValueError, match="every row needs the same number of weights"):
            engine.parse_kernel(text)
        return
    k = engine.parse_kernel(text)
    assert k.weights.shape == (len(text_rows), width)
    assert k.weights.tolist() == [[float(v) for v in row] for row in text_rows]


@SETTINGS
@given(img=images(), w=kernels(), border=st.sampled_from(["replicate", "reflect", "mirror", "constant"]),
       output=st.sampled_from(["clip", "abs", "offset"]), bands=st.integers(1, 6), chunk_rows=st.integers(1, 12))
def test_float_chunks_never_show_in_the_result(img, w, border, output, bands, chunk_rows):
    """The band kernel's float32 route filters a few rows at a time (``CHUNK_BYTES``). The
    images above fit in one chunk, so here chunks are cut down to 8-12 rows (or the kernel's
    halo, if taller): any band plan with any chunk size gives the bits of one band in one
    chunk, within one level of the oracle."""
    from unittest import mock

    from engine._bands import plan_bands
    from engine._compute import filter_band

    img3 = img if img.ndim == 3 else img[:, :, None]
    k = engine.Kernel("k", w)
    h, width, c = img3.shape
    whole = np.zeros_like(img3)
    filter_band(img3, whole, plan_bands(h, w.shape[0], 1)[0], k, border, output, "opencv")
    cut = np.zeros_like(img3)
    with mock.patch("engine._compute.CHUNK_BYTES", chunk_rows * width * c * 4), \
            mock.patch("engine._compute.CHUNK_HALOS", 1):
        for band in plan_bands(h, w.shape[0], bands):
            filter_band(img3, cut, band, k, border, output, "opencv")
    note(f"shape {img3.shape} {img3.dtype}, kernel {w.shape}, {border}, {output}, {bands} bands, "
         f"chunks of {chunk_rows} rows")
    assert np.array_equal(cut, whole)
    assert_close(whole, img3, w, border, output, "one band vs oracle")
