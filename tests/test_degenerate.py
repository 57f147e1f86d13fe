"""Degenerate images encode and decode correctly, and the output size on noise stays bounded."""

import numpy as np
import pytest
from PIL import Image


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.full((40, 56, 3), 137, dtype=np.uint8),  # constant colour
        lambda: np.zeros((33, 20, 3), dtype=np.uint8),  # black
        lambda: np.full((20, 33, 3), 255, dtype=np.uint8),  # white
        lambda: np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8),  # pure noise
        lambda: np.random.default_rng(1).integers(0, 256, (300, 1, 3), dtype=np.uint8),  # one pixel wide
        lambda: np.random.default_rng(2).integers(0, 256, (1, 10000, 3), dtype=np.uint8),  # 1 x 10000
    ],
)
def test_degenerate_images_round_trip(tiny_codec, make):
    rgb = make()
    for q in (1, 100):
        data = tiny_codec.encode(Image.fromarray(rgb), q)
        out = np.asarray(tiny_codec.decode(data))
        assert out.shape == rgb.shape


def test_constant_image_costs_almost_nothing(shipped_codec):
    data = shipped_codec.encode(Image.fromarray(np.full((256, 256, 3), 90, dtype=np.uint8)), 75)
    assert 8 * len(data) / 256**2 < 0.1  # ~600 bytes incl. the 31-byte header (hp1 at 5.2k steps: 0.073)
    out = np.asarray(shipped_codec.decode(data)).astype(int)
    assert np.abs(out - 90).mean() < 3


def test_noise_at_top_quality_is_bounded(shipped_codec):
    noise = np.random.default_rng(3).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = shipped_codec.encode(Image.fromarray(noise), 100)
    assert 8 * len(data) / 128**2 < 24  # never more than raw 8-bit RGB
