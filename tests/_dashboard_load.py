"""Eight dashboard sessions at once: Streamlit AppTests in threads around one server's engine.

tests/test_dashboard_reliability.py runs ``scenario()`` in a child process started the way
scripts/dashboard.sh starts the server (``MALLOC_MMAP_THRESHOLD_=1048576``) and judges its figures::

    child process (plays the server)                 session threads (one AppTest each)
    --------------------------------                 ----------------------------------
    concurrent_apptests(): one mock runtime,         AppTest.from_file(dashboard.py), "4 MP":
      one script cache, one config patch             the page copies the image into a shared
    get_engine(): the dashboard's engine,              array of the engine
      all WORKER_CAP workers started                 per pair: pick kernels and process counts,
    references: filter_image of every kernel           click Run; the page submits to the shared
    warm-up wave, then RSS baseline                    engine and polls it (waiting FIFO when
    waves: all sessions start together; after          the workers are busy); result compared
      each, its sessions have ended: RSS, the          with filter_image's
      engine's segments                              end: the AppTest is dropped; the session's
    close_engine(): workers end, segments go           image and outputs are unlinked (gc)

AppTest is made for one session at a time: each ``AppTest.run`` swaps process-wide state for the
length of the run. Sequentially that is harmless; between threads every swap races:

* ``Runtime._instance`` is set to a fresh mock, then reset to None: the other sessions' running
  scripts lose their runtime ("Runtime hasn't been created!").
* A fresh ``ScriptCache`` per run compiles the pages again, and CPython 3.11's compiler is not
  safe in concurrent threads ("AST constructor recursion depth mismatch").
* ``patch_config_options({"global.appTest": True})`` is ``unittest.mock.patch`` of the module
  function ``config.get_option``. Patches nest by saving what they find and restoring it on
  exit, so a session whose run ends while another's runs puts the real ``get_option`` back under
  it. That session's widgets then skip ``save_for_app_testing`` (it checks ``global.appTest``),
  and its next ``selectbox(key=...).set_value()`` looks for a format function that was never
  saved: ``KeyError('$$ID-...-lab_kernel_A')``, the CI failure. The last patch to exit out of
  order also leaves a patched ``get_option`` behind for the rest of the process.
* ``PagesManager.uses_pages_directory`` (a class attribute: True while Streamlit honours the
  ``pages/`` folder convention, False once ``st.navigation`` ran; ``page_guard`` reads and writes
  it) is reset to None at the start of every run, under the other sessions' running scripts.

``concurrent_apptests`` does each of these once for all sessions, as one server process has them,
and sends AppTest's own per-run swaps to stand-ins. What is left per session is what a server
keeps per session: session state, widget state, the script thread. One difference remains: every
AppTest has the session id "test session id" (hard-coded in ``LocalScriptRunner``); only the media
file manager is keyed by it, and AppTest fetches no media.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
import traceback
from unittest import mock

import numpy as np
import psutil

import engine
from _proc import ROOT, ChildMonitor, child_pids, engine_children, segments_of
from engine import _shm

APP = str(ROOT / "dashboard.py")
SESSION_ID = "test session id"  # streamlit.testing.v1.local_script_runner
#: (kernel A, kernel B, processes A, processes B); session i's run r takes CHOICES[(i + r) % 4]
CHOICES = [("sobel", "gaussian", 1, 1), ("box_5x5", "laplacian", 2, 1), ("sharpen", "emboss", 1, 2),
           ("scharr_x", "gaussian_7x7", 2, 2)]


def held(at):
    """The session's holdings (pages/_ui/holdings.py): its image, result, job and sweep."""
    return at.session_state["pfl_held"]


