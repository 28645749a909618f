"""Shared fixtures. Every test is checked for leaks: no segment of ours left in /dev/shm that no
live engine owns (a live engine's pool and shared arrays are owned, and unlinked at close), and
no child process left alive that was not there before (the shared test engine's workers are)."""

from __future__ import annotations

import os
import time

import numpy as np
import psutil
import pytest

import engine
from engine import _shm

os.environ.setdefault("PFL_TESTING", "1")


def _children() -> set[int]:
    me = psutil.Process()
    out = set()
    for c in me.children(recursive=True):
        try:
            if c.status() != psutil.STATUS_ZOMBIE:
                out.add(c.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _helpers() -> set[int]:
    """multiprocessing's own long-lived helpers (resource tracker), not ours to count."""
    from multiprocessing import resource_tracker

    pid = getattr(resource_tracker._resource_tracker, "_pid", None)  # noqa: SLF001
    return {pid} if pid else set()


def _our_segments() -> set[str]:
    """Segments with our prefix that this test run could have leaked: made by this process or
    by one that is gone (a CLI run). Those of other live processes belong to someone else (a
    test run of another engineer on this shared machine) and are not ours to judge."""
    found = set()
    for name in _shm.our_segments():
        try:
            pid = int(name[len(_shm.PREFIX) :].split("_", 1)[0])
        except ValueError:
            pid = None
        if pid is None or pid == os.getpid() or not psutil.pid_exists(pid):
            found.add(name)
    return found


@pytest.fixture(scope="session")
def eng():
    """One warm engine for the whole session (4 workers: room for pairs of 2+2)."""
    e = engine.Engine(max_workers=4)
    # start all four workers now, so that tests see a stable set of children
    e.filter_pair(np.zeros((8, 8, 1), np.uint8), "identity", "identity", processes=(2, 2))
    yield e
    e.close()


@pytest.fixture(scope="module")
def app_engine():
    """The dashboard's cached engine, warm (2 x CPUs workers), closed after the module that
    uses it (dashboard test modules list it in ``pytestmark``, so it starts before the per-test
    leak check takes its snapshot)."""
    from pages._ui import state

    eng = state.get_engine()
    eng.filter_pair(np.zeros((8, 8, 1), np.uint8), "identity", "identity", processes=(state.CPUS, state.CPUS))
    yield eng
    state.close_engine()


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fail a test that leaves a segment of ours or a new child process behind."""
    before_children = _children()
    before_segments = _our_segments()
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked_segments = _our_segments() - before_segments - _shm.live_segments()
        extra = _children() - before_children - _helpers()
        if not leaked_segments and not extra:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    msgs = []
    if leaked_segments:
        msgs.append(f"shared-memory segments left in /dev/shm: {sorted(leaked_segments)}")
    if extra:
        desc = []
        for pid in extra:
            try:
                desc.append(f"{pid} {' '.join(psutil.Process(pid).cmdline())[:80]}")
            except psutil.NoSuchProcess:
                pass
        if desc:
            msgs.append(f"child processes left alive: {desc}")
    if msgs:
        pytest.fail("; ".join(msgs), pytrace=False)


@pytest.fixture
def pixel_decodes(monkeypatch):
    """Every call into a pixel decoder the engine's decoding policy can reach (Pillow's
    ``ImageFile.load`` and ``Image._getdecoder``, ``cv2.imdecode``, ``tifffile.TiffFile``), as
    ``(decoder, detail)``: a file refused from its header leaves this empty."""
    import cv2
    import tifffile
    from PIL import Image, ImageFile

    calls: list[tuple[str, object]] = []

    def spy(owner, attr, label, detail=lambda *a, **k: None):
        real = getattr(owner, attr)

        def wrapper(*args, **kwargs):
            calls.append((label, detail(*args, **kwargs)))
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, attr, wrapper)

    spy(ImageFile.ImageFile, "load", "PIL ImageFile.load", lambda im: im.format)
    spy(Image, "_getdecoder", "PIL decoder", lambda mode, name, *a, **k: name)
    spy(cv2, "imdecode", "cv2.imdecode")
    spy(tifffile, "TiffFile", "tifffile.TiffFile")
    return calls


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def pytest_collection_modifyitems(config, items):
    """Long runs (``@pytest.mark.slow``) run only with PFL_LONG=1; see docs/reliability.md."""
    if os.environ.get("PFL_LONG") == "1":
        return
    skip = pytest.mark.skip(reason="long run: set PFL_LONG=1 to run it (docs/reliability.md)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
