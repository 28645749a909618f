"""What each browser session holds in the engine's shared memory, and when it lets go of it.

::

    one session (a browser tab)                 the server process (every session)
    ---------------------------                 ----------------------------------
    st.session_state["pfl_held"]: Holdings      Registry (state.registry(): st.cache_resource)
      "image", "upload", "result", "job",         weak set of every session's Holdings,
      "sweep": the only strong references         live session tokens, the sweeper thread
      to the session's shared arrays            sweep(), on every page run and every
    a session token (st.cache_resource with       SWEEP_SECONDS from a daemon thread:
      scope="session"): Streamlit calls its         idle longer than idle_seconds -> release
      on_release when the tab's connection          more than cap_bytes held in all -> release
      closes -> Registry.end(token)                   the least recently used sessions first
        -> release("the session ended")           (never one with a job or sweep in flight,
                                                   never the session whose page is running)
                                                 no live token and nothing held for
                                                   idle_seconds -> on_idle() (the app closes
                                                   its engine: workers and scratch pool)

A release cancels the session's job or sweep and drops its references; each shared array's
segment is unlinked when its last reference goes (the engine's finalizer) and the workers unmap
it before their next job. For that to hold, nothing that Streamlit keeps beyond a script run
may reference the arrays: fragments look the result up here instead of taking it as an
argument, and deferred downloads hold it weakly (``weakly``); Streamlit keeps both until the
session is shut down, which for a closed tab may be never. Nothing here imports Streamlit: the page glue is in ``state``, and the
tests drive a ``Registry`` with their own clock.

Why not only ``st.session_state``: Streamlit keeps a closed tab's session (and its state) for
reconnection and drops it lazily, so a server whose tabs all closed kept every image and result
(14 segments, 452 MiB, twelve minutes after the last tab closed: issue 13).
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from typing import Callable

#: Keys a session keeps here, with what each is.
KEYS = {
    "image": "the lab's current image (CurrentImage: a shared array and its previews)",
    "upload": "the last good upload, decoded",
    "result": "the last finished pair (LabResult: two engine results)",
    "job": "the job in flight (jobs.Pending)",
    "sweep": "the Scaling page's sweep (sweep.Sweep: a shared image and outputs)",
}


def held_bytes(value) -> int:
    """Bytes of memory ``value`` keeps alive: its ``held_bytes()`` if it has one, else 0."""
    f = getattr(value, "held_bytes", None)
    return int(f()) if callable(f) else 0


def in_flight(value) -> bool:
    """True for work still running (a job not done, a sweep running): never released."""
    f = getattr(value, "in_flight", None)
    return bool(f()) if callable(f) else False


class Holdings:
    """One session's heavy objects, by key (``KEYS``); released as a whole."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._items: dict[str, object] = {}
        self._lock = threading.Lock()
        self.last_used = clock()
        self.note: str | None = None  # why the last release happened, until the page shows it

    # -- a mapping ----------------------------------------------------------------------------
    def get(self, key: str, default=None):
        with self._lock:
            return self._items.get(key, default)

    def __getitem__(self, key: str):
        with self._lock:
            return self._items[key]

    def __setitem__(self, key: str, value) -> None:
        if key not in KEYS:
            raise KeyError(f"unknown holdings key {key!r}; known: {', '.join(KEYS)}")
        with self._lock:
            if value is None:
                self._items.pop(key, None)
            else:
                self._items[key] = value

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def pop(self, key: str, default=None):
        with self._lock:
            return self._items.pop(key, default)

    # -- accounting ---------------------------------------------------------------------------
    def touch(self) -> None:
        self.last_used = self._clock()

    def nbytes(self) -> int:
        with self._lock:
            values = list(self._items.values())
        return sum(held_bytes(v) for v in values)

    def busy(self) -> bool:
        with self._lock:
            values = list(self._items.values())
        return any(in_flight(v) for v in values)

    def release(self, reason: str) -> int:
        """Cancel what runs, drop every reference; returns the bytes let go. The page reads
        ``note`` (once) to say why its image and results are gone."""
        with self._lock:
            items, self._items = self._items, {}
        freed = sum(held_bytes(v) for v in items.values())
        for v in items.values():
            stop = getattr(v, "cancel", None)
            if callable(stop):
                stop()
        if items:
            self.note = reason
        return freed

    def take_note(self) -> str | None:
        note, self.note = self.note, None
        return note


