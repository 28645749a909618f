"""Dashboard: time from clicking Run to both results on screen, at 1 and 16 megapixels, warm engine;
and how far apart A's and B's first bands start, in the timeline the page received.

    .venv/bin/python benchmarks/bench_dashboard.py                # prints the markdown tables
    .venv/bin/python benchmarks/bench_dashboard.py --write        # and updates docs/benchmarks.md
    .venv/bin/python benchmarks/bench_dashboard.py --parts gaps   # the start gaps only

Starts ``streamlit run dashboard.py`` on a free loopback port and drives Debian's chromium
(``/usr/bin/chromium``) with Playwright, as a person would: the Astronaut sample at each size
preset asked for ("1 MP": 1024 x 1024 RGB, "16 MP": 4096 x 4096 RGB), filter A ``sobel`` and B
``gaussian``, for each process pair.
Two untimed runs warm the engine and the page; then each timed run changes the border mode first
(untimed), so that both results are new pictures the browser has not cached, and measures in
the page, with ``performance.now()``, from the Run button's click to the moment both result
images of that run are loaded and decoded. The engine's own wall time for the pair is read from
the page's "Pair: wall" metric, to show what the rest (rerun, encoding, transfer) costs.

The start gap (issue 13, item 4: "both filters' first bands start within 1 ms of each other on
a warm server") is read as ``tests/test_browser.py`` reads it, from the page's "Timeline as CSV"
download: the Astronaut at 16 MP, A ``gaussian_11x11`` (slow) and B ``sobel``. Each round is a
fresh server (its warm-up job has started the workers): choose the size and the kernels, then
run several times. Run 1 is the first run after choosing the image (every segment is new to
the workers); the later runs are the warm ones.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _harness import cpu_line  # benchmarks/, the script's folder, is on sys.path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
HEADING = "## Dashboard: click to results"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--no-first-run",
                 "--disable-component-update", "--disable-sync"]
#: Targets of issue 13, click to results, warm: per size preset.
TARGETS_MS = {"1 MP": 500, "16 MP": 1000}
SIDES = {"1 MP": 1024, "4 MP": 2048, "16 MP": 4096}
#: The start gap's scenario: tests/test_browser.py's (A slow, so that a B held back behind A shows).
GAP_SIZE = "16 MP"
GAP_KERNELS = ("gaussian_11x11", "sobel")
#: Target of issue 13, item 4: A's and B's first bands start this close together, warm.
GAP_TARGET_MS = 1.0

CLICK_AND_WAIT = """
async (run) => {
  const button = [...document.querySelectorAll('button')].find(b => b.innerText.includes('Run A and B'));
  const shown = () => [...document.querySelectorAll('[data-testid="stImage"]')]
      .filter(e => (e.innerText || '').includes(`(run #${run})`))
      .map(e => e.querySelector('img'));
  const t0 = performance.now();
  button.click();
  return await new Promise((resolve) => {
    const check = () => {
      const imgs = shown();
      if (imgs.length === 2 && imgs.every(i => i && i.complete && i.naturalWidth > 0)) {
        Promise.all(imgs.map(i => i.decode().catch(() => null)))
          .then(() => requestAnimationFrame(() => resolve(performance.now() - t0)));
      } else {
        requestAnimationFrame(check);
      }
    };
    requestAnimationFrame(check);
  });
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("streamlit")
    cmd = [str(exe), "run", "dashboard.py", "--server.port", str(port), "--server.address", "127.0.0.1",
           "--server.headless", "true", "--server.fileWatcherType", "none"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {proc.returncode}")
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("streamlit did not start within 60 s")


@contextlib.contextmanager
def running_server():
    """``streamlit run dashboard.py`` on a free loopback port; yields its URL, stopped after."""
    port = free_port()
    server = start_server(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def idle(page, settle_ms: int = 300) -> None:
    """Wait until the script run that the last widget change started has finished."""
    page.wait_for_timeout(150)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]')", timeout=60_000
    )
    page.wait_for_timeout(settle_ms)


def set_slider(page, index: int, value: int) -> None:
    slider = page.get_by_role("slider").nth(index)
    slider.focus()
    page.keyboard.press("Home")
    for _ in range(value - 1):
        page.keyboard.press("ArrowRight")
    idle(page)


def pick(page, label: str, option: str, nth: int = 0) -> None:
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label).nth(nth)
    box.click()
    page.keyboard.type(option)
    page.keyboard.press("Enter")
    idle(page)


def pair_wall_ms(page) -> float:
    text = page.locator('[data-testid="stMetric"]').filter(has_text="Pair: wall") \
        .locator('[data-testid="stMetricValue"]').inner_text()
    return float(re.search(r"[\d.]+", text).group())


