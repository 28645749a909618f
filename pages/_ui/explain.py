"""The How it works page's pictures: band plans on the image, the data flow, the five filters."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

import engine

from . import images, kernels
from .fmt import dot, nbytes

WORKER_COLORS = [(28, 131, 225), (255, 135, 0), (33, 163, 102), (154, 92, 240), (232, 56, 79), (15, 181, 174),
                 (161, 98, 7), (219, 39, 119)]

NOTEBOOK_NOTES = {
    "identity": "Copies every pixel: the 5x5 kernel has a single 1 in the centre. A check on the plumbing: "
                "a seam between bands would show here.",
    "edge_x": "Half of (left neighbour − right neighbour): lights up vertical edges, where brightness changes "
              "along x. Flat areas become 0.",
    "edge_y": "The same along y (upper − lower neighbour): lights up horizontal edges.",
    "sobel": "A smoothed x-derivative: like edge_x, but over three rows weighted 1-2-1, so noise matters less "
             "and edges come out stronger.",
    "gaussian": "A weighted average of the 5x5 neighbourhood: blurs fine detail and noise, keeps smooth areas.",
}


def plan(eng: engine.Engine, height: int, width: int, kernel: engine.Kernel, processes: int,
         border: str) -> tuple[engine.Band, ...]:
    """The bands the engine cuts for one filter of a job (``Engine.plan``)."""
    return tuple(eng.plan((height, width), kernel, processes, border=border))


def worker_colors(workers: dict[str, dict[int, str]]) -> dict[str, tuple[int, int, int]]:
    """One colour per worker label, the same in every picture of the page."""
    names = sorted({w for m in workers.values() for w in m.values()})
    return {n: WORKER_COLORS[i % len(WORKER_COLORS)] for i, n in enumerate(names)}


def hex_color(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % rgb


def workers_from_timeline(timeline: pd.DataFrame, letter: str) -> dict[int, str]:
    """band index -> 'worker pid N' for one filter of a finished job."""
    t = timeline[timeline["filter"] == letter]
    return {int(b): f"pid {int(p)}" for b, p in zip(t["band"], t["pid"])}


def halo_rows(band, height: int) -> list[tuple[int, int]]:
    """The image rows ``[lo, hi)`` a band reads beyond its own: with ``wrap`` the rows above the
    first band are the image's last ones, and those below the last band its first ones.

    >>> from engine import plan_bands
    >>> [halo_rows(b, 10) for b in plan_bands(10, 5, 2, wrap=True)]
    [[(8, 10), (5, 7)], [(3, 5), (0, 2)]]
    """
    return [r for side in halo_sides(band) for r in image_rows(*side[1:], height)]


def halo_sides(band) -> tuple[tuple[str, int, int], ...]:
    """``(("above", lo, hi), ("below", lo, hi))``: the rows a band reads beyond its own, as row
    numbers that may lie outside the image (``wrap``)."""
    return ("above", band.start - band.halo_top, band.start), ("below", band.stop, band.stop + band.halo_bottom)


def image_rows(lo: int, hi: int, height: int) -> list[tuple[int, int]]:
    """Rows ``[lo, hi)`` as the image's rows: those before the first are its last ones, and those
    after the last its first ones (``wrap``; other borders never read outside the image)."""
    out = []
    for shift in (height, 0, -height):  # rows before the first, in the image, after the last
        a, b = max(lo + shift, 0), min(hi + shift, height)
        if a < b:
            out.append((a, b))
    return out


def bands_on_image(image: np.ndarray, bands, workers: dict[int, str], colors: dict[str, tuple[int, int, int]],
                   max_side: int = 520) -> np.ndarray:
    """The image (display version) with each band tinted by its worker (alternating grey tints when
    workers are not known yet), band boundaries drawn, and halo rows in red (at least 2 pixels
    tall so they stay visible when scaled down)."""
    disp = images.as_rgb(images.for_screen(image, max_side)[0]).astype(np.float32)  # tiny images enlarged
    h = image.shape[0]
    s = disp.shape[0] / h
    tint = np.zeros_like(disp)
    for b in bands:
        y0, y1 = int(round(b.start * s)), int(round(b.stop * s))
        key = workers.get(b.index)
        tint[y0:y1] = colors[key] if key in colors else ((70, 80, 90) if b.index % 2 else (150, 160, 170))
    out = disp * 0.7 + tint * 0.3
    for b in bands:
        for lo, hi in halo_rows(b, h):
            y0, y1 = int(np.floor(lo * s)), int(np.ceil(hi * s))
            if y1 - y0 < 2:
                y1 = y0 + 2
            y0, y1 = max(0, y0), min(out.shape[0], y1)
            out[y0:y1] = out[y0:y1] * 0.35 + np.array([232, 56, 79]) * 0.65
    out = np.clip(out, 0, 255).astype(np.uint8)
    for b in bands:
        y = int(round(b.start * s))
        if b.start > 0:
            cv2.line(out, (0, y), (out.shape[1] - 1, y), (255, 255, 255), 1)
        label = f"band {b.index}" + (f", {workers[b.index]}" if b.index in workers else "")
        ty = min(out.shape[0] - 4, y + 16)
        cv2.putText(out, label, (6, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, label, (6, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return out


@dataclass(frozen=True)
class FlowNumbers:
    name: str  # as uploaded (data_flow_dot escapes it)
    file_format: str
    file_bytes: int
    shape: tuple[int, int, int]
    dtype: str
    array_bytes: int  # of the image in shared memory, and of each output
    kernels: tuple[str, str]
    processes: tuple[int, int]
    bands: tuple[int, int]
    implementation: str


def data_flow_dot(n: FlowNumbers) -> str:
    """Graphviz source of the path from the upload to the page, with this image's numbers.

    Top to bottom, at most two boxes side by side (A and B): about 320 points wide, so it stays
    readable in a 390-pixel phone column instead of shrinking to a third (issue 13). The file
    name is the user's: escaped (``fmt.dot``), so a quote in it cannot end the label."""
    h, w, c = n.shape
    size = nbytes(n.array_bytes)
    big = 'style="rounded,filled", fillcolor="#dbeafe", color="#1c83e1"'

    def procs(i):
        p, b = n.processes[i], n.bands[i]
        return f"{p} process{'es' if p > 1 else ''}, {b} band{'s' if b > 1 else ''}"

    return f"""digraph flow {{
  rankdir=TB; bgcolor="transparent"; nodesep=0.2; ranksep=0.22; margin=0;
  node [shape=box, style="rounded,filled", fillcolor="#f1f4f7", color="#9aa5b1", fontname="Helvetica",
        fontsize=10, margin="0.08,0.04"];
  edge [color="#7b8794", fontname="Helvetica", fontsize=9, arrowsize=0.6];
  file [label="{dot(n.name)}\n{dot(n.file_format)}, {nbytes(n.file_bytes)}"];
  decode [label="load_image: decode, EXIF turn\n{w}x{h}x{c} {n.dtype}"];
  shm [{big}, label="input segment, {size}\n(Engine.shared_array)\ncopied in once per image"];
  job [label="Engine.submit: validate,\nplan bands, lease {sum(n.processes)} workers"];
  wa [label="A: {dot(n.kernels[0])}\n{procs(0)}\n{n.implementation}"];
  wb [label="B: {dot(n.kernels[1])}\n{procs(1)}\n{n.implementation}"];
  oa [{big}, label="output A, {size}\nrows written in place"];
  ob [{big}, label="output B, {size}\nrows written in place"];
  res [label="JobResult: outputs,\ntimeline, phases"];
  page [label="page: JPEG previews\n(512 px, 1024 before/after)\nPNG downloads (16-bit kept)"];
  file -> decode -> shm -> job;
  job -> wa; job -> wb;
  shm -> wa [style=dashed, constraint=false];
  shm -> wb [style=dashed, constraint=false, label=" rows + halo"];
  wa -> oa; wb -> ob;
  oa -> res; ob -> res; res -> page;
}}"""


def notebook_gallery(eng: engine.Engine, image: np.ndarray, border: str, output: str, side: int = 256):
    """The notebook's five filters on a small version of ``image``: (name, result, stats) each."""
    small = images.center_square(image, min(side, *image.shape[:2]))
    out = []
    for name in kernels.NOTEBOOK_FILTERS:
        r = eng.filter_image(small, name, processes=1, border=border, output=output)
        _, stats = images.difference(small, r, max_side=8)
        out.append((name, r, stats))
    return small, out
