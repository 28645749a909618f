"""Every validation error, by type and message: checked at the public entry, before any process
starts or any shared memory is allocated."""

from __future__ import annotations

import os
import re

import numpy as np
import psutil
import pytest

import engine
from engine import _shm

IMG = np.zeros((6, 5, 3), np.uint8)
KNOWN = ", ".join(engine.KERNELS)


# -- the image ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,kind", [([[1, 2], [3, 4]], "list"), ("img.png", "str"), (None, "NoneType"),
                                      (b"\x89PNG", "bytes")])
def test_image_must_be_an_ndarray(eng, bad, kind):
    with pytest.raises(TypeError, match=rf"^image must be a numpy.ndarray of shape \(H, W\) or \(H, W, C\), got {kind}$"):
        eng.filter_image(bad, "sobel")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int32, np.uint32, np.int8, bool])
def test_image_dtype(eng, dtype):
    with pytest.raises(ValueError, match=rf"^image dtype must be uint8 or uint16, got {np.dtype(dtype)}$"):
        eng.filter_image(np.zeros((4, 4, 3), dtype), "sobel")


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 1), (1, 1, 1, 1, 1)])
def test_image_ndim(eng, shape):
    want = rf"^image must be 2-D \(H, W\) or 3-D \(H, W, C\), got {len(shape)}-D shape {re.escape(str(shape))}$"
    with pytest.raises(ValueError, match=want):
        eng.filter_image(np.zeros(shape, np.uint8), "sobel")


@pytest.mark.parametrize("channels", [0, 5, 6])
def test_image_channels(eng, channels):
    with pytest.raises(ValueError, match=r"^image must have 1 \(gray\), 2 \(gray\+alpha\), 3 \(RGB\) or 4 \(RGBA\) "
                                         rf"channels, got shape \(4, 4, {channels}\)$"):
        eng.filter_image(np.zeros((4, 4, channels), np.uint16), "sobel")


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0, 3), (3, 0, 1)])
def test_empty_image(eng, shape):
    with pytest.raises(ValueError, match=rf"^image must have at least one row and one column, got shape {re.escape(str(shape))}$"):
        eng.filter_image(np.zeros(shape, np.uint8), "sobel")


# -- the kernel -----------------------------------------------------------------------------------
def test_unknown_kernel_name_lists_the_names(eng):
    with pytest.raises(ValueError, match=r"^kernel 'gauss' is not a known kernel; known: ") as info:
        eng.filter_image(IMG, "gauss")
    msg = str(info.value)
    assert KNOWN in msg and "parse_kernel" in msg
    assert all(name in msg for name in engine.KERNELS)
    with pytest.raises(ValueError, match=r"^kernels\[1\] 'Sobel' is not a known kernel; known: "):
        eng.filter_pair(IMG, "sobel", "Sobel", processes=(1, 1))


@pytest.mark.parametrize("shape", [(0, 0), (0, 3), (3, 0), (3, 3, 3), (3,), (32, 32), (32, 1), (1, 32), (3, 40)])
def test_kernel_shape(eng, shape):
    want = rf"^kernel must be 2-D with odd or even sides of 1\.\.31, got shape {re.escape(str(shape))}$"
    with pytest.raises(ValueError, match=want):
        eng.filter_image(IMG, np.ones(shape))


def test_kernel_scalar_is_not_2d(eng):
    with pytest.raises(ValueError, match=r"^kernel must be 2-D with odd or even sides of 1\.\.31, got shape \(\)$"):
        eng.filter_image(IMG, 3.0)


