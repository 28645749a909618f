"""Decoding and encoding images: a file in, a numpy ``(H, W, C)`` uint8/uint16 array out.

Decoding policy
---------------
``_POLICY`` is the one table that says how each kind of image becomes an array: one row per
Pillow mode, plus two rows for 16-bit color, which Pillow would squeeze to 8 bits. Every row
names its decoder; ``engine/README.md`` shows the same table for people. In short:

* 8 bits: Pillow, which shows the image it opens (frame 0 of an animation, a PNG's default
  image, a PSD's merged composite); palette, 1-bit, CMYK, YCbCr and HSV become gray or RGB.
* 16-bit gray (any format): Pillow. 16-bit color PNG: OpenCV (libpng), given the file without
  its APNG chunks, so that it decodes the default image as Pillow does. 16-bit color TIFF:
  tifffile (strips, tiles, planar; associated alpha un-premultiplied, CMYK to RGB as Pillow
  does at 8 bits). Other formats' 16-bit color (SGI, PPM, JPEG 2000) is Pillow's 8-bit image.
* Transparency (a PNG ``tRNS`` chunk, a GIF's transparent index) is an alpha channel at every
  bit depth: gray -> gray + alpha, RGB and palette -> RGBA.
* EXIF orientation is applied to every route, after decoding.
* Floating-point and L*a*b* images are refused, with what to convert them to.
* ``MAX_PIXELS`` is checked against the size in the header before a pixel is decoded, and the
  same limit is handed to Pillow's checks of frames and layers found while decoding.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ._errors import ImageError

__all__ = ["ImageError", "load_image", "save_image", "MAX_PIXELS"]

#: The one pixel limit: ``load_image`` refuses larger images by default, and the CLI and the
#: dashboard quote it. A decoded 40 MP RGB image is 120 MB, and a job holds it three times
#: (input and two outputs); the size presets go up to 16 MP.
MAX_PIXELS = 40_000_000

#: Pillow's pixel limit is a process-wide global: ``load_image`` sets it (and turns Pillow's
#: decompression-bomb warning into an error) for the time of one decode, under this lock.
_PILLOW_LOCK = threading.Lock()

Source = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]


# -- decoders: (opened image, its policy row, the path or bytes) -> (H, W, C) array ----------------
def _pillow(im: Image.Image, row: _Row, source: Union[str, bytes]) -> np.ndarray:
    """8 bits through Pillow: convert to the row's mode, or its mode with alpha when the file
    declares transparency (tRNS, a transparent palette index, a palette with alpha)."""
    bits = {"L;2": 2, "L;4": 4}.get(_rawmode(im)[:3]) if im.format == "PNG" else None  # before load clears it
    im.load()  # decode now so that truncation raises here
    if bits and isinstance(im.info.get("transparency"), int):
        # Pillow scales 2- and 4-bit gray to 0..255 but keeps tRNS at the file's depth
        im.info["transparency"] = im.info["transparency"] * 255 // (2**bits - 1)
    alpha = "transparency" in im.info or (im.mode == "P" and im.palette is not None and im.palette.mode == "RGBA")
    target = row.with_alpha if alpha else row.mode
    a = np.asarray(im if im.mode == target else im.convert(target), dtype=np.uint8)
    return a[:, :, None] if a.ndim == 2 else a


def _pillow_gray16(im: Image.Image, row: _Row, source: Union[str, bytes]) -> np.ndarray:
    """16-bit gray through Pillow (``I;16*``, or ``I`` when the values fit in 16 bits); a tRNS
    gray value becomes a second, alpha channel (0 where the value is transparent, else 65535)."""
    im.load()
    a = np.asarray(im)
    if a.dtype != np.uint16:
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise _mode_error(f"32-bit integer values from {lo} to {hi}, beyond the 16-bit range", im.mode)
        a = a.astype(np.uint16)
    a = a[:, :, None]
    trns = im.info.get("transparency")
    if isinstance(trns, int):
        a = np.dstack([a, np.where(a == trns, 0, 65535).astype(np.uint16)])
    return a


def _png16(im: Image.Image, row: _Row, source: Union[str, bytes]) -> np.ndarray:
    """16-bit color PNG (RGB, RGBA, gray + alpha) through OpenCV's libpng."""
    import cv2

    data = _bytes(source)
    # OpenCV's PNG reader allocates whatever a chunk header claims (4 GB from a 43-byte file,
    # found by fuzzing); Pillow's verify reads every chunk in small blocks and checks its CRC.
    with Image.open(io.BytesIO(data)) as probe:
        probe.verify()
    # Without its APNG chunks the file is the plain PNG of its default image (IDAT), which is
    # what Pillow shows; OpenCV would decode the first animation frame.
    still = data[:8] + b"".join(data[s:e] for kind, s, e in _png_chunks(data) if kind not in _APNG_CHUNKS)
    a = cv2.imdecode(np.frombuffer(still, np.uint8), cv2.IMREAD_UNCHANGED)
    if a is None or a.dtype != np.uint16 or a.ndim != 3 or a.shape[:2] != im.size[::-1]:
        raise OSError("libpng could not decode its 16-bit pixels")
    if _rawmode(im).startswith("LA"):
        return a[:, :, [0, 3]]  # gray + alpha: OpenCV widened the gray to BGR
    # a tRNS color became alpha (libpng's tRNS-to-alpha), as the transparency rule wants
    return a[:, :, [2, 1, 0]] if a.shape[2] == 3 else a[:, :, [2, 1, 0, 3]]


