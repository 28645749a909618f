"""Fuzzing with Hypothesis: image bytes into ``load_image``, and shapes, kernels, process counts
through the engine against the oracle (tests/_oracle.py: scipy.ndimage.correlate in float64).

Properties
----------
* ``load_image`` on any bytes (random, or valid PNG/JPEG/GIF/TIFF/BMP/WebP files mutated, with
  PNG chunk CRCs repaired so that the mutation reaches the decoder) returns a valid
  ``(H, W, C)`` uint8/uint16 array or raises ``engine.ImageError``: never another exception,
  never a hang (Hypothesis' deadline).
* Any image shape, dtype, channel count, kernel shape and weights, border, output mapping and
  implementation: the result is within 1 level of the oracle, and bit-identical for 1 process
  and for 2..4 processes (also as one filter of a pair).
* Any value passed as a kernel or a process count either runs or raises TypeError/ValueError
  whose message names the parameter, before any work starts.

Examples per test: ``PFL_FUZZ_EXAMPLES`` (default: a CI-sized number per test, the whole file in
well under a minute). The nightly-style run (docs/reliability.md)::

    PFL_FUZZ_EXAMPLES=10000 .venv/bin/python -m pytest tests/test_fuzz.py -p no:cacheprovider

Out of CI, ``fuzz/atheris_load_image.py`` fuzzes ``load_image`` with coverage guidance.
"""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import engine
from _oracle import assert_close
from _proc import run_cli

EXAMPLES = os.environ.get("PFL_FUZZ_EXAMPLES")


@pytest.fixture(scope="module", autouse=True)
def quiet_opencv():
    """OpenCV logs a note for every damaged 16-bit file it is handed: thousands here."""
    import cv2

    level = cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    yield
    cv2.utils.logging.setLogLevel(level)

pytestmark = [
    pytest.mark.timeout(0 if EXAMPLES else 300),  # the long run is bounded by its count
    pytest.mark.filterwarnings("ignore::UserWarning:PIL"),  # Pillow's notes on corrupt EXIF, expected here
]


def fuzz_settings(ci_examples: int, deadline_s: float = 10.0, share: float = 1.0):
    """``max_examples`` from PFL_FUZZ_EXAMPLES (times ``share``), else a CI-sized default; a
    per-example deadline (a hang fails the test); the leak fixture runs once around all examples."""
    n = max(1, round(int(EXAMPLES) * share)) if EXAMPLES else ci_examples
    return settings(
        max_examples=n,
        deadline=timedelta(seconds=deadline_s),
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )


# -- image bytes ---------------------------------------------------------------------------------
#: Fuzzed images may claim at most this many pixels (the header check runs before decoding, so
#: this bounds each example's memory); the default limit is tested in test_bad_input.py.
FUZZ_MAX_PIXELS = 1 << 22