@pytest.mark.parametrize("value,shown", [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_kernel_weights_must_be_finite(eng, value, shown):
    w = np.ones((3, 3))
    w[1, 2] = value
    with pytest.raises(ValueError, match=rf"^kernel weights must be finite numbers, got {shown}$"):
        eng.filter_image(IMG, w)
    with pytest.raises(ValueError, match=rf"^kernel weights must be finite numbers, got {shown}$"):
        eng.filter_image(IMG, engine.Kernel("bad", w))
    with pytest.raises(ValueError, match=rf"^kernels\[0\] weights must be finite numbers, got {shown}$"):
        eng.filter_pair(IMG, w, "sobel", processes=(1, 1))


@pytest.mark.parametrize("bad,kind", [([["a", "b"]], r"\[\['a', 'b'\]\]"), ([[1, 2], [3]], r"\[\[1, 2\], \[3\]\]"),
                                      (object(), "<object object")])
def test_kernel_not_numbers(eng, bad, kind):
    with pytest.raises(TypeError, match=rf"^kernel must be a 2-D array of numbers \(1x1 to 31x31\), got {kind}"):
        eng.filter_image(IMG, bad)


@pytest.mark.parametrize("bad,kind", [(None, "NoneType"), ({"a": 1}, "dict"), ({1, 2}, "set"), (b"12", "bytes")])
def test_kernel_wrong_type(eng, bad, kind):
    with pytest.raises(TypeError, match=rf"^kernel must be a kernel name, a Kernel or a 2-D array of numbers, got {kind}$"):
        eng.filter_image(IMG, bad)


def test_kernel_none_weight_is_not_finite(eng):
    with pytest.raises(ValueError, match=r"^kernel weights must be finite numbers, got nan$"):
        eng.filter_image(IMG, [[1, None]])


@pytest.mark.parametrize("bad,shown", [([[10**400]], "an integer of 401 digits"),
                                       ([[1, -(10**309)]], "an integer of 310 digits")])
def test_kernel_integers_beyond_float64_are_refused(eng, bad, shown):
    """Was a bare OverflowError ("int too large to convert to float") from numpy."""
    want = rf"^kernel weights must be finite numbers within float64's range \(about 1\.8e308\), got {shown}$"
    with pytest.raises(ValueError, match=want):
        eng.filter_image(IMG, bad)
    with pytest.raises(ValueError, match=want.replace("^kernel ", r"^kernels\[1\] ")):
        eng.filter_pair(IMG, "sobel", bad, processes=(1, 1))


@pytest.mark.parametrize("bad,shown", [(np.array([[1 + 5j, 0]]), "complex128"), (np.array([[0.5j, 1]], np.complex64), "complex64"),
                                       (np.array([[1 + 0j]]), "complex128"), ([[1, 2j]], "complex128"),
                                       ([[1j, 10**400]], "complex")])
def test_kernel_complex_weights_are_refused(eng, bad, shown):
    """Were cut to their real part, with only numpy's ComplexWarning to say so."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning on the way
        with pytest.raises(TypeError, match=rf"^kernel weights must be real numbers, got {shown}$"):
            eng.filter_image(IMG, bad)


def test_kernel_accepts_every_documented_form(eng):
    ref = eng.filter_image(IMG + 7, "sobel", processes=1)
    for form in ("sobel", engine.KERNELS["sobel"], engine.KERNELS["sobel"].weights, engine.KERNELS["sobel"].weights.tolist(),
                 engine.KERNELS["sobel"].weights.astype(np.int32), engine.parse_kernel("1 0 -1; 2 0 -2; 1 0 -1")):
        assert np.array_equal(eng.filter_image(IMG + 7, form, processes=1), ref)
    for shape in [(1, 1), (31, 31), (2, 30), (31, 1)]:
        eng.filter_image(IMG, np.ones(shape), processes=1)


def test_a_request_holds_one_or_two_kernels(eng):
    for bad in ("sobel", engine.KERNELS["sobel"], [], ["sobel"] * 3, None):
        with pytest.raises(ValueError, match=r"^kernels must be a list of one or two kernels, got "):
            engine.FilterRequest(bad)
    with pytest.raises(TypeError, match=r"^request must be an engine.FilterRequest \(for example FilterRequest\(\['sobel'\], "
                                        r"output='abs'\)\), got list$"):
        eng.submit(IMG, ["sobel"], processes=1)


# -- names of modes -------------------------------------------------------------------------------
@pytest.mark.parametrize("param,table,bad", [
    ("border", engine.BORDERS, "nearest"), ("border", engine.BORDERS, "REPLICATE"), ("border", engine.BORDERS, None),
    ("output", engine.OUTPUTS, "clamp"), ("output", engine.OUTPUTS, 1),
    ("implementation", engine.IMPLEMENTATIONS, "cuda"), ("implementation", engine.IMPLEMENTATIONS, ""),
])
def test_unknown_names_list_the_valid_ones(eng, param, table, bad):
    valid = ", ".join(repr(n) for n in table)
    with pytest.raises(ValueError, match=rf"^{param} must be one of {re.escape(valid)}; got {re.escape(repr(bad))}$"):
        eng.filter_image(IMG, "sobel", **{param: bad})
    with pytest.raises(ValueError, match=rf"^{param} must be one of"):
        eng.filter_pair(IMG, "sobel", "sobel", processes=(1, 1), **{param: bad})


# -- process counts -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1, 5, 10**9, np.int64(0)])
def test_processes_out_of_range(eng, bad):
    want = rf"^processes must be an integer from 1 to 4 \(this engine's max_workers\), got {bad}$"
    with pytest.raises(ValueError, match=want):
        eng.filter_image(IMG, "sobel", processes=bad)


@pytest.mark.parametrize("bad,kind", [(1.5, "float"), (2.0, "float"), ("2", "str"), (True, "bool"), (False, "bool"),
                                      (None, None)])
def test_processes_not_an_integer(eng, bad, kind):
    if bad is None:  # None is the default: one process for this 6x5 image (see the next test)
        assert eng.submit(IMG, engine.FilterRequest(["sobel"])).result(timeout=60).processes == (1,)
        return
    with pytest.raises(TypeError, match=rf"^processes must be an integer from 1 to 4, got {re.escape(repr(bad))} \({kind}\)$"):
        eng.filter_image(IMG, "sobel", processes=bad)


def test_default_processes_are_the_cpus_at_most_one_per_min_band_pixels(eng):
    """No processes= means every CPU, but no more than the image has MIN_BAND_PIXELS: a 512x512
    image runs on one process, one of cpus x MIN_BAND_PIXELS on all of them."""
    cpus, unit = eng.cpus, engine._bands.MIN_BAND_PIXELS  # noqa: SLF001
    small = np.zeros((512, 512), np.uint8)
    big = np.zeros((cpus * unit // 512, 512), np.uint8)
    just_below = np.zeros((cpus * unit // 512 - 1, 512), np.uint8)
    one = engine.FilterRequest(["box_3x3"])
    two = engine.FilterRequest(["box_3x3", "sobel"])
    assert eng.submit(small, one).result(timeout=60).processes == (1,)
    assert eng.submit(big, one).result(timeout=60).processes == (min(cpus, eng.max_workers),)
    assert eng.submit(just_below, one).result(timeout=60).processes == (max(1, cpus - 1),)
    assert eng.submit(small, two).result(timeout=60).processes == (1, 1)
    split = (max(1, cpus // 2), max(1, cpus - cpus // 2))
    assert eng.submit(big, two).result(timeout=60).processes == tuple(min(p, eng.max_workers // 2) for p in split)
    assert len(eng.plan(small.shape, "box_3x3", None)) == 1
    assert eng.submit(small, one, processes=2).result(timeout=60).processes == (2,)  # asked for: honoured


def test_processes_numpy_integers_are_integers(eng):
    assert np.array_equal(eng.filter_image(IMG, "sobel", processes=np.int64(2)), eng.filter_image(IMG, "sobel", processes=1))


def test_pair_processes(eng):
    with pytest.raises(ValueError, match=r"^processes \(3, 2\) add up to 5, more than this engine's max_workers=4$"):
        eng.filter_pair(IMG, "sobel", "gaussian", processes=(3, 2))
    with pytest.raises(ValueError, match=r"^processes must be a pair of integers \(a, b\), got 2$"):
        eng.filter_pair(IMG, "sobel", "gaussian", processes=2)
    with pytest.raises(ValueError, match=r"^processes must be a pair of integers \(a, b\), got \(1, 1, 1\)$"):
        eng.filter_pair(IMG, "sobel", "gaussian", processes=(1, 1, 1))
    with pytest.raises(ValueError, match=r"^processes\[1\] must be an integer from 1 to 4 \(this engine's max_workers\), got 0$"):
        eng.filter_pair(IMG, "sobel", "gaussian", processes=(1, 0))
    with pytest.raises(TypeError, match=r"^processes\[0\] must be an integer from 1 to 4, got 1.5 \(float\)$"):
        eng.filter_pair(IMG, "sobel", "gaussian", processes=(1.5, 1))
    with pytest.raises(ValueError, match=r"^processes must be an integer, got \(1, 1\)$"):
        eng.filter_image(IMG, "sobel", processes=(1, 1))


def test_max_workers():
    limit = max(16, 8 * engine.available_cpus())
    for bad in (0, -2, 1.5, "4", True, limit + 1, 10**9):
        with pytest.raises(ValueError, match=rf"^max_workers must be an integer from 1 to {limit} \(8 per CPU: "
                                             rf"each worker is a whole Python process\), got {re.escape(repr(bad))}$"):
            engine.Engine(max_workers=bad)
    engine.Engine(max_workers=limit).close()  # the bound itself is allowed
    e = engine.Engine()
    assert e.max_workers == 2 * engine.available_cpus() and e.cpus == engine.available_cpus()
    e.close()


# -- the python implementation --------------------------------------------------------------------
def test_python_implementation_refuses_big_images(eng):
    with pytest.raises(ValueError, match=r"^implementation 'python' runs the notebook's per-pixel loops and accepts images "
                                         r"of at most 65,536 pixels \(256x256\), got 256x257 = 65,792; use 'numpy' or 'opencv'$"):
        eng.filter_image(np.zeros((257, 256), np.uint8), "sobel", implementation="python")
    with pytest.raises(ValueError, match=r"got 300x300 = 90,000; use 'numpy' or 'opencv'$"):
        eng.filter_pair(np.zeros((300, 300, 3), np.uint8), "sobel", "gaussian", processes=(1, 1), implementation="python")
    # exactly 256x256 pixels is allowed
    img = np.full((256, 256), 9, np.uint8)
    assert np.array_equal(eng.filter_image(img, [[2]], processes=2, implementation="python"), img * 2)


# -- out= -----------------------------------------------------------------------------------------
def test_out_errors(eng):
    with pytest.raises(TypeError, match=r"^out must be a numpy.ndarray or None, got list$"):
        eng.filter_image(IMG, "sobel", out=[[0]])
    with pytest.raises(ValueError, match=r"^out must have the image's shape \(6, 5, 3\) and dtype uint8, got \(6, 5, 4\) uint8$"):
        eng.filter_image(IMG, "sobel", out=np.zeros((6, 5, 4), np.uint8))
    with pytest.raises(ValueError, match=r"^out must have the image's shape \(6, 5, 3\) and dtype uint8, got \(6, 5, 3\) uint16$"):
        eng.filter_image(IMG, "sobel", out=np.zeros((6, 5, 3), np.uint16))
    with pytest.raises(ValueError, match=r"^out must have the image's shape .* got \(5, 6, 3\) uint8$"):
        eng.filter_image(IMG, "sobel", out=np.zeros((5, 6, 3), np.uint8))
    ro = np.zeros_like(IMG)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match=r"^out must be writable$"):
        eng.filter_image(IMG, "sobel", out=ro)
    img = np.zeros((6, 10, 3), np.uint8)
    with pytest.raises(ValueError, match=r"^out must not share memory with the image \(filters read neighbours"):
        eng.filter_image(img, "sobel", out=img)
    with pytest.raises(ValueError, match=r"^out must not share memory with the image"):
        eng.filter_image(img[:, :6], "sobel", out=img[:, 4:])  # views sharing columns 4 and 5
    assert eng.filter_image(img[:, :5], "sobel", out=img[:, 5:]) is not None  # side by side: allowed
    with pytest.raises(ValueError, match=r"^out must be a tuple of 2 arrays \(one per kernel\) or None, got ndarray$"):
        eng.filter_pair(IMG, "sobel", "gaussian", processes=(1, 1), out=np.zeros_like(IMG))
    with pytest.raises(ValueError, match=r"^out must be a tuple of 1 array \(one per kernel\) or None, got 2 arrays$"):
        eng.submit(IMG, engine.FilterRequest(["sobel"]), processes=1, out=(np.zeros_like(IMG), np.zeros_like(IMG)))
    same = np.zeros_like(IMG)
    with pytest.raises(ValueError, match=r"^out\[0\] and out\[1\] must not share memory$"):
        eng.filter_pair(IMG, "sobel", "gaussian", processes=(1, 1), out=(same, same))
    with pytest.raises(ValueError, match=r"^out\[1\] must be writable$"):
        eng.filter_pair(IMG, "sobel", "gaussian", processes=(1, 1), out=(np.zeros_like(IMG), ro))


def test_out_two_d_image_accepts_a_two_d_out(eng):
    img = np.arange(30, dtype=np.uint8).reshape(6, 5)
    out = np.zeros_like(img)
    assert eng.filter_image(img, "sobel", processes=2, out=out) is out
    assert np.array_equal(out, eng.filter_image(img, "sobel", processes=1))


def test_closed_engine_refuses_work():
    e = engine.Engine(max_workers=1)
    e.close()
    e.close()  # idempotent
    with pytest.raises(RuntimeError, match=r"^this Engine is closed; create a new one$"):
        e.filter_image(IMG, "sobel")
    with pytest.raises(RuntimeError, match=r"^this Engine is closed; create a new one$"):
        e.shared_array((4, 4), np.uint8)


def test_shared_array_arguments(eng):
    with pytest.raises(ValueError, match=r"^dtype must be uint8 or uint16, got float32$"):
        eng.shared_array((4, 4), np.float32)
    for bad in [(0, 4), (4, -1), (), (2.5, 4), ("4", 4), (True, 4)]:
        with pytest.raises(ValueError, match=r"^shape must be positive integer sizes, e\.g\. \(height, width, 3\), got "):
            eng.shared_array(bad, np.uint8)


# -- nothing starts before validation passes ------------------------------------------------------
def _mine():
    """This process's children and segments (other test runs on the machine make their own)."""
    me = psutil.Process()
    prefix = f"{_shm.PREFIX}{os.getpid()}_"
    return {c.pid for c in me.children(recursive=True)}, {n for n in _shm.our_segments() if n.startswith(prefix)}


def test_invalid_calls_start_no_process_and_allocate_no_segment():
    before = _mine()
    e = engine.Engine(max_workers=2)
    bad_calls = [
        lambda: e.filter_image([[1]], "sobel"),
        lambda: e.filter_image(np.zeros((4, 4), np.float32), "sobel"),
        lambda: e.filter_image(IMG, "nope"),
        lambda: e.filter_image(IMG, np.ones((32, 3))),
        lambda: e.filter_image(IMG, [[np.nan]]),
        lambda: e.filter_image(IMG, "sobel", border="nearest"),
        lambda: e.filter_image(IMG, "sobel", output="x"),
        lambda: e.filter_image(IMG, "sobel", implementation="x"),
        lambda: e.filter_image(IMG, "sobel", processes=3),
        lambda: e.filter_image(IMG, "sobel", processes=0),
        lambda: e.filter_image(IMG, "sobel", out=np.zeros((2, 2, 3), np.uint8)),
        lambda: e.filter_pair(IMG, "sobel", "gaussian", processes=(2, 1)),
        lambda: e.filter_image(np.zeros((300, 300), np.uint8), "sobel", implementation="python"),
        lambda: e.submit(IMG, engine.FilterRequest("sobel")),
        lambda: e.plan((10, 10), "nope", 1),
    ]
    for call in bad_calls:
        with pytest.raises((TypeError, ValueError)):
            call()
    assert e._alive == 0 and not e._jobs  # noqa: SLF001 - no worker was started, no job created
    assert _mine() == before, "an invalid call started a process or created a segment"
    e.close()
    assert _mine() == before


# -- parse_kernel ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text,weights", [
    ("1 2 1; 2 4 2; 1 2 1", [[1, 2, 1], [2, 4, 2], [1, 2, 1]]),
    ("1 2 1\n2 4 2\n1 2 1\n", [[1, 2, 1], [2, 4, 2], [1, 2, 1]]),
    ("1, 2, 1\r\n2, 4, 2", [[1, 2, 1], [2, 4, 2]]),
    ("1 2\r3 4", [[1, 2], [3, 4]]),
    ("1 2\u20283 4\x0c", [[1, 2], [3, 4]]),
    ("1,2;3,4", [[1, 2], [3, 4]]),
    ("1/4, 1/2, 1/4", [[0.25, 0.5, 0.25]]),
    ("-1/2 0 1/2", [[-0.5, 0, 0.5]]),
    ("1/16 2/16; 3/16 4/16", [[1 / 16, 2 / 16], [3 / 16, 4 / 16]]),
    ("[[1, 2], [3, 4]]", [[1, 2], [3, 4]]),
    ("[[1, 2],\n [3, 4]]", [[1, 2], [3, 4]]),
    ("[[1. 2.]\n [3. 4.]]", [[1, 2], [3, 4]]),
    ("[[1 2] [3 4]]", [[1, 2], [3, 4]]),
    ("[1 2 1]", [[1, 2, 1]]),
    ("  .5  -0.25 +3 1e-1 2E1 5. ", [[0.5, -0.25, 3, 0.1, 20, 5]]),
    ("7", [[7]]),
    ("1 2;;3 4;", [[1, 2], [3, 4]]),
])
def test_parse_kernel_accepts(text, weights):
    k = engine.parse_kernel(text)
    assert isinstance(k, engine.Kernel) and k.name == "custom"
    assert k.weights.dtype == np.float64 and not k.weights.flags.writeable
    np.testing.assert_array_equal(k.weights, np.array(weights, dtype=float))


