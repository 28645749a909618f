"""load_image and save_image, on files made here with Pillow (no downloads)."""

from __future__ import annotations

import io
import os
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import engine
from engine import ImageError, load_image, save_image

RNG = np.random.default_rng(2024)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    bio = io.BytesIO()
    im.save(bio, format=fmt, **kw)
    return bio.getvalue()


def gradient(h=48, w=64) -> np.ndarray:
    """A smooth RGB picture: lossy codecs keep it within a few gray levels."""
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)]).astype(np.uint8)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height 8-bit gray pixels, with almost no data behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


# -- sources --------------------------------------------------------------------------------------
def test_path_bytes_and_file_objects_agree(tmp_path):
    rgb = RNG.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    data = encode(Image.fromarray(rgb), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    for source in (path, str(path), data, bytearray(data), memoryview(data), io.BytesIO(data)):
        got = load_image(source)
        assert got.dtype == np.uint8 and got.shape == (13, 17, 3), type(source)
        assert np.array_equal(got, rgb), type(source)
    with open(path, "rb") as f:
        assert np.array_equal(load_image(f), rgb)
    assert got.flags.c_contiguous


def test_bad_sources(tmp_path):
    with pytest.raises(TypeError, match=r"^source must be a path, bytes or a binary file object, got int$"):
        load_image(42)
    (tmp_path / "t.txt").write_text("hello")
    with open(tmp_path / "t.txt") as f:
        with pytest.raises(TypeError, match=r"^source file object must be opened in binary mode, it returned str$"):
            load_image(f)
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ValueError, match=rf"^max_pixels must be a positive integer, got {bad!r}$"):
            load_image(encode(Image.new("L", (2, 2)), "PNG"), max_pixels=bad)


# -- formats --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("TIFF", {}), ("BMP", {}), ("WEBP", {"lossless": True}),
                                    ("TIFF", {"compression": "tiff_lzw"})])
def test_lossless_round_trips(fmt, kw):
    rgb = RNG.integers(0, 256, (21, 30, 3), dtype=np.uint8)
    got = load_image(encode(Image.fromarray(rgb), fmt, **kw))
    assert got.shape == (21, 30, 3) and got.dtype == np.uint8
    assert np.array_equal(got, rgb)


@pytest.mark.parametrize("fmt,kw,tol", [("JPEG", {"quality": 95}, 12), ("WEBP", {"quality": 95}, 16)])
def test_lossy_round_trips(fmt, kw, tol):
    rgb = gradient()
    got = load_image(encode(Image.fromarray(rgb), fmt, **kw))
    assert got.shape == rgb.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - rgb).max() <= tol
    assert np.abs(got.astype(int) - rgb).mean() < 2


def test_gif_with_few_colors_is_exact_rgb():
    rgb = (RNG.integers(0, 4, (12, 9, 3)) * 85).astype(np.uint8)  # 64 colors fit a palette
    im = Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    got = load_image(encode(im, "GIF"))
    assert got.shape == (12, 9, 3) and np.array_equal(got, np.asarray(im.convert("RGB")))


def test_webp_with_alpha_is_rgba():
    rgba = RNG.integers(0, 256, (10, 11, 4), dtype=np.uint8)
    got = load_image(encode(Image.fromarray(rgba), "WEBP", lossless=True, exact=True))
    assert got.shape == (10, 11, 4) and np.array_equal(got, rgba)


# -- modes ----------------------------------------------------------------------------------------
def test_gray_is_h_w_1():
    g = RNG.integers(0, 256, (7, 5), dtype=np.uint8)
    for fmt in ("PNG", "TIFF", "BMP"):
        got = load_image(encode(Image.fromarray(g), fmt))
        assert got.shape == (7, 5, 1) and got.dtype == np.uint8 and np.array_equal(got[:, :, 0], g), fmt


def test_gray_alpha_has_two_channels():
    la = RNG.integers(0, 256, (6, 8, 2), dtype=np.uint8)
    im = Image.fromarray(la)
    assert im.mode == "LA"
    for fmt in ("PNG", "TIFF"):
        got = load_image(encode(im, fmt))
        assert got.shape == (6, 8, 2) and np.array_equal(got, la), fmt


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_gray_stays_sixteen_bit(fmt):
    g = RNG.integers(0, 65536, (9, 14), dtype=np.uint16)
    g[0, :4] = [0, 1, 256, 65535]  # values an 8-bit squeeze would lose
    im = Image.fromarray(g)
    assert im.mode.startswith("I;16")
    got = load_image(encode(im, fmt))
    assert got.dtype == np.uint16 and got.shape == (9, 14, 1)
    assert np.array_equal(got[:, :, 0], g)


