"""pyproject.toml installs what the engine imports: the runtime names of requirements.txt, and
the Dask extra everything the scale-out modules import lazily."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: import name -> distribution name, where they differ
DIST = {"cv2": "opencv-python-headless", "PIL": "pillow"}
#: modules that import only from the Dask extra (the rest is the runtime set)
SCALE_OUT = ("_dask.py", "_dask_shm.py", "_dask_worker.py", "_stores.py")


def _name(requirement: str) -> str:
    return re.split(r"[\s\[=<>!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(_name(line))
    return names


def _imports(path: Path) -> set[str]:
    """Top-level third-party modules a file imports (anywhere in it: lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "engine"}


def test_dependencies_are_the_runtime_requirements():
    assert {_name(r) for r in _project()["dependencies"]} == _requirements(ROOT / "requirements.txt")


def test_every_engine_import_is_installed_by_the_dependencies_or_the_dask_extra():
    core = {_name(r) for r in _project()["dependencies"]}
    dask = {_name(r) for r in _project()["optional-dependencies"]["dask"]}
    for path in sorted((ROOT / "engine").glob("*.py")):
        needed = {DIST.get(m, m).lower() for m in _imports(path)}
        have = core | dask if path.name in SCALE_OUT or path.name == "_batch.py" else core
        assert needed <= have, f"{path.name} imports {sorted(needed - have)}, which pyproject.toml does not install"
    # and the extra is what requirements-dev.txt pins for it
    assert dask <= _requirements(ROOT / "requirements-dev.txt")