def test_parse_kernel_name_and_separability():
    k = engine.parse_kernel("1 2 1; 2 4 2; 1 2 1", name="binomial")
    assert k.name == "binomial" and k.separable and k.weights.sum() == 16
    assert not engine.parse_kernel("0 1 0; 1 -4 1; 0 1 0").separable
    assert engine.parse_kernel("1/3 1/3 1/3").weights[0, 0] == 1 / 3
    # a fraction is divided exactly and rounded once, not as two rounded float64 numbers
    assert engine.parse_kernel("0.7/0.1").weights[0, 0] == 7.0 != 0.7 / 0.1
    assert engine.parse_kernel("1e-300/1e300 4e-320").weights.tolist() == [[0.0, 4e-320]]


@pytest.mark.parametrize("text,message", [
    ("1 2; 3", r"^kernel text: every row needs the same number of weights, got row 1: 2, row 2: 1$"),
    ("1 2 3\n4 5\n6 7 8", r"^kernel text: every row needs the same number of weights, got row 1: 3, row 2: 2, row 3: 3$"),
    ("[[1, 2], [3, 4, 5]]", r"every row needs the same number of weights"),
    ("1 a 2", r"^kernel text: 'a' in row 1 is not a number \(use decimals or fractions like 1/16\)$"),
    ("1 2; 3 x", r"^kernel text: 'x' in row 2 is not a number"),
    ("1 2; 3 4,5;6 0x10", r"'0x10' in row 3 is not a number"),
    ("1//2", r"'1//2' in row 1 is not a number"),
    ("1 nan", r"^kernel text: weights must be finite numbers, got 'nan'$"),
    ("NaN 1", r"^kernel text: weights must be finite numbers, got 'nan'$"),
    ("1; -inf", r"^kernel text: weights must be finite numbers, got 'inf'$"),
    ("1e999", r"^kernel text: '1e999' in row 1 is not finite \(float64 numbers reach about 1\.8e308\)$"),
    ("1/0", r"^kernel text: '1/0' in row 1 divides by zero$"),
    ("1 -0.0e7/+00.0", r"^kernel text: '-0\.0e7/\+00\.0' in row 1 divides by zero$"),
    # a fraction whose quotient overflows float64 (Fraction's float() raised OverflowError)
    ("1e308/1e-10", r"^kernel text: '1e308/1e-10' in row 1 is not finite \(float64 numbers reach about 1\.8e308\)$"),
    ("1/1e-400", r"^kernel text: '1/1e-400' in row 1 divides by 1e-400, below the smallest float64 number "
                 r"\(about 4\.9e-324\)$"),
    # read as float64 first: never expanded into a ten-million-digit integer (that took seconds
    # to minutes with the GIL held, freezing every session of the dashboard)
    ("1e99999999/3", r"^kernel text: '1e99999999/3' in row 1 is not finite"),
    ("3/1e99999999", r"^kernel text: '3/1e99999999' in row 1 is not finite"),
    ("1 " + "9" * 65, r"^kernel text: '99999999999999999999\.\.\.' in row 1 has 65 characters; a weight has at most 64$"),
    ("1 " * 50_001, r"^kernel text is too long: at most 100,000 characters \(sides up to 31\), got 100,002$"),
    ("", r"^kernel text is empty: type rows of numbers, e.g. '1 2 1; 2 4 2; 1 2 1'$"),
    ("  \n ; , ", r"^kernel text is empty"),
    ("[[]]", r"^kernel text is empty"),
    (" ".join(["1"] * 32), r"^kernel text: sides must be 1\.\.31, got shape \(1, 32\)$"),
    ("\n".join(["1"] * 40), r"^kernel text: sides must be 1\.\.31, got shape \(40, 1\)$"),
])
def test_parse_kernel_errors(text, message):
    with pytest.raises(ValueError, match=message):
        engine.parse_kernel(text)


