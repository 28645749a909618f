"""The oracle grid: the engine against scipy.ndimage.correlate in float64 (tests/_oracle.py).

Every case runs on 1, 2, 3 and 4 worker processes of the session engine: the first result must
be within one gray level of the oracle, and the others bit-identical to it.

The grid is every border x every kernel shape x both implementations that run at any size,
with dtype, channel count and output mapping filled in so that every pair of values of any
two dimensions meets at least once (``test_grid_covers_every_pair`` checks that). Registry
kernels, output mappings, the python implementation and a larger image have their own sweeps.
"""

from __future__ import annotations

import itertools
import math
import zlib

import numpy as np
import pytest

import engine
from _oracle import NUMPY_PAD, SCIPY_MODE, assert_close, correlate

BORDERS = list(engine.BORDERS)
OUTPUTS = list(engine.OUTPUTS)
DTYPES = [np.uint8, np.uint16]
CHANNELS = [0, 1, 2, 3, 4]  # 0: a 2-D (H, W) image
PROCESSES = (1, 2, 3, 4)
SMALL, MEDIUM, LARGE = (9, 7), (37, 23), (300, 200)


def test_the_tables_agree_with_the_issue():
    assert BORDERS == ["replicate", "reflect", "mirror", "wrap", "constant"]
    assert OUTPUTS == ["clip", "abs", "normalize", "offset"]
    assert list(engine.IMPLEMENTATIONS) == ["opencv", "numpy", "python"]
    assert set(SCIPY_MODE) == set(BORDERS)


def image(shape, channels, dtype, seed):
    """Random values over the dtype's whole range; ``channels=0`` gives a 2-D image."""
    rng = np.random.default_rng(seed)
    full = shape if channels == 0 else (*shape, channels)
    return rng.integers(0, np.iinfo(dtype).max + 1, full, dtype=dtype)


def weights(kh, kw, seed, separable=False):
    """Signed random weights with sum |w| = 2: responses cover the range and overshoot it."""
    rng = np.random.default_rng(seed)
    w = np.outer(rng.normal(size=kh), rng.normal(size=kw)) if separable else rng.normal(size=(kh, kw))
    return w * (2.0 / np.abs(w).sum())


def run_all_counts(eng, img, kernel, **kw):
    """The result on 1 process, after checking that 2, 3 and 4 processes give the same bits."""
    first = eng.filter_image(img, kernel, processes=1, **kw)
    for p in PROCESSES[1:]:
        other = eng.filter_image(img, kernel, processes=p, **kw)
        assert np.array_equal(other, first), f"processes={p} differs from processes=1 ({kw})"
    return first


def covering(fixed: dict, free: dict) -> list[dict]:
    """Every combination of the ``fixed`` dimensions, each completed with values of the
    ``free`` ones chosen greedily to meet the most not-yet-seen pairs (deterministic)."""
    names = list(fixed) + list(free)
    seen = set()

    def pairs(case):
        return {(a, case[a], b, case[b]) for a, b in itertools.combinations(names, 2)}

    cases = []
    options = [dict(zip(free, vals)) for vals in itertools.product(*free.values())]
    for vals in itertools.product(*fixed.values()):
        base = dict(zip(fixed, vals))
        best = max(options, key=lambda o: len(pairs({**base, **o}) - seen))
        case = {**base, **best}
        seen |= pairs(case)
        cases.append(case)
    return cases


# name -> (kernel height, width, separable, image size): the image size makes the shape mean
# what its name says (taller than the image, taller than a band at 2..4 processes, ...).
SHAPES = {
    "1x1": (1, 1, False, MEDIUM),
    "3x3": (3, 3, False, MEDIUM),
    "3x3 separable": (3, 3, True, MEDIUM),
    "5x5": (5, 5, False, MEDIUM),
    "5x5 separable": (5, 5, True, MEDIUM),
    "4x4 even": (4, 4, False, MEDIUM),
    "2x6 even": (2, 6, False, MEDIUM),
    "6x3 even x odd": (6, 3, False, MEDIUM),
    "1x7 row": (1, 7, False, MEDIUM),
    "7x1 column": (7, 1, False, MEDIUM),
    "30x1 even column": (30, 1, False, MEDIUM),
    "8x8 (over 49 taps)": (8, 8, False, MEDIUM),
    "15x3 taller than the image": (15, 3, False, SMALL),
    "3x13 wider than the image": (3, 13, False, SMALL),
    "31x31 larger than the image": (31, 31, False, SMALL),
    "21x5 taller than a band": (21, 5, False, MEDIUM),
    "31x31 taller than a band": (31, 31, False, MEDIUM),
    "31x31 separable": (31, 31, True, MEDIUM),
}
GRID = covering(
    {"border": BORDERS, "shape": list(SHAPES), "implementation": ["opencv", "numpy"]},
    {"dtype": DTYPES, "channels": CHANNELS, "output": OUTPUTS},
)