def _tiff16(im: Image.Image, row: _Row, source: Union[str, bytes]) -> np.ndarray:
    """16-bit color TIFF through tifffile (strips or tiles, contiguous or planar, any of its
    codecs); Pillow's reading of the header decides the channels, as it does at 8 bits."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(source) if isinstance(source, bytes) else source) as tif:
        page = tif.pages[0]
        a = page.asarray()
        axes = page.axes
    a = np.moveaxis(a, axes.index("S"), -1) if "S" in axes else a[..., None]
    if a.dtype != np.uint16 or a.shape[:2] != im.size[::-1]:
        raise OSError(f"its first page is {a.shape} {a.dtype}, not {im.size[1]}x{im.size[0]} 16-bit samples")
    if im.mode == "CMYK":
        return _cmyk_to_rgb16(a[:, :, :4])
    if im.mode == "RGBA":
        a = a[:, :, :4]
        return _unpremultiply16(a) if _rawmode(im).startswith("RGBa") else a
    return a[:, :, :3]  # RGB, RGBX


def _cmyk_to_rgb16(a: np.ndarray) -> np.ndarray:
    """Pillow's CMYK -> RGB at 16 bits: ``R = (1 - K) - C (1 - K)``, rounded (``cmyk2rgb``)."""
    nk = 65535 - a[:, :, 3:4].astype(np.uint64)
    return (nk - (a[:, :, :3] * nk + 32767) // 65535).astype(np.uint16)


def _unpremultiply16(a: np.ndarray) -> np.ndarray:
    """Associated (premultiplied) alpha -> straight alpha as Pillow's ``RGBa`` unpacker does:
    ``min(65535, c * 65535 // alpha)``, and 0 where alpha is 0."""
    alpha = a[:, :, 3:4].astype(np.uint64)
    rgb = np.minimum(65535, a[:, :, :3] * np.uint64(65535) // np.maximum(alpha, 1))
    rgb[np.broadcast_to(alpha == 0, rgb.shape)] = 0
    return np.dstack([rgb.astype(np.uint16), a[:, :, 3:4]])


def _refuse(im: Image.Image, row: _Row, source: Union[str, bytes]) -> np.ndarray:
    raise _mode_error(row.holds, im.mode)


def _mode_error(holds: str, mode: str) -> ImageError:
    """Completed with the file's name by ``load_image``."""
    return ImageError(f"holds {holds} (Pillow mode {mode!r}), which this engine does not take: "
                      f"convert it to 8- or 16-bit integer gray or RGB (PNG or TIFF)")


# -- the policy ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Row:
    """How one kind of image becomes an array."""

    decoder: Callable[[Image.Image, "_Row", Union[str, bytes]], np.ndarray]
    mode: str = ""  # Pillow's decoder: the mode converted to
    with_alpha: str = ""  # ... and when the file declares transparency
    holds: str = ""  # refused kinds: what the file holds, for the message


_POLICY: dict[str, _Row] = {
    # key: Pillow's mode as opened (or the 16-bit color rows) -> decoder, mode out, with tRNS
    "1": _Row(_pillow, "L", "LA"),  # 1-bit -> 0/255 gray
    "L": _Row(_pillow, "L", "LA"),
    "LA": _Row(_pillow, "LA", "LA"),
    "La": _Row(_pillow, "LA", "LA"),  # premultiplied -> straight alpha
    "P": _Row(_pillow, "RGB", "RGBA"),
    "PA": _Row(_pillow, "RGBA", "RGBA"),
    "RGB": _Row(_pillow, "RGB", "RGBA"),
    "RGBA": _Row(_pillow, "RGBA", "RGBA"),
    "RGBa": _Row(_pillow, "RGBA", "RGBA"),  # premultiplied -> straight alpha
    "RGBX": _Row(_pillow, "RGB", "RGB"),
    "CMYK": _Row(_pillow, "RGB", "RGB"),
    "YCbCr": _Row(_pillow, "RGB", "RGB"),
    "HSV": _Row(_pillow, "RGB", "RGB"),
    "I;16": _Row(_pillow_gray16),
    "I;16L": _Row(_pillow_gray16),
    "I;16B": _Row(_pillow_gray16),
    "I;16N": _Row(_pillow_gray16),
    "I": _Row(_pillow_gray16),  # 32-bit integer: accepted when the values fit in 16 bits
    "PNG 16-bit color": _Row(_png16),
    "TIFF 16-bit color": _Row(_tiff16),
    "F": _Row(_refuse, holds="32-bit floating-point samples"),
    "LAB": _Row(_refuse, holds="CIE L*a*b* color"),
}


def _policy_key(im: Image.Image) -> str:
    """The row of ``_POLICY`` for an opened image: its mode, unless it is 16-bit color in a
    format whose 16 bits are kept (Pillow would decode it to 8 bits)."""
    if im.format == "PNG" and im.mode in ("RGB", "RGBA") and _rawmode(im).endswith(";16B"):
        return "PNG 16-bit color"
    if im.format == "TIFF" and im.mode in ("RGB", "RGBA", "RGBX", "CMYK") and 16 in (im.tag_v2.get(258) or ()):
        return "TIFF 16-bit color"
    return im.mode


def _rawmode(im: Image.Image) -> str:
    """How the first tile's bytes are laid out (``'RGB;16B'``, ``'RGBa;16N'``...), or ''."""
    if not im.tile:
        return ""
    args = im.tile[0].args
    return str(args[0] if isinstance(args, tuple) else args)


# EXIF orientation (tag 0x0112) -> the numpy form of Pillow's ImageOps.exif_transpose.
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}

_APNG_CHUNKS = (b"acTL", b"fcTL", b"fdAT")


def _png_chunks(data: bytes):
    """``(type, start, end)`` of each chunk of a PNG, up to IEND (lengths checked by verify)."""
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, end = data[pos + 4 : pos + 8], pos + 12 + length
        yield kind, pos, end
        if kind == b"IEND":
            return
        pos = end


#: PNG chunks Pillow may read an EXIF orientation from (eXIf, or EXIF/XMP text), anywhere in the file.
_PNG_EXIF_CHUNKS = {b"eXIf", b"tEXt", b"zTXt", b"iTXt"}


def _orientation(im: Image.Image, key: str, source: Union[str, bytes]) -> int:
    """The EXIF orientation Pillow's ``exif_transpose`` would apply, as Pillow's ``getexif``
    reads it: from EXIF (a PNG's eXIf chunk or "Raw profile type exif" text), else from XMP's
    ``tiff:Orientation``."""
    if key == "PNG 16-bit color":  # as at 8 bits, where the pixels are loaded first, but without decoding them
        with Image.open(io.BytesIO(_png_metadata(_bytes(source)))) as meta:
            return meta.getexif().get(0x0112, 1)
    return im.getexif().get(0x0112, 1)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


#: The header and pixels of a 1x1 8-bit gray PNG: what ``_png_metadata`` wraps a file's metadata in.
_ONE_PIXEL = (_png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)),
              _png_chunk(b"IDAT", zlib.compress(b"\0\0")) + _png_chunk(b"IEND", b""))