def test_parse_kernel_needs_text():
    with pytest.raises(TypeError, match=r"^kernel text must be a str, got list$"):
        engine.parse_kernel([[1, 2]])


TOO_LARGE = (r"weights are too large: their absolute sum is {total} \(largest \|weight\| {big}\), at or above "
             r"1e\+303, where a response to 16-bit pixels \(up to sum \|w\| x 65535\) or their range overflows "
             r"float64; scale them down so that sum \|w\| stays below 1e\+303$")


def test_weights_whose_sum_overflows_are_refused(eng):
    w = np.full((3, 3), 1e308)
    with pytest.raises(ValueError, match="^kernel " + TOO_LARGE.format(total=r"over 1\.8e\+308", big=r"1e\+308")):
        eng.filter_image(IMG, w)
    with pytest.raises(ValueError, match="^kernel text: " + TOO_LARGE.format(total=r"over 1\.8e\+308", big=r"1e\+308")):
        engine.parse_kernel("1e308 1e308; 1e308 1e308")
    # huge but summable: accepted, every response saturates
    out = eng.filter_image(np.ones((5, 6, 3), np.uint8), np.full((3, 3), 1e300), processes=1)
    assert (out == 255).all()


@pytest.mark.parametrize("weights,total,big", [([[1e306, -1e306]], r"2e\+306", r"1e\+306"),
                                               ([[5e302, 5e302]], r"1e\+303", r"5e\+302"),
                                               (np.full((31, 31), 1e301), r"9\.61e\+303", r"1e\+301")])