def _id(case):
    return "-".join(getattr(v, "__name__", str(v)) for v in case.values())


def test_grid_covers_every_pair():
    dims = {"border": BORDERS, "shape": list(SHAPES), "implementation": ["opencv", "numpy"],
            "dtype": DTYPES, "channels": CHANNELS, "output": OUTPUTS}
    for a, b in itertools.combinations(dims, 2):
        met = {(c[a], c[b]) for c in GRID}
        missing = set(itertools.product(dims[a], dims[b])) - met
        assert not missing, f"no case has {a} x {b} = {sorted(missing, key=str)[:3]}"


def test_shapes_mean_what_they_say(eng):
    for name, (kh, kw, sep, (h, w)) in SHAPES.items():
        if "taller than the image" in name or "larger" in name:
            assert kh > h
        if "wider than the image" in name or "larger" in name:
            assert kw > w
        if "taller than a band" in name:
            for p in PROCESSES[1:]:
                bands = eng.plan((h, w), np.ones((kh, kw)), p)
                assert len(bands) > 1 and max(b.rows for b in bands) < kh, (name, p, bands)
        k = engine.Kernel(name, weights(kh, kw, 0, sep))
        assert k.separable == (sep or 1 in (kh, kw)), name


@pytest.mark.parametrize("case", GRID, ids=_id)
def test_grid(eng, case):
    kh, kw, sep, size = SHAPES[case["shape"]]
    seed = zlib.crc32(_id(case).encode())
    img = image(size, case["channels"], case["dtype"], seed)
    w = weights(kh, kw, seed + 1, sep)
    opts = dict(border=case["border"], output=case["output"], implementation=case["implementation"])
    got = run_all_counts(eng, img, w, **opts)
    assert_close(got, img, w, case["border"], case["output"], _id(case))


REGISTRY = covering(
    {"kernel": list(engine.KERNELS), "implementation": ["opencv", "numpy"]},
    {"border": BORDERS, "output": OUTPUTS, "dtype": DTYPES, "channels": [1, 2, 3, 4]},
)


@pytest.mark.parametrize("case", REGISTRY, ids=_id)
def test_registry_kernels(eng, case):
    k = engine.KERNELS[case["kernel"]]
    img = image(MEDIUM, case["channels"], case["dtype"], seed=len(case["kernel"]))
    opts = dict(border=case["border"], output=case["output"], implementation=case["implementation"])
    got = run_all_counts(eng, img, case["kernel"], **opts)
    assert_close(got, img, k.weights, case["border"], case["output"], _id(case))
    # a Kernel object and its plain weights are the same filter
    assert np.array_equal(eng.filter_image(img, k, processes=2, **opts), got)


