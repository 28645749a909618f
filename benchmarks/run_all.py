"""Run the engine's benchmark suite and write its section of ``docs/benchmarks.md``.

    .venv/bin/python benchmarks/run_all.py                # every table (several minutes)
    .venv/bin/python benchmarks/run_all.py --quick --output /tmp/bench.md   # a smoke run

It runs ``benchmarks/bench_engine.py --markdown <temp file>`` (extra options are passed on) and
replaces only the text between the two markers below in the output file. Every other part of the
file, e.g. the section "## Dashboard: click to results" that the dashboard's engineer owns, is
kept byte for byte. Without markers yet, the section is inserted after the title.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = "<!-- engine-bench:start -->"
END = "<!-- engine-bench:end -->"
TITLE = "# Benchmarks"


def splice(existing: str | None, body: str) -> str:
    """``existing`` with the text between the markers replaced by ``body`` (markers added if absent).

    >>> splice(None, "x")
    '# Benchmarks\\n\\n<!-- engine-bench:start -->\\nx\\n<!-- engine-bench:end -->\\n'
    >>> doc = "# B\\n\\n<!-- engine-bench:start -->\\nold\\n<!-- engine-bench:end -->\\n\\n## Dashboard\\nkeep\\n"
    >>> splice(doc, "new").endswith("new\\n<!-- engine-bench:end -->\\n\\n## Dashboard\\nkeep\\n")
    True
    """
    block = f"{START}\n{body.strip()}\n{END}"
    if existing is None or not existing.strip():
        return f"{TITLE}\n\n{block}\n"
    i = existing.find(START)
    j = existing.find(END, i + len(START)) if i != -1 else -1
    if i != -1 and j != -1:
        return existing[:i] + block + existing[j + len(END):]
    if i != -1 or existing.find(END) != -1:
        raise ValueError(f"docs file has only one of the markers {START} / {END}: fix it by hand")
    lines = existing.splitlines(keepends=True)
    if lines and lines[0].startswith("# "):  # keep the title first, ours right after it
        head, rest = lines[0], "".join(lines[1:]).lstrip("\n")
        return f"{head.rstrip()}\n\n{block}\n\n{rest}" if rest else f"{head.rstrip()}\n\n{block}\n"
    return f"{block}\n\n{existing}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default=os.path.join(ROOT, "docs", "benchmarks.md"), help="the file to update")
    p.add_argument("--quick", action="store_true", help="256² and 512² only (a smoke run)")
    p.add_argument("--sizes", nargs="+", default=None)
    p.add_argument("--repeats", default=None)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pfl-bench-") as tmp:
        md = os.path.join(tmp, "engine-bench.md")
        cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_engine.py"), "--markdown", md]
        cmd += ["--quick"] if a.quick else []
        cmd += ["--sizes", *a.sizes] if a.sizes else []
        cmd += ["--repeats", a.repeats] if a.repeats else []
        env = dict(os.environ, PFL_BENCH_RUN_ALL="1")
        rc = subprocess.call(cmd, cwd=ROOT, env=env)
        if rc != 0:
            print(f"run_all: the benchmark failed (exit {rc}); {a.output} left unchanged", file=sys.stderr)
            return rc
        with open(md, encoding="utf-8") as f:
            body = f.read()
    # Read the docs file only now, right before writing: another engineer may have edited it meanwhile.
    existing = None
    if os.path.exists(a.output):
        with open(a.output, encoding="utf-8") as f:
            existing = f.read()
    text = splice(existing, body)
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    tmp_out = a.output + ".tmp"
    with open(tmp_out, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp_out, a.output)
    print(f"run_all: wrote the engine section of {a.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