def test_weights_whose_responses_overflow_are_refused(eng, weights, total, big):
    """sum |w| was only checked to be finite: [[1e306, -1e306]] passed, its responses (up to
    sum |w| x 65535) and their range were inf or nan, and normalize gave a different image for
    each process count."""
    with pytest.raises(ValueError, match="^kernel " + TOO_LARGE.format(total=total, big=big)):
        eng.filter_image(np.zeros((2, 3, 1), np.uint8), weights, output="normalize")
    text = "; ".join(" ".join(repr(float(v)) for v in row) for row in np.asarray(weights))
    with pytest.raises(ValueError, match="^kernel text: " + TOO_LARGE.format(total=total, big=big)):
        engine.parse_kernel(text)


def test_weights_just_below_the_bound_give_finite_responses_for_every_process_count(eng):
    """At sum |w| just under 1e303 the extreme 16-bit responses (+- sum |w| x 65535) and their
    range are finite: normalize maps them the same way whatever the band split."""
    w = np.array([[4.99e302, -4.99e302]])  # out[x] = w0 img[x - 1] + w1 img[x]
    img = np.zeros((6, 3, 1), np.uint16)
    img[:, 0], img[:, 2] = 65535, 65535  # column 1: + sum |w| x 65535 / 2, column 2: - that
    outs = [eng.filter_image(img, w, processes=p, output="normalize", implementation=i)
            for p in (1, 2, 3, 4) for i in ("opencv", "numpy")]
    assert all(np.array_equal(o, outs[0]) for o in outs)
    assert (outs[0][:, 1] == 65535).all() and (outs[0][:, 2] == 0).all() and (outs[0][:, 0] == 32768).all()


