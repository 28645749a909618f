"""One engine per server process, and each session's current image in its shared memory.

::

    server process (all sessions)                    one browser session
    -----------------------------                    -------------------
    get_engine(): st.cache_resource, first call      holdings() (st.session_state["pfl_held"]):
      Engine(max_workers=WORKER_CAP)                   "image": CurrentImage
      a warm-up job starts 2 x CPUs workers in           .array = eng.shared_array(...): pixels
        the background (never at import time:            copied in once, when the image or its
        workers are spawned and re-import __main__)      size changes; every run reads it in
      closed by on_release (get_engine.clear()),         place (no copy in)
        at interpreter exit (atexit), and by the       "result": the engine's own output arrays
        registry once no session is connected and        (no out=: pooled again when dropped)
        nothing is held for IDLE_SECONDS               released when the tab closes, after
    registry(): st.cache_resource, the Registry        IDLE_SECONDS without use, or to keep
      of every session's holdings (holdings.py)        every session's total under CAP_BYTES

The engine owns every segment: a shared array's segment is unlinked when the session lets go
of the array (garbage collection) or when the engine closes. Work is bounded across sessions by
the engine itself: at most ``WORKER_CAP`` worker processes exist, and jobs that need more than
are free wait in FIFO order (``Job.state() == "waiting"``).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np
import streamlit as st

import engine

from .holdings import Holdings, Registry
from .images import Facts, Picture, Screen, picture, screen, to_display

#: CPUs this server may run on (``os.sched_getaffinity``).
CPUS = engine.available_cpus()
#: Each filter may use up to twice the CPUs (to show oversubscription) ...
PROCESS_MAX = 2 * CPUS
#: ... and the two filters of a pair run at the same time, so the engine's cap is twice that.
WORKER_CAP = 2 * PROCESS_MAX
#: Width of the image card's preview, in pixels (sent at exactly this size: no resampling by Streamlit).
SMALL_SIDE = 220
#: A session's images and results are released after this long without a page run
#: (``PFL_IDLE_MINUTES``, default 10); the page makes the image again on the next run.
IDLE_SECONDS = float(os.environ.get("PFL_IDLE_MINUTES", "10")) * 60


def _default_cap() -> int:
    """2 GiB, or a quarter of /dev/shm when that is smaller (``PFL_HELD_CAP_MB`` overrides)."""
    if "PFL_HELD_CAP_MB" in os.environ:
        return int(float(os.environ["PFL_HELD_CAP_MB"]) * 2**20)
    try:
        st_ = os.statvfs("/dev/shm")
        shm = st_.f_blocks * st_.f_frsize
    except OSError:  # pragma: no cover - not Linux
        shm = 8 << 30
    return min(2 << 30, shm // 4)


#: Every session's images and results together stay under this; the least recently used
#: session's are released first (never the one running, never one with a job in flight).
CAP_BYTES = _default_cap()
HELD = "pfl_held"


def _release(eng: engine.Engine) -> None:
    eng.close()


@st.cache_resource(show_spinner=False, on_release=_release)
def get_engine() -> engine.Engine:
    """The server's engine: created on first use, shared by every session, closed on shutdown."""
    eng = engine.Engine(max_workers=WORKER_CAP)
    atexit.register(eng.close)
    # Start one pair's worth of workers now, in the background: the first Run finds them warm.
    eng.submit(np.zeros((8, 8, 1), np.uint8), engine.FilterRequest(["identity", "identity"]), processes=(CPUS, CPUS))
    return eng


def close_engine() -> None:
    """Close the cached engine (its ``on_release``) and forget it; the next call makes a new one."""
    get_engine.clear()


def _close_registry(reg: Registry) -> None:
    reg.close()


@st.cache_resource(show_spinner=False, on_release=_close_registry)
def registry() -> Registry:
    """Every session's holdings, swept on each page run and by a daemon thread (``holdings``)."""
    reg = Registry(IDLE_SECONDS, CAP_BYTES, on_idle=close_engine)
    reg.run_sweeper(min(Registry.SWEEP_SECONDS, IDLE_SECONDS / 2))
    return reg


class _Token:
    """A session's connection, as Streamlit's session-scoped cache sees it."""

    def __init__(self, reg: Registry, h: Holdings):
        self.registry, self.id = reg, reg.start(h)


def _end_session(token: _Token) -> None:
    token.registry.end(token.id)


@st.cache_resource(scope="session", show_spinner=False, on_release=_end_session)
def _session_token() -> _Token:
    # Made once per session; Streamlit releases session-scoped resources when the tab's
    # connection closes, which calls _end_session: the session's holdings are released then.
    return _Token(registry(), _holdings_object())


def _holdings_object() -> Holdings:
    h = st.session_state.get(HELD)
    if not isinstance(h, Holdings):
        h = st.session_state[HELD] = Holdings()
        registry().adopt(h)
    return h


def holdings() -> Holdings:
    """This session's holdings (the only strong references to its shared arrays), marked used."""
    h = _holdings_object()
    _session_token()
    h.touch()
    return h


def page_start() -> None:
    """Every page, first: mark the session used and apply the registry's rules to the others."""
    h = holdings()
    registry().sweep(keep=h)


def release_note(lost: str | None = None) -> None:
    """Say once why this session's image and results are gone, if the registry released them.

    ``lost`` (markdown): what of the image could not come back, said instead of "the image is
    back" (the lab's ``release_note`` passes the upload a release took for good)."""
    note = holdings().take_note()
    if note or lost:
        st.info(f"This tab's image and results were {note or 'released'}, to free the server's memory. "
                f"{lost or 'The image is back'}; press **Run** for new results.", icon=":material/memory:")


@dataclass(eq=False)
class CurrentImage:
    """The image a session works on, resident in engine shared memory."""

    key: Hashable  # (source, identity, size preset): a change means new pixels
    name: str  # file name, for captions and download names
    facts: Facts  # the file as decoded: format, size, mode, dtype
    array: np.ndarray  # (H, W, C) uint8/uint16, an Engine.shared_array
    screen: Screen  # the display version (enlarged when tiny) and the results-row preview
    small: Picture  # at most SMALL_SIDE wide, for the image card

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.array.shape

    @property
    def megapixels(self) -> float:
        return self.array.shape[0] * self.array.shape[1] / 1e6

    @property
    def display(self) -> np.ndarray:
        return self.screen.display

    def held_bytes(self) -> int:
        return self.array.nbytes + self.screen.held_bytes()


def shared_image(key: Hashable, name: str, facts: Facts, pixels: Callable[[], np.ndarray]) -> CurrentImage:
    """The session's image, copied into shared memory only when ``key`` changes.

    ``pixels()`` is called only then (decode, resample); every other rerun reuses the array.
    """
    h = holdings()
    current = h.get("image")
    if isinstance(current, CurrentImage) and current.key == key:
        return current
    h["image"] = None  # let the old one go first: at 16 MP it is 50 MB of shared memory
    del current
    a = pixels()
    shared = get_engine().shared_array(a.shape, a.dtype)
    shared[...] = a
    scr = screen(shared)
    d = scr.display
    hh, w = d.shape[:2]
    small = to_display(d, max_side=max(1, round(SMALL_SIDE * max(hh, w) / w)))
    current = CurrentImage(key, name, facts, shared, scr, picture(small, enlarged=scr.factor > 1))
    h["image"] = current
    return current
