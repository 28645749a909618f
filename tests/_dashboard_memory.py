"""What a dashboard server holds in shared memory after its tabs close (docs/reliability.md).

    .venv/bin/python tests/_dashboard_memory.py closed [--repo DIR] [--minutes 12.5]
    .venv/bin/python tests/_dashboard_memory.py sessions [--repo DIR] [--count 6]

Starts ``streamlit run dashboard.py`` from ``--repo`` (default: this checkout; another clone
measures another commit) as scripts/dashboard.sh does, drives Debian's chromium with Playwright,
and prints one line per sample:

* ``closed``: one tab runs a pair at the 16 MP preset, a second tab a Scaling sweep at 4096x4096
  (1-2 processes, 1 repeat); both close; then the server's segments in /dev/shm (``pfl_<pid>_*``:
  count and MiB) and its worker processes, 5 s to ``--minutes`` after.
* ``sessions``: ``--count`` tabs one after another, each a different sample at 16 MP and one
  pair, closed 5 s before the sample: every distinct segment still alive in the server's process
  tree, named in /dev/shm or unlinked but still mapped by the server or a worker (what tmpfs
  still holds).

Not a test (it takes minutes and a browser); the fast check of the same behaviour is
tests/test_browser.py::test_closing_the_last_tab_lets_go_of_the_servers_memory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--no-first-run",
        "--disable-component-update", "--disable-sync"]
SAMPLES = ["Astronaut", "Coffee", "Cat", "Rocket", "Brick", "Camera", "Coins", "Fence"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(repo: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--server.fileWatcherType", "none"],
                            cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("streamlit did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def workers(pid: int) -> int:
    n = 0
    for c in children(pid):
        try:
            cmd = Path(f"/proc/{c}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        n += b"spawn_main" in cmd and b"resource_tracker" not in cmd
    return n


def named(pid: int) -> dict[int, int]:
    """inode -> bytes of the server's segments still in /dev/shm."""
    out = {}
    for n in os.listdir("/dev/shm"):
        if n.startswith(f"pfl_{pid}_"):
            try:
                st = os.stat("/dev/shm/" + n)
            except FileNotFoundError:
                continue
            out[st.st_ino] = st.st_size
    return out


def alive(pid: int) -> dict[int, int]:
    """``named`` plus segments already unlinked but still mapped by the server or a worker."""
    out = named(pid)
    for p in [pid, *children(pid)]:
        try:
            lines = Path(f"/proc/{p}/maps").read_text().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            if f"/dev/shm/pfl_{pid}_" in line:
                parts = line.split()
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out[int(parts[4])] = max(out.get(int(parts[4]), 0), hi - lo)
    return out


def idle(page, ms: int = 300) -> None:
    page.wait_for_timeout(150)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]')",
                           timeout=600_000)
    page.wait_for_timeout(ms)


def lab_pair(ctx, url: str, sample: str | None = None) -> None:
    page = ctx.new_page()
    page.goto(url)
    page.get_by_role("button", name="Run A and B").wait_for(timeout=120_000)
    if sample:
        page.get_by_role("button", name=sample, exact=True).click()
        idle(page)
    page.get_by_role("radio", name="16 MP").click()
    page.get_by_text(" MP, ").first.wait_for(timeout=120_000)
    idle(page, 1000)
    page.get_by_role("button", name="Run A and B").click()
    page.get_by_text("(run #1)").first.wait_for(timeout=120_000)
    idle(page, 2000)


def scaling_sweep(ctx, url: str) -> None:
    page = ctx.new_page()
    page.goto(url + "/scaling")
    page.get_by_role("button", name="Run sweep").wait_for(timeout=120_000)
    sliders = page.get_by_role("slider")
    sliders.nth(0).focus()
    page.keyboard.press("End")  # 4096x4096
    idle(page)
    sliders.nth(1).focus()
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")  # 1..2 processes
    idle(page)
    sliders.nth(2).focus()
    page.keyboard.press("Home")  # 1 repeat
    idle(page)
    page.get_by_role("button", name="Run sweep").click()
    page.get_by_text("Sweep finished").first.wait_for(timeout=600_000)
    idle(page, 2000)


def closed(repo: Path, minutes: float) -> list[dict]:
    from playwright.sync_api import sync_playwright

    proc, url = start(repo)
    rows = []

    def sample(what: str) -> None:
        s = named(proc.pid)
        rows.append({"when": what, "segments": len(s), "MiB": round(sum(s.values()) / 2**20, 1),
                     "workers": workers(proc.pid)})
        print(json.dumps(rows[-1]), flush=True)

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            tabs = [browser.new_context(viewport={"width": 1280, "height": 900}) for _ in range(2)]
            lab_pair(tabs[0], url)
            scaling_sweep(tabs[1], url)
            sample("both tabs open")
            for tab in tabs:
                tab.close()
            t0 = time.monotonic()
            for at in (5, 60, 180, 330, 660, minutes * 60):
                if at > minutes * 60:
                    break
                time.sleep(max(0.0, at - (time.monotonic() - t0)))
                sample(f"{at:g} s after the tabs closed" if at < 60 else f"{at / 60:g} min after the tabs closed")
            browser.close()
    finally:
        stop(proc)
    return rows


def sessions(repo: Path, count: int) -> list[dict]:
    from playwright.sync_api import sync_playwright

    proc, url = start(repo)
    rows = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            for i in range(count):
                tab = browser.new_context(viewport={"width": 1280, "height": 900})
                lab_pair(tab, url, SAMPLES[i % len(SAMPLES)])
                tab.close()
                time.sleep(5)
                a, n = alive(proc.pid), named(proc.pid)
                rows.append({"after session": i + 1, "segments alive": len(a),
                             "MiB alive": round(sum(a.values()) / 2**20, 1),
                             "MiB in /dev/shm": round(sum(n.values()) / 2**20, 1)})
                print(json.dumps(rows[-1]), flush=True)
            browser.close()
    finally:
        stop(proc)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", choices=["closed", "sessions"])
    ap.add_argument("--repo", type=Path, default=ROOT, help="checkout to run the server from (default: this one)")
    ap.add_argument("--minutes", type=float, default=12.5, help="closed: how long to watch after the tabs close")
    ap.add_argument("--count", type=int, default=6, help="sessions: how many tabs, one after another")
    args = ap.parse_args()
    if args.scenario == "closed":
        closed(args.repo.resolve(), args.minutes)
    else:
        sessions(args.repo.resolve(), args.count)


if __name__ == "__main__":
    main()