@pytest.mark.parametrize("implementation", ["opencv", "numpy"])
@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("output", OUTPUTS)
def test_output_mappings(eng, output, dtype, channels, implementation):
    border = BORDERS[(OUTPUTS.index(output) + CHANNELS.index(channels)) % len(BORDERS)]
    img = image(MEDIUM, channels, dtype, seed=channels)
    w = weights(3, 3, seed=7)
    got = run_all_counts(eng, img, w, border=border, output=output, implementation=implementation)
    assert_close(got, img, w, border, output, f"{output} {border}")
    top = np.iinfo(dtype).max
    color = got if channels == 0 else got[..., : {1: 1, 2: 1, 3: 3, 4: 3}[channels]]
    if output == "normalize":  # the whole range is used, over all color channels together
        assert color.min() == 0 and color.max() == top
    if output == "offset":  # a zero response is mid-gray
        flat = np.zeros_like(img)
        flat_out = eng.filter_image(flat, w, processes=2, output="offset", implementation=implementation)
        assert (flat_out if channels == 0 else flat_out[..., 0]).tolist() == np.full(MEDIUM, (top + 1) // 2).tolist()


PYTHON = covering(
    {"border": BORDERS, "output": OUTPUTS},
    {"shape": ["3x3", "4x2 even", "1x1", "15x3 taller than the image", "2x9 wider than the image"],
     "dtype": DTYPES, "channels": CHANNELS},
)
_PY_SHAPES = {"3x3": (3, 3), "4x2 even": (4, 2), "1x1": (1, 1), "15x3 taller than the image": (15, 3),
              "2x9 wider than the image": (2, 9)}


@pytest.mark.parametrize("case", PYTHON, ids=_id)
def test_python_implementation(eng, case):
    kh, kw = _PY_SHAPES[case["shape"]]
    img = image(SMALL, case["channels"], case["dtype"], seed=kh * 100 + kw)
    w = weights(kh, kw, seed=kh + kw)
    opts = dict(border=case["border"], output=case["output"])
    got = run_all_counts(eng, img, w, implementation="python", **opts)
    assert_close(got, img, w, case["border"], case["output"], _id(case))
    # the teaching loops and the vectorized numpy path: the same float64 sums, the same rule
    assert_close(eng.filter_image(img, w, processes=2, implementation="numpy", **opts), img, w, case["border"],
                 case["output"], _id(case) + " numpy")


LARGE_CASES = [  # (kernel, implementation, dtype, channels, border, output)
    *[("gaussian", "opencv", np.uint8, 3, b, "clip") for b in BORDERS],
    *[("random 5x5", "opencv", np.uint8, 4, b, o) for b, o in zip(BORDERS, itertools.cycle(OUTPUTS))],
    *[("random 8x8 even", "opencv", np.uint16, 1, b, o) for b, o in zip(BORDERS, ["abs", "offset", "normalize", "clip", "abs"])],
    ("separable 31x31", "opencv", np.uint8, 3, "reflect", "normalize"),
    ("separable 31x31", "opencv", np.uint8, 3, "wrap", "clip"),
    ("random 5x5", "numpy", np.uint16, 2, "mirror", "offset"),
    ("random 5x5", "numpy", np.uint8, 0, "wrap", "clip"),
]


@pytest.mark.parametrize("name,implementation,dtype,channels,border,output", LARGE_CASES,
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_larger_image(eng, name, implementation, dtype, channels, border, output):
    w = {"gaussian": engine.KERNELS["gaussian"].weights, "random 5x5": weights(5, 5, 5),
         "random 8x8 even": weights(8, 8, 8), "separable 31x31": weights(31, 31, 31, separable=True)}[name]
    img = image(LARGE, channels, dtype, seed=channels)
    got = run_all_counts(eng, img, w, border=border, output=output, implementation=implementation)
    assert_close(got, img, w, border, output, f"{name} {border} {output}")


# -- edges of the semantics --------------------------------------------------------------------


def test_correlation_not_convolution_and_anchor(eng):
    img = np.zeros((7, 8), np.uint8)
    img[3, 4] = 200
    # out[y, x] = sum w[i, j] in[y + i - kh//2, x + j - kw//2]: an impulse draws the kernel flipped
    w = np.array([[1, 2, 3, 4]], float) / 4  # even width: anchor at column 2
    out = eng.filter_image(img, w, processes=2, border="constant")
    assert out[3].tolist() == [0, 0, 0, 200, 150, 100, 50, 0]
    w = np.array([[1], [2], [3], [4]], float) / 4  # even height: anchor at row 2
    out = eng.filter_image(img, w, processes=2, border="constant")
    assert out[:, 4].tolist() == [0, 0, 200, 150, 100, 50, 0]


@pytest.mark.parametrize("border,row", [
    ("replicate", [10, 10, 10, 10, 20, 30, 40, 40, 40, 40]),
    ("reflect", [30, 20, 10, 10, 20, 30, 40, 40, 30, 20]),
    ("mirror", [40, 30, 20, 10, 20, 30, 40, 30, 20, 10]),
    ("wrap", [20, 30, 40, 10, 20, 30, 40, 10, 20, 30]),
    ("constant", [0, 0, 0, 10, 20, 30, 40, 0, 0, 0]),
])
@pytest.mark.parametrize("implementation", list(engine.IMPLEMENTATIONS))
def test_border_rules_by_hand(eng, border, row, implementation):
    """What lies past the edge of ``10 20 30 40``, read through one-hot kernels."""
    img = np.array([[10, 20, 30, 40]], np.uint8)
    seen = []
    for shift in range(-3, 7):
        w = np.zeros((1, 13))  # anchored at column 6, wider than the image
        w[0, 6 + shift] = 1  # reads in[x + shift]
        seen.append(int(eng.filter_image(img, w, processes=1, border=border, implementation=implementation)[0, 0]))
    assert seen == row
    # and the same rule along the rows (a column image and a column kernel)
    col = []
    for shift in range(-3, 7):
        w = np.zeros((13, 1))
        w[6 + shift, 0] = 1
        col.append(int(eng.filter_image(img.T.copy(), w, processes=2, border=border, implementation=implementation)[0, 0]))
    assert col == row


def test_two_d_input_gives_two_d_output(eng):
    img = image(MEDIUM, 0, np.uint16, seed=3)
    out = eng.filter_image(img, "sobel", processes=3)
    assert out.shape == img.shape and out.dtype == np.uint16
    assert np.array_equal(out, eng.filter_image(img[:, :, None], "sobel", processes=3)[:, :, 0])
    pair = eng.filter_pair(img, "sobel", "gaussian", processes=(1, 2))
    assert [o.shape for o in pair.outputs] == [img.shape, img.shape]


def test_single_pixel_and_single_row_images(eng):
    for shape in [(1, 1), (1, 9), (9, 1), (2, 2)]:
        for border in BORDERS:
            img = image(shape, 3, np.uint8, seed=sum(shape))
            w = weights(5, 4, seed=1)
            got = run_all_counts(eng, img, w, border=border, output="offset")
            assert_close(got, img, w, border, "offset", f"{shape} {border}")


@pytest.mark.parametrize("implementation", ["opencv", "numpy"])
def test_normalize_keeps_narrow_ranges_exact(eng, implementation):
    """A 16-bit image whose response spans a few gray levels is stretched to 0..65535: float32
    rounding (about 30000 * 2^-24 per term) would be magnified 65535 / range times."""
    rng = np.random.default_rng(1)
    img = (30000 + rng.integers(0, 3, (20, 20, 1))).astype(np.uint16)
    w = rng.random((3, 3)) / 9
    got = run_all_counts(eng, img, w, output="normalize", implementation=implementation)
    assert_close(got, img, w, "replicate", "normalize", implementation)


@pytest.mark.parametrize("implementation", ["opencv", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_normalize_of_a_constant_result_is_zero(eng, implementation, dtype):
    """A flat image gives a flat response (every border but constant): 0, never stretched noise."""
    rng = np.random.default_rng(2)
    for kh, kw in [(1, 7), (1, 9), (3, 8), (9, 1), (5, 5)]:
        for border in BORDERS[:4]:
            img = np.full((17, 33, 4), int(rng.integers(1, np.iinfo(dtype).max)), dtype)
            w = rng.normal(size=(kh, kw))
            for p in PROCESSES:
                got = eng.filter_image(img, w, processes=p, output="normalize", border=border,
                                       implementation=implementation)
                assert not got[..., :3].any(), f"{kh}x{kw} {border} p={p}: {np.unique(got[..., :3])[:5]}"
                assert np.array_equal(got[..., 3], img[..., 3])


@pytest.mark.parametrize("implementation", list(engine.IMPLEMENTATIONS))
def test_normalize_of_a_range_below_float64_resolution_is_zero(eng, implementation):
    """0.1 + 0.2 - 0.3 is 5.6e-17 in float64: on a 1-pixel-wide image the response is that times
    each pixel, a range far inside the rounding error of the sums (``taps * 2**-52 * maxval *
    sum |w|``). No float implementation resolves it, so normalize gives 0, not stretched noise."""
    for shape, w in (((40, 1), [[0.1, 0.2, -0.3]]), ((1, 40), [[0.1], [0.2], [-0.3]]),
                     ((40, 1), [[1 / 3, 1 / 3, 1 / 3, -1.0]])):
        got = run_all_counts(eng, image(shape, 3, np.uint8, 7), w, output="normalize", implementation=implementation)
        assert not got.any(), (w, np.unique(got))


def test_the_oracle_agrees_with_numpy_pad():
    """The oracle's scipy modes are the borders the issue names (checked against numpy.pad)."""
    rng = np.random.default_rng(0)
    for (h, w), (kh, kw), border in itertools.product([(1, 1), (2, 3), (5, 4), (9, 7)], [(1, 1), (3, 2), (7, 5), (16, 9), (31, 31)], BORDERS):
        x = rng.integers(0, 256, (h, w)).astype(np.uint8)
        k = rng.normal(size=(kh, kw))
        pad = ((kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2))
        p = np.pad(x.astype(float), pad, mode=NUMPY_PAD[border])
        want = sum(k[i, j] * p[i : i + h, j : j + w] for i in range(kh) for j in range(kw))
        assert np.allclose(correlate(x, k, border)[:, :, 0], want), (h, w, kh, kw, border)


def test_the_oracle_sees_tiny_weights():
    """scipy.ndimage.correlate skips weights with |w| <= DBL_EPSILON; the oracle must not."""
    x = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for power in (-60, -1000, -1060):
        got = correlate(x, np.ldexp(np.array([[1.0, 0.0, -1.0]]), power), "replicate")[:, :, 0]
        want = np.ldexp(np.pad(x.astype(float), ((0, 0), (1, 1)), mode="edge"), power)
        assert np.array_equal(got, want[:, :-2] - want[:, 2:]), power


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("implementation", ["opencv", "numpy"])
def test_tiny_and_huge_kernels_meet_the_oracle(eng, output, implementation):
    """Weights far below float64's epsilon (some subnormal) and near the largest sums accepted."""
    img = image((29, 31), 3, np.uint8, 5)
    for power, seed in itertools.product((-1068, -1030, -200, 200, 990), (1, 2)):
        w = np.ldexp(weights(3, 5, seed), power)
        got = run_all_counts(eng, img, w, output=output, implementation=implementation, border="reflect")
        assert_close(got, img, w, "reflect", output, f"2**{power}")


# -- the module-level functions (the default engine) --------------------------------------------


@pytest.fixture(scope="module")
def default_engine():
    """Start the default engine's workers before the tests' leak checks, close it at the end."""
    eng = engine.default_engine()
    n = eng.max_workers // 2
    engine.filter_pair(np.zeros((8, 8), np.uint8), "identity", "identity", processes=(n, n))
    yield eng
    eng.close()
    assert eng._closed  # noqa: SLF001


def test_module_functions_use_the_default_engine(default_engine, eng):
    img = image(MEDIUM, 3, np.uint8, seed=11)
    got = engine.filter_image(img, "gaussian", border="wrap")
    assert np.array_equal(got, eng.filter_image(img, "gaussian", processes=1, border="wrap"))
    assert_close(got, img, engine.KERNELS["gaussian"].weights, "wrap", "clip")
    pair = engine.filter_pair(img, "sobel", "emboss", output="offset")
    assert pair.processes == (1, 1)  # a 37x23 image: one process each (engine._bands.default_processes)
    a, b = pair  # unpacks into the two outputs
    assert np.array_equal(a, eng.filter_image(img, "sobel", processes=2, output="offset"))
    assert np.array_equal(b, eng.filter_image(img, "emboss", processes=2, output="offset"))
    assert default_engine.max_workers == 2 * engine.available_cpus()
    assert engine.default_engine() is default_engine


def test_module_filter_image_writes_into_out(default_engine):
    img = image(SMALL, 4, np.uint16, seed=4)
    out = np.empty_like(img)
    res = engine.filter_image(img, "box_3x3", out=out, border="mirror")
    assert res is out
    assert_close(out, img, engine.KERNELS["box_3x3"].weights, "mirror", "clip")
    assert math.isclose(engine.KERNELS["box_3x3"].weights.sum(), 1.0)


# -- exactness probes (issue 11): values that a wrong rounding or mapping cannot hit ----------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("implementation", ["opencv", "numpy"])
def test_exact_probes(eng, dtype, implementation):
    """Hand-computed outputs: round to nearest (0.6 -> 1, 0.4 -> 0, 1.4 -> 1, 1.6 -> 2), offset
    adds exactly half the range (+1 -> 129, -1 -> 127), abs flips signs, normalize stretches the
    exact min..max to the full range. (Exact .5 ties may round either way: see assert_close.)"""
    top, half = int(np.iinfo(dtype).max), (int(np.iinfo(dtype).max) + 1) // 2
    ones = np.ones((9, 11, 3), dtype)

    def run(w, output, img=ones):
        return eng.filter_image(img, np.array(w, float), processes=2, output=output, implementation=implementation)

    assert np.all(run([[0.6]], "clip") == 1)
    assert np.all(run([[0.4]], "clip") == 0)
    assert np.all(run([[1, 0.2, 0.2]], "clip") == 1)
    assert np.all(run([[1, 0.3, 0.3]], "clip") == 2)
    assert np.all(run([[1]], "offset") == half + 1)
    assert np.all(run([[-1]], "offset") == half - 1)
    assert np.all(run([[-0.6]], "offset") == half - 1)
    assert np.all(run([[-3]], "abs") == 3)
    assert np.all(run([[-3]], "clip") == 0)
    ramp = np.broadcast_to(np.arange(11, dtype=dtype)[None, :, None] * 3, (9, 11, 3)).copy()  # 0..30
    got = run([[1]], "normalize", ramp)[0, :, 0].astype(np.int64)
    assert got.tolist() == np.rint(np.arange(11) * top / 10).astype(np.int64).tolist()


@pytest.mark.parametrize("implementation", ["opencv", "numpy"])
def test_sixteen_bit_big_kernel_is_summed_in_float64(eng, implementation):
    """A 16-bit image and a 15x15 kernel: float32 sums err by up to
    65535 * sum|w| * 225 * 2^-24, far past a quarter level, so the engine must sum in float64.
    Weights of both signs and sizes make the float32 error show up in many pixels."""
    rng = np.random.default_rng(11)
    img = rng.integers(0, 65536, (48, 40, 3), dtype=np.uint16)
    w = rng.normal(size=(15, 15)) * rng.choice([1e-3, 1.0, 40.0], size=(15, 15))
    w *= 1.5 / w.sum()
    got = run_all_counts(eng, img, w, output="offset", implementation=implementation)
    assert_close(got, img, w, "replicate", "offset", "16-bit 15x15")


# -- every route the band kernel may take (issue 11) ----------------------------------------------


ROUTE_CASES = covering(
    {"kernel": [k for k in engine.KERNELS if k != "identity"] + ["random 5x5", "random 3x5 separable", "random 7x7"],
     "dtype": DTYPES},
    {"border": [b for b in BORDERS if b != "wrap"], "output": ["clip", "abs", "offset"], "channels": [1, 2, 3, 4]},
)


@pytest.mark.parametrize("case", ROUTE_CASES, ids=_id)
def test_every_route_meets_the_oracle_on_any_band_plan(case):
    """Each route that ``routes`` allows for a request gives the oracle's rounding, and the same
    bits whatever the band plan (the direct route redoes rows near inner band edges)."""
    from engine._bands import plan_bands
    from engine._compute import filter_band, routes

    name = case["kernel"]
    w = {"random 5x5": weights(5, 5, 50), "random 3x5 separable": weights(3, 5, 35, separable=True),
         "random 7x7": weights(7, 7, 77)}.get(name)
    k = engine.KERNELS[name] if w is None else engine.Kernel(name, w)
    img = image(LARGE, case["channels"], case["dtype"], seed=len(name))
    h = img.shape[0]
    for how in routes(k, img.dtype, case["border"], case["output"]):
        outs = []
        for n in (1, 3, 7):
            out = np.zeros_like(img)
            for band in plan_bands(h, k.shape[0], n):
                filter_band(img, out, band, k, case["border"], case["output"], "opencv", how=how)
            outs.append(out)
        assert all(np.array_equal(o, outs[0]) for o in outs[1:]), f"{how}: bits depend on the band plan"
        assert_close(outs[0], img, k.weights, case["border"], case["output"], f"{_id(case)} via {how}")


def test_a_route_that_cannot_compute_the_request_is_refused():
    from engine._bands import plan_bands
    from engine._compute import filter_band

    img = np.zeros((8, 8, 3), np.uint16)
    with pytest.raises(ValueError, match=r"^route 'direct' does not compute this request; it may take float32, general$"):
        filter_band(img, img.copy(), plan_bands(8, 3, 1)[0], engine.Kernel("k", np.ones((3, 3)) / 9),
                    "replicate", "clip", "opencv", how="direct")