def test_thirty_two_bit_integer_tiff_with_sixteen_bit_values():
    g = RNG.integers(0, 65536, (4, 5)).astype(np.int32)
    got = load_image(encode(Image.fromarray(g, mode="I"), "TIFF"))
    assert got.dtype == np.uint16 and np.array_equal(got[:, :, 0], g)


def test_thirty_two_bit_integer_out_of_range_is_refused():
    g = np.full((4, 5), 70000, np.int32)
    with pytest.raises(ImageError, match=r"^image data holds 32-bit integer values from 70000 to 70000, beyond the 16-bit range "
                                         r"\(Pillow mode 'I'\), which this engine does not take: convert it to 8- or 16-bit "
                                         r"integer gray or RGB \(PNG or TIFF\)$"):
        load_image(encode(Image.fromarray(g, mode="I"), "TIFF"))


def test_palette_without_transparency_is_rgb():
    im = Image.fromarray(gradient(8, 8)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert im.mode == "P" and "transparency" not in im.info
    got = load_image(encode(im, "PNG"))
    assert got.shape == (8, 8, 3) and np.array_equal(got, np.asarray(im.convert("RGB")))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_is_rgba(fmt):
    im = Image.new("P", (6, 4), 1)
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    im.putpixel((0, 0), 2)
    im.putpixel((5, 3), 0)
    im.info["transparency"] = 0
    got = load_image(encode(im, fmt, transparency=0))
    assert got.shape == (4, 6, 4) and got.dtype == np.uint8
    assert got[0, 0].tolist() == [0, 255, 0, 255]
    assert got[1, 1].tolist() == [255, 0, 0, 255]
    assert got[3, 5, 3] == 0  # the transparent index


def test_cmyk_becomes_rgb():
    im = Image.new("CMYK", (5, 3), (0, 255, 255, 0))  # red
    for fmt in ("JPEG", "TIFF"):
        got = load_image(encode(im, fmt))
        assert got.shape == (3, 5, 3), fmt
        assert np.abs(got.astype(int) - [255, 0, 0]).max() <= 2, (fmt, got[0, 0])


def test_one_bit_becomes_0_and_255():
    bits = RNG.integers(0, 2, (9, 13)).astype(bool)
    im = Image.fromarray(bits)
    assert im.mode == "1"
    for fmt in ("PNG", "TIFF", "BMP"):
        got = load_image(encode(im, fmt))
        assert got.shape == (9, 13, 1) and got.dtype == np.uint8, fmt
        assert set(np.unique(got)) <= {0, 255}
        assert np.array_equal(got[:, :, 0] == 255, bits), fmt


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animation_gives_the_first_frame(fmt):
    frames = [Image.new("RGB", (8, 6), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    kw = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, **kw)
    with Image.open(io.BytesIO(data)) as im:
        assert getattr(im, "n_frames", 1) == 3  # it really is an animation
    got = load_image(data)
    assert got.shape[:2] == (6, 8)
    assert np.abs(got[..., :3].astype(int) - [255, 0, 0]).max() <= 2


def _oriented_jpeg(orientation: int) -> tuple[bytes, np.ndarray]:
    """A 40 wide x 20 high JPEG, red in its top-left 10x10 corner, with an EXIF orientation."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:10, :10] = [255, 0, 0]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(a), "JPEG", quality=95, exif=exif.tobytes()), a


def test_exif_orientation_is_applied():
    data, stored = _oriented_jpeg(6)  # "rotate 90 degrees clockwise to display"
    got = load_image(data)
    assert got.shape == (40, 20, 3)  # transposed
    assert np.abs(got.astype(int) - np.rot90(stored, -1)).mean() < 3
    assert got[2, 17, 0] > 200 and got[2, 2, 0] < 40  # the red corner moved to the top right
    data, stored = _oriented_jpeg(3)  # rotate 180
    got = load_image(data)
    assert got.shape == (20, 40, 3) and got[17, 37, 0] > 200 and got[2, 2, 0] < 40
    data, stored = _oriented_jpeg(1)
    assert load_image(data)[2, 2, 0] > 200


def test_exif_orientation_on_sixteen_bit_color():
    a = np.zeros((4, 6, 3), np.uint16)
    a[0, 0] = [65535, 1, 2]
    exif = Image.Exif()
    exif[0x0112] = 6
    # a 16-bit RGB PNG from OpenCV, with an eXIf chunk (a bare TIFF header) added after IHDR
    data = save_image(a)
    tiff = exif.tobytes()
    tiff = tiff[6:] if tiff.startswith(b"Exif\0\0") else tiff
    assert data[12:16] == b"IHDR"
    data = data[:33] + chunk(b"eXIf", tiff) + data[33:]
    got = load_image(data)
    assert got.dtype == np.uint16 and got.shape == (6, 4, 3)
    assert got[0, 3].tolist() == [65535, 1, 2]


def _xmp(orientation: int) -> bytes:
    """An iTXt chunk's body: XMP whose tiff:Orientation is ``orientation``."""
    return (b"XML:com.adobe.xmp\0\0\0\0\0<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf="
            b"'http://www.w3.org/1999/02/22-rdf-syntax-ns#'><rdf:Description xmlns:tiff='http://ns.adobe.com/tiff/1.0/' "
            b"tiff:Orientation='%d'/></rdf:RDF></x:xmpmeta>" % orientation).replace(b"'", b'"')


def _exif(orientation) -> bytes:
    """An eXIf chunk's body (a bare TIFF header), with an orientation tag unless None."""
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    else:
        exif[0x010F] = "camera"  # make: EXIF without an orientation
    tiff = exif.tobytes()
    return tiff[6:] if tiff.startswith(b"Exif\0\0") else tiff


def _raw_profile(orientation: int) -> bytes:
    """ImageMagick's "Raw profile type exif" text: the EXIF block in hex."""
    tiff = _exif(orientation)
    return f"\nexif\n{len(tiff):8d}\n{tiff.hex()}\n".encode()


#: Where EXIF orientation may sit in a PNG: (chunks after IHDR, chunks after the pixels).
ORIENTED_PNGS = {
    "XMP before the pixels": ([(b"iTXt", _xmp(6))], []),
    "XMP after the pixels": ([], [(b"iTXt", _xmp(6))]),
    "raw profile tEXt": ([(b"tEXt", b"Raw profile type exif\0" + _raw_profile(6))], []),
    "raw profile zTXt after the pixels": ([], [(b"zTXt", b"Raw profile type exif\0\0" + zlib.compress(_raw_profile(8)))]),
    "eXIf after the pixels": ([], [(b"eXIf", _exif(3))]),
    "eXIf wins over XMP": ([(b"eXIf", _exif(6)), (b"iTXt", _xmp(8))], []),
    "eXIf without orientation, XMP after the pixels": ([(b"eXIf", _exif(None))], [(b"iTXt", _xmp(6))]),
    "the last eXIf wins": ([(b"eXIf", _exif(8))], [(b"eXIf", _exif(3))]),
}


def _with_chunks(png: bytes, head: list, tail: list) -> bytes:
    """``png`` with ``head`` chunks inserted after IHDR and ``tail`` chunks before IEND."""
    assert png[12:16] == b"IHDR" and png[-8:-4] == b"IEND"
    return (png[:33] + b"".join(chunk(k, d) for k, d in head) + png[33:-12] + b"".join(chunk(k, d) for k, d in tail)
            + png[-12:])


@pytest.mark.parametrize("where", list(ORIENTED_PNGS))
def test_sixteen_bit_color_png_takes_its_orientation_where_pillow_does(where):
    """16-bit color PNGs read their orientation only from an eXIf chunk, so XMP and raw-profile
    orientations rotated the 8-bit twin and not the 16-bit file. Both now follow Pillow's own
    ``getexif`` on the loaded image (here on the 16-bit file itself, which Pillow decodes at 8 bits)."""
    a16 = np.zeros((4, 6, 3), np.uint16)
    a16[0, 0] = [65535, 1, 2]
    turn = {1: lambda a: a, 3: lambda a: a[::-1, ::-1], 6: lambda a: np.rot90(a, -1), 8: lambda a: np.rot90(a, 1)}
    for a in (a16, (a16 >> 8).astype(np.uint8)):  # OpenCV's 16-bit route, Pillow's 8-bit route
        data = _with_chunks(save_image(a), *ORIENTED_PNGS[where])
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # as load_image's 8-bit route: the chunks after the pixels are read
            orientation = im.getexif().get(0x0112, 1)
        assert orientation in (3, 6, 8), where
        got = load_image(data)
        assert got.dtype == a.dtype and np.array_equal(got, turn[orientation](a)), (where, a.dtype, orientation)


# -- errors ---------------------------------------------------------------------------------------
def test_empty_inputs(tmp_path):
    with pytest.raises(ImageError, match=r"^image data is empty \(0 bytes\)"):
        load_image(b"")
    with pytest.raises(ImageError, match=r"^image data is empty \(0 bytes\)"):
        load_image(io.BytesIO(b""))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty.png' is empty \(0 bytes\)$"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match=r"nope.png' does not exist$"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match=r"is a folder, not a file$"):
        load_image(tmp_path)
    assert issubclass(ImageError, ValueError)


@pytest.mark.timeout(60)  # opening a FIFO would wait for a writer: the kind is read first
def test_paths_that_are_not_regular_files(tmp_path):
    """A FIFO, a device or a /proc file has a size of 0: each said "is empty (0 bytes)"."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match=rf"^image path {re.escape(repr(str(fifo)))} is not a regular file: "
                                         r"it is a named pipe \(FIFO\)$"):
        load_image(fifo)
    for device in ("/dev/urandom", "/dev/null"):
        with pytest.raises(ImageError, match=rf"^image path '{device}' is not a regular file: it is a character device$"):
            load_image(device)
    if not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc on this system")
    with pytest.raises(ImageError, match=r"^image path '/proc/self/status' is not a regular file: it reports 0 bytes "
                                         r"but has content \(a kernel file, as under /proc\)$"):
        load_image("/proc/self/status")


def test_a_symlink_loop_is_named(tmp_path):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop.name)
    with pytest.raises(ImageError, match=r"loop.png' cannot be read: too many levels of symbolic links$"):
        load_image(loop)
    (tmp_path / "dangling.png").symlink_to("nope.png")
    with pytest.raises(ImageError, match=r"dangling.png' does not exist$"):
        load_image(tmp_path / "dangling.png")


def test_a_file_that_cannot_be_opened_while_decoding_is_named_with_the_cause(tmp_path, monkeypatch):
    """The decoder's PermissionError (the file's permissions changed after the first check) is
    the file's to report, not a corrupt image; and the message is never replaced by another
    PermissionError from reopening the file to name its format."""
    path = tmp_path / "a.png"
    path.write_bytes(save_image(np.zeros((2, 2, 1), np.uint8)))
    opened = Image.open

    def refuse(fp, *args, **kwargs):
        if fp == str(path):
            raise PermissionError(13, "Permission denied", fp)
        return opened(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(ImageError, match=rf"^{re.escape(str(path))} cannot be read: permission denied$"):
        load_image(path)


def test_truncated_png():
    data = encode(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    for cut in (len(data) // 2, 40):
        with pytest.raises(ImageError, match=r"^image data (could not be decoded \(truncated or corrupt\?\)|"
                                             r"is a PNG file that cannot be decoded)"):
            load_image(data[:cut])


def test_text_file_is_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match=r"notes.png is not a recognized image: use PNG, JPEG, TIFF, BMP, GIF or WebP$"):
        load_image(p)
    with pytest.raises(ImageError, match=r"^image data is not a recognized image"):
        load_image(b"GIF? no. " * 10)


def test_float_tiff_is_refused():
    f = Image.fromarray(RNG.random((5, 5)).astype(np.float32))
    assert f.mode == "F"
    with pytest.raises(ImageError, match=r"^image data holds 32-bit floating-point samples \(Pillow mode 'F'\), which this "
                                         r"engine does not take: convert it to 8- or 16-bit integer gray or RGB"):
        load_image(encode(f, "TIFF"))


def test_decompression_bomb_is_refused_from_the_header(pixel_decodes):
    data = png_header_only(30000, 30000)
    assert len(data) < 100
    with pytest.raises(ImageError, match=r"^image data is 900,000,000 pixels, more than the limit of 40,000,000 pixels$"):
        load_image(data)
    # between the limit and Pillow's own (89M): refused with the engine's limit, not Pillow's
    with pytest.raises(ImageError, match=r"^image data is 64,000,000 pixels, more than the limit of 40,000,000 pixels$"):
        load_image(png_header_only(8000, 8000))
    # between Pillow's warning and error limits (89M..179M pixels): refused too, not a warning
    with pytest.raises(ImageError, match=r"^image data is 100,000,000 pixels, more than the limit of 40,000,000 pixels$"):
        load_image(png_header_only(10000, 10000))
    assert pixel_decodes == []  # no pixel was decoded: refused from the header
    # the spy sees decoding: a small PNG that loads goes through Pillow's zip decoder
    assert load_image(encode(Image.new("L", (4, 4)), "PNG")).shape == (4, 4, 1)
    assert ("PIL decoder", "zip") in pixel_decodes


def test_max_pixels():
    pillows = Image.MAX_IMAGE_PIXELS
    assert engine.MAX_PIXELS == 40_000_000 and "MAX_PIXELS" in engine.__all__
    data = encode(Image.new("RGB", (100, 50)), "PNG")
    with pytest.raises(ImageError, match=r"^image data is 5,000 pixels, more than the limit of 4,999 pixels$"):
        load_image(data, max_pixels=4999)
    assert load_image(data, max_pixels=5000).shape == (50, 100, 3)
    # a limit above the default lets a big header through to the (truncated) data
    with pytest.raises(ImageError, match=r"could not be decoded"):
        load_image(png_header_only(10000, 10000), max_pixels=10**8)
    assert Image.MAX_IMAGE_PIXELS == pillows  # Pillow's own limit, restored after each call


def test_transparency_is_an_alpha_channel_at_8_and_16_bits():
    """tRNS of gray and RGB PNGs becomes alpha (0 where the color is the tRNS color), as for
    palette images, whatever the bit depth."""
    g8 = RNG.integers(0, 256, (6, 7), dtype=np.uint8)
    g8[0, 0] = 9
    got = load_image(encode(Image.fromarray(g8), "PNG", transparency=9))
    assert got.shape == (6, 7, 2) and np.array_equal(got[:, :, 0], g8)
    assert np.array_equal(got[:, :, 1], np.where(g8 == 9, 0, 255))
    rgb = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    rgb[1, 1] = (1, 2, 3)
    got = load_image(encode(Image.fromarray(rgb), "PNG", transparency=(1, 2, 3)))
    assert got.shape == (6, 7, 4) and np.array_equal(got[:, :, :3], rgb)
    assert np.array_equal(got[:, :, 3], np.where((rgb == (1, 2, 3)).all(axis=2), 0, 255))
    g16 = RNG.integers(0, 65536, (6, 7), dtype=np.uint16)
    g16[2, 2] = 40000
    got = load_image(encode(Image.fromarray(g16), "PNG", transparency=40000))
    assert got.dtype == np.uint16 and got.shape == (6, 7, 2) and np.array_equal(got[:, :, 0], g16)
    assert np.array_equal(got[:, :, 1], np.where(g16 == 40000, 0, 65535))


def test_messages_are_one_line_without_library_jargon():
    cases = [b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 7, 0, 0, 0)),  # color type 7
             b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n" + b"\n" * 40]
    for data in cases:
        with pytest.raises(ImageError) as e:
            load_image(data)
        assert "\n" not in str(e.value) and "driver" not in str(e.value), str(e.value)


# -- save_image -----------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=lambda d: d.__name__)
def test_save_png_round_trips(tmp_path, dtype, channels):
    a = RNG.integers(0, np.iinfo(dtype).max + 1, (11, 7, channels), dtype=dtype)
    a[0, 0] = 0
    a[-1, -1] = np.iinfo(dtype).max
    data = save_image(a)
    assert data.startswith(b"\x89PNG")
    got = load_image(data)
    assert got.dtype == dtype and got.shape == a.shape
    assert np.array_equal(got, a)
    save_image(a, tmp_path / "x.png")
    assert np.array_equal(load_image(tmp_path / "x.png"), a)
    bio = io.BytesIO()
    save_image(a, bio)
    assert bio.getvalue() == data


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=lambda d: d.__name__)
def test_save_tiff_and_two_d(tmp_path, dtype):
    a = RNG.integers(0, np.iinfo(dtype).max + 1, (5, 6), dtype=dtype)
    save_image(a, tmp_path / "g.tif")
    assert np.array_equal(load_image(tmp_path / "g.tif")[:, :, 0], a)
    rgb = RNG.integers(0, np.iinfo(dtype).max + 1, (5, 6, 3), dtype=dtype)
    assert np.array_equal(load_image(save_image(rgb, format="TIFF")), rgb)


def test_save_refuses_what_it_cannot_write():
    with pytest.raises(ValueError, match=r"^image must be \(H, W, C\) uint8 or uint16 with C in 1..4, got shape \(2, 2, 5\) dtype uint8$"):
        save_image(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ValueError, match=r"dtype float64$"):
        save_image(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"^format 'jpeg' cannot hold this 16-bit RGB image \(JPEG holds 8-bit gray "
                                         r"or RGB\): use PNG \(\.png\) or TIFF \(\.tif, \.tiff\)$"):
        save_image(np.zeros((2, 2, 3), np.uint16), format="jpeg")


# Every format, dtype and channel count: what the table admits comes back with the same shape and
# dtype (and pixels, for the lossless ones); the rest is refused before anything is encoded.
HOLDS = {
    ("PNG", np.uint8): (1, 2, 3, 4), ("PNG", np.uint16): (1, 2, 3, 4),
    ("TIFF", np.uint8): (1, 2, 3, 4), ("TIFF", np.uint16): (1, 3, 4),
    ("JPEG", np.uint8): (1, 3), ("BMP", np.uint8): (1, 3), ("WEBP", np.uint8): (3, 4),
}
EXT = {"PNG": ".png", "TIFF": ".tif", "JPEG": ".jpg", "BMP": ".bmp", "WEBP": ".webp"}


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=lambda d: d.__name__)
@pytest.mark.parametrize("fmt", list(EXT))
def test_every_format_gives_back_what_it_holds_or_refuses_up_front(tmp_path, fmt, dtype, channels):
    a = RNG.integers(0, np.iinfo(dtype).max + 1, (9, 7, channels), dtype=dtype)
    path = tmp_path / ("x" + EXT[fmt])
    if channels in HOLDS.get((fmt, dtype), ()):
        save_image(a, path)
        got = load_image(path)
        assert got.shape == a.shape and got.dtype == a.dtype
        if fmt not in ("JPEG", "WEBP"):
            assert np.array_equal(got, a)
        assert load_image(save_image(a, format=fmt.lower())).shape == a.shape
    else:
        kind = {1: "gray", 2: "gray \\+ alpha", 3: "RGB", 4: "RGBA"}[channels]
        bits = 16 if dtype == np.uint16 else 8
        with pytest.raises(ValueError, match=rf"^dest '.*x\{EXT[fmt]}' \({fmt}\) cannot hold this {bits}-bit {kind} "
                                             rf"image \({fmt} holds .*\): use PNG \(\.png\)"):
            save_image(a, path)
        assert not path.exists()


def test_save_refuses_unknown_formats_and_extensions(tmp_path):
    a = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match=r"^format must be one of 'PNG', 'TIFF', 'JPEG', 'BMP', 'WEBP', got 'GIF'$"):
        save_image(a, format="GIF")
    with pytest.raises(ValueError, match=r"^dest '.*out\.gif' must end in \.png, \.tif, \.tiff, \.jpg, \.jpeg, "
                                         r"\.bmp or \.webp \(the format is taken from it\), got '\.gif'$"):
        save_image(a, tmp_path / "out.gif")
    with pytest.raises(ValueError, match=r"got 'no extension'$"):
        save_image(a, tmp_path / "out")
    assert save_image(a, tmp_path / "out", format="png") is None  # format= overrides the name
    assert np.array_equal(load_image(tmp_path / "out"), a)


# -- an optional decoder that is not installed ------------------------------------------------------
def _tiff16() -> bytes:
    return save_image(RNG.integers(0, 65536, (6, 5, 3), dtype=np.uint16), format="TIFF")


def test_a_missing_tifffile_is_named_not_called_corruption(monkeypatch):
    import sys

    data = _tiff16()
    monkeypatch.setitem(sys.modules, "tifffile", None)  # import tifffile now fails
    with pytest.raises(ImageError, match=r"^image data is a TIFF file whose decoder needs a Python package that is not "
                                         r"installed \(.*tifffile.*\): pip install tifffile$") as e:
        load_image(data)
    assert "corrupt" not in str(e.value) and "ModuleNotFoundError" not in str(e.value)


def test_a_missing_imagecodecs_is_named_not_called_corruption(monkeypatch):
    import tifffile

    data = _tiff16()

    def no_codec(self, *args, **kwargs):  # what tifffile raises for LZW without imagecodecs
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_codec)
    with pytest.raises(ImageError, match=r"^image data is a TIFF file whose decoder needs a Python package that is not "
                                         r"installed \(<COMPRESSION.LZW: 5> requires the 'imagecodecs' package\): "
                                         r"pip install imagecodecs$"):
        load_image(data)
