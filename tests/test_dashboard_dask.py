"""The Scaling page's Dask backend under AppTest: the same sweep on a LocalCluster, beside the pool.

The page creates the cached LocalCluster lazily, inside the test (after the leak check's snapshot),
and rescales it per sweep point, so its worker processes come and go during the test. The
``dask_cluster`` fixture closes it at the end of each test, before the leak check, which then
finds no Dask worker left. The app's engine is warmed once per module, as in test_dashboard.py.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dask.array")
pytest.importorskip("distributed")

from streamlit.testing.v1 import AppTest  # noqa: E402

import engine  # noqa: E402
from pages._ui import cluster, state, sweep  # noqa: E402

pytestmark = [pytest.mark.dask, pytest.mark.usefixtures("app_engine")]

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard.py")
TIMEOUT = 120


def held(at):
    """The session's holdings (pages/_ui/holdings.py): its image, result, job and sweep."""
    return at.session_state["pfl_held"]


@pytest.fixture
def dask_cluster():
    """Closes the page's cached LocalCluster (and with it every Dask worker) after the test."""
    yield
    cluster.close_cluster()


@pytest.fixture
def at():
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    yield app
    sw = held(app).get("sweep") if "pfl_held" in app.session_state else None
    if sw is not None and sw.status == "running":
        sw.stop("cancelled", "test over")
    del app, sw
    gc.collect()


def _no_errors(app: AppTest) -> None:
    assert not app.exception, [e.value for e in app.exception]
    assert not app.error, [e.value for e in app.error]


def test_scaling_sweep_runs_on_dask_beside_the_process_pool(at, dask_cluster, app_engine):
    at.switch_page("pages/scaling.py").run()
    _no_errors(at)
    assert at.segmented_control(key="sc_backends").value == [sweep.POOL]
    at.select_slider(key="sc_side").set_value(128)
    at.multiselect(key="sc_impls").set_value(["opencv"])
    at.slider(key="sc_nmax").set_value(2)
    at.slider(key="sc_repeats").set_value(1)
    at.segmented_control(key="sc_backends").set_value([sweep.DASK, sweep.POOL])
    at.run()
    at.button(key="sc_run").click().run()
    _no_errors(at)

    sw = held(at)["sweep"]
    assert sw.status == "done", sw.message
    runs = sw.frame()
    assert list(runs.columns[:2]) == ["backend", "implementation"]
    assert sorted(zip(runs["backend"], runs["processes"])) == [
        ("dask", 1), ("dask", 2), ("process pool", 1), ("process pool", 2)]
    assert (runs["seconds"] > 0).all()
    dask_rows = runs[runs["backend"] == sweep.DASK]
    assert dask_rows[["compute_s", "copy_in_s", "copy_out_s", "bands"]].isna().all().all()  # wall clock only
    assert "dask,opencv,1,1," in runs.to_csv(index=False)  # what "Runs as CSV" downloads

    # the table behind "The numbers": one row per backend and process count
    table = at.dataframe[0].value
    assert sorted(zip(table["backend"], table["processes"])) == [
        ("dask", 1), ("dask", 2), ("process pool", 1), ("process pool", 2)]
    # each sentence reads both backends
    captions = [c.value for c in at.caption]
    for start in ("**opencv · process pool**", "Efficiency is speedup"):
        text = next(c for c in captions if c.startswith(start))
        assert "**opencv · process pool**" in text and "**opencv · dask**" in text, text
    assert any("Dask took" in c and "the process pool's time for opencv at 2" in c for c in captions), captions
    assert any("reached" in c and "2 workers" in c and "Each backend" in c for c in captions), captions
    assert len(at.get("vega_lite_chart")) == 3
    assert [b.label for b in at.get("download_button")] == ["Runs as CSV", "Scaling charts as PNG"]
    fig = sweep.figure(sw)  # the report figure has both backends too
    assert [t.get_text().split(",")[0] for t in fig.legends[0].get_texts()][:2] == [
        "opencv · process pool", "opencv · dask"]

    # the sweep only times, but what it timed is the engine's output, on both backends
    expected = app_engine.filter_image(sw.image, sw.kernel, processes=1)
    for backend in (sweep.DASK, sweep.POOL):
        out = sw.outputs[(backend, "opencv")]
        assert out.dtype == expected.dtype and np.array_equal(out, expected), backend


def test_dask_jobs_queue_on_one_cluster_and_cancel_before_they_run(dask_cluster, app_engine):
    """Across sessions the cluster runs one job at a time; a queued job cancels at once, a job
    waiting for its workers stops there, and the cluster keeps working."""
    img = np.random.default_rng(4).integers(0, 256, (256, 256, 1), dtype=np.uint8)
    dc = cluster.get_cluster()
    first = dc.submit(img, np.ones((9, 9)) / 81, 1, implementation="python")  # about a second
    queued = dc.submit(img, "sobel", 1)
    time.sleep(0.1)
    assert queued.state() == "waiting"
    queued.cancel()
    with pytest.raises(engine.JobCancelled):
        queued.result()
    run = first.result()
    assert run.workers == 1 and run.seconds > 0
    assert np.array_equal(run.output, app_engine.filter_image(img, np.ones((9, 9)) / 81, processes=1,
                                                               implementation="python"))

    scaling = dc.submit(img, "sobel", 2)
    deadline = time.monotonic() + 10
    while scaling.state() != "scaling" and time.monotonic() < deadline:  # a worker process takes >0.1 s to start
        time.sleep(0.002)
    scaling.cancel()
    with pytest.raises(engine.JobCancelled):
        scaling.result()
    after = dc.submit(img, "sobel", 2).result()
    assert after.workers == 2 == dc.workers()
    assert np.array_equal(after.output, app_engine.filter_image(img, "sobel", processes=2))


def test_a_cluster_whose_client_closed_is_rebuilt(dask_cluster, app_engine):
    """``validate`` looked at the cluster alone: with its Client closed (the scheduler's
    connection lost) every later Dask run of every session failed until the server restarted."""
    img = np.random.default_rng(5).integers(0, 256, (64, 64, 1), dtype=np.uint8)
    dc = cluster.get_cluster()
    dc.client.close()
    fresh = cluster.get_cluster()
    assert fresh is not dc and not dc.alive()
    run = fresh.submit(img, "sobel", 1).result()
    assert np.array_equal(run.output, app_engine.filter_image(img, "sobel", processes=1))