def measure(url: str, sizes: list[str], pairs: list[tuple[int, int]], repeats: int, warmup: int) -> list[dict]:
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.get_by_role("button", name="Run A and B").wait_for(timeout=60_000)
        run = 0
        border = "replicate"
        for size in sizes:
            side = SIDES[size]
            page.get_by_role("radio", name=size).click()
            page.get_by_text(f"{side} x {side} x 3").first.wait_for(timeout=60_000)
            idle(page)
            for pa, pb in pairs:
                set_slider(page, 0, pa)
                set_slider(page, 1, pb)
                clicks, walls = [], []
                for i in range(warmup + repeats):
                    border = "reflect" if border == "replicate" else "replicate"
                    pick(page, "Border", border)  # new pixels at the edges: new pictures, nothing cached
                    run += 1
                    ms = page.evaluate(CLICK_AND_WAIT, run)
                    idle(page, settle_ms=200)
                    if i >= warmup:
                        clicks.append(ms)
                        walls.append(pair_wall_ms(page))
                rows.append({"size": size, "side": side, "processes": (pa, pb), "clicks": clicks, "walls": walls})
        browser.close()
    return rows


def timeline_starts(page) -> dict[str, float]:
    """Each filter's first band start (ms after the job started), from the page's "Timeline as
    CSV" download: the timeline the page received."""
    with page.expect_download(timeout=30_000) as dl:
        page.get_by_role("button", name="Timeline as CSV").click()
    starts: dict[str, float] = {}
    with open(dl.value.path(), newline="") as f:
        for row in csv.DictReader(f):
            starts[row["filter"]] = min(starts.get(row["filter"], float("inf")), float(row["start_ms"]))
    return starts


def measure_gaps(pairs: list[tuple[int, int]], rounds: int, runs: int) -> list[dict]:
    """Per process pair: |B's first start - A's| of run 1 on each of ``rounds`` fresh servers,
    and of the ``runs - 1`` warm runs after it."""
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        for pa, pb in pairs:
            first, warm = [], []
            for _ in range(rounds):
                with running_server() as url:
                    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
                    page.goto(url)
                    page.get_by_role("button", name="Run A and B").wait_for(timeout=60_000)
                    side = SIDES[GAP_SIZE]
                    page.get_by_role("radio", name=GAP_SIZE).click()
                    page.get_by_text(f"{side} x {side} x 3").first.wait_for(timeout=60_000)
                    idle(page)
                    for i, k in enumerate(GAP_KERNELS):
                        pick(page, "Kernel", k, nth=i)
                    set_slider(page, 0, pa)
                    set_slider(page, 1, pb)
                    for run in range(1, runs + 1):
                        page.evaluate(CLICK_AND_WAIT, run)
                        idle(page, settle_ms=200)
                        starts = timeline_starts(page)
                        (first if run == 1 else warm).append(abs(starts["B"] - starts["A"]))
                    page.close()
            rows.append({"processes": (pa, pb), "first": first, "warm": warm})
        browser.close()
    return rows