def _seeds() -> list[bytes]:
    """Small valid files of every format and mode load_image supports (plus 16-bit color)."""
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    out = []

    def enc(im, fmt, **kw):
        b = io.BytesIO()
        im.save(b, format=fmt, **kw)
        out.append(b.getvalue())

    enc(Image.fromarray(rgb), "PNG")
    enc(Image.fromarray(rgb[..., 0]), "PNG")
    enc(Image.fromarray(np.dstack([rgb, rgb[..., :1]])), "PNG")
    enc(Image.fromarray(rgb).quantize(8), "PNG", transparency=0)
    enc(Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)), "PNG")
    enc(Image.fromarray(rgb[..., 0] > 127), "PNG")
    enc(Image.fromarray(rgb), "JPEG", quality=80)
    enc(Image.fromarray(rgb).convert("CMYK"), "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    enc(Image.fromarray(rgb), "JPEG", exif=exif.tobytes())
    enc(Image.fromarray(rgb), "GIF")
    enc(Image.fromarray(rgb), "TIFF")
    enc(Image.fromarray(rgb), "TIFF", compression="tiff_lzw")
    enc(Image.fromarray(rgb), "BMP")
    enc(Image.fromarray(rgb), "WEBP")
    out.append(engine.save_image(rgb.astype(np.uint16) * 257, format="PNG"))  # 16-bit color
    out.append(engine.save_image(np.dstack([rgb, rgb[..., :1]]).astype(np.uint16) * 257, format="TIFF"))
    return out


SEEDS = _seeds()
INTERESTING_U32 = [0, 1, 2, 0x7F, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000, 30000, 46341, 0x7FFFFFFF, 0xFFFFFFFF]


def _fix_png_crcs(data: bytes) -> bytes:
    """Recompute every PNG chunk's CRC, so that a mutation reaches the decoder."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, pos = bytearray(data[:8]), 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 12 + length
        if end > len(data):
            break
        body = data[pos + 4 : pos + 8 + length]
        out += data[pos : pos + 8 + length] + struct.pack(">I", zlib.crc32(body))
        pos = end
    return bytes(out + data[pos:])


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "u32", "u16", "delete", "insert", "truncate", "duplicate"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif op == "u32" and len(data) >= 4:
            i = min(i, len(data) - 4)
            data[i : i + 4] = struct.pack(draw(st.sampled_from([">I", "<I"])), draw(st.sampled_from(INTERESTING_U32)))
        elif op == "u16" and len(data) >= 2:
            i = min(i, len(data) - 2)
            data[i : i + 2] = struct.pack(draw(st.sampled_from([">H", "<H"])), draw(st.integers(0, 0xFFFF)))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif op == "truncate":
            del data[i:]
        elif op == "duplicate":
            j = draw(st.integers(i, min(len(data), i + 256)))
            data[j:j] = data[i:j]
    raw = bytes(data)
    return _fix_png_crcs(raw) if draw(st.booleans()) else raw


def _check_load(data: bytes, max_pixels: int | None = FUZZ_MAX_PIXELS):
    t0 = time.perf_counter()
    try:
        a = engine.load_image(data, max_pixels=max_pixels)
    except engine.ImageError as e:
        assert str(e), "ImageError without a message"
        return
    finally:
        assert time.perf_counter() - t0 < 10, "load_image took over 10 s"
    assert isinstance(a, np.ndarray) and a.ndim == 3 and a.dtype in (np.uint8, np.uint16), (a.shape, a.dtype)
    assert a.shape[2] in (1, 2, 3, 4) and a.shape[0] >= 1 and a.shape[1] >= 1
    assert a.shape[0] * a.shape[1] <= (max_pixels or Image.MAX_IMAGE_PIXELS)
    assert a.flags.c_contiguous


@fuzz_settings(1000)
@given(st.binary(max_size=4096))
def test_load_image_random_bytes_raise_only_image_error(data):
    _check_load(data, max_pixels=None)


@fuzz_settings(1000)
@given(mutated_images())
def test_load_image_mutated_files_raise_only_image_error(data):
    _check_load(data)


@fuzz_settings(200)
@given(st.sampled_from(SEEDS), st.integers(0, 4096))
def test_load_image_every_prefix_of_a_valid_file(seed, cut):
    _check_load(seed[: min(cut, len(seed) - 1)])


@fuzz_settings(10, deadline_s=60.0, share=1 / 50)  # a subprocess each: 200 in the 10,000-case run
@given(mutated_images())
def test_cli_prints_one_line_for_any_file(tmp_path_factory, data):
    """The CLI on a mutated file: exit 0 and a silent stderr, or exit 2 and exactly one line,
    even when the decoders' C libraries complain (one subprocess per example: fewer of them)."""
    folder = tmp_path_factory.mktemp("cli")
    (folder / "in.img").write_bytes(data)
    res = run_cli("filter", folder / "in.img", folder / "out.png", "--kernel", "box_3x3", "--processes", "1",
                  "--max-pixels", str(FUZZ_MAX_PIXELS))
    if res.returncode == 0:
        assert res.stderr == "", res.stderr
    else:
        assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, (res.returncode, res.stderr)
        assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr


# -- the oracle property -------------------------------------------------------------------------
@st.composite
def cases(draw):
    dtype = draw(st.sampled_from([np.uint8, np.uint16]))
    channels = draw(st.sampled_from([0, 1, 2, 3, 4]))  # 0: a 2-D image
    h, w = draw(st.integers(1, 70)), draw(st.integers(1, 50))
    big = draw(st.integers(0, 9)) == 0  # now and then a kernel up to 31x31 (taller than the image)
    kh, kw = (draw(st.integers(1, 31 if big else 7)) for _ in range(2))
    style = draw(st.sampled_from(["floats", "integers", "fractions", "sparse"]))
    n = kh * kw
    if style == "floats":
        # any float64 in [-4, 4], subnormal ones too (the oracle sees every weight: _oracle.correlate)
        weights = draw(st.lists(st.floats(-4, 4), min_size=n, max_size=n))
    elif style == "integers":
        weights = draw(st.lists(st.integers(-8, 8), min_size=n, max_size=n))
    elif style == "fractions":
        den = draw(st.sampled_from([2, 3, 7, 9, 16, 25, 256]))
        weights = [x / den for x in draw(st.lists(st.integers(-den, den), min_size=n, max_size=n))]
    else:
        weights = [0.0] * n
        for _ in range(draw(st.integers(0, 3))):
            weights[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-1.0, 0.5, 1.0, 2.0]))
    kernel = np.array(weights, dtype=np.float64).reshape(kh, kw)
    border = draw(st.sampled_from(list(engine.BORDERS)))
    output = draw(st.sampled_from(list(engine.OUTPUTS)))
    small = h * w <= 300 and n <= 25
    impl = draw(st.sampled_from(["opencv", "numpy", "python"] if small else ["opencv", "numpy"]))
    fill = draw(st.sampled_from(["random", "random", "constant", "extremes", "ramp"]))
    seed = draw(st.integers(0, 2**32 - 1))
    processes = draw(st.integers(2, 4))
    return dtype, channels, (h, w), kernel, border, output, impl, fill, seed, processes