def _png_metadata(data: bytes) -> bytes:
    """A 1x1 PNG holding the chunks of PNG ``data`` that Pillow reads EXIF and XMP from, in
    their order and before its pixels: opening it reads them all (loading it costs nothing), as
    decoding ``data`` at 8 bits would. Chunks after the pixels count as Pillow's ``load`` reads
    them: up to IEND, or in an APNG up to the next frame's fcTL."""
    chunks = list(_png_chunks(data))
    animated = any(kind == b"acTL" for kind, _, _ in chunks)
    kept, after_pixels = [], False
    for kind, s, e in chunks:
        if kind == b"IDAT":
            after_pixels = True
        elif kind == b"fcTL" and after_pixels and animated:
            break
        elif kind in _PNG_EXIF_CHUNKS:
            kept.append(data[s:e])
    return data[:8] + _ONE_PIXEL[0] + b"".join(kept) + _ONE_PIXEL[1]


def _loaded_size(path: str) -> tuple[int, int]:
    """``(width, height)`` of the array ``load_image`` gives for a file: the header's size, its
    sides swapped for EXIF orientations 5-8, by the loader's own ``_orientation``. No pixels are
    decoded, except in a PNG whose EXIF may come after its pixels (an eXIf or text chunk, and
    none read before them): Pillow decodes the pixels to reach it."""
    with Image.open(path) as im:
        key = _policy_key(im)
        if im.format == "PNG" and "exif" not in im.info and key != "PNG 16-bit color":
            if not {kind for kind, _, _ in _png_chunks(_bytes(path))} & _PNG_EXIF_CHUNKS:
                return im.size
        w, h = im.size
        return (h, w) if _orientation(im, key, path) in (5, 6, 7, 8) else (w, h)


