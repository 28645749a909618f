"""The benchmark suite runs end to end (no timing is asserted: the numbers live in docs/benchmarks.md),
and benchmarks/run_all.py rewrites only its own section of that file."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from _oracle import assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick_exits_0_and_prints_tables(tmp_path):
    md = tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_engine.py"), "--quick", "--markdown", str(md)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| implementation | workers | output | wall ms |" in out
    assert "| engine, zero-copy" in out and "| **OpenCV best**: `cv2.sepFilter2D`" in out and "| extra: " in out
    assert "### Targets" in out and "| target | what |" in out
    assert any(word in out for word in ("**PASS**", "**MISS**"))
    assert "CPU: " in out and "SIMD: " in out  # every table names the CPU
    assert "Checks (untimed" in out
    text = md.read_text()
    assert text.startswith("## Engine benchmarks") and "### Targets" in text and "| engine, numpy arrays" in text


def _load(name):
    """A module of benchmarks/ by path (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_run_all_keeps_other_sections():
    m = _load("run_all")
    dashboard = "## Dashboard: click to results\n\n| step | ms |\n|---|---|\n| upload | 12 |\n"
    fresh = m.splice(None, "## Engine benchmarks\nold")
    assert fresh.startswith("# Benchmarks\n") and m.START in fresh and m.END in fresh
    # the other section appears later, after ours, and survives a rewrite untouched
    doc = fresh + "\n" + dashboard
    new = m.splice(doc, "## Engine benchmarks\nnew")
    assert "new" in new and "old" not in new and new.endswith(dashboard)
    # a file someone else started, without our markers: theirs is kept whole, ours goes after the title
    theirs = "# Benchmarks\n\n" + dashboard
    new = m.splice(theirs, "## Engine benchmarks\nfirst")
    assert new.startswith("# Benchmarks\n\n" + m.START) and new.endswith(dashboard)
    # before their section, or after it: either way only our block changes
    doc = "# Benchmarks\n\n" + dashboard + "\n" + m.START + "\nx\n" + m.END + "\n"
    assert m.splice(doc, "y") == doc.replace("\nx\n", "\ny\n")
    with pytest.raises(ValueError, match="only one of the markers"):
        m.splice("# B\n" + m.START + "\n", "z")


@pytest.mark.parametrize("name", ["gaussian", "sobel", "edge_y", "identity"])
def test_notebook_algorithm_computes_the_filter(eng, name):
    """What target (c) times is the real filter: the notebook's algorithm (replicate border,
    rounded and clipped) meets the oracle's exactness rule, rows and edges alike."""
    from engine import KERNELS

    notebook_filter = _load("_harness").notebook_filter
    img = np.random.default_rng(3).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    got = notebook_filter(img, KERNELS[name].weights)
    assert got.shape == img.shape and got.dtype == np.uint8
    assert_close(got, img, KERNELS[name].weights, "replicate", "clip", f"notebook {name}")


def test_routes_report_quick(tmp_path):
    """benchmarks/routes.py times every eligible route of each request and names the engine's."""
    md = tmp_path / "routes.md"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "routes.py"), "--quick", "--size", "64", "--markdown", str(md)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| kernel | class | shape | dtype | output | ms per route (median) | engine's route |" in out
    assert "| `gaussian` | registry | 5x5 separable | uint8 | clip | direct " in out
    assert "The engine's route is the fastest in " in out and "CPU: " in out
    assert "| CPU |" in md.read_text()


def test_where_time_goes_quick_leaves_no_segment():
    """benchmarks/where_time_goes.py prints its three tables (the bare 2-process design computes
    the engine's filter: the script checks that itself) and unlinks every segment it made."""
    before = set(os.listdir("/dev/shm"))
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "where_time_goes.py"), "--size", "96", "--rounds", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| gaussian | OpenCV best, /dev/shm in and out |" in out
    assert "| kernel | job wall ms | OpenCV best, 2 threads ms | ratio |" in out
    assert "| kernel | job wall ms | bare 2 processes ms | job / bare | OpenCV best, 1 thread ms |" in out
    assert out.count("| random_5x5 |") >= 9 and "CPU: " in out
    assert set(os.listdir("/dev/shm")) - before == set()


def test_start_gap_with_busy_processes_leaves_none_behind():
    """benchmarks/start_gap.py --busy runs its busy processes only while it measures."""
    import uuid

    from _proc import marked_env, wait_gone

    mark = uuid.uuid4().hex
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "benchmarks", "start_gap.py"), "--size", "64", "--jobs", "4", "--warm", "1",
         "--busy", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=marked_env(mark),
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    rows = [line for line in out.splitlines() if line.startswith("| 64² RGB")]
    assert [r.split(" | ")[2:5] for r in rows] == [["1 + 1", "2", "3"], ["2 + 2", "2", "3"]]
    assert wait_gone(mark, proc.pid) == ([], [])  # no busy process, no worker, no segment
