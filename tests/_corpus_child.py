"""One worker of the corpus test (tests/test_corpus.py): reads file paths on stdin, one a line,
and answers each with one JSON line on stdout: how ``engine.load_image`` did and whether its
array equals an independent decode after the documented conversion.

Run by the test as ``python tests/_corpus_child.py CAP_MB``: its address space is capped at
CAP_MB above what it holds after its imports (RLIMIT_AS), so a memory spike is a
``MemoryError`` (reported) or a death (the parent names the file). Written from the decoding
policy's text in engine/README.md, not from engine/_image.py, so that the two can disagree.

The oracles
-----------
* 8 bits: Pillow's own decode: ``Image.open``, ``ImageOps.exif_transpose``, ``convert`` to the
  mode of the documented table.
* 16 bits, PNG: PyPNG (pure Python, its own zlib and unfiltering; ``asDirect`` turns tRNS into
  alpha as the policy does; it reads only IDAT, the default image of an APNG).
* 16 bits, TIFF: libtiff itself (the copy in Pillow's wheel, through ctypes), raw samples,
  then un-premultiplying and CMYK -> RGB written here.
* 16 bits, PGM: parsed here. Other 16-bit gray formats (JPEG 2000, FITS, McIDAS): Pillow's
  16-bit array, the only decoder at hand.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import resource
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import engine  # noqa: E402
import png  # noqa: E402 - PyPNG
from PIL import Image, ImageOps  # noqa: E402

#: Pillow mode -> (mode of the array, mode when the file declares transparency): the table.
EIGHT_BIT = {
    "1": ("L", "LA"), "L": ("L", "LA"), "LA": ("LA", "LA"), "La": ("LA", "LA"), "P": ("RGB", "RGBA"),
    "PA": ("RGBA", "RGBA"), "RGB": ("RGB", "RGBA"), "RGBA": ("RGBA", "RGBA"), "RGBa": ("RGBA", "RGBA"),
    "RGBX": ("RGB", "RGB"), "CMYK": ("RGB", "RGB"), "YCbCr": ("RGB", "RGB"), "HSV": ("RGB", "RGB"),
}
GRAY16 = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
#: EXIF orientation -> Pillow's transpose (as in ImageOps.exif_transpose).
TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}


def orient16(a: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation applied to a uint16 array, channel by channel, by Pillow's transpose."""
    if orientation not in TRANSPOSE:
        return a
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(a[:, :, c])).transpose(TRANSPOSE[orientation]))
              for c in range(a.shape[2])]
    return np.dstack(planes).astype(np.uint16)


# -- 16-bit oracles --------------------------------------------------------------------------------
def png16(path: str) -> np.ndarray:
    reader = png.Reader(filename=path)
    reader.preamble()
    reader.sbit = None  # the stored values, as libpng and Pillow give them (not rescaled to sBIT's depth)
    w, h, rows, info = reader.asDirect()
    a = np.array([np.asarray(r, np.uint16) for r in rows]).reshape(h, w, info["planes"])
    assert info["bitdepth"] == 16, info
    return a


_LIBTIFF = None


def libtiff():
    global _LIBTIFF
    if _LIBTIFF is None:
        import PIL

        found = sorted(glob.glob(os.path.join(os.path.dirname(PIL.__file__), os.pardir, "pillow.libs", "libtiff*.so*")))
        if not found:
            raise RuntimeError("no libtiff in Pillow's wheel (pillow.libs/): the 16-bit TIFF oracle needs it")
        lib = ctypes.CDLL(found[0])
        lib.TIFFOpen.restype = ctypes.c_void_p
        lib.TIFFSetErrorHandler(None)
        lib.TIFFSetWarningHandler(None)
        _LIBTIFF = lib
    return _LIBTIFF


