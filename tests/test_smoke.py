import numpy as np
import scipy.ndimage as ndi

import engine


def test_gaussian_matches_scipy(eng, rng):
    img = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    out = eng.filter_image(img, "gaussian", processes=2)
    w = engine.KERNELS["gaussian"].weights
    ref = np.stack([ndi.correlate(img[..., c].astype(float), w, mode="nearest") for c in range(3)], -1)
    assert np.abs(out.astype(float) - np.clip(np.rint(ref), 0, 255)).max() <= 1