@contextlib.contextmanager
def concurrent_apptests():
    """Let AppTests run in concurrent threads of this process; yields the shared mock runtime."""
    from streamlit.components.v2.component_manager import BidiComponentManager
    from streamlit.runtime import Runtime
    from streamlit.runtime.caching.storage.dummy_cache_storage import MemoryCacheStorageManager
    from streamlit.runtime.dataframe_source_manager import DataframeSourceManager
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test
    from streamlit.testing.v1.util import patch_config_options

    shared = mock.MagicMock(spec=Runtime)
    shared.media_file_mgr = MediaFileManager(MemoryMediaFileStorage("/mock/media"))
    shared.dataframe_source_mgr = DataframeSourceManager()
    shared.cache_storage_manager = MemoryCacheStorageManager()
    components = BidiComponentManager()
    components.discover_and_register_components(start_file_watching=False)
    shared.bidi_component_registry = components
    cache = ScriptCache()

    class RuntimeStandIn:  # takes AppTest's per-run `Runtime._instance = ...` swaps
        _instance = None

    class PagesManagerStandIn(PagesManager):  # takes its per-run `uses_pages_directory = None`
        pass

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(Runtime, "_instance", shared))
        stack.enter_context(mock.patch.object(app_test, "Runtime", RuntimeStandIn))
        stack.enter_context(mock.patch.object(app_test, "ScriptCache", lambda: cache))
        # once for all sessions, entered and left by this thread alone
        stack.enter_context(patch_config_options({"global.appTest": True}))
        stack.enter_context(mock.patch.object(app_test, "patch_config_options",
                                              lambda overrides: contextlib.nullcontext()))
        # as in a server after its first run: st.navigation has switched the pages/ convention off
        stack.enter_context(mock.patch.object(PagesManager, "uses_pages_directory", False))
        stack.enter_context(mock.patch.object(app_test, "PagesManager", PagesManagerStandIn))
        yield shared


def _memory() -> dict:
    """This process's RSS, and its anonymous (heap) and shared-memory parts (Linux)."""
    gc.collect()
    out = {"rss": psutil.Process().memory_info().rss}
    with open("/proc/self/status") as f:
        out.update((k[3:].lower(), int(v.split()[0]) << 10) for k, v in (line.split(":", 1) for line in f)
                   if k in ("RssAnon", "RssShmem"))
    return out


