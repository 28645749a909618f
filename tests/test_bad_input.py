"""Bad input, end to end: a corpus of broken and odd files (made here, into tests/data/bad/), bad
kernels and bad process counts, through the engine (exception type and message), the CLI (exit 2
with one line on stderr and no traceback; exit 0 for the odd-but-valid images) and the dashboard
(tests/test_dashboard_reliability.py). The autouse ``no_leaks`` fixture fails any case that leaves
a segment or a process behind; ``run_cli`` checks the same for the CLI's own process tree.
"""

from __future__ import annotations

import base64
import io
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import engine
from _oracle import assert_close
from _proc import ROOT, cli_command, load_in_child, marked_env, run_cli, unprivileged

BAD = Path(__file__).resolve().parent / "data" / "bad"

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::UserWarning:PIL"),  # Pillow's notes on the corrupt files, expected
]


# -- the corpus -----------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 40000, height: int = 40000) -> bytes:
    """A 69-byte PNG whose header claims ``width x height`` 8-bit gray pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def _corrupt_idat(png: bytes) -> bytes:
    """Damage the compressed pixels of a PNG and repair the chunk's CRC: the header stays valid."""
    data = bytearray(png)
    start = data.index(b"IDAT") + 4
    (length,) = struct.unpack(">I", data[start - 8 : start - 4])
    data[start + 10] ^= 0xFF
    data[start + length : start + length + 4] = struct.pack(">I", zlib.crc32(bytes(data[start - 4 : start + length])))
    return bytes(data)


def _tiff(tags: dict[int, int]) -> bytes:
    """A little-endian TIFF with one IFD of LONG tags (values as given) and 16 zero bytes of data."""
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, 4, 1, v) for t, v in sorted(tags.items()))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 16


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    bio = io.BytesIO()
    im.save(bio, format=fmt, **kw)
    return bio.getvalue()


def _gradient() -> np.ndarray:
    """A smooth 64x80 RGB picture: lossy codecs keep it close to the original."""
    y, x = np.mgrid[0:64, 0:80]
    return np.dstack([x * 3, y * 4, (x + y) * 2]).astype(np.uint8)


GRAY16 = (np.arange(40 * 50, dtype=np.uint32).reshape(40, 50) * 32771 % 65536).astype(np.uint16)
ROW = (np.arange(300) * 7 % 256).astype(np.uint8)
RGBA16 = (np.arange(20 * 30 * 4, dtype=np.uint32).reshape(20, 30, 4) * 331 % 65536).astype(np.uint16)


