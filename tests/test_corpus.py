"""Every file of the real-world image corpus through ``engine.load_image`` (issue 12).

The corpus is ``../shared/image-corpus`` beside the repository (or ``PFL_IMAGE_CORPUS``):
1,221 files from the test suites of Pillow, PngSuite, libtiff and libjpeg-turbo, many broken
on purpose. It is not part of the repository; without it these tests are skipped.

Each file is decoded in a child process (tests/_corpus_child.py: two long-lived children,
restarted when one dies) with a timeout and a cap on its address space. Each file must either

* load, with the same array as an independent decode after the documented conversion
  (Pillow for 8 bits; PyPNG, libtiff or a PGM parser for 16 bits), or
* raise ``ImageError`` with a one-line message of one of the causes in ``CAUSES``;

and a valid file in a common format that Pillow decodes must load, unless it is over the
pixel limit or floating point / L*a*b*. Anything else (another exception, a crash, a hang, a
memory spike) fails the test, naming the file. ``-s`` prints the figures recorded in
docs/reliability.md::

    PFL_IMAGE_CORPUS=../shared/image-corpus .venv/bin/python -m pytest tests/test_corpus.py -s
"""

from __future__ import annotations

import collections
import json
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import engine
from _proc import ROOT, load_in_child

CORPUS = Path(os.environ.get("PFL_IMAGE_CORPUS") or ROOT.parent / "shared" / "image-corpus")
CHILD = Path(__file__).resolve().parent / "_corpus_child.py"
CHILDREN = 2
TIMEOUT_S = 20  # per file; the slowest takes about 1 s
CAP_MB = 768  # address space a child may add to what it holds after its imports

pytestmark = [
    pytest.mark.skipif(not CORPUS.is_dir(), reason=f"the image corpus is not at {CORPUS} (set PFL_IMAGE_CORPUS)"),
    pytest.mark.filterwarnings("ignore::UserWarning:PIL"),
]

LIMIT = f"{engine.MAX_PIXELS:,}"
#: Why a file may be refused: cause -> the message after the file's name.
CAUSES = {
    "not an image": r"is not a recognized image: use PNG, JPEG, TIFF, BMP, GIF or WebP$",
    "truncated or corrupt": r"could not be decoded \(truncated or corrupt\?\): \S|whose header declares no pixels, "
                            r"or a color type or bit depth that does not exist: it is corrupt$",
    "unsupported layout or corrupt header": r"is an? [\w ]+ file that cannot be decoded( here)? \(.+\): "
                                            r"(unsupported layout or corrupt header|convert it to PNG)$",
    "over the pixel limit": rf"(is [\dx =,]+|holds a frame or layer of [\d,]+) pixels, more than the limit of {LIMIT} pixels$",
    "no 8- or 16-bit integer form (float, L*a*b*)": r"holds .+ \(Pillow mode '\w+'\), which this engine does not "
                                                    r"take: convert it to 8- or 16-bit integer gray or RGB",
    "needs a program that is not installed": r"needs \w+ to (draw|render) it, .*not installed.*: convert it to PNG$",
    "a feature the decoder does not support": r"uses a feature the decoder does not support \(.+\): convert it to PNG$",
}
#: Formats whose valid files must load when Pillow decodes them (Pillow's names).
COMMON = {"PNG", "JPEG", "MPO", "TIFF", "BMP", "GIF", "WEBP", "ICO", "PSD"}
#: Causes that may refuse a file Pillow decodes (documented in engine/README.md).
ALLOWED_FOR_VALID = {"over the pixel limit", "no 8- or 16-bit integer form (float, L*a*b*)"}


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "SOURCES.md")


def corpus_file(rel: str) -> Path:
    path = CORPUS / rel
    if not path.is_file():
        pytest.skip(f"{rel} is not in the corpus at {CORPUS}")
    return path


