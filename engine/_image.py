"""Decoding and encoding images: Pillow in, numpy ``(H, W, C)`` uint8/uint16 out."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import warnings
import zlib
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageError", "load_image", "save_image", "DEFAULT_MAX_PIXELS"]

#: Pillow's decompression-bomb limit (about 89 megapixels).
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS
_PILLOW_LIMIT_LOCK = threading.Lock()

Source = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

# Pillow mode -> (mode to convert to, dtype). Anything missing is refused with the list below.
_MODES = {
    "1": ("L", np.uint8),
    "L": ("L", np.uint8),
    "LA": ("LA", np.uint8),
    "La": ("LA", np.uint8),
    "P": (None, np.uint8),  # RGB or RGBA, decided by transparency
    "PA": ("RGBA", np.uint8),
    "RGB": ("RGB", np.uint8),
    "RGBA": ("RGBA", np.uint8),
    "RGBa": ("RGBA", np.uint8),
    "RGBX": ("RGB", np.uint8),
    "CMYK": ("RGB", np.uint8),
    "YCbCr": ("RGB", np.uint8),
    "HSV": ("RGB", np.uint8),
    "I;16": (None, np.uint16),
    "I;16L": (None, np.uint16),
    "I;16B": (None, np.uint16),
    "I;16N": (None, np.uint16),
    "I": (None, np.uint16),  # 32-bit int: accepted when the values fit in 16 bits (16-bit PNGs)
}


class ImageError(ValueError):
    """The input is not an image this engine can represent: undecodable, truncated, too large,
    or of an unsupported mode. The message says which, and what is allowed."""


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return "image data"


def _open(source: Source) -> Image.Image:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("image data is empty (0 bytes): upload a PNG, JPEG, TIFF, BMP, GIF or WebP file")
        return Image.open(io.BytesIO(bytes(source)))
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ImageError(f"image file {path!r} does not exist")
        if os.path.isdir(path):
            raise ImageError(f"image path {path!r} is a folder, not a file")
        if os.path.getsize(path) == 0:
            raise ImageError(f"image file {path!r} is empty (0 bytes)")
        return Image.open(path)
    raise TypeError(
        f"source must be a path, bytes or a binary file object, got {type(source).__name__}"
    )


def load_image(source: Source, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image with Pillow into a ``(H, W, C)`` array.

    Parameters
    ----------
    source : path, bytes or binary file object
    max_pixels : int, optional
        Refuse images with more pixels than this, judged from the header before any pixel is
        decoded. Default: Pillow's decompression-bomb limit (89,478,485).

    Returns
    -------
    numpy.ndarray
        ``uint8`` or ``uint16`` (16-bit gray and 16-bit RGB(A) PNG/TIFF stay 16-bit: Pillow has
        no 16-bit color mode, so OpenCV decodes those), shape ``(H, W, C)`` with C = 1
        (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA). EXIF orientation is applied; palette
        images become RGB or RGBA, CMYK becomes RGB, 1-bit becomes 0/255, and animations give
        their first frame.

    Raises
    ------
    ImageError
        Empty, undecodable or truncated data, more than ``max_pixels`` pixels, or a mode with no
        uint8/uint16 representation (32-bit float, for example).
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)) and hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"source file object must be opened in binary mode, it returned {type(data).__name__}")
        source = bytes(data)
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):  # before the try below
        raise TypeError(f"source must be a path, bytes or a binary file object, got {type(source).__name__}")
    what = _describe(source)
    try:
        with _PILLOW_LIMIT_LOCK if limit > DEFAULT_MAX_PIXELS else contextlib.nullcontext():
            saved = Image.MAX_IMAGE_PIXELS
            if limit > DEFAULT_MAX_PIXELS:
                Image.MAX_IMAGE_PIXELS = limit
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    im = _open(source)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        with im:
            w, h = im.size
            if w * h > limit:
                raise ImageError(
                    f"{what} is {w}x{h} = {w * h:,} pixels, more than the limit of {limit:,} pixels"
                )
            if w == 0 or h == 0:
                raise ImageError(f"{what} has no pixels ({w}x{h})")
            im.seek(0)
            return _to_array(im, what, source)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{what} looks like a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise _unidentified(source, what) from None
    except (OSError, SyntaxError, EOFError, ValueError, struct.error) as e:
        raise ImageError(f"{what} could not be decoded (truncated or corrupt?): {e}") from None
    except (TypeError, IndexError, KeyError, ZeroDivisionError, OverflowError) as e:
        # Pillow's plugins raise these too on corrupt headers (found by fuzzing: a TIFF strip
        # offset stored as a fraction gives TypeError)
        raise ImageError(f"{what} could not be decoded (truncated or corrupt?): {type(e).__name__}: {e}") from None


# Signatures of formats whose Pillow plugin may refuse a file's layout: Pillow then reports
# only "cannot identify image file", which would call a real TIFF "not an image".
_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
               b"GIF87a": "GIF", b"GIF89a": "GIF"}


def _unidentified(source, what: str) -> ImageError:
    """The error for data Pillow could not identify: names the format and its plugin's reason
    when the data carries a known signature."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            head = f.read(8)
    else:
        head = bytes(source[:8])
    fmt = next((f for sig, f in _SIGNATURES.items() if head.startswith(sig)), None)
    if fmt is None:
        return ImageError(f"{what} is not a recognized image: use PNG, JPEG, TIFF, BMP, GIF or WebP")
    try:  # Pillow drops the plugin's reason; ask the plugin again to get it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its warnings were shown by the first attempt
            Image.OPEN[fmt][0](source if isinstance(source, (str, os.PathLike)) else io.BytesIO(bytes(source))).close()
        reason = "unsupported layout"
    except Exception as e:  # noqa: BLE001 - only its message is wanted
        reason = str(e) or type(e).__name__
    return ImageError(f"{what} is a {fmt} file that cannot be decoded ({reason}): unsupported layout or corrupt header")


