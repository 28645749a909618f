"""Coverage-guided fuzzing of ``engine.load_image`` with atheris (libFuzzer for Python).

Not part of CI (atheris is not a project requirement). The property is the one
tests/test_fuzz.py checks with Hypothesis: any bytes give a valid ``(H, W, C)`` uint8/uint16
array or ``engine.ImageError``; any other exception is a crash that atheris reports and saves
(``crash-<sha1>`` in the current folder), and an input that takes over ``-timeout`` seconds is a hang.

Run (from the repository root; stops after 3 minutes unless -max_total_time is given)::

    .venv/bin/pip install atheris
    mkdir -p fuzz/corpus
    .venv/bin/python fuzz/atheris_load_image.py fuzz/corpus -max_total_time=180 -timeout=10 -rss_limit_mb=4096

The corpus folder starts with small valid files of every supported format and mode (the seeds
of tests/test_fuzz.py) and keeps what atheris finds (it is git-ignored). Replay one input with
``.venv/bin/python fuzz/atheris_load_image.py crash-<sha1>``. Pillow's Python plugins and
``engine._image`` are instrumented for coverage; Pillow's C decoders run uninstrumented.
Last recorded run: docs/reliability.md.
"""

from __future__ import annotations

import os
import sys
import warnings

import atheris

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

with atheris.instrument_imports(include=["PIL", "engine"]):
    import engine

#: As in tests/test_fuzz.py: the header check runs before any pixel is decoded, so this bounds
#: each input's memory; the default limit is tested in tests/test_bad_input.py.
MAX_PIXELS = 1 << 22


def test_one_input(data: bytes) -> None:
    try:
        a = engine.load_image(data, max_pixels=MAX_PIXELS)
    except engine.ImageError:
        return
    if not (a.ndim == 3 and a.dtype.name in ("uint8", "uint16") and a.shape[2] in (1, 2, 3, 4)
            and a.shape[0] * a.shape[1] <= MAX_PIXELS and a.flags.c_contiguous):
        raise AssertionError(f"load_image returned an invalid array: {a.shape} {a.dtype}")


def _seed(folder: str) -> None:
    """Put the valid seed files into an empty corpus folder."""
    if not os.path.isdir(folder) or os.listdir(folder):
        return
    from test_fuzz import SEEDS  # small valid files of every format load_image supports

    for i, data in enumerate(SEEDS):
        with open(os.path.join(folder, f"seed-{i:02d}"), "wb") as f:
            f.write(data)


def main(argv: list[str]) -> None:
    warnings.simplefilter("ignore")  # Pillow's notes on corrupt EXIF: expected on fuzzed input
    for arg in argv[1:]:
        if not arg.startswith("-"):
            _seed(arg)
    if not any(a.startswith("-max_total_time") or a.startswith("-runs") for a in argv[1:]):
        argv = [*argv, "-max_total_time=180"]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