# -- the source ------------------------------------------------------------------------------------
def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return "image data"


def _checked(source: Source) -> Union[str, bytes]:
    """A path or the bytes, after the checks that give their own messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("image data is empty (0 bytes): upload a PNG, JPEG, TIFF, BMP, GIF or WebP file")
        return bytes(source)
    return _checked_path(os.fspath(source))


#: What a path that is no regular file is (``stat.S_IFMT``), for the message.
_SPECIAL = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device",
            stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def _checked_path(path: str) -> str:
    """``path``, once it names a regular, readable, non-empty file. Its kind is read with
    ``os.stat`` before it is opened: opening a FIFO would wait for a writer."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL in the path
        raise ImageError(f"image file {path!r} does not exist") from None
    except OSError as e:  # a symlink loop, a name too long, a folder on the way that cannot be searched
        raise ImageError(f"image file {path!r} cannot be read: {_os_reason(e)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"image path {path!r} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        kind = _SPECIAL.get(stat.S_IFMT(st.st_mode), "a special file")
        raise ImageError(f"image path {path!r} is not a regular file: it is {kind}")
    try:
        with open(path, "rb") as f:
            first = f.read(1)
    except OSError as e:
        raise ImageError(f"image file {path!r} cannot be read: {_os_reason(e)}") from None
    if st.st_size == 0:
        if first:  # /proc and the like: a size of 0, and content made up as it is read
            raise ImageError(f"image path {path!r} is not a regular file: it reports 0 bytes but has content "
                             "(a kernel file, as under /proc)")
        raise ImageError(f"image file {path!r} is empty (0 bytes)")
    return path


def _os_reason(e: OSError) -> str:
    """'permission denied', 'too many levels of symbolic links': the system's words for ``e``."""
    reason = e.strerror or str(e) or type(e).__name__
    return reason[:1].lower() + reason[1:]


def _unreadable(e: BaseException, source: Union[str, bytes]) -> bool:
    """Whether a decoder failed because the file itself could not be opened or read (its
    permissions changed, it was removed), rather than because of what it holds."""
    return isinstance(source, str) and isinstance(e, OSError) and e.errno is not None and e.filename == source


def _bytes(source: Union[str, bytes], size: int = -1) -> bytes:
    """The file's bytes (the first ``size`` of them); paths are opened by path, as Pillow
    does, and read whole only by the decoders that need the bytes (16-bit color)."""
    if isinstance(source, bytes):
        return source if size < 0 else source[:size]
    with open(source, "rb") as f:
        return f.read(size)


def load_image(source: Source, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file into a ``(H, W, C)`` array, by the decoding policy of this module.

    Parameters
    ----------
    source : path, bytes or binary file object
    max_pixels : int, optional
        Refuse images with more pixels than this, judged from the header before any pixel is
        decoded (and applied to frames and layers found while decoding). Default:
        ``MAX_PIXELS`` (40,000,000).

    Returns
    -------
    numpy.ndarray
        ``uint8``, or ``uint16`` for 16-bit gray (any format) and 16-bit color PNG and TIFF;
        shape ``(H, W, C)`` with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA), contiguous
        and writable. EXIF orientation is applied; palette images become RGB, 1-bit becomes
        0/255, CMYK becomes RGB; transparency (tRNS, a transparent palette index) becomes an
        alpha channel at every bit depth; premultiplied alpha is un-premultiplied; an
        animation gives the image Pillow shows when it opens the file (its first frame, a
        PNG's default image, a PSD's merged composite). The table is in ``engine/README.md``.

    Raises
    ------
    ImageError
        With a one-line message naming the cause: missing, not a regular file (a folder, a
        FIFO, a device, a /proc file), unreadable (permission denied), empty, not an image,
        truncated or corrupt, more than ``max_pixels`` pixels, a mode with no uint8/uint16 form
        (floating point, L*a*b*), a layout or compression the decoder does not support, or a
        format that needs a program or Python package that is not installed (EPS: Ghostscript;
        16-bit color TIFF: tifffile, and imagecodecs for most compressions), named with what to
        install.

    Examples
    --------
    >>> load_image(save_image(np.full((2, 3, 1), 7, np.uint8))).shape
    (2, 3, 1)
    """
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)) and hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"source file object must be opened in binary mode, it returned {type(data).__name__}")
        source = bytes(data)
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        raise TypeError(f"source must be a path, bytes or a binary file object, got {type(source).__name__}")
    what = _describe(source)
    source = _checked(source)
    try:
        return _decode(source, limit)
    except ImageError as e:
        raise ImageError(f"{what} {e}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # met while decoding
        raise ImageError(f"{what} holds a frame or layer of {_pixels(e)}, more than the limit of {limit:,} pixels") from None
    except UnidentifiedImageError:
        raise ImageError(f"{what} {_unidentified(source)}") from None
    except Exception as e:  # noqa: BLE001 - every decoder's complaint becomes one clear line
        # Pillow's plugins raise OSError, SyntaxError, EOFError, ValueError, struct.error, and
        # on corrupt headers TypeError, IndexError, KeyError... (found by fuzzing: a TIFF strip
        # offset stored as a fraction gives TypeError); NotImplementedError for known layouts
        # they cannot read (DDS); tifffile and OpenCV raise ValueError or OSError.
        if _unreadable(e, source):
            raise ImageError(f"{what} cannot be read: {_os_reason(e)}") from None
        raise ImageError(f"{what} {_explain(e, _format_of(source))}") from None


def _decode(source: Union[str, bytes], limit: int) -> np.ndarray:
    """Open (the header, for most formats), check the size, decode by the policy, orient."""
    with _PILLOW_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        # Pillow then checks every size it meets against our limit: the header's when it opens
        # the file, and frames, layers and tiles while decoding (some plugins decode in open:
        # an icon's embedded PNG).
        Image.MAX_IMAGE_PIXELS = limit
        try:
            try:
                im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise ImageError(f"is {_pixels(e)}, more than the limit of {limit:,} pixels") from None
            with im:
                w, h = im.size
                if w == 0 or h == 0:
                    raise ImageError(f"has no pixels ({w}x{h})")
                if w * h > limit:  # Pillow checked it; this says so where it is needed
                    raise ImageError(f"is {w}x{h} = {w * h:,} pixels, more than the limit of {limit:,} pixels")
                key = _policy_key(im)
                row = _POLICY.get(key, _Row(_refuse, holds="pixels of a kind this engine does not know"))
                a = row.decoder(im, row, source)
                a = _ORIENT.get(_orientation(im, key, source), lambda x: x)(a)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    return _writable(a)


def _pixels(e: Exception) -> str:
    """The pixel count in Pillow's decompression-bomb message (without Pillow's limit)."""
    found = re.search(r"\((\d+) pixels\)", str(e))
    return f"{int(found.group(1)):,} pixels" if found else "too many pixels"


# -- what went wrong, in plain words ----------------------------------------------------------------
#: What decoders say -> what the user reads, first match wins: (pattern in the decoder's message,
#: message after the file's name). ``{format}`` is the file's format, ``{reason}`` the decoder's
#: words on one line. Other messages: "truncated or corrupt", with the decoder's words.
_CAUSES = [
    (r"Ghostscript", "is an EPS (PostScript) file, which needs Ghostscript to draw it, and Ghostscript is not "
                     "installed: convert it to PNG"),
    (r"cannot find loader for this WMF", "is a Windows metafile (WMF/EMF), a drawing that needs Windows to "
                                         "render it, which is not installed here: convert it to PNG"),
    (r"not identified by this driver", "is {a} {format} file whose header declares no pixels, or a color type "
                                       "or bit depth that does not exist: it is corrupt"),
    (r"^(Unsupported|Unknown|Unimplemented|unknown|cannot handle)|not supported",
     "is {a} {format} file that cannot be decoded ({reason}): unsupported layout or corrupt header"),
]


#: Python modules the decoders import when a file needs them -> what ``pip install`` takes.
_PACKAGES = {"tifffile": "tifffile", "imagecodecs": "imagecodecs", "cv2": "opencv-python-headless"}


def _missing_package(e: BaseException, reason: str) -> str | None:
    """The package to install when a decoder failed for want of one: an import that failed, or
    tifffile's "<COMPRESSION.LZW: 5> requires the 'imagecodecs' package"."""
    if isinstance(e, ImportError):
        name = (e.name or "").split(".")[0]
        return _PACKAGES.get(name, name) or "-r requirements.txt"
    found = re.search(r"requires the '([\w.-]+)' package", reason)
    return _PACKAGES.get(found.group(1), found.group(1)) if found else None