# -- separable factors: what OpenCV runs fast (issue 11) -------------------------------------


@pytest.mark.parametrize("name", [n for n, k in engine.KERNELS.items() if k.separable])
def test_factors_are_exactly_symmetric_and_positive_oriented(name):
    k = engine.KERNELS[name]
    column, row = k.factors
    np.testing.assert_allclose(np.outer(column, row), k.weights, rtol=0, atol=1e-7 * np.abs(k.weights).sum())
    for f, axis in ((column, 0), (row, 1)):
        if np.array_equal(k.weights, np.flip(k.weights, axis)):
            assert np.array_equal(f, f[::-1]), (name, f)
        if np.array_equal(k.weights, -np.flip(k.weights, axis)):
            assert np.array_equal(f, -f[::-1]) and not np.signbit(f).all(), (name, f)
    assert column.sum() > 0 or (column.sum() == 0 and column[np.flatnonzero(column)[0]] > 0)
    if k.weights.sum() > 0:
        assert row.sum() > 0
    for dtype in (np.uint8, np.uint16):  # float32 keeps the symmetry: mirrored values round alike
        for f64, f in zip((column, row), k.opencv_weights(dtype)):
            assert f.dtype == k.precision(dtype)
            assert np.array_equal(f, f[::-1]) == np.array_equal(f64, f64[::-1])
            assert np.array_equal(f, -f[::-1]) == np.array_equal(f64, -f64[::-1])


