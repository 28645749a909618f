"""One engine per server process, and each session's current image in its shared memory.

::

    server process (all sessions)                    one browser session (st.session_state)
    -----------------------------                    --------------------------------------
    get_engine(): st.cache_resource, first call      "lab_image": CurrentImage
      Engine(max_workers=WORKER_CAP)                   .array = eng.shared_array(...): pixels
      a warm-up job starts 2 x CPUs workers in           copied in once, when the image or its
        the background (never at import time:            size changes; every run reads it in
        workers are spawned and re-import __main__)      place (no copy in)
      closed by on_release (get_engine.clear())      each run writes into fresh shared outputs
        and at interpreter exit (atexit)               (no copy out); old ones are dropped

The engine owns every segment: a shared array's segment is unlinked when the session lets go
of the array (garbage collection) or when the engine closes. Work is bounded across sessions by
the engine itself: at most ``WORKER_CAP`` worker processes exist, and jobs that need more than
are free wait in FIFO order (``Job.state() == "waiting"``).
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np
import streamlit as st

import engine

from .images import Facts, encode_png, to_display

#: CPUs this server may run on (``os.sched_getaffinity``).
CPUS = engine.available_cpus()
#: Each filter may use up to twice the CPUs (to show oversubscription) ...
PROCESS_MAX = 2 * CPUS
#: ... and the two filters of a pair run at the same time, so the engine's cap is twice that.
WORKER_CAP = 2 * PROCESS_MAX
#: Width of the image card's preview, in pixels (sent at exactly this size: no resampling by Streamlit).
SMALL_SIDE = 220


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


@dataclass(eq=False)
class CurrentImage:
    """The image a session works on, resident in engine shared memory."""

    key: Hashable  # (source, identity, size preset): a change means new pixels
    name: str  # file name, for captions and download names
    facts: Facts  # the file as decoded: format, size, mode, dtype
    array: np.ndarray  # (H, W, C) uint8/uint16, an Engine.shared_array
    preview: bytes  # PNG of the display version (at most DISPLAY_MAX_SIDE)
    small: bytes  # PNG at most SMALL_SIDE wide, for the image card
    display: np.ndarray  # the 8-bit display version itself, for compositions

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.array.shape

    @property
    def megapixels(self) -> float:
        return self.array.shape[0] * self.array.shape[1] / 1e6


def shared_image(slot: str, key: Hashable, name: str, facts: Facts, pixels: Callable[[], np.ndarray]) -> CurrentImage:
    """The session's image under ``slot``, copied into shared memory only when ``key`` changes.

    ``pixels()`` is called only then (decode, resample); every other rerun reuses the array.
    """
    current = st.session_state.get(slot)
    if isinstance(current, CurrentImage) and current.key == key:
        return current
    a = pixels()
    shared = get_engine().shared_array(a.shape, a.dtype)
    shared[...] = a
    display = to_display(shared)
    h, w = display.shape[:2]
    small = to_display(display, max_side=max(1, round(SMALL_SIDE * max(h, w) / w)))
    current = CurrentImage(key, name, facts, shared, encode_png(display), encode_png(small), display)
    st.session_state[slot] = current
    return current


def shared_outputs(like: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """``n`` fresh shared arrays shaped like ``like``: the workers write results straight in."""
    eng = get_engine()
    return tuple(eng.shared_array(like.shape, like.dtype) for _ in range(n))
