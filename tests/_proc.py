"""Helpers for the reliability tests: run the CLI as a subprocess and prove that it left
nothing behind (no process started under it, no shared-memory segment it created).

Every process started under a CLI run inherits a marker in its environment, so orphans are
found even after they were re-parented to init; segments carry their creator's pid in their
name (``pfl_<pid>_<hex>``), so the CLI's own segments are found by name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from engine import _shm

ROOT = Path(__file__).resolve().parent.parent
MARKER = "PFL_RELIABILITY_MARK"


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *map(str, args)]


def marked_env(mark: str) -> dict:
    env = dict(os.environ, **{MARKER: mark})
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def marked_processes(mark: str) -> list[psutil.Process]:
    """Live processes (not zombies) whose environment carries ``mark``."""
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get(MARKER) == mark and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            pass
    return found


def segments_of(pid: int) -> list[str]:
    """Our segments in /dev/shm created by process ``pid``."""
    return [n for n in _shm.our_segments() if n.startswith(f"{_shm.PREFIX}{pid}_")]


def _described(p: psutil.Process) -> str | None:
    """``pid command line`` of a live process; None if it ended (or became a zombie) since it
    was listed."""
    try:
        return f"{p.pid} {' '.join(p.cmdline())[:100]}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return None


def wait_gone(mark: str, pid: int, timeout: float = 10.0) -> tuple[list[str], list[str]]:
    """Wait until no process under ``mark`` and no segment of ``pid`` is left; return what is
    still there at the deadline (``([], [])`` when clean)."""
    deadline = time.monotonic() + timeout
    while True:
        procs = [_described(p) for p in marked_processes(mark)]
        procs = [p for p in procs if p]
        segs = segments_of(pid)
        if (not procs and not segs) or time.monotonic() > deadline:
            return procs, segs
        time.sleep(0.05)


def run_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``python -m engine *args`` and assert that it left no process and no segment."""
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(
        cli_command(*args), cwd=ROOT, env=marked_env(mark), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_marked(mark)
        proc.communicate()
        raise AssertionError(f"CLI {args} did not finish within {timeout} s") from None
    procs, segs = wait_gone(mark, proc.pid)
    assert not procs, f"CLI {args} left processes behind: {procs}"
    assert not segs, f"CLI {args} left segments in /dev/shm: {segs}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def kill_marked(mark: str) -> None:
    """Clean up after a failed test: SIGKILL everything started under ``mark``."""
    for p in marked_processes(mark):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def engine_children(baseline: set[int]) -> list[psutil.Process]:
    """Live child processes of this process that are not in ``baseline`` and are not
    multiprocessing's resource tracker (shared by every engine, not a worker)."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)  # noqa: SLF001
    out = []
    for c in psutil.Process().children(recursive=False):
        if c.pid in baseline or c.pid == tracker:
            continue
        try:
            if c.status() != psutil.STATUS_ZOMBIE:
                out.append(c)
        except psutil.NoSuchProcess:
            pass
    return out


def child_pids() -> set[int]:
    return {c.pid for c in psutil.Process().children(recursive=False)}


class ChildMonitor(threading.Thread):
    """Samples the number of live worker processes (``engine_children(baseline)``) every
    ``period`` seconds; ``peak`` is the most seen at once."""

    def __init__(self, baseline: set[int], period: float = 0.02):
        super().__init__(name="pfl-child-monitor", daemon=True)
        self.baseline, self.period = baseline, period
        self.peak, self.samples = 0, 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            self.peak = max(self.peak, len(engine_children(self.baseline)))
            self.samples += 1
            time.sleep(self.period)

    def stop(self):
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)


_LOAD_IN_CHILD = (
    "import resource, sys, time, engine\n"
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "t = time.perf_counter()\n"
    "try:\n    engine.load_image(sys.argv[1])\nexcept engine.ImageError as e:\n    print(e)\n"
    "print(time.perf_counter() - t, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
)


def load_in_child(path) -> tuple[str, float, int]:
    """``engine.load_image(path)`` in a fresh interpreter: (its ImageError's message, seconds,
    MB its peak memory grew by)."""
    res = subprocess.run([sys.executable, "-c", _LOAD_IN_CHILD, str(path)], capture_output=True, text=True,
                         timeout=50, cwd=ROOT, env=dict(os.environ, OPENCV_LOG_LEVEL="OFF"))
    message, figures = res.stdout.splitlines()
    return message, float(figures.split()[0]), int(figures.split()[1])


def unprivileged(command: list) -> list:
    """``command``, run so that file permissions apply: as root, without the capabilities that
    let root read and write any file (``setpriv`` from util-linux); otherwise as it is."""
    if os.geteuid() != 0:
        return command
    if not shutil.which("setpriv"):
        pytest.skip("running as root, whom file permissions do not stop, and setpriv (util-linux) is not "
                    "installed to drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *map(str, command)]