def _rawmode(tile):
    args = tile.args if hasattr(tile, "args") else tile[3]
    return args[0] if isinstance(args, tuple) else args


# EXIF orientation (tag 0x0112) -> the numpy form of Pillow's exif_transpose.
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _sixteen_bit_color(im: Image.Image, source, what: str) -> np.ndarray:
    """16-bit RGB(A) PNG or TIFF: Pillow has no 16-bit color mode, OpenCV decodes it."""
    import cv2

    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            data = f.read()
    else:
        data = bytes(source)
    if data.startswith(b"\x89PNG"):
        # OpenCV's PNG reader allocates whatever a chunk header claims (4 GB from a 43-byte file,
        # found by fuzzing); Pillow's verify reads every chunk in small blocks and checks its CRC.
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
    a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if a is None or a.dtype != np.uint16 or a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ImageError(f"{what} is 16-bit color that could not be decoded (truncated or corrupt?)")
    a = a[:, :, [2, 1, 0]] if a.shape[2] == 3 else a[:, :, [2, 1, 0, 3]]
    if any(str(_rawmode(t)).startswith("LA") for t in im.tile):
        a = a[:, :, [0, 3]]  # 16-bit gray+alpha PNG: OpenCV widened the gray to BGR
    orientation = im.getexif().get(0x0112, 1)
    return _writable(_ORIENT.get(orientation, lambda x: x)(a))


def _to_array(im: Image.Image, what: str, source=None) -> np.ndarray:
    mode = im.mode
    if mode not in _MODES:
        raise ImageError(
            f"{what} has mode {mode!r}, which has no 8- or 16-bit integer form here; "
            f"supported modes: {', '.join(sorted(_MODES))}"
        )
    if mode in ("RGB", "RGBA") and any(";16" in str(_rawmode(t)) for t in im.tile):
        return _sixteen_bit_color(im, source, what)  # Pillow would squeeze it to 8 bits
    im.load()  # decode now so that truncation raises here
    im = ImageOps.exif_transpose(im)
    target, dtype = _MODES[mode]
    if mode == "P":
        target = "RGBA" if ("transparency" in im.info or im.palette.mode == "RGBA") else "RGB"
    if dtype is np.uint16:
        a = np.asarray(im)
        if a.dtype != np.uint16:
            if a.size and (a.min() < 0 or a.max() > 65535):
                raise ImageError(
                    f"{what} holds 32-bit values from {a.min()} to {a.max()}; only 8- and 16-bit images are supported"
                )
            a = a.astype(np.uint16)
        return _writable(a.reshape(a.shape[0], a.shape[1], 1))
    if im.mode != target:
        im = im.convert(target)
    a = np.asarray(im, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    return _writable(a)


def _writable(a: np.ndarray) -> np.ndarray:
    """Contiguous and writable, like cv2.imread's: numpy views of Pillow's bytes are read-only."""
    a = np.ascontiguousarray(a)
    return a if a.flags.writeable else a.copy()


def _png_gray_alpha16(a: np.ndarray) -> bytes:
    """A 16-bit gray+alpha PNG (color type 4), which neither Pillow nor OpenCV writes."""
    h, w = a.shape[:2]
    rows = np.zeros((h, 1 + 4 * w), np.uint8)  # each row: filter type 0, then big-endian samples
    rows[:, 1:] = a.astype(">u2").view(np.uint8).reshape(h, 4 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows.tobytes())) + chunk(b"IEND", b"")


def save_image(image: np.ndarray, dest=None, *, format: str | None = None) -> bytes | None:
    """Encode a ``(H, W, C)`` uint8/uint16 array as PNG (default) or TIFF.

    16-bit images stay 16-bit (PNG through OpenCV, which writes 16-bit color PNG, or written
    here for gray+alpha; TIFF through OpenCV): any C round-trips through PNG and ``load_image``.
    Returns the bytes when ``dest`` is None, else writes the file (a path or a binary file object).
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or a.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"image must be (H, W, C) uint8 or uint16 with C in 1..4, got shape {a.shape} dtype {a.dtype}"
        )
    if format is None:
        ext = os.path.splitext(os.fspath(dest))[1].lower() if isinstance(dest, (str, os.PathLike)) else ".png"
        format = {".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}.get(ext, "PNG")
    format = format.upper()
    if a.dtype == np.uint16 and a.shape[2] == 2 and format == "PNG":
        data = _png_gray_alpha16(a)
    elif a.dtype == np.uint16:
        import cv2

        ext = {"PNG": ".png", "TIFF": ".tiff"}.get(format)
        if ext is None:
            raise ValueError(f"16-bit images can be saved as PNG or TIFF, not {format}")
        # Channel order for OpenCV's BGR(A); it has no gray+alpha, so that is widened to BGRA.
        order = {1: 0, 2: [0, 0, 0, 1], 3: [2, 1, 0], 4: [2, 1, 0, 3]}[a.shape[2]]
        bgr = a[:, :, order]
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(bgr))
        if not ok:
            raise ValueError(f"could not encode a {a.shape} {a.dtype} image as {format}")
        data = buf.tobytes()
    else:
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[a.shape[2]]
        im = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a, mode=None)
        if im.mode != mode:
            im = im.convert(mode)
        bio = io.BytesIO()
        im.save(bio, format=format)
        data = bio.getvalue()
    if dest is None:
        return data
    if hasattr(dest, "write"):
        dest.write(data)
    else:
        with open(dest, "wb") as f:
            f.write(data)
    return None