def test_rank_one_tolerance_is_relative():
    """Nine equal weights are rank 1 at any scale; a kernel 1e-6 (relative) off rank 1 is not."""
    assert engine.Kernel("big", np.full((3, 3), 1e300)).separable
    assert engine.Kernel("tiny", np.full((3, 3), 1e-300)).separable
    w = np.outer([1, 2, 1], [1, 2, 1]) * 1e6
    w[0, 0] += 1e6 * 16 * 1e-6
    assert not engine.Kernel("off", w).separable
    w = np.outer([1, 2, 1], [1, 2, 1]) * 1e6
    w[0, 0] += 1e6 * 16 * 5e-8
    assert engine.Kernel("near", w).separable


def test_float64_where_float32_sums_would_err():
    """float32 only where maxval * sum|w| * taps * 2^-24 <= 1/4 level."""
    gauss = engine.KERNELS["gaussian"]
    assert gauss.precision(np.uint8) is np.float32 and gauss.precision(np.uint16) is np.float32
    big = engine.Kernel("big", np.ones((15, 15)) / 225 * 20)  # 65535 * 20 * 225 * 2^-24 = 17.6
    assert big.precision(np.uint8) is np.float32 and big.precision(np.uint16) is np.float64
    assert all(a.dtype == np.float64 for a in big.opencv_weights(np.uint16))
    assert all(a.dtype == np.float32 for a in big.opencv_weights(np.uint8))
