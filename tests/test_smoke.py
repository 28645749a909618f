import numpy as np

import engine
from _oracle import assert_close


def test_gaussian_matches_scipy(eng, rng):
    img = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    out = eng.filter_image(img, "gaussian", processes=2)
    assert_close(out, img, engine.KERNELS["gaussian"].weights, "replicate", "clip", "gaussian")
