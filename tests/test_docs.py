"""Examples in the docs run as written: engine/README.md's first example as a script (spawned
workers import the main module again, so it needs its ``if __name__ == "__main__":`` guard)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_engine_readme_first_example_runs_as_a_script(tmp_path):
    text = (ROOT / "engine" / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(example)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