class Registry:
    """Every session's Holdings (weakly), the sessions still connected, and the rules above."""

    SWEEP_SECONDS = 30.0

    def __init__(self, idle_seconds: float, cap_bytes: int, on_idle: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.idle_seconds = float(idle_seconds)
        self.cap_bytes = int(cap_bytes)
        self._on_idle = on_idle
        self._clock = clock
        self._lock = threading.RLock()
        self._holdings: weakref.WeakSet[Holdings] = weakref.WeakSet()
        self._tokens: dict[int, weakref.ref] = {}  # live session token -> its Holdings
        self._ids = itertools.count(1)
        self._quiet_since: float | None = None  # no live token and nothing held since then
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.log: list[tuple[float, str, int]] = []  # (time, reason, bytes) of recent releases

    # -- sessions -----------------------------------------------------------------------------
    def adopt(self, h: Holdings) -> None:
        with self._lock:
            self._holdings.add(h)
            self._quiet_since = None

    def start(self, h: Holdings) -> int:
        """A new session token for ``h``: the session is connected until ``end(token)``."""
        with self._lock:
            self.adopt(h)
            token = next(self._ids)
            self._tokens[token] = weakref.ref(h)
            return token

    def end(self, token: int) -> None:
        """The session's connection closed (Streamlit released its session-scoped token)."""
        with self._lock:
            ref = self._tokens.pop(token, None)
        h = ref() if ref is not None else None
        if h is not None:
            self._record("released when the session ended", h.release("released when the session ended"))

    def sessions(self) -> list[Holdings]:
        with self._lock:
            return list(self._holdings)

    def live_sessions(self) -> int:
        with self._lock:
            return sum(1 for r in self._tokens.values() if r() is not None)

    def total_bytes(self) -> int:
        return sum(h.nbytes() for h in self.sessions())

    # -- the rules ----------------------------------------------------------------------------
    def sweep(self, keep: Holdings | None = None) -> list[str]:
        """Release idle sessions, then the least recently used ones while over the cap; call
        ``on_idle`` once nothing is held and no session is connected for ``idle_seconds``.
        Returns the reasons of the releases made."""
        now = self._clock()
        done = []
        with self._lock:
            live = [h for h in self.sessions() if h.nbytes() or h.busy()]
            for h in live:
                if h is not keep and not h.busy() and now - h.last_used > self.idle_seconds:
                    reason = f"released after {_minutes(self.idle_seconds)} without use"
                    self._record(reason, h.release(reason))
                    done.append(reason)
            over = self.total_bytes() - self.cap_bytes
            if over > 0:
                for h in sorted(self.sessions(), key=lambda s: s.last_used):
                    if over <= 0:
                        break
                    if h is keep or h.busy() or not h.nbytes():
                        continue
                    reason = (f"released to keep the server's images under {self.cap_bytes / 2**30:.1f} GiB "
                              "(other sessions needed the memory)")
                    freed = h.release(reason)
                    self._record(reason, freed)
                    done.append(reason)
                    over -= freed
            quiet = not self.live_sessions() and not any(h.nbytes() or h.busy() for h in self.sessions())
            if not quiet:
                self._quiet_since = None
            elif self._quiet_since is None:
                self._quiet_since = now
            elif now - self._quiet_since > self.idle_seconds and self._on_idle is not None:
                self._quiet_since = None
                self._on_idle()
                done.append("idle: nothing held and no session for a while")
        return done

    def _record(self, reason: str, freed: int) -> None:
        if freed:
            self.log = (self.log + [(self._clock(), reason, freed)])[-50:]

    # -- the sweeper thread -------------------------------------------------------------------
    def run_sweeper(self, interval: float | None = None) -> None:
        """Sweep every ``interval`` seconds from a daemon thread (when no page runs, nothing else
        would). Idempotent."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, args=(interval or self.SWEEP_SECONDS,),
                                            name="pfl-holdings-sweeper", daemon=True)
            self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - a sweep must never kill the thread; the next one retries
                pass

    def close(self) -> None:
        self._stop.set()


def weakly(obj, make: Callable[[object], bytes | str]) -> Callable[[], bytes | str]:
    """A deferred download's data function that holds ``obj`` weakly: ``make(obj)`` when it is
    still alive, else empty bytes (the session's holdings were released since the page ran)."""
    ref = weakref.ref(obj)

    def data():
        o = ref()
        return make(o) if o is not None else b""

    return data


def _minutes(seconds: float) -> str:
    m = seconds / 60
    return f"{m:g} minute{'s' if m != 1 else ''}" if m >= 1 else f"{seconds:g} seconds"