def gap_table(rows: list[dict]) -> str:
    lines = [
        "| image | A + B | processes A + B | fresh servers | run 1 after choosing the image, each server | "
        "run 1, median | warm runs | warm, median | warm, max | target |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    side = SIDES[GAP_SIZE]
    for r in rows:
        f, w = r["first"], r["warm"]
        lines.append(
            f"| astronaut.png at {GAP_SIZE} ({side}x{side} RGB) | {' + '.join(GAP_KERNELS)} "
            f"| {r['processes'][0]} + {r['processes'][1]} | {len(f)} | {', '.join(f'{g:.2f}' for g in f)} ms "
            f"| **{statistics.median(f):.2f} ms** | {len(w)} | **{statistics.median(w):.2f} ms** | {max(w):.2f} ms "
            f"| <= {GAP_TARGET_MS:g} ms |"
        )
    return "\n".join(lines)


def gap_verdict(rows: list[dict]) -> str:
    """Met when the median gap is within the target, for run 1 and for the warm runs."""
    if not rows:
        return ""
    f = max(statistics.median(r["first"]) for r in rows)
    w = max(statistics.median(r["warm"]) for r in rows)
    met = f <= GAP_TARGET_MS and w <= GAP_TARGET_MS
    return (f"A and B start within {GAP_TARGET_MS:g} ms: **{'met' if met else 'NOT met'}** (median gap: run 1 "
            f"{f:.2f} ms, warm {w:.2f} ms)")


def table(rows: list[dict]) -> str:
    lines = [
        "| image | filters | processes A + B | runs | click to results, median | min | max |"
        " engine pair wall, median | target |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = r["clicks"]
        target = TARGETS_MS.get(r["size"])
        lines.append(
            f"| astronaut.png at {r['size']} ({r['side']}x{r['side']} RGB) | sobel + gaussian "
            f"| {r['processes'][0]} + {r['processes'][1]} "
            f"| {len(c)} | **{statistics.median(c):.0f} ms** | {min(c):.0f} ms | {max(c):.0f} ms "
            f"| {statistics.median(r['walls']):.1f} ms | {f'<= {target} ms' if target else ''} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> str:
    """One clause per size with a target: met or not, by the slowest median."""
    out = []
    for size, target in TARGETS_MS.items():
        medians = [statistics.median(r["clicks"]) for r in rows if r["size"] == size]
        if medians:
            worst = max(medians)
            out.append(f"{size} <= {target} ms: **{'met' if worst <= target else 'NOT met'}** (slowest median "
                       f"{worst:.0f} ms)")
    return "; ".join(out)


def section(rows: list[dict], gaps: list[dict], command: str, load: tuple[str, str], note: str = "") -> str:
    chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    cpus = len(os.sched_getaffinity(0))
    targets = "; ".join(t for t in (verdicts(rows), gap_verdict(gaps)) if t)
    gap_part = f"""
How far apart A's and B's first bands started, in the timeline the page received (its
**Timeline as CSV** download, as `tests/test_browser.py` reads it), in ms: run 1 is the first
run after choosing the image on a fresh server (every segment is new to the workers), the warm
runs follow it on the same server.

{gap_table(gaps)}
""" if gaps else ""
    return f"""{HEADING}

Time from clicking **Run A and B** to both results on screen (loaded and decoded in the browser),
with a warm engine. Targets (issue 13): {targets}.

```
{command}
```

{table(rows) if rows else ""}
{gap_part}
Measured on {time.strftime('%Y-%m-%d')}, {cpus} CPUs (shared machine: 1-minute load
average {load[0]} at the start, {load[1]} at the end), {platform.python_implementation()} {platform.python_version()},
{chromium or 'chromium'} (headless), Streamlit server on the same machine. CPU: {cpu_line()}. Each timed run first
switches the border mode (untimed) so that both results are new pictures; the clock runs in the
page from the click to both `<img>` elements of that run being decoded. The rest of the time
(after the engine's wall) is the script rerun, the display-sized JPEG previews, the transfer and
the browser's drawing; the charts and the serial reference come after the results.
{note}"""


def write_section(text: str) -> None:
    """Replace this script's section of docs/benchmarks.md (or append it); other sections stay."""
    DOC.parent.mkdir(exist_ok=True)
    old = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    start = old.find(HEADING)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        nxt = re.search(r"^## ", old[start + len(HEADING):], flags=re.M)
        end = start + len(HEADING) + nxt.start() if nxt else len(old)
        new = old[:start] + text + ("\n" + old[end:] if nxt else "")
    DOC.write_text(new.rstrip("\n") + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per process pair (default 7)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    ap.add_argument("--processes", nargs="+", default=["1,1", "2,2"], help="process pairs A,B (default 1,1 2,2)")
    ap.add_argument("--sizes", nargs="+", default=["1 MP", "16 MP"], choices=list(SIDES),
                    help="size presets of the lab (default: '1 MP' '16 MP')")
    ap.add_argument("--parts", nargs="+", default=["clicks", "gaps"], choices=["clicks", "gaps"],
                    help="click to results, the A/B start gap, or both (default)")
    ap.add_argument("--gap-rounds", type=int, default=3, help="fresh servers per process pair for the gap (default 3)")
    ap.add_argument("--gap-runs", type=int, default=6, help="runs on each of them, run 1 included (default 6)")
    ap.add_argument("--write", action="store_true", help=f"replace the '{HEADING}' section of {DOC.relative_to(ROOT)}")
    ap.add_argument("--note", default="", help="a paragraph to end the written section with (e.g. earlier figures)")
    args = ap.parse_args()
    pairs = [tuple(int(x) for x in s.split(",")) for s in args.processes]
    load_start = f"{os.getloadavg()[0]:.1f}"
    rows, gaps = [], []
    if "clicks" in args.parts:
        with running_server() as url:
            rows = measure(url, args.sizes, pairs, args.repeats, args.warmup)
        print(table(rows))
    if "gaps" in args.parts:
        gaps = measure_gaps(pairs, args.gap_rounds, args.gap_runs)
        print(gap_table(gaps))
    load = (load_start, f"{os.getloadavg()[0]:.1f}")
    targets = "; ".join(t for t in (verdicts(rows), gap_verdict(gaps)) if t)
    print(f"load average {load[0]} at the start, {load[1]} at the end; {targets}")
    if args.write:
        argv, shown = sys.argv[1:], []
        while argv:
            a = argv.pop(0)
            if a == "--note":
                argv.pop(0)
            elif a != "--write" and not a.startswith("--note="):
                shown.append(repr(a) if " " in a else a)
        command = ".venv/bin/python benchmarks/bench_dashboard.py " + " ".join(shown)
        write_section(section(rows, gaps, command.strip(), load, ("\n" + args.note.strip() + "\n") if args.note else ""))
        print(f"wrote the '{HEADING}' section of {DOC}")


if __name__ == "__main__":
    main()