def _explain(e: BaseException, fmt: str | None, *, layout: bool = False) -> str:
    """The message for a decoder's exception, after the file's name, on one line. ``layout``:
    the file's header was refused (rather than its pixels)."""
    reason = " ".join(str(e).split()) or type(e).__name__
    fmt = fmt or "known"
    a = _article(fmt)
    package = _missing_package(e, reason)
    if package:  # not the file's fault: say what to install
        return (f"is {a} {fmt} file whose decoder needs a Python package that is not installed ({reason}): "
                f"pip install {package}")
    if isinstance(e, NotImplementedError):  # a layout the plugin knows of but cannot read (DDS)
        found = re.fullmatch(r"Unimplemented DXGI format (\d+)", reason)
        if found:
            from PIL.DdsImagePlugin import DXGI_FORMAT

            n = int(found.group(1))
            reason = f"DXGI_FORMAT_{DXGI_FORMAT(n).name}" if n in set(DXGI_FORMAT) else reason
        return f"is {a} {fmt} file that uses a feature the decoder does not support ({reason}): convert it to PNG"
    for pattern, message in _CAUSES:
        if re.search(pattern, reason):
            return message.format(a=a, format=fmt, reason=reason)
    if layout:
        return f"is {a} {fmt} file that cannot be decoded ({reason}): unsupported layout or corrupt header"
    if not isinstance(e, (OSError, SyntaxError, EOFError, ValueError, struct.error, zlib.error)):
        reason = f"{type(e).__name__}: {reason}"
    return f"could not be decoded (truncated or corrupt?): {reason}"


