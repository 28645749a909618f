"""Draw the project's own sample images, in the spirit of the original course notebook's set.

    .venv/bin/python sample_images/make_samples.py      # rewrites the four files below

* ``chessboard.png``  8x8 board, 8-bit gray: crisp vertical and horizontal edges, so ``edge_x``
  and ``edge_y`` light up different lines.
* ``digits.png``      handwritten-style digits 0-9 (OpenCV's Hershey script font, each glyph
  jittered in size, slant, stroke and position), white ink on black like MNIST.
* ``fence.png``       a picket fence under a sky, RGB: many vertical slats, two horizontal rails.
* ``zone_plate_16bit.png``  concentric rings whose frequency grows with the radius, 16-bit gray:
  a blur erases the outer rings, an edge filter keeps them; shows the 16-bit path too.

Everything is seeded, so the files come out the same on every run.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent


def chessboard(square: int = 60, frame: int = 16) -> np.ndarray:
    """Gray 8x8 board with a mid-gray frame."""
    idx = np.arange(8 * square) // square
    board = np.where((idx[:, None] + idx[None, :]) % 2 == 0, 236, 28).astype(np.uint8)
    return np.pad(board, frame, constant_values=128)


def digits(rows: int = 6, cell: int = 56, seed: int = 7) -> np.ndarray:
    """A sheet of jittered script digits, ``rows`` x 10 cells, 8-bit gray."""
    rng = np.random.default_rng(seed)
    big = cell * 2  # draw at twice the size, then downsample: smoother strokes
    sheet = np.zeros((rows * cell, 10 * cell), np.uint8)
    for r in range(rows):
        for d in range(10):
            glyph = np.zeros((big, big), np.uint8)
            scale = rng.uniform(2.6, 3.4)
            thick = int(rng.integers(6, 11))
            (tw, th), _ = cv2.getTextSize(str(d), cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, scale, thick)
            org = ((big - tw) // 2 + int(rng.integers(-6, 7)), (big + th) // 2 + int(rng.integers(-6, 7)))
            cv2.putText(glyph, str(d), org, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, scale, 255, thick, cv2.LINE_AA)
            shear = rng.uniform(-0.25, 0.15)
            angle = rng.uniform(-12, 12)
            m = cv2.getRotationMatrix2D((big / 2, big / 2), angle, rng.uniform(0.85, 1.05))
            m[0, 1] += shear
            m[0, 2] -= shear * big / 2
            glyph = cv2.warpAffine(glyph, m, (big, big), flags=cv2.INTER_LINEAR)
            glyph = cv2.GaussianBlur(glyph, (3, 3), 0)
            small = cv2.resize(glyph, (cell, cell), interpolation=cv2.INTER_AREA)
            sheet[r * cell : (r + 1) * cell, d * cell : (d + 1) * cell] = small
    return sheet


def fence(width: int = 640, height: int = 427, seed: int = 3) -> np.ndarray:
    """A white picket fence on grass under a blue sky, RGB."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None, None]
    sky = (1 - y) * np.array([70, 130, 205]) + y * np.array([185, 215, 240])
    img = np.broadcast_to(sky, (height, width, 3)).copy()
    ground = int(height * 0.78)
    grass = np.array([62, 122, 48]) + rng.normal(0, 14, (height - ground, width, 1))
    img[ground:] = grass
    top, bottom = int(height * 0.28), int(height * 0.88)
    slat, gap = 30, 16
    rail_rows = [(int(height * 0.42), int(height * 0.47)), (int(height * 0.70), int(height * 0.75))]
    for r0, r1 in rail_rows:  # rails behind the slats, in shade
        img[r0:r1] = [176, 168, 156]
    for x0 in range(8, width, slat + gap):
        x1 = min(x0 + slat, width)
        img[top:bottom, x0:x1] = [242, 240, 234]
        img[top:bottom, x0 : x0 + 3] = [214, 212, 206]  # shaded left edge
        # the pointed top: a triangle above each slat
        tip = np.array([[x0, top], [x1 - 1, top], [(x0 + x1 - 1) // 2, top - 18]], np.int32)
        cv2.fillConvexPoly(img, tip, (242, 240, 234), lineType=cv2.LINE_AA)
        img[bottom - 6 : bottom, x0:x1] = img[bottom - 6 : bottom, x0:x1] * 0.75  # grass shadow
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def zone_plate(size: int = 512) -> np.ndarray:
    """``0.5 + 0.5 cos(pi r^2 / (1.5 size))``, 16-bit gray.

    The local frequency ``r / (1.5 size)`` cycles per pixel grows linearly with the radius and
    stays under Nyquist (0.5) out to the corners, so every ring is real, not aliasing."""
    c = np.arange(size) - (size - 1) / 2
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    z = 0.5 + 0.5 * np.cos(np.pi * r2 / (1.5 * size))
    return np.rint(z * 65535).astype(np.uint16)


def _save(name: str, image: np.ndarray) -> None:
    bgr = image[:, :, ::-1] if image.ndim == 3 else image
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError(f"could not encode {name}")
    (HERE / name).write_bytes(buf.tobytes())
    print(f"wrote {HERE / name} {image.shape} {image.dtype}")


def main() -> None:
    _save("chessboard.png", chessboard())
    _save("digits.png", digits())
    _save("fence.png", fence())
    _save("zone_plate_16bit.png", zone_plate())


if __name__ == "__main__":
    main()
