"""Source hygiene of engine/ that no linter here checks: blank-line runs, blank first lines of
function bodies, section headers with nothing under them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

FILES = sorted((Path(__file__).resolve().parent.parent / "engine").glob("*.py"))

RULES = {
    "more than two blank lines in a row": re.compile(r"\n\n\n\n"),
    "a blank first line in a function body": re.compile(r"\n *def [^\n]*\):\n *\n"),
    "a section header with nothing under it": re.compile(r"\n# -- [^\n]*\n\n*# -- "),
}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_engine_source_has_no_layout_leftovers(path):
    text = path.read_text()
    found = [f"near line {text[: m.start()].count(chr(10)) + 2}: {rule}"
             for rule, pattern in RULES.items() for m in pattern.finditer(text)]
    assert not found, f"{path.name}: {found}"