def _article(fmt: str) -> str:
    """'a PNG', 'an EPS', 'an SGI': formats read as words or letter by letter."""
    spelled = {"FLI", "FTEX", "HDF5", "MPO", "MSP", "SGI", "XBM", "XPM", "XVTHUMB"}
    return "an" if fmt[0] in "AEIOU" or fmt in spelled else "a"


def _claim(head: bytes) -> tuple[str, bool | str] | None:
    """The format whose plugin claims a file by its first 16 bytes (its signature), with the
    plugin's verdict (True, or why it cannot read it: "... AVIF support not installed"), or None."""
    Image.init()
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:  # as in Image.open: a signature check may fail on a short file
            verdict = accept is not None and accept(head)
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
        if verdict:
            return fmt, verdict
    return None


def _format_of(source: Union[str, bytes]) -> str | None:
    claim = _claim(_head(source))
    return claim[0] if claim else None


def _head(source: Union[str, bytes]) -> bytes:
    """The first 16 bytes, by which plugins claim a file (b'' if it can no longer be read: a
    message about a file is never replaced by an error from reading it again)."""
    try:
        return _bytes(source, 16)
    except OSError:
        return b""


def _unidentified(source: Union[str, bytes]) -> str:
    """The message for a file Pillow could not identify. Pillow drops its plugins' reasons, so
    the plugin whose signature matches is asked again; no match: not an image."""
    claim = _claim(_head(source))
    if claim is None:
        return "is not a recognized image: use PNG, JPEG, TIFF, BMP, GIF or WebP"
    fmt, verdict = claim
    if isinstance(verdict, str):
        return f"is {_article(fmt)} {fmt} file that cannot be decoded here ({verdict}): convert it to PNG"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its warnings were shown by the first attempt
            Image.OPEN[fmt][0](io.BytesIO(source) if isinstance(source, bytes) else source, "").close()
        e: BaseException = SyntaxError("unsupported layout")
    except Exception as err:  # noqa: BLE001 - only its message is wanted
        e = err
    return _explain(e, fmt, layout=True)