def tiff16(path: str) -> tuple[np.ndarray, int, tuple]:
    """Raw 16-bit samples of the first page, ``(H, W, S)``, with libtiff; and the photometric
    interpretation and extra-samples kinds."""
    lib = libtiff()
    tif = ctypes.c_void_p(lib.TIFFOpen(path.encode(), b"r"))
    if not tif:
        raise RuntimeError("libtiff cannot open it")
    try:
        def field(tag, ctype, default=None):
            v = ctype()
            return v.value if lib.TIFFGetField(tif, tag, ctypes.byref(v)) else default

        w, h = field(256, ctypes.c_uint32), field(257, ctypes.c_uint32)
        spp, bps = field(277, ctypes.c_uint16, 1), field(258, ctypes.c_uint16, 1)
        planar, photometric = field(284, ctypes.c_uint16, 1), field(262, ctypes.c_uint16)
        n, kinds = ctypes.c_uint16(), ctypes.POINTER(ctypes.c_uint16)()
        extras = tuple(kinds[i] for i in range(n.value)) if lib.TIFFGetField(tif, 338, ctypes.byref(n), ctypes.byref(kinds)) else ()
        assert bps == 16, bps
        out = np.zeros((h, w, spp), np.uint16)
        planes = range(spp) if planar == 2 else [None]
        if lib.TIFFIsTiled(tif):
            tw, th = field(322, ctypes.c_uint32), field(323, ctypes.c_uint32)
            buf = ctypes.create_string_buffer(lib.TIFFTileSize(tif))
            for s in planes:
                for y in range(0, h, th):
                    for x in range(0, w, tw):
                        if lib.TIFFReadTile(tif, buf, x, y, 0, s or 0) < 0:
                            raise RuntimeError(f"libtiff: tile at {x},{y} sample {s}")
                        t = np.frombuffer(buf.raw, np.uint16)[: tw * th * (1 if s is not None else spp)]
                        t = t.reshape(th, tw, -1)[: h - y, : w - x]
                        if s is None:
                            out[y : y + th, x : x + tw] = t
                        else:
                            out[y : y + th, x : x + tw, s] = t[:, :, 0]
        else:
            buf = ctypes.create_string_buffer(lib.TIFFScanlineSize(tif))
            for s in planes:
                for y in range(h):
                    if lib.TIFFReadScanline(tif, buf, y, s or 0) < 0:
                        raise RuntimeError(f"libtiff: row {y} sample {s}")
                    line = np.frombuffer(buf.raw, np.uint16)
                    if s is None:
                        out[y] = line[: w * spp].reshape(w, spp)
                    else:
                        out[y, :, s] = line[:w]
        return out, photometric, extras
    finally:
        lib.TIFFClose(tif)


def pgm16(path: str) -> np.ndarray:
    """A binary PGM (P5) with maxval > 255: big-endian 16-bit samples."""
    data = Path(path).read_bytes()
    fields, pos = [], 2
    while len(fields) < 3:
        while data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.index(b"\n", pos)
            continue
        end = pos
        while not data[end : end + 1].isspace():
            end += 1
        fields.append(int(data[pos:end]))
        pos = end
    w, h, maxval = fields
    assert data[:2] == b"P5" and maxval > 255
    return np.frombuffer(data, ">u2", w * h, pos + 1).reshape(h, w, 1).astype(np.uint16)