def make_corpus(folder: Path) -> dict[str, Path]:
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.fromarray(_gradient())
    png, jpg = _encode(photo, "PNG"), _encode(photo, "JPEG", quality=95)
    pal = photo.quantize(16)
    frames = [Image.fromarray(np.full((20, 30, 3), v, np.uint8)) for v in (0, 100, 200)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    two = io.BytesIO()
    tifffile.imwrite(two, np.zeros((20, 30, 2), np.uint16), photometric="minisblack", planarconfig="contig")
    big_jpeg_exif = Image.Exif()
    big_jpeg_exif[0x010E] = "x" * 60000  # ImageDescription: fills the 64 KiB APP1 segment
    big_jpeg_exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    big_png_exif = Image.Exif()
    big_png_exif[0x010E] = "y" * 8_000_000  # an 8 MB eXIf chunk
    files = {
        "empty.png": b"",
        "truncated.png": png[: len(png) // 2],
        "truncated.jpg": jpg[: len(jpg) // 2],
        "text.png": b"this is not an image, only text saved with a .png name\n" * 4,
        "bomb.png": png_bomb(),
        "one_by_one.png": _encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"),
        "one_by_n.png": _encode(Image.fromarray(ROW[None, :]), "PNG"),
        "n_by_one.png": _encode(Image.fromarray(ROW[:, None]), "PNG"),
        "gray16.png": _encode(Image.fromarray(GRAY16), "PNG"),
        "cmyk.jpg": _encode(photo.convert("CMYK"), "JPEG", quality=95),
        "palette_trns.png": _encode(pal, "PNG", transparency=0),
        "animated.gif": gif.getvalue(),
        "float32.tif": _encode(Image.fromarray(np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30), mode="F"), "TIFF"),
        "two_samples.tif": two.getvalue(),
        "huge_exif.jpg": _encode(photo, "JPEG", quality=95, exif=big_jpeg_exif.tobytes()),
        "huge_exif.png": _encode(photo, "PNG", exif=big_png_exif.tobytes()),
        "corrupt_header.tif": b"II*\x00\x08\x00\x00\x00\x00\x00",  # an IFD with no entries
        # found by fuzz/atheris_load_image.py: StripOffsets stored as a RATIONAL, Pillow raises TypeError
        "rational_offset.tif": base64.b64decode(
            "SUkqAAgAAAAKAAABBAABAAAACwAAAAEBBAABAAAAAP4AAAIBAwADAAAAhgAAAAABAwABAAAAAQAAAAYBAwABAAAAAgAAABEB"
            "BQABAAAAjAAAABUBAwABAAAAAwAWAAABBAABAAAACQAAAP8BBAD/AAAAKQkAABwBAQAAAwEAAAAAAAAAAAAIAAgACACL5fF3"
            "////////////////FKExcv9w/4GBA14/"
        ),
        "rgba16.tif": engine.save_image(RGBA16, format="TIFF"),  # 16-bit color: OpenCV decodes it
        "corrupt16.png": _corrupt_idat(engine.save_image(RGBA16[..., :3], format="PNG")),  # libpng complains
        "many_samples.tif": _tiff({256: 1, 257: 1, 258: 8, 259: 1, 262: 1, 273: 0, 277: 300, 278: 1, 279: 1}),
        "rgb16.png": engine.save_image(RGBA16[..., :3], format="PNG"),
    }
    paths = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths[name] = folder / name
    return paths


@pytest.fixture(scope="session")
def corpus() -> dict[str, Path]:
    return make_corpus(BAD)


# -- images the engine refuses: (file, message pattern) ---------------------------------------------
REFUSED = [
    ("empty.png", r"is empty \(0 bytes\)"),
    ("truncated.png", r"could not be decoded \(truncated or corrupt\?\): image file is truncated"),
    ("truncated.jpg", r"could not be decoded \(truncated or corrupt\?\): image file is truncated"),
    ("text.png", r"is not a recognized image: use PNG, JPEG, TIFF, BMP, GIF or WebP"),
    ("bomb.png", r"is 1,600,000,000 pixels, more than the limit of 40,000,000 pixels"),
    ("float32.tif", r"holds 32-bit floating-point samples \(Pillow mode 'F'\), which this engine does not take: "
                    r"convert it to 8- or 16-bit integer gray or RGB \(PNG or TIFF\)"),
    ("two_samples.tif", r"is a TIFF file that cannot be decoded \(unknown pixel mode\)"),
    ("corrupt_header.tif", r"is a TIFF file that cannot be decoded \(Missing dimensions\)"),
    ("corrupt16.png", r"could not be decoded \(truncated or corrupt\?\): libpng could not decode its 16-bit pixels"),
    ("many_samples.tif", r"is a TIFF file that cannot be decoded \(Invalid value for samples per pixel\)"),
    ("rational_offset.tif", r"could not be decoded \(truncated or corrupt\?\): TypeError: 'IFDRational' object cannot"),
]


@pytest.mark.parametrize("name, message", REFUSED, ids=[r[0] for r in REFUSED])
def test_engine_refuses_bad_image(corpus, name, message):
    path = corpus[name]
    with pytest.raises(engine.ImageError, match=r"^(image file ')?" + re.escape(str(path)) + "'? " + message):
        engine.load_image(path)
    with pytest.raises(engine.ImageError, match=r"^image data " + message):
        engine.load_image(path.read_bytes())
    with open(path, "rb") as f, pytest.raises(engine.ImageError, match=message):
        engine.load_image(f)


@pytest.mark.parametrize("name, message", REFUSED, ids=[r[0] for r in REFUSED])
def test_cli_refuses_bad_image(corpus, tmp_path, name, message):
    res = run_cli("filter", corpus[name], tmp_path / "out.png", "--kernel", "sobel", "--processes", "1")
    _assert_usage_error(res, message)
    assert not (tmp_path / "out.png").exists()


#: Found by fuzz/atheris_load_image.py: a 43-byte 16-bit RGB PNG whose IDAT chunk header claims
#: 4,160,684,390 bytes. Decoding 16-bit color goes through OpenCV, whose PNG reader allocated that.
CHUNK_CLAIMS_4GB = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAsAAAAJEAIAAAA7lp059/8BZklEQVQoFQ==")


@pytest.mark.timeout(60)
def test_a_chunk_claiming_4_gb_is_refused_without_allocating_it(tmp_path):
    path = tmp_path / "claims4gb.png"
    path.write_bytes(CHUNK_CLAIMS_4GB)
    message, _, grown_mb = load_in_child(path)
    assert re.search(r"could not be decoded \(truncated or corrupt\?\)", message), message
    assert grown_mb < 200, f"{grown_mb} MB more memory"  # the claimed 4 GB were never allocated


def test_bomb_between_the_limit_and_twice_it_is_refused_too():
    # Pillow only warns between its MAX_IMAGE_PIXELS and twice that; the engine refuses both,
    # quoting its own limit (engine.MAX_PIXELS), never Pillow's
    with pytest.raises(engine.ImageError, match=r"^image data is 100,000,000 pixels, more than the limit of 40,000,000 pixels$"):
        engine.load_image(png_bomb(10000, 10000))
    with pytest.raises(engine.ImageError, match=r"is 5,120 pixels, more than the limit of 5,000 pixels"):
        engine.load_image(_encode(Image.fromarray(_gradient()), "PNG"), max_pixels=5000)


def test_an_unreadable_file_is_an_image_error_naming_the_cause(tmp_path):
    """A file without read permission was a raw PermissionError traceback (reopened by the
    catch-all to name its format), and exit 1 from the CLI."""
    path = tmp_path / "noread.png"
    path.write_bytes(engine.save_image(np.zeros((4, 5, 3), np.uint8)))
    path.chmod(0)
    load = "import sys, engine\ntry:\n    engine.load_image(sys.argv[1])\nexcept engine.ImageError as e:\n    print(e)"
    res = subprocess.run(unprivileged([sys.executable, "-c", load, path]), capture_output=True, text=True, timeout=60,
                         cwd=ROOT, env=marked_env("unreadable"))
    assert res.stdout == f"image file {str(path)!r} cannot be read: permission denied\n", (res.stdout, res.stderr)
    res = subprocess.run(unprivileged(cli_command("filter", path, tmp_path / "out.png", "--kernel", "sobel")),
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env=marked_env("unreadable"))
    _assert_usage_error(res, r"^error: image file '.*noread\.png' cannot be read: permission denied$")
    assert not (tmp_path / "out.png").exists()


# -- odd but valid images: what load_image documents ---------------------------------------------
def _expected(name: str, path: Path) -> np.ndarray:
    if name == "one_by_one.png":
        return np.array([[[10, 20, 30]]], np.uint8)
    if name == "one_by_n.png":
        return ROW[None, :, None]
    if name == "n_by_one.png":
        return ROW[:, None, None]
    if name == "gray16.png":
        return GRAY16[:, :, None]
    if name == "palette_trns.png":  # palette -> RGBA, index 0 transparent
        with Image.open(path) as im:
            idx = np.asarray(im)
            rgb = np.asarray(im.convert("RGB"))
        return np.dstack([rgb, np.where(idx == 0, 0, 255).astype(np.uint8)])
    if name == "animated.gif":  # the first frame
        return np.zeros((20, 30, 3), np.uint8)
    if name == "huge_exif.png":
        return _gradient()
    if name == "rgba16.tif":
        return RGBA16
    if name == "rgb16.png":
        return RGBA16[..., :3]
    raise KeyError(name)


LOSSY = {  # JPEG: (shape after EXIF orientation, how to undo it for comparison)
    "cmyk.jpg": ((64, 80, 3), lambda a: a),
    "huge_exif.jpg": ((80, 64, 3), lambda a: np.rot90(a, 1)),  # orientation 6 = 90 degrees clockwise
}
ACCEPTED = ["one_by_one.png", "one_by_n.png", "n_by_one.png", "gray16.png", "palette_trns.png", "animated.gif",
            "huge_exif.png", "rgba16.tif", "rgb16.png", *LOSSY]


@pytest.mark.parametrize("name", ACCEPTED)
def test_engine_loads_odd_but_valid_image(corpus, eng, name):
    img = engine.load_image(corpus[name])
    assert img.flags.c_contiguous and img.ndim == 3
    if name in LOSSY:
        shape, undo = LOSSY[name]
        assert img.shape == shape and img.dtype == np.uint8
        assert np.abs(undo(img).astype(int) - _gradient()).mean() < 4  # JPEG noise, not a wrong conversion
    else:
        want = _expected(name, corpus[name])
        assert img.dtype == want.dtype and img.shape == want.shape
        np.testing.assert_array_equal(img, want)
    np.testing.assert_array_equal(engine.load_image(corpus[name].read_bytes()), img)
    # ... and it filters like any image: the oracle's rounding, alpha untouched
    out = eng.filter_image(img, "sobel", processes=2, output="abs")
    assert_close(out, img, engine.KERNELS["sobel"].weights, "replicate", "abs", name)


@pytest.mark.parametrize("name", ACCEPTED)
def test_cli_filters_odd_but_valid_image(corpus, eng, tmp_path, name):
    dest = tmp_path / "out.png"
    res = run_cli("filter", corpus[name], dest, "--kernel", "gaussian", "--processes", "1")
    assert (res.returncode, res.stderr) == (0, "")  # no decoder warnings either
    img = engine.load_image(corpus[name])
    np.testing.assert_array_equal(engine.load_image(dest), eng.filter_image(img, "gaussian", processes=1))


# -- kernels: (kernel, exception, message) through the engine; text through the CLI ---------------
IMG = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10, 1)
BAD_KERNELS = [
    ("nan", [[1.0, float("nan")]], ValueError, r"^kernel weights must be finite numbers, got nan$"),
    ("inf", [[float("inf")]], ValueError, r"^kernel weights must be finite numbers, got inf$"),
    ("empty", [], ValueError, r"^kernel must be 2-D with odd or even sides of 1\.\.31, got shape \(0,\)$"),
    ("0x0", np.zeros((0, 0)), ValueError, r"^kernel must be 2-D with odd or even sides of 1\.\.31, got shape \(0, 0\)$"),
    ("100x100", np.ones((100, 100)), ValueError, r"^kernel must be 2-D .* of 1\.\.31, got shape \(100, 100\)$"),
    ("ragged", [[1, 2], [3]], TypeError, r"^kernel must be a 2-D array of numbers \(1x1 to 31x31\), got \[\[1, 2\], \[3\]\]$"),
    ("non-numeric", [["a", "b"]], TypeError, r"^kernel must be a 2-D array of numbers"),
    ("unknown name", "blur", ValueError, r"^kernel 'blur' is not a known kernel; known: identity, edge_x, "),
    ("3-D", np.ones((3, 3, 3)), ValueError, r"^kernel must be 2-D .*, got shape \(3, 3, 3\)$"),
]
BAD_KERNEL_TEXT = [
    ("nan", "1 nan", r"weights must be finite numbers, got 'nan'"),
    ("inf", "1 2; inf 3", r"weights must be finite numbers, got 'inf'"),
    ("empty", "", r"kernel text is empty"),
    ("0x0", "[[]]", r"kernel text is empty"),
    ("100x100", "\n".join([" ".join(["1"] * 100)] * 100), r"kernel text: sides must be 1\.\.31, got shape \(100, 100\)"),
    ("ragged", "1 2; 3", r"kernel text: every row needs the same number of weights, got row 1: 2, row 2: 1"),
    ("non-numeric", "1 2; 3 x", r"kernel text: 'x' in row 2 is not a number"),
    ("divide by zero", "1/0 1", r"kernel text: '1/0' in row 1 divides by zero"),
    ("overflow", "1e400", r"kernel text: '1e400' in row 1 is not finite"),
]


@pytest.mark.parametrize("label, kernel, exc, message", BAD_KERNELS, ids=[k[0] for k in BAD_KERNELS])
def test_engine_refuses_bad_kernel(eng, label, kernel, exc, message):
    with pytest.raises(exc, match=message):
        eng.filter_image(IMG, kernel, processes=1)
    with pytest.raises(exc, match=message.replace("^kernel ", "^kernels\\[1\\] ")):
        eng.filter_pair(IMG, "sobel", kernel, processes=(1, 1))


@pytest.mark.parametrize("label, text, message", BAD_KERNEL_TEXT, ids=[k[0] for k in BAD_KERNEL_TEXT])
def test_parse_kernel_refuses_bad_text(label, text, message):
    with pytest.raises(ValueError, match=message):
        engine.parse_kernel(text)


CLI_KERNEL_CASES = [*BAD_KERNEL_TEXT, ("words", "a b; c d", r"--kernel 'a b; c d' is neither a known kernel \(identity, ")]


@pytest.mark.parametrize("label, text, message", CLI_KERNEL_CASES, ids=[k[0] for k in CLI_KERNEL_CASES])
def test_cli_refuses_bad_kernel(corpus, tmp_path, label, text, message):
    res = run_cli("filter", corpus["one_by_n.png"], tmp_path / "o.png", "--kernel", text)
    _assert_usage_error(res, message)


# -- process counts ----------------------------------------------------------------------------------
BAD_PROCESSES = [
    (0, ValueError, r"processes must be an integer from 1 to 4 \(this engine's max_workers\), got 0$"),
    (-1, ValueError, r"processes must be an integer from 1 to 4 \(this engine's max_workers\), got -1$"),
    (1.5, TypeError, r"processes must be an integer from 1 to 4, got 1\.5 \(float\)$"),
    (10**9, ValueError, r"processes must be an integer from 1 to 4 \(this engine's max_workers\), got 1000000000$"),
    ("text", TypeError, r"processes must be an integer from 1 to 4, got 'text' \(str\)$"),
    (True, TypeError, r"processes must be an integer from 1 to 4, got True \(bool\)$"),
]


@pytest.mark.parametrize("processes, exc, message", BAD_PROCESSES, ids=[repr(p[0]) for p in BAD_PROCESSES])
def test_engine_refuses_bad_process_count(eng, processes, exc, message):
    with pytest.raises(exc, match="^" + message):
        eng.filter_image(IMG, "sobel", processes=processes)
    with pytest.raises(exc, match=r"^processes\[1\]" + message[len("processes"):]):
        eng.filter_pair(IMG, "sobel", "sobel", processes=(1, processes))
    with pytest.raises(exc, match="^" + message):
        eng.submit(IMG, engine.FilterRequest(["sobel"]), processes=processes)
    with pytest.raises(exc, match="^" + message):
        eng.plan(IMG.shape, "sobel", processes)


def test_engine_refuses_pairs_over_its_cap(eng):
    with pytest.raises(ValueError, match=r"^processes \(3, 2\) add up to 5, more than this engine's max_workers=4$"):
        eng.filter_pair(IMG, "sobel", "sobel", processes=(3, 2))


@pytest.mark.parametrize("max_workers", [0, -1, 1.5, "text", True, 10**9])
def test_engine_refuses_bad_max_workers(max_workers):
    with pytest.raises(ValueError, match=r"^max_workers must be an integer from 1 to \d+ \(8 per CPU: .*\), got "):
        engine.Engine(max_workers=max_workers)


CLI_PROCESSES = [
    ("0", r"argument --processes: must be an integer >= 1, got 0"),
    ("-1", r"argument --processes: must be an integer >= 1, got -1"),
    ("1.5", r"argument --processes: must be an integer >= 1, got '1\.5'"),
    ("1000000000", r"processes must be an integer from 1 to \d+ \(this engine's max_workers\), got 1000000000"),
    ("text", r"argument --processes: must be an integer >= 1, got 'text'"),
]


@pytest.mark.parametrize("processes, message", CLI_PROCESSES, ids=[p[0] for p in CLI_PROCESSES])
def test_cli_refuses_bad_process_count(corpus, tmp_path, processes, message):
    res = run_cli("filter", corpus["one_by_n.png"], tmp_path / "o.png", "--kernel", "sobel", "--processes", processes)
    _assert_usage_error(res, message)


def test_cli_refuses_bad_pair_process_count(corpus, tmp_path):
    res = run_cli("pair", corpus["one_by_n.png"], tmp_path / "a.png", tmp_path / "b.png", "--kernels", "sobel",
                  "gaussian", "--processes", "1", "0")
    _assert_usage_error(res, r"argument --processes: must be an integer >= 1, got 0")


def test_engine_still_works_after_every_bad_case(eng, corpus):
    """The shared engine saw every refusal above; its workers are the same and it still filters."""
    before = sorted(eng.idle_workers())
    img = engine.load_image(corpus["huge_exif.png"])
    out = eng.filter_pair(img, "sobel", "gaussian", processes=(2, 2))
    assert len(out.outputs) == 2 and out.outputs[0].shape == img.shape
    assert sorted(eng.idle_workers()) == before


def _assert_usage_error(res, message):
    lines = res.stderr.splitlines()
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {res.stderr!r}"
    assert "Traceback" not in res.stderr
    assert lines[0].startswith("error: ")
    assert re.search(message, lines[0]), (message, lines[0])
    assert res.stdout == ""