def _writable(a: np.ndarray) -> np.ndarray:
    """Contiguous and writable, like cv2.imread's: numpy views of Pillow's bytes are read-only."""
    a = np.ascontiguousarray(a)
    return a if a.flags.writeable else a.copy()


def _png_gray_alpha16(a: np.ndarray) -> bytes:
    """A 16-bit gray+alpha PNG (color type 4), which neither Pillow nor OpenCV writes."""
    h, w = a.shape[:2]
    rows = np.zeros((h, 1 + 4 * w), np.uint8)  # each row: filter type 0, then big-endian samples
    rows[:, 1:] = a.astype(">u2").view(np.uint8).reshape(h, 4 * w)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows.tobytes()))
            + _png_chunk(b"IEND", b""))


# -- encoding: one table of output formats ----------------------------------------------------------
@dataclass(frozen=True)
class _Format:
    """An output format: its extensions, and the channel counts it holds so that ``load_image``
    gives the same array back (shape and dtype; pixels too unless ``lossy``)."""

    name: str  # Pillow's name, accepted as save_image's format=
    extensions: tuple[str, ...]
    uint8: tuple[int, ...]
    uint16: tuple[int, ...] = ()
    lossy: bool = False

    def holds(self, dtype) -> tuple[int, ...]:
        return self.uint16 if np.dtype(dtype) == np.uint16 else self.uint8

    def describe(self) -> str:
        """'8-bit gray or RGB', '8-bit gray, gray + alpha, RGB or RGBA; 16-bit gray, RGB or RGBA'."""
        return "; ".join(f"{bits}-bit {_or(_KINDS[c] for c in chans)}"
                         for bits, chans in ((8, self.uint8), (16, self.uint16)) if chans)


_KINDS = {1: "gray", 2: "gray + alpha", 3: "RGB", 4: "RGBA"}

_FORMATS: dict[str, _Format] = {f.name: f for f in (
    _Format("PNG", (".png",), (1, 2, 3, 4), (1, 2, 3, 4)),
    # 16-bit gray + alpha TIFF is refused: Pillow does not open it, so load_image could not read it back.
    _Format("TIFF", (".tif", ".tiff"), (1, 2, 3, 4), (1, 3, 4)),
    _Format("JPEG", (".jpg", ".jpeg"), (1, 3), lossy=True),
    _Format("BMP", (".bmp",), (1, 3)),  # Pillow reads a 32-bit BMP back as RGB: no alpha
    _Format("WEBP", (".webp",), (3, 4), lossy=True),  # WebP has no gray: it would come back RGB
)}


def _or(words) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _save_format(dest, format: str | None = None, name: str = "dest") -> _Format:
    """The output format: ``format`` if given, else the extension of a path ``dest``, else PNG
    (bytes or a file object). Unknown names and extensions are refused."""
    if format is not None:
        if not isinstance(format, str) or format.upper() not in _FORMATS:
            raise ValueError(f"format must be one of {', '.join(map(repr, _FORMATS))}, got {format!r}")
        return _FORMATS[format.upper()]
    if not isinstance(dest, (str, os.PathLike)):
        return _FORMATS["PNG"]
    ext = os.path.splitext(os.fspath(dest))[1].lower()
    for f in _FORMATS.values():
        if ext in f.extensions:
            return f
    known = _or([e for f in _FORMATS.values() for e in f.extensions])
    raise ValueError(f"{name} {os.fspath(dest)!r} must end in {known} (the format is taken from it), "
                     f"got {ext or 'no extension'!r}")


