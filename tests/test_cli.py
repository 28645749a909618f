"""``python -m engine``: exit 0 with the engine's own results; exit 2 with one line and no traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine
from _proc import unprivileged

ROOT = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(5)


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rgb = RNG.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    gray16 = RNG.integers(0, 65536, (25, 33, 1), dtype=np.uint16)
    engine.save_image(rgb, d / "rgb.png")
    engine.save_image(gray16, d / "gray16.png")
    engine.save_image(RNG.integers(0, 256, (20, 16, 4), dtype=np.uint8), d / "rgba.png")
    (d / "notes.png").write_text("not an image\n")
    return d, rgb, gray16


def assert_usage_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_filter(inputs, eng, tmp_path):
    d, rgb, _ = inputs
    out = tmp_path / "out.png"
    res = run("filter", d / "rgb.png", out, "--kernel", "sobel", "--processes", "2")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert np.array_equal(engine.load_image(out), eng.filter_image(rgb, "sobel", processes=1))


def test_filter_with_kernel_text_and_options(inputs, eng, tmp_path):
    d, rgb, _ = inputs
    out = tmp_path / "out.png"
    text = "1/16 2/16 1/16; 2/16 4/16 2/16; 1/16 2/16 1/16"
    res = run("filter", d / "rgb.png", out, "--kernel", text, "--border", "wrap", "--output", "offset",
              "--implementation", "numpy", "--processes", "1")
    assert res.returncode == 0, res.stderr
    want = eng.filter_image(rgb, engine.parse_kernel(text), processes=3, border="wrap", output="offset",
                            implementation="numpy")
    assert np.array_equal(engine.load_image(out), want)


def test_filter_keeps_sixteen_bits(inputs, eng, tmp_path):
    d, _, gray16 = inputs
    out = tmp_path / "out16.png"
    res = run("filter", d / "gray16.png", out, "--kernel", "laplacian", "--output", "abs")
    assert res.returncode == 0, res.stderr
    got = engine.load_image(out)
    assert got.dtype == np.uint16
    assert np.array_equal(got, eng.filter_image(gray16, "laplacian", processes=2, output="abs"))


def test_pair(inputs, eng, tmp_path):
    d, rgb, _ = inputs
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    res = run("pair", d / "rgb.png", a, b, "--kernels", "sobel", "gaussian", "--processes", "1", "1",
              "--border", "mirror")
    assert res.returncode == 0, res.stderr
    assert "wall" in res.stdout and "bands" in res.stdout
    assert np.array_equal(engine.load_image(a), eng.filter_image(rgb, "sobel", processes=2, border="mirror"))
    assert np.array_equal(engine.load_image(b), eng.filter_image(rgb, "gaussian", processes=2, border="mirror"))


def test_pair_figure_has_the_results_and_the_timeline(inputs, tmp_path):
    from PIL import Image

    d = inputs[0]
    for fmt, magic in [("png", b"\x89PNG\r\n\x1a\n"), ("pdf", b"%PDF-")]:
        fig = tmp_path / f"run.{fmt}"
        res = run("pair", d / "rgb.png", tmp_path / "a.png", tmp_path / "b.png", "--kernels", "sobel", "gaussian",
                  "--processes", "1", "2", "--figure", fig)
        assert res.returncode == 0, res.stderr
        assert f"figure written to {fig}" in res.stdout
        assert fig.read_bytes().startswith(magic)
    assert Image.open(tmp_path / "run.png").size[0] >= 1500  # three images wide at 200 dpi


def test_scaling_prints_the_table_and_writes_csv_and_figure(inputs, tmp_path):
    import csv

    d = inputs[0]
    out_csv, fig = tmp_path / "runs.csv", tmp_path / "scaling.svg"
    res = run("scaling", d / "rgb.png", "--kernel", "gaussian", "--processes", "1", "2", "--repeats", "2",
              "--csv", out_csv, "--figure", fig)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("gaussian on 30x40, opencv, median of 2 run(s) per count")
    assert lines[1].split() == ["processes", "median", "ms", "speedup", "efficiency"]
    assert [ln.split()[0] for ln in lines[2:4]] == ["1", "2"] and lines[2].split()[2:] == ["1.00x", "100%"]
    assert lines[4].startswith("Amdahl serial fraction")
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["processes"], r["repeat"]) for r in rows] == [("1", "1"), ("2", "1"), ("1", "2"), ("2", "2")]
    assert all(float(r["seconds"]) > 0 and int(r["bands"]) >= 1 for r in rows)
    assert fig.read_bytes().lstrip().startswith(b"<?xml") and b"</svg>" in fig.read_bytes()[-100:]


def test_kernels_lists_the_registry():
    res = run("kernels")
    assert res.returncode == 0, res.stderr
    names = [line.split()[0] for line in res.stdout.splitlines() if line and not line.startswith(" ")]
    assert names == list(engine.KERNELS)
    assert "    0.5 0 -0.5" in res.stdout.splitlines()  # edge_x's weights
    assert "sobel  3x3  separable" in res.stdout and "laplacian  3x3  2-D" in res.stdout


@pytest.mark.parametrize("case", [
    "unknown kernel", "ragged kernel text", "missing input", "non-image input", "processes 0", "processes x",
    "processes 1.5", "processes over max_workers", "unknown border", "unknown output", "missing output folder",
    "pair processes 0", "kernel nan", "pair figure jpg", "scaling processes twice", "scaling processes 0",
    "scaling unknown kernel", "scaling missing figure folder", "rgba as jpeg", "gray16 as jpeg", "unknown extension",
    "pair rgba as bmp",
])
def test_usage_errors(inputs, tmp_path, case):
    d = inputs[0]
    src, out = d / "rgb.png", tmp_path / "out.png"
    args, needles = {
        "unknown kernel": (["filter", src, out, "--kernel", "blurry"], ["'blurry' is neither a known kernel", "gaussian"]),
        "ragged kernel text": (["filter", src, out, "--kernel", "1 2 1; 2 4"], ["every row needs the same number of weights"]),
        "missing input": (["filter", d / "nope.png", out, "--kernel", "sobel"], ["nope.png", "does not exist"]),
        "non-image input": (["filter", d / "notes.png", out, "--kernel", "sobel"], ["not a recognized image"]),
        "processes 0": (["filter", src, out, "--kernel", "sobel", "--processes", "0"], ["--processes", "got 0"]),
        "processes x": (["filter", src, out, "--kernel", "sobel", "--processes", "x"], ["--processes", "'x'"]),
        "processes 1.5": (["filter", src, out, "--kernel", "sobel", "--processes", "1.5"], ["--processes", "'1.5'"]),
        "processes over max_workers": (["filter", src, out, "--kernel", "sobel", "--processes", "999"],
                                       ["processes must be an integer from 1 to", "got 999"]),
        "unknown border": (["filter", src, out, "--kernel", "sobel", "--border", "nearest"], ["--border", "'nearest'", "replicate"]),
        "unknown output": (["filter", src, out, "--kernel", "sobel", "--output", "clamp"], ["--output", "'clamp'"]),
        "missing output folder": (["filter", src, tmp_path / "no" / "such" / "out.png", "--kernel", "sobel"],
                                  ["output folder", "does not exist"]),
        "pair processes 0": (["pair", src, out, tmp_path / "b.png", "--kernels", "sobel", "sobel", "--processes", "1", "0"],
                             ["--processes"]),
        "kernel nan": (["filter", src, out, "--kernel", "1 nan 1"], ["finite"]),
        "pair figure jpg": (["pair", src, out, tmp_path / "b.png", "--kernels", "sobel", "sobel", "--figure",
                             tmp_path / "run.jpg"], ["--figure must end in .png, .svg or .pdf", "run.jpg"]),
        "scaling processes twice": (["scaling", src, "--kernel", "sobel", "--processes", "1", "1"],
                                    ["processes must be distinct integers", "got [1, 1]"]),
        "scaling processes 0": (["scaling", src, "--kernel", "sobel", "--processes", "0"], ["--processes", "got 0"]),
        "scaling unknown kernel": (["scaling", src, "--kernel", "blurry"], ["'blurry' is neither a known kernel"]),
        "scaling missing figure folder": (["scaling", src, "--kernel", "sobel", "--figure", tmp_path / "no" / "f.png"],
                                          ["output folder", "does not exist"]),
        # checked before filtering (was: OSError after the work, exit 1)
        "rgba as jpeg": (["filter", d / "rgba.png", tmp_path / "o.jpg", "--kernel", "sobel"],
                         ["output '", "o.jpg' (JPEG) cannot hold this 8-bit RGBA image", "8-bit gray or RGB",
                          "use PNG (.png), TIFF (.tif, .tiff) or WEBP (.webp)"]),
        "gray16 as jpeg": (["filter", d / "gray16.png", tmp_path / "o.jpg", "--kernel", "sobel"],
                           ["cannot hold this 16-bit gray image", "use PNG (.png) or TIFF (.tif, .tiff)"]),
        "unknown extension": (["filter", src, tmp_path / "o.gif", "--kernel", "sobel"],
                              ["o.gif' must end in .png, .tif, .tiff, .jpg, .jpeg, .bmp or .webp", "got '.gif'"]),
        "pair rgba as bmp": (["pair", d / "rgba.png", out, tmp_path / "b.bmp", "--kernels", "sobel", "sobel"],
                             ["output_b '", "b.bmp' (BMP) cannot hold this 8-bit RGBA image"]),
    }[case]
    res = run(*args)
    assert_usage_error(res, *needles)
    assert not out.exists()
    assert not any(p.name.startswith("o.") for p in tmp_path.iterdir())


OUTPUT_CASES = {
    # case: (arguments after "python -m engine", with IN for the input file, and T/ for tmp_path; the message)
    "output is a folder": (["filter", "NOTES", "T/folder.png", "--kernel", "sobel"],
                           r"^error: output '.*folder\.png' is a folder, not a file$"),
    "output is the input": (["filter", "IN", "IN", "--kernel", "sobel"],
                            r"^error: output '.*in\.png' is the input file: write to another file \(the input would be lost\)$"),
    "output is the input, spelled otherwise": (["filter", "IN", "T/sub/../in.png", "--kernel", "sobel"],
                                               r"^error: output '.*sub/\.\./in\.png' is the input file"),
    "output is a hard link to the input": (["filter", "IN", "T/hard.png", "--kernel", "sobel"],
                                           r"^error: output '.*hard\.png' is the input file"),
    "output is a symlink to the input": (["filter", "IN", "T/soft.png", "--kernel", "sobel"],
                                         r"^error: output '.*soft\.png' is the input file"),
    "pair outputs are the input": (["pair", "IN", "T/a.png", "IN", "--kernels", "sobel", "sobel"],
                                   r"^error: output_b '.*in\.png' is the input file"),
    "pair outputs are one file": (["pair", "IN", "T/a.png", "T/sub/../a.png", "--kernels", "sobel", "sobel"],
                                  r"^error: output_a and output_b are the same file '.*sub/\.\./a\.png': give each output "
                                  r"its own name \(the second would overwrite the first\)$"),
    "pair figure is an output": (["pair", "IN", "T/a.png", "T/b.png", "--kernels", "sobel", "sobel", "--figure", "T/a.png"],
                                 r"^error: output_a and --figure are the same file '.*a\.png'"),
    "pair figure is the input": (["pair", "IN", "T/a.png", "T/b.png", "--kernels", "sobel", "sobel", "--figure", "IN"],
                                 r"^error: --figure '.*in\.png' is the input file"),
    "scaling csv is the input": (["scaling", "IN", "--kernel", "sobel", "--processes", "1", "--csv", "IN"],
                                 r"^error: --csv '.*in\.png' is the input file"),
}


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_outputs_that_would_lose_a_file_are_refused_before_decoding(inputs, tmp_path, case):
    """Were found after decoding and filtering (a folder: exit 1), or not at all: the input was
    overwritten with its own filtered image, and a pair's second output replaced its first."""
    d = inputs[0]
    src = tmp_path / "in.png"
    src.write_bytes((d / "rgb.png").read_bytes())
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "sub").mkdir()
    os.link(src, tmp_path / "hard.png")
    (tmp_path / "soft.png").symlink_to(src)
    before = {p.name: (p.read_bytes() if p.is_file() else None) for p in tmp_path.iterdir()}
    args, message = OUTPUT_CASES[case]
    # IN is the input; a folder given as output is checked before the input, here not an image, is read
    src_arg = d / "notes.png" if case == "output is a folder" else src
    res = run(*[src_arg if a == "IN" else tmp_path / a[2:] if a.startswith("T/") else a for a in args])
    assert_usage_error(res)
    assert re.search(message, res.stderr.strip()), (message, res.stderr)
    assert {p.name: (p.read_bytes() if p.is_file() else None) for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("case", ["read-only folder", "read-only output"])
def test_outputs_that_cannot_be_written_are_refused_before_decoding(inputs, tmp_path, case):
    """Were found when the result was written, after decoding and filtering: exit 1 with
    "error: PermissionError: ...". The input here is no image, so an output error proves to
    come first."""
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "o.png"
    if case == "read-only output":
        out.write_bytes(b"keep me")
        out.chmod(0o444)
        message = rf"^error: output '{re.escape(str(out))}' is read-only \(permission denied\)$"
    else:
        folder.chmod(0o555)
        message = rf"^error: output folder '{re.escape(str(folder))}' is not writable \(permission denied\)$"
    try:
        res = subprocess.run(unprivileged([sys.executable, "-m", "engine", "filter", inputs[0] / "notes.png", out,
                                           "--kernel", "sobel"]), cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        folder.chmod(0o755)
    assert_usage_error(res)
    assert re.search(message, res.stderr.strip()), (message, res.stderr)
    assert sorted(p.name for p in folder.iterdir()) == (["o.png"] if case == "read-only output" else [])


def test_a_failed_figure_keeps_the_old_one(inputs, tmp_path, monkeypatch):
    """The figure file was opened (emptied) before the figure was rendered: a failed render
    lost the figure of an earlier run. Rendered first, then written beside it and renamed."""
    from engine import _cli

    fig = tmp_path / "run.png"
    fig.write_bytes(b"the figure of an earlier run")

    def fail(*_):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(engine.plot, "render", fail)
    code = _cli.main(["pair", str(inputs[0] / "rgb.png"), str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                      "--kernels", "sobel", "gaussian", "--processes", "1", "1", "--figure", str(fig)])
    assert code == 1
    assert fig.read_bytes() == b"the figure of an earlier run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "run.png"]  # no temporary file left


def test_a_failed_write_keeps_the_old_output(tmp_path):
    """An output was opened (emptied) and then written: a write that failed part way (a full
    disk; here a file size limit, RLIMIT_FSIZE) left it cut short. Written beside it, renamed."""
    import resource

    img = np.random.default_rng(1).integers(0, 256, (10000, 4, 1), dtype=np.uint8)  # noise: its PNG > its pixels
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    engine.save_image(img, src)
    out.write_bytes(b"the output of an earlier run")
    size = len(engine.save_image(img))
    limit = (img.nbytes + size) // 2  # room for the engine's shared memory (img.nbytes), not for the PNG
    assert img.nbytes < limit < size

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    res = subprocess.run([sys.executable, "-m", "engine", "filter", src, out, "--kernel", "identity"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, preexec_fn=small_files,
                         env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert res.returncode == 1 and res.stderr == "error: OSError: [Errno 27] File too large\n", res.stderr
    assert out.read_bytes() == b"the output of an earlier run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]  # no temporary file left


def test_an_existing_output_is_replaced_keeping_its_mode_and_symlink(inputs, eng, tmp_path):
    """Writing through a temporary file keeps what writing in place kept: an existing output's
    permissions, and a symlink pointing at the new file."""
    d, rgb, _ = inputs
    real = tmp_path / "real.png"
    real.write_bytes(b"old")
    real.chmod(0o640)
    (tmp_path / "link.png").symlink_to(real.name)
    res = run("filter", d / "rgb.png", tmp_path / "link.png", "--kernel", "sobel")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "link.png").is_symlink() and (real.stat().st_mode & 0o777) == 0o640
    assert np.array_equal(engine.load_image(real), eng.filter_image(rgb, "sobel", processes=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.png", "real.png"]


def test_no_arguments():
    res = run()
    assert_usage_error(res, "command")
    assert res.stdout == ""


def test_unknown_command():
    assert_usage_error(run("sharpen"), "invalid choice", "'sharpen'")


def test_sweep_removes_only_dead_processes_segments():
    import psutil

    dead = 4_000_000
    while psutil.pid_exists(dead):
        dead += 1
    stale = f"/dev/shm/pfl_{dead}_clitest"
    alive = f"/dev/shm/pfl_{os.getppid()}_clitest"
    for path in (stale, alive):
        with open(path, "wb") as f:
            f.write(b"x")
    try:
        r = subprocess.run([sys.executable, "-m", "engine", "sweep"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert f"pfl_{dead}_clitest" in r.stdout
        assert not os.path.exists(stale) and os.path.exists(alive)
    finally:
        for path in (stale, alive):
            if os.path.exists(path):
                os.unlink(path)


@pytest.mark.parametrize("when", ["before any output", "after the first line"])
def test_a_reader_that_closes_the_pipe_early_is_a_normal_end(when):
    """``python -m engine kernels | head -1``: exit 0 and nothing on stderr (was: exit 1 with
    "error: BrokenPipeError")."""
    proc = subprocess.Popen([sys.executable, "-m", "engine", "kernels"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    if when == "after the first line":
        assert proc.stdout.readline().startswith(b"identity")
    proc.stdout.close()  # as head does once it has its lines
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0, err
    assert err == ""


def test_head_in_a_shell_pipeline_exits_0():
    res = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m engine kernels | head -3"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr == "", (res.returncode, res.stderr)
    assert len(res.stdout.splitlines()) == 3
