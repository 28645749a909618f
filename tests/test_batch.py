"""``python -m engine batch`` on the process-pool engine (no Dask needed): names, listing,
resume and up-front checks of ``engine/_batch.py``. The Dask side is in ``tests/test_dask.py``."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import engine
from engine import _batch, _cli

RNG = np.random.default_rng(11)


def _jpeg(path, orientation):
    a = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)  # wider than tall: 5-8 swap the sides
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(path, exif=exif.tobytes())


# -- resume: what counts as done -------------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_is_complete_uses_the_size_after_exif_orientation(tmp_path, orientation):
    src, out = tmp_path / "a.jpg", tmp_path / "a.png"
    _jpeg(src, orientation)
    loaded = engine.load_image(src)
    engine.save_image(loaded, out)
    assert _batch.is_complete(str(out), str(src))
    # an output of the other size (the header's, for 5-8) is not the filtered image
    engine.save_image(np.ascontiguousarray(loaded.transpose(1, 0, 2)), out)
    assert not _batch.is_complete(str(out), str(src))


def _exif_before_iend(data: bytes, exif: Image.Exif) -> bytes:
    """The PNG with an eXIf chunk after its pixels (Pillow finds it only when it decodes them)."""
    body = b"eXIf" + exif.tobytes()[6:]
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    iend = data.rindex(b"IEND") - 4
    return data[:iend] + chunk + data[iend:]


@pytest.mark.parametrize("case", ["exif", "exif_late", "exif16", "plain", "text"])
def test_is_complete_on_png_inputs_follows_load_image(tmp_path, case):
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    if case == "exif16":  # 16-bit color PNG: the loader reads its eXIf chunk itself
        data = engine.save_image(RNG.integers(0, 65536, (20, 30, 3), dtype=np.uint16))
        src.write_bytes(_exif_before_iend(data, exif))
    else:
        im = Image.fromarray(RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8))
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "made for a test")
        bio = io.BytesIO()
        im.save(bio, "PNG", exif=exif.tobytes() if case == "exif" else None, pnginfo=info if case == "text" else None)
        src.write_bytes(_exif_before_iend(bio.getvalue(), exif) if case == "exif_late" else bio.getvalue())
    loaded = engine.load_image(src)
    assert loaded.shape[:2] == ((30, 20) if case.startswith("exif") else (20, 30))
    engine.save_image(loaded, out)
    assert _batch.is_complete(str(out), str(src))
    engine.save_image(np.ascontiguousarray(loaded.transpose(1, 0, 2)), out)
    assert not _batch.is_complete(str(out), str(src))


def test_a_rerun_does_not_redo_a_rotated_jpeg(tmp_path, capsys):
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    _jpeg(d / "turned.jpg", 6)
    args = ["batch", str(d), str(out), "--kernel", "gaussian", "--processes", "1"]
    assert _cli.main(args) == 0
    assert "1 filtered, 0 already done" in capsys.readouterr().out
    assert _cli.main(args) == 0
    assert "0 filtered, 1 already done" in capsys.readouterr().out



def test_a_fifo_at_an_output_name_is_not_done_and_does_not_hang(tmp_path):
    """``is_complete`` opened whatever had the output's name: a named pipe there blocked the run
    for good (opening a FIFO waits for a writer) before any image was filtered."""
    import os
    import threading

    src, out = tmp_path / "a.png", tmp_path / "out.png"
    engine.save_image(RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8), src)
    os.mkfifo(out)
    answer = []
    t = threading.Thread(target=lambda: answer.append(_batch.is_complete(str(out), str(src))), daemon=True)
    t.start()
    t.join(timeout=30)
    hung = t.is_alive()
    if hung:  # blocked in open(): a writer that comes and goes releases it
        with open(out, "wb"):
            pass
        t.join()
    assert not hung and answer == [False]


# -- output names ----------------------------------------------------------------------------------
@pytest.mark.parametrize("names", [
    ["a.gif", "a.jpg", "a.jpg.png"],
    ["a.bmp", "a.gif", "a.jpg", "a.jpg.png", "a.jpg-2.png", "a.png"],
    ["A.JPG", "a.gif", "a.jpg", "a.JPG.png"],
    ["A.png", "a.png", "a.png.png"],  # kept names that differ in letter case only
    ["B.TIF", "b.tif", "b.tif.png"],
])
def test_output_names_are_unique_whatever_the_inputs_are_called(names):
    out = _batch.output_names(names)
    assert sorted(out) == sorted(names)
    assert len({v.lower() for v in out.values()}) == len(names), out
    for n, v in out.items():
        if not n.lower().endswith((".png", ".tif", ".tiff")):
            assert v.endswith(".png")
        else:  # its own name, unless another input has it in other letter case
            assert v == n or (v.endswith(".png") and any(m != n and m.lower() == n.lower() for m in names))


def test_inputs_whose_names_differ_in_case_only_get_two_outputs(tmp_path):
    """On a case-insensitive output folder (a USB stick, macOS) ``A.png`` and ``a.png`` kept their
    names and the second output replaced the first."""
    assert _batch.output_names(["A.png", "a.png", "a.png.png"]) == {
        "A.png": "A.png", "a.png.png": "a.png.png", "a.png": "a.png-2.png"}
    assert _batch.output_names(["B.TIF", "b.tif"]) == {"B.TIF": "B.TIF", "b.tif": "b.png"}


def test_two_inputs_never_share_an_output(tmp_path, capsys):
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    img = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(img).save(d / "a.gif")
    Image.fromarray(img).save(d / "a.jpg")
    engine.save_image(img, d / "a.jpg.png")
    assert _cli.main(["batch", str(d), str(out), "--kernel", "identity", "--processes", "1"]) == 0
    assert "3 filtered" in capsys.readouterr().out
    assert len(list(out.iterdir())) == 3


# -- what counts as an image -----------------------------------------------------------------------
def test_only_formats_pillow_can_open_are_listed(tmp_path):
    from PIL import Image

    for name in ("doc.pdf", "pic.palm", "a.png", "b.JPG", "c.mpo", "d.tiff", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    images, ignored = _batch.list_images(str(tmp_path))
    assert images == ["a.png", "b.JPG", "c.mpo", "d.tiff"] and ignored == 3
    exts = _batch._image_extensions()
    assert {".pdf", ".palm"}.isdisjoint(exts)
    assert all(Image.registered_extensions()[e] in Image.OPEN or e == ".mpo" for e in exts)


def test_a_pdf_in_the_folder_is_ignored_not_bad(tmp_path, capsys):
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    engine.save_image(RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8), d / "a.png")
    Image.new("RGB", (8, 8)).save(d / "report.pdf")
    assert _cli.main(["batch", str(d), str(out), "--kernel", "identity", "--processes", "1"]) == 0
    text = capsys.readouterr().out
    assert "1 filtered" in text and "1 non-image file(s) ignored" in text and "report.pdf" not in text



def test_an_image_name_that_is_no_regular_file_is_reported_bad_not_dropped(tmp_path, capsys):
    """A broken link or a named pipe called ``*.png`` was left out of the listing without a word:
    neither an image (reported bad) nor an ignored file, and the run exited 0."""
    import os

    d, out = _one_image_folder(tmp_path), tmp_path / "out"
    os.symlink(tmp_path / "gone.png", d / "link.png")
    os.mkfifo(d / "pipe.png")
    os.mkfifo(d / "pipe.txt")
    (d / "sub.png").mkdir()  # a folder is neither
    assert _batch.list_images(str(d)) == (["a.png", "link.png", "pipe.png"], 1)
    assert _cli.main(["batch", str(d), str(out), "--kernel", "identity", "--processes", "1"]) == 1
    text = capsys.readouterr().out
    assert f"link.png: skipped, bad image: image file {str(d / 'link.png')!r} does not exist" in text
    assert f"pipe.png: skipped, bad image: image path {str(d / 'pipe.png')!r} is not a regular file: it is a " \
           "named pipe (FIFO)" in text
    assert "batch: 3 image(s)" in text and "1 filtered, 0 already done, 2 skipped as bad (link.png, pipe.png); " \
           "1 non-image file(s) ignored" in text


# -- up-front checks -------------------------------------------------------------------------------
def _one_image_folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    engine.save_image(RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8), d / "a.png")
    return d


def test_processes_beyond_the_engine_are_refused_before_any_work(tmp_path):
    from engine._pool import default_max_workers

    d, out = _one_image_folder(tmp_path), tmp_path / "out"
    request = engine.FilterRequest(["sobel"])
    limit = default_max_workers()
    with pytest.raises(ValueError, match=rf"^processes must be an integer from 1 to {limit} .*got {limit + 1}$"):
        _batch.prepare_batch(d, out, request, processes=limit + 1)
    with pytest.raises(TypeError, match=r"^processes must be an integer from 1 to \d+, got 1.5"):
        _batch.prepare_batch(d, out, request, processes=1.5)
    assert not out.exists()  # refused before the output folder was made
    assert _batch.prepare_batch(d, out, request, processes=limit).processes == limit


def test_cli_processes_99_is_a_usage_error(tmp_path, capsys):
    d, out = _one_image_folder(tmp_path), tmp_path / "out"
    assert _cli.main(["batch", str(d), str(out), "--kernel", "sobel", "--processes", "99"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: processes must be an integer from 1 to ") and captured.err.count("\n") == 1
    assert "got 99" in captured.err