def check_save(dest, channels: int, dtype, *, format: str | None = None, name: str = "dest") -> str:
    """The format ``save_image`` will write an image of ``channels`` and ``dtype`` to ``dest``
    in; ``ValueError`` naming ``dest``, what it holds and the formats that fit, when none can.
    Callers check this before filtering, so that a bad output name fails before any work."""
    fmt = _save_format(dest, format, name)
    if channels not in fmt.holds(dtype):
        bits = 16 if np.dtype(dtype) == np.uint16 else 8
        where = f"format {format!r}" if format is not None else (
            f"{name} {os.fspath(dest)!r} ({fmt.name})" if isinstance(dest, (str, os.PathLike)) else f"{name} ({fmt.name})")
        fits = [f"{f.name} ({', '.join(f.extensions)})" for f in _FORMATS.values() if channels in f.holds(dtype)]
        raise ValueError(f"{where} cannot hold this {bits}-bit {_KINDS[channels]} image ({fmt.name} holds "
                         f"{fmt.describe()}): use {_or(fits)}")
    return fmt.name


def save_image(image: np.ndarray, dest=None, *, format: str | None = None) -> bytes | None:
    """Encode a ``(H, W, C)`` uint8/uint16 array as PNG, TIFF, JPEG, BMP or WebP.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)``, uint8 or uint16, C = 1 (gray), 2 (gray + alpha), 3 (RGB)
        or 4 (RGBA).
    dest : path, binary file object or None
        Where to write; None returns the bytes.
    format : {'PNG', 'TIFF', 'JPEG', 'BMP', 'WEBP'}, optional
        Any letter case. Default: from the extension of a path ``dest`` (``.png``, ``.tif``,
        ``.tiff``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.webp``), PNG for bytes and file objects.

    Returns
    -------
    bytes or None
        The encoded file when ``dest`` is None.

    Raises
    ------
    ValueError
        ``image`` is not such an array; ``format`` or the extension is none of the above; or
        the format cannot hold the image (checked before anything is encoded):

        ====== =============================================== ==========================
        format holds                                           notes
        ====== =============================================== ==========================
        PNG    8- and 16-bit gray, gray + alpha, RGB, RGBA      lossless
        TIFF   8-bit: all four; 16-bit: gray, RGB, RGBA         lossless
        JPEG   8-bit gray, RGB                                  lossy (Pillow's quality 75)
        BMP    8-bit gray, RGB                                  lossless
        WEBP   8-bit RGB, RGBA                                  lossy (Pillow's quality 80)
        ====== =============================================== ==========================

    Notes
    -----
    Every format gives ``load_image`` back an array of the same shape and dtype (and the same
    pixels, except JPEG and WebP). 16-bit PNG and TIFF are written by OpenCV, 16-bit gray +
    alpha PNG here (neither Pillow nor OpenCV writes it); everything 8-bit by Pillow.

    Examples
    --------
    >>> save_image(np.zeros((2, 3, 1), np.uint8))[:4]
    b'\\x89PNG'
    >>> save_image(np.zeros((2, 3, 4), np.uint8), "out.jpg")
    Traceback (most recent call last):
    ValueError: dest 'out.jpg' (JPEG) cannot hold this 8-bit RGBA image (JPEG holds 8-bit gray or RGB): use PNG (.png), TIFF (.tif, .tiff) or WEBP (.webp)
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or a.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"image must be (H, W, C) uint8 or uint16 with C in 1..4, got shape {a.shape} dtype {a.dtype}"
        )
    format = check_save(dest, a.shape[2], a.dtype, format=format)
    if a.dtype == np.uint16 and a.shape[2] == 2:  # PNG: the table admits no other format
        data = _png_gray_alpha16(a)
    elif a.dtype == np.uint16:  # PNG or TIFF, 1, 3 or 4 channels
        import cv2

        order = {1: [0], 3: [2, 1, 0], 4: [2, 1, 0, 3]}[a.shape[2]]  # OpenCV's BGR(A)
        ok, buf = cv2.imencode({"PNG": ".png", "TIFF": ".tiff"}[format], np.ascontiguousarray(a[:, :, order]))
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