def _session(i: int, runs: int, want: dict, shape: tuple, timeout: float, figures: dict, lock) -> None:
    """One browser session: open the lab at 4 MP, then ``runs`` pairs, each checked."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout)
    try:
        at.session_state["lab_size"] = "4 MP"
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        for r in range(runs):
            ka, kb, pa, pb = CHOICES[(i + r) % len(CHOICES)]
            at.selectbox(key="lab_kernel_A").set_value(ka)
            at.selectbox(key="lab_kernel_B").set_value(kb)
            at.slider(key="lab_p_A").set_value(pa)
            at.slider(key="lab_p_B").set_value(pb)
            at.run()
            t0 = time.perf_counter()
            at.button(key="lab_run").click().run()
            wait = time.perf_counter() - t0
            assert not at.exception and not at.error, ([e.value for e in at.exception], [e.value for e in at.error])
            res = held(at).get("result")
            assert res.image.array.shape == shape and res.kernels[0].name == ka and res.kernels[1].name == kb
            bad = [n for n, o in zip((ka, kb), res.outputs) if not np.array_equal(o, want[n])]
            with lock:
                figures["runs"] += 1
                figures["wrong"].extend((i, r, n) for n in bad)
                figures["waits"].append(wait)
    finally:
        pending = held(at).get("job") if "pfl_held" in at.session_state else None
        if pending is not None:
            pending.job.cancel()
            pending.job.exception(timeout=60)


def _wave(sessions: int, runs: int, want: dict, shape: tuple, timeout: float, figures: dict) -> None:
    """``sessions`` sessions start together and run; returns once they have all ended."""
    errors, lock = [], threading.Lock()

    def session(i):
        try:
            _session(i, runs, want, shape, timeout, figures, lock)
        except BaseException:  # noqa: BLE001 - the text only: a kept traceback would keep the AppTest
            errors.append(f"session {i}: {traceback.format_exc()}")

    threads = [threading.Thread(target=session, args=(i,), name=f"session-{i}") for i in range(sessions)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout * (2 * runs + 1)
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise AssertionError(f"a session waited forever (over {timeout * (2 * runs + 1):.0f} s)")
    if errors:
        raise AssertionError("\n".join(errors))


def scenario(sessions: int = 8, runs: int = 2, waves: int = 2, timeout: float = 120.0) -> dict:
    """A warm-up wave, then ``waves`` waves of ``sessions`` sessions each running ``runs`` pairs
    on the "4 MP" preset of the default sample. Returns the figures; raises on a wrong result,
    an error in a session, or a session that does not end."""
    from pages._ui import images, state

    t_setup = time.perf_counter()
    baseline_children = child_pids()
    segments_before = set(segments_of(os.getpid()))
    figures = {"sessions": sessions, "runs_per_session": runs, "waves": waves, "runs": 0, "wrong": [],
               "waits": [], "memory_waves": [], "shared_waves": [], "segments_waves": []}
    monitor = ChildMonitor(baseline_children)
    with concurrent_apptests() as runtime:
        eng = state.get_engine()
        try:
            # every worker the cap allows, started now: the baseline is a warm server
            eng.filter_pair(np.zeros((8, 8, 1), np.uint8), "identity", "identity",
                            processes=(state.PROCESS_MAX, state.PROCESS_MAX))
            original = engine.load_image(images.SAMPLES_DIR / images.DEFAULT_SAMPLE)
            img = images.resample(original, images.preset_shape(*original.shape[:2], images.PRESETS["4 MP"]))
            # plain copies: a result of filter_image lives in the engine's shared memory, and these
            # references must not count among the sessions' shared arrays below
            want = {name: np.array(eng.filter_image(img, name, processes=1)) for c in CHOICES for name in c[:2]}
            figures["shape"] = img.shape
            figures["setup"] = time.perf_counter() - t_setup  # workers started, references computed
            monitor.start()

            def end_of_wave():
                # what a server does when a session ends (AppSession.shutdown)
                runtime.media_file_mgr.clear_session_refs(SESSION_ID)
                runtime.media_file_mgr.remove_orphaned_files()
                # the engine's scratch pool: kept mapped between jobs by design (POOL_SEGMENTS, POOL_BYTES);
                # results the sessions dropped (the engine's own output segments) join it when collected
                gc.collect()
                eng._take_returned()  # noqa: SLF001
                return dict(_memory(), pool_bytes=eng._scratch.nbytes(), pool_segments=len(eng._scratch))  # noqa: SLF001

            # warm-up: imports, the pages' caches, the script cache, malloc's arenas
            _wave(sessions, 1, want, img.shape, timeout, figures)
            figures["memory_baseline"] = end_of_wave()
            figures["warm_up"] = time.perf_counter() - t_setup - figures["setup"]
            figures["runs"], figures["waits"] = 0, []
            t0 = time.perf_counter()
            for _ in range(waves):
                _wave(sessions, runs, want, img.shape, timeout, figures)
                figures["memory_waves"].append(end_of_wave())
                # every session's image and outputs gone: only the engine's pool is left
                figures["shared_waves"].append(len(eng._shared))  # noqa: SLF001
                figures["segments_waves"].append(len(set(segments_of(os.getpid())) - segments_before))
            figures["wall"] = time.perf_counter() - t0
        finally:
            monitor.stop()
            state.close_engine()
    figures["worker_cap"] = state.WORKER_CAP
    figures["peak_workers"], figures["samples"] = monitor.peak, monitor.samples
    deadline = time.monotonic() + 5  # closed workers being reaped
    while engine_children(baseline_children) and time.monotonic() < deadline:
        time.sleep(0.05)
    figures["children_left"] = len(engine_children(baseline_children))
    figures["segments_left"] = len(set(segments_of(os.getpid())) - segments_before - _shm.live_segments())
    waits = figures.pop("waits")
    figures["wait_max"], figures["wait_mean"] = max(waits), sum(waits) / len(waits)
    return figures