# -- the pool of children ----------------------------------------------------------------------------
class _Child:
    """One ``_corpus_child.py`` process; ``ask`` sends a path and waits for its answer."""

    def __init__(self):
        env = dict(os.environ, OPENCV_LOG_LEVEL="OFF", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, str(CHILD), str(CAP_MB)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)

    def ask(self, path: str, timeout: float = TIMEOUT_S) -> dict | None:
        """The child's verdict, or None if it died or took over ``timeout`` s (it is then killed)."""
        try:
            self.proc.stdin.write(path + "\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            line = self.proc.stdout.readline() if ready else ""
        except (BrokenPipeError, OSError):
            line = ""
        if line:
            return json.loads(line)
        self.close()
        return None

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


def run_corpus(paths: list[Path]) -> list[dict]:
    """Every path through a child; a child that dies or hangs is replaced and the file named."""
    todo: queue.Queue = queue.Queue()
    for p in paths:
        todo.put(str(p))
    results: list[dict] = []
    lock = threading.Lock()

    def work():
        child = _Child()
        try:
            while True:
                try:
                    path = todo.get_nowait()
                except queue.Empty:
                    return
                t = time.monotonic()
                verdict = child.ask(path)
                if verdict is None:
                    code = child.proc.returncode
                    verdict = {"file": path, "outcome": "crash",
                               "message": f"the child died (exit code {code}) or took more than {TIMEOUT_S} s "
                                          f"({time.monotonic() - t:.1f} s)"}
                    child = _Child()
                with lock:
                    results.append(verdict)
        finally:
            child.close()

    threads = [threading.Thread(target=work) for _ in range(CHILDREN)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def cause_of(message: str) -> list[str]:
    return [cause for cause, pattern in CAUSES.items() if re.search(pattern, message)]


def judge(v: dict) -> str | None:
    """What is wrong with one file's verdict (None: nothing)."""
    if v["outcome"] in ("error", "crash"):
        return f"{v['outcome']}: {v['message']}"
    if v["outcome"] == "loaded":
        return f"wrong pixels: {v['mismatch']}" if v.get("mismatch") else None
    message = v["message"]
    if "\n" in message or "\r" in message:
        return f"the message has more than one line: {message!r}"
    causes = cause_of(message)
    if len(causes) != 1:
        return f"the message names {len(causes)} causes of CAUSES ({causes}): {message!r}"
    v["cause"] = causes[0]
    if v.get("pillow") == "decodes" and v.get("format") in COMMON and causes[0] not in ALLOWED_FOR_VALID:
        return f"Pillow decodes this {v['format']} file, but the engine refused it: {message!r}"
    if v.get("pillow") == "over the limit" and causes[0] != "over the pixel limit":
        return f"over the pixel limit, but refused for another reason: {message!r}"
    return None


def summary(results: list[dict], wrong: dict) -> str:
    loaded = collections.Counter(f"{v['dtype']}" for v in results if v["outcome"] == "loaded" and v["file"] not in wrong)
    refused = collections.Counter(v.get("cause", "?") for v in results if v["outcome"] == "refused" and v["file"] not in wrong)
    lines = [f"corpus: {len(results)} files in {CORPUS}",
             f"loaded: {sum(loaded.values())} ({', '.join(f'{n} {d}' for d, n in sorted(loaded.items()))})",
             f"refused: {sum(refused.values())}"]
    lines += [f"  {n:4d}  {cause}" for cause, n in refused.most_common()]
    lines.append(f"wrong: {len(wrong)}")
    return "\n".join(lines)


@pytest.mark.timeout(240)
def test_every_corpus_file_loads_right_or_is_refused_with_its_cause():
    paths = corpus_files()
    t = time.monotonic()
    results = run_corpus(paths)
    seconds = time.monotonic() - t
    assert sorted(v["file"] for v in results) == sorted(map(str, paths))
    wrong = {v["file"]: problem for v in results if (problem := judge(v))}
    print("\n" + summary(results, wrong) + f"\n({seconds:.1f} s with {CHILDREN} children)")
    assert not wrong, "\n".join(f"{os.path.relpath(f, CORPUS)}: {p}" for f, p in sorted(wrong.items()))


@pytest.mark.timeout(60)  # a hang guard: waiting forever on the stopped child is the failure
def test_a_child_that_dies_or_hangs_is_reported_not_waited_for():
    """The harness's own failure paths: a dead child answers None, a stopped one (alive, never
    answering) answers None after the timeout and is killed by ``ask``; ``run_corpus`` then names
    the file (verdict 'crash')."""
    good = str(corpus_file("pngsuite/basn2c16.png"))
    child = _Child()
    assert child.ask(good)["outcome"] == "loaded"
    child.proc.kill()
    assert child.ask(good) is None
    child = _Child()
    assert child.ask(good)["outcome"] == "loaded"
    os.kill(child.proc.pid, signal.SIGSTOP)
    assert child.proc.poll() is None  # alive: only ask's timeout can end the wait
    assert child.ask(good, timeout=2) is None
    assert child.proc.returncode == -signal.SIGKILL  # killed by ask (the test only stopped it)


# -- the files the issue names -------------------------------------------------------------------------
def _oracle():
    import _corpus_child

    return _corpus_child


@pytest.mark.parametrize("name", ["tiff_strip_planar_16bit_RGB.tiff", "tiff_strip_planar_16bit_RGBa.tiff",
                                  "tiff_tiled_planar_16bit_RGB.tiff", "tiff_tiled_planar_16bit_RGBa.tiff",
                                  "tiff_16bit_RGB.tiff", "tiff_16bit_RGBa.tiff"])
def test_sixteen_bit_tiff_equals_libtiff_and_is_the_same_every_run(name):
    path = corpus_file(f"pillow/{name}")
    with Image.open(path) as im:
        want, oracle = _oracle().expected16(str(path), im)
    assert oracle == "libtiff"
    runs = [engine.load_image(path) for _ in range(3)]
    assert runs[0].dtype == np.uint16 and runs[0].shape == (40, 100, 4 if "RGBa" in name else 3)
    for a in runs:
        np.testing.assert_array_equal(a, want)
    if "RGBa" not in name:  # the same picture as Pillow's 8-bit reading of the file: its high bytes
        with Image.open(path) as im:
            np.testing.assert_array_equal(runs[0] >> 8, np.asarray(im.convert("RGB")))


def test_associated_alpha_is_un_premultiplied_at_16_bits():
    path = corpus_file("pillow/tiff_16bit_RGBa.tiff")
    raw, photometric, extras = _oracle().tiff16(str(path))
    assert extras == (1,)  # associated (premultiplied) alpha
    a = engine.load_image(path)
    np.testing.assert_array_equal(a[:, :, 3], raw[:, :, 3])
    part = (raw[:, :, 3] > 0) & (raw[:, :, 3] < 65535)
    assert part.any()
    # straight color = premultiplied * 65535 / alpha: brighter than stored where alpha is partial
    assert (a[:, :, :3][part] >= raw[:, :, :3][part]).all()
    assert (a[:, :, :3][part] > raw[:, :, :3][part]).any()
    # and the 8-bit picture Pillow shows (it un-premultiplies its high bytes), within the
    # rounding of 8-bit division where alpha is at least half
    with Image.open(path) as im:
        eight = np.asarray(im.convert("RGBA")).astype(int)
    half = raw[:, :, 3] >= 0x8000
    assert half.sum() > 500 and np.abs((a >> 8).astype(int) - eight)[half].max() <= 3


def test_sixteen_bit_apng_gives_the_default_image():
    path = corpus_file("pillow/apng/mode_16bit.png")
    import cv2

    a = engine.load_image(path)
    assert a.dtype == np.uint16 and a.shape == (64, 128, 4)
    np.testing.assert_array_equal(a, _oracle().png16(str(path)))  # PyPNG reads IDAT: the default image
    with Image.open(path) as im:  # Pillow shows the default image at 8 bits: the same picture
        assert im.info.get("default_image") and im.n_frames == 3
        np.testing.assert_array_equal(a >> 8, np.asarray(im.convert("RGBA")))
    first_frame = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)  # OpenCV on the bytes as they are
    assert not np.array_equal(first_frame[:, :, [2, 1, 0, 3]], a)


@pytest.mark.parametrize("name, reason", [("unimplemented_dxgi_format.dds", "DXGI_FORMAT_B8G8R8X8_UNORM_SRGB"),
                                          ("unimplemented_pfflags.dds", "Unknown pixel format flags 8"),
                                          ("unimplemented_pixel_format.dds", "Unimplemented pixel format 0")])
def test_dds_the_decoder_cannot_read_is_refused_with_the_reason(name, reason):
    path = corpus_file(f"pillow/{name}")
    with pytest.raises(engine.ImageError) as e:
        engine.load_image(path)
    assert str(e.value) == (f"{path} is a DDS file that uses a feature the decoder does not support ({reason}): "
                            f"convert it to PNG")


@pytest.mark.parametrize("name", ["bmp/g/rgb16-565.bmp", "bmp/g/rgb16-565pal.bmp",
                                  "hopper.psd", "rgba.psd", "hopper_merged.psd", "five_channels.psd"])
def test_packed_bmp_and_psd_load_as_pillow_shows_them(name):
    path = CORPUS / "pillow" / name
    if not path.is_file():
        pytest.skip(f"{name} is not in the corpus")
    with Image.open(path) as im:
        want = np.asarray(im.convert("RGBA" if im.mode == "RGBA" else "RGB" if im.mode != "L" else "L"))
    a = engine.load_image(path)
    assert a.dtype == np.uint8
    np.testing.assert_array_equal(a, want.reshape(a.shape))


@pytest.mark.parametrize("name, dtype, channels", [("pillow/l_trns.png", np.uint8, 2), ("pillow/i_trns.png", np.uint16, 2),
                                                   ("pngsuite/tbbn0g04.png", np.uint8, 2),
                                                   ("pngsuite/tbwn0g16.png", np.uint16, 2),
                                                   ("pillow/rgb_trns.png", np.uint8, 4), ("pngsuite/tbrn2c08.png", np.uint8, 4),
                                                   ("pngsuite/tbbn2c16.png", np.uint16, 4)])
def test_trns_is_an_alpha_channel_at_every_bit_depth(name, dtype, channels):
    path = corpus_file(name)
    a = engine.load_image(path)
    assert a.dtype == dtype and a.shape[2] == channels
    with Image.open(path) as im:
        trns = im.info["transparency"]
    alpha = a[:, :, -1]
    assert set(np.unique(alpha).tolist()) == {0, np.iinfo(dtype).max}
    if dtype == np.uint16:  # transparent exactly where the stored color is the tRNS color
        key = np.all(a[:, :, :-1] == np.reshape(trns, -1), axis=2)
        np.testing.assert_array_equal(alpha == 0, key)
    else:  # the 8-bit alpha is PyPNG's (Pillow misses tRNS in 2- and 4-bit gray: tbbn0g04)
        import png

        w, h, rows, info = png.Reader(filename=str(path)).asDirect()
        want = np.array([np.asarray(r) for r in rows]).reshape(h, w, info["planes"])[:, :, -1]
        np.testing.assert_array_equal(alpha == 0, want == 0)


def test_cmyk_16_bit_tiff_becomes_16_bit_rgb():
    path = corpus_file("pillow/tiff_strip_cmyk_16l_jpeg.tif")
    a = engine.load_image(path)
    assert a.dtype == np.uint16 and a.shape == (100, 100, 3)
    with Image.open(path) as im:
        np.testing.assert_array_equal(a, _oracle().expected16(str(path), im)[0])
        eight = np.asarray(im.convert("RGB")).astype(int)  # Pillow's 8-bit reading: the same colors
    assert np.abs(a.astype(int) / 257 - eight).max() <= 2


@pytest.mark.skipif(shutil.which("gs") is not None, reason="Ghostscript is installed here: EPS files load")
def test_eps_without_ghostscript_says_so():
    path = corpus_file("pillow/eps/1.eps")
    with pytest.raises(engine.ImageError) as e:
        engine.load_image(path)
    assert str(e.value) == (f"{path} is an EPS (PostScript) file, which needs Ghostscript to draw it, and "
                            f"Ghostscript is not installed: convert it to PNG")


@pytest.mark.parametrize("name", ["decompression_bomb.gif", "decompression_bomb.ico", "bmp/b/reallybig.bmp",
                                  "timeout-060745d3f534ad6e4128c51d336ea5489182c69d.blp",
                                  "oom-8ed3316a4109213ca96fb8a256a0bfefdece1461.icns"])
def test_bombs_quote_the_engine_limit_only(name):
    path = corpus_file(f"pillow/{name}")
    with pytest.raises(engine.ImageError) as e:
        engine.load_image(path)
    message = str(e.value)
    assert message.endswith(f"more than the limit of {engine.MAX_PIXELS:,} pixels"), message
    for pillows in ("89478485", "89,478,485", "178956970", "178,956,970"):
        assert pillows not in message


@pytest.mark.timeout(60)  # a hang guard: the file was a fuzzer's timeout
def test_a_284_byte_blp_claiming_84_megapixels_is_refused_cheaply(pixel_decodes):
    """Cheaply: refused from the size its header declares, before any decoder runs, and
    without the memory that 84 MP would take (checked in a fresh interpreter)."""
    path = corpus_file("pillow/timeout-060745d3f534ad6e4128c51d336ea5489182c69d.blp")
    assert path.stat().st_size < 300
    refused = " is 83,886,338 pixels, more than the limit of 40,000,000 pixels"
    message, _, grown_mb = load_in_child(path)
    assert message.endswith(refused), message
    assert grown_mb < 20, f"{grown_mb} MB more memory"
    with pytest.raises(engine.ImageError) as e:
        engine.load_image(path)
    assert str(e.value).endswith(refused) and pixel_decodes == []
    # the spy sees decoding: a small BLP that loads goes through Pillow's decoder
    small = corpus_file("pillow/blp/blp2_raw.blp")
    assert engine.load_image(small).size and ("PIL ImageFile.load", "BLP") in pixel_decodes