def expected16(path: str, im: Image.Image) -> tuple[np.ndarray, str]:
    """The independent 16-bit decode after the documented conversions, and which oracle."""
    if im.format == "PNG":
        return png16(path), "pypng"
    if im.format == "TIFF" and 16 in (im.tag_v2.get(258) or ()):
        a, photometric, extras = tiff16(path)
        if photometric == 5:  # CMYK -> RGB as Pillow does at 8 bits: R = (1 - C)(1 - K), rounded
            c, k = a[:, :, :3].astype(np.float64), a[:, :, 3:4].astype(np.float64)
            return np.rint((65535 - c) * (65535 - k) / 65535).astype(np.uint16), "libtiff"
        if photometric == 2:
            a = a[:, :, : 4 if extras and extras[0] in (1, 2) else 3]
            if extras and extras[0] == 1:  # associated alpha: Pillow's rule, c * 65535 // alpha
                alpha = a[:, :, 3:].astype(np.int64)
                rgb = np.where(alpha == 0, 0, np.minimum(65535, a[:, :, :3].astype(np.int64) * 65535 // np.maximum(alpha, 1)))
                a = np.dstack([rgb, alpha]).astype(np.uint16)
        return a, "libtiff"
    if im.format == "PPM" and Path(path).read_bytes()[:2] == b"P5":
        return pgm16(path), "PGM parser"
    a = np.asarray(im)
    return a.astype(np.uint16).reshape(a.shape[0], a.shape[1], -1), "Pillow (the only 16-bit decoder at hand)"


def expected8(path: str, im: Image.Image) -> np.ndarray:
    orientation, fmt = im.getexif().get(0x0112, 1), im.format
    im = ImageOps.exif_transpose(im)  # a copy, without a format
    alpha = "transparency" in im.info or (im.mode == "P" and im.palette is not None and im.palette.mode == "RGBA")
    plain, with_alpha = EIGHT_BIT[im.mode]
    a = np.asarray(im.convert(with_alpha if alpha else plain))
    a = a.reshape(a.shape[0], a.shape[1], -1)
    if fmt == "PNG" and im.mode in ("L", "RGB") and alpha:
        # tRNS of gray and RGB: the alpha is PyPNG's (Pillow misses it in 2- and 4-bit gray).
        # Not for 1-bit: there Pillow's reading (any nonzero tRNS value is white) is the policy.
        w, h, rows, info = png.Reader(filename=path).asDirect()
        trns = np.array([np.asarray(r) for r in rows]).reshape(h, w, info["planes"])[:, :, -1:]
        a = np.dstack([a[:, :, :-1], np.where(orient16(trns.astype(np.uint16), orientation) == 0, 0, 255)]).astype(np.uint8)
    return a


def sixteen_bit_expected(path: str, im: Image.Image) -> bool:
    """Whether the policy keeps this file at 16 bits: gray 16 (any format), color PNG and TIFF."""
    if im.mode in GRAY16:
        return True
    if im.format == "PNG":
        return _png_depth(path) == 16
    return im.format == "TIFF" and 16 in (im.tag_v2.get(258) or ())


def _png_depth(path: str) -> int:
    """The bit depth in a PNG's IHDR."""
    with open(path, "rb") as f:
        return f.read(25)[24]


# -- one file ----------------------------------------------------------------------------------------
def check(path: str) -> dict:
    out = {"file": path}
    try:
        a = engine.load_image(path)
    except engine.ImageError as e:
        out.update(outcome="refused", message=str(e))
    except BaseException as e:  # noqa: BLE001 - reported, and fails the test
        out.update(outcome="error", message=f"{type(e).__name__}: {e}")
        return out
    else:
        out.update(outcome="loaded", dtype=str(a.dtype), shape=list(a.shape))
    # Pillow on its own (skipped over the engine's limit: the oracle must not be the spike)
    try:
        with Image.open(path) as im:
            out["format"], out["mode"] = im.format, im.mode
            if im.size[0] * im.size[1] > engine.MAX_PIXELS:
                out["pillow"] = "over the limit"
                return out
            im.load()
            out["pillow"] = "decodes"
            if out["outcome"] == "loaded":
                out["mismatch"] = compare(path, im, a)
    except BaseException as e:  # noqa: BLE001
        out.setdefault("pillow", f"fails: {type(e).__name__}")
        if out["outcome"] == "loaded" and "mismatch" not in out:
            out["mismatch"] = f"the engine loaded it, Pillow fails ({type(e).__name__}: {e}), so nothing to compare with"
    return out


def compare(path: str, im: Image.Image, a: np.ndarray) -> str | None:
    """None when ``a`` equals the independent decode, else what differs."""
    want16 = sixteen_bit_expected(path, im)
    if a.dtype != (np.uint16 if want16 else np.uint8) or not a.flags.c_contiguous or a.ndim != 3:
        return f"got {a.dtype} {a.shape}, expected {'uint16' if want16 else 'uint8'} (H, W, C) contiguous"
    if want16:
        want, oracle = expected16(path, im)
        if im.mode in GRAY16 and "transparency" in im.info and want.shape[2] == 1:
            want = np.dstack([want, np.where(want == im.info["transparency"], 0, 65535)]).astype(np.uint16)
        want = orient16(want, im.getexif().get(0x0112, 1))
    else:
        want, oracle = expected8(path, im), "Pillow"
    if want.shape != a.shape:
        return f"shape {a.shape}, {oracle} gives {want.shape}"
    if not np.array_equal(a, want):
        bad = np.argwhere(a != want)
        y, x, c = bad[0]
        return f"{len(bad)} values differ from {oracle}'s, first at {(y, x, c)}: {a[y, x, c]} vs {want[y, x, c]}"
    return None


def main() -> None:
    cap_mb = int(sys.argv[1])
    warnings.simplefilter("ignore")
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    import tifffile  # noqa: F401 - imported (and libtiff loaded) before the cap is measured

    libtiff()
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + cap_mb * 2**20, vm + cap_mb * 2**20))
    for line in sys.stdin:
        print(json.dumps(check(line.rstrip("\n"))), flush=True)


if __name__ == "__main__":
    main()