def _image(dtype, channels, shape, fill, seed) -> np.ndarray:
    top = np.iinfo(dtype).max
    full = shape + ((channels,) if channels else ())
    rng = np.random.default_rng(seed)
    if fill == "random":
        return rng.integers(0, top, full, dtype=dtype, endpoint=True)
    if fill == "constant":
        return np.full(full, rng.integers(0, top, endpoint=True), dtype=dtype)
    if fill == "extremes":
        return (rng.integers(0, 2, full) * top).astype(dtype)
    ramp = np.arange(int(np.prod(full)), dtype=np.int64).reshape(full) * 37 % (top + 1)
    return ramp.astype(dtype)


@fuzz_settings(300, deadline_s=30.0)
@given(cases())
# found by the 10,000-case run: W = 1 with replicate makes the response exactly 0; the rank-1
# factors of this kernel left 1.5e-14 of it, and normalize stretched that to 0..255
@example(case=(np.uint8, 0, (2, 1), np.array([[0.3125, 0.625, -0.9375]]), "replicate", "normalize", "opencv",
               "random", 0, 2))
def test_engine_matches_oracle_and_is_identical_for_every_process_count(eng, case):
    dtype, channels, shape, kernel, border, output, impl, fill, seed, processes = case
    img = _image(dtype, channels, shape, fill, seed)
    what = f"{shape} {img.dtype} C={channels} k={kernel.shape} {border} {output} {impl}"
    one = eng.filter_image(img, kernel, processes=1, border=border, output=output, implementation=impl)
    assert_close(one, img, kernel, border, output, what)
    many = eng.filter_image(img, kernel, processes=processes, border=border, output=output, implementation=impl)
    np.testing.assert_array_equal(many, one, err_msg=f"{what}: {processes} processes differ from 1")
    # the same filter as half of a pair (the other half on the remaining workers)
    a = min(processes, 3)
    pair = eng.filter_pair(img, "box_3x3", kernel, processes=(4 - a, a), border=border, output=output,
                           implementation=impl)
    np.testing.assert_array_equal(pair.outputs[1], one, err_msg=f"{what}: filter B of a pair differs")


# -- kernels and process counts: run, or refuse with a message naming the parameter ---------------
IMG = np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3)

kernel_like = st.one_of(
    st.text(max_size=20),
    st.none(),
    st.floats(),
    st.lists(st.floats(), max_size=4),
    st.lists(st.lists(st.one_of(st.floats(), st.integers(-10, 10), st.text(max_size=2)), max_size=4), max_size=4),
    st.builds(lambda s, v: np.full(s, v), st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple),
              st.sampled_from([0.5, np.nan, np.inf, -1.0])),
)


@fuzz_settings(300)
@given(kernel_like)
def test_any_kernel_value_runs_or_is_refused_clearly(eng, kernel):
    try:
        w = np.asarray(kernel, dtype=np.float64)
        with np.errstate(over="ignore"):  # weights whose responses could overflow float64 are refused too
            valid = (w.ndim == 2 and 1 <= w.shape[0] <= 31 and 1 <= w.shape[1] <= 31 and np.isfinite(w).all()
                     and np.abs(w).sum() < engine._kernels.MAX_WEIGHT_SUM)  # noqa: SLF001
    except (TypeError, ValueError):
        valid = False
    if isinstance(kernel, str):
        valid = kernel in engine.KERNELS
    try:
        out = eng.filter_image(IMG, kernel, processes=1)
    except (TypeError, ValueError) as e:
        assert not valid, f"a valid kernel {kernel!r} was refused: {e}"
        assert str(e).startswith("kernel"), str(e)
    else:
        assert valid, f"an invalid kernel {kernel!r} was accepted"
        assert out.shape == IMG.shape


@fuzz_settings(500)
@given(st.text(max_size=60))
def test_parse_kernel_parses_or_refuses_with_value_error(text):
    try:
        k = engine.parse_kernel(text)
    except ValueError as e:
        assert str(e).startswith("kernel text"), str(e)
    else:
        assert k.weights.ndim == 2 and np.isfinite(k.weights).all() and max(k.shape) <= 31


process_like = st.one_of(
    st.integers(-(10**12), 10**12), st.integers(-2, 6), st.floats(), st.text(max_size=5), st.booleans(), st.none(),
    st.tuples(st.integers(-2, 6), st.integers(-2, 6)), st.builds(np.int64, st.integers(-5, 8)),
)


@fuzz_settings(300)
@given(process_like)
def test_any_process_count_runs_or_is_refused_clearly(eng, processes):
    valid = processes is None or (
        isinstance(processes, (int, np.integer)) and not isinstance(processes, bool) and 1 <= processes <= eng.max_workers
    )
    try:
        out = eng.filter_image(IMG, "sobel", processes=processes)
    except (TypeError, ValueError) as e:
        assert not valid, f"a valid count {processes!r} was refused: {e}"
        assert str(e).startswith("processes"), str(e)
    else:
        assert valid, f"an invalid count {processes!r} was accepted"
        assert out.shape == IMG.shape


def test_fuzz_seeds_are_valid_images():
    """The mutation seeds themselves load (else the mutated test would fuzz only the error path)."""
    for data in SEEDS:
        a = engine.load_image(data)
        assert a.shape[:2] in ((9, 11), (11, 9)), a.shape
