"""Shared fixtures: a tiny randomly initialised model for fast mechanics tests (never shipped), the shipped
model for quality tests, and small synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaecodec.codec import Codec
from vaecodec.model_io import default_model_path, export_model
from vaecodec.network import GainedHyperprior, ModelConfig

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "kodim23.png"


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    torch.manual_seed(1234)
    net = GainedHyperprior(ModelConfig(N=16, M=24, lambdas=(0.002, 0.02, 0.2)))
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    export_model(net, path, "tiny")
    return path


@pytest.fixture(scope="session")
def tiny_codec(tiny_model_path) -> Codec:
    return Codec(tiny_model_path)


@pytest.fixture(scope="session")
def shipped_codec() -> Codec:
    path = default_model_path()
    assert path.exists(), f"shipped model missing: {path}"
    return Codec()


def natural_image(w: int, h: int) -> np.ndarray:
    """A crop of the shipped sample photo (tiled if the request is larger)."""
    with Image.open(SAMPLE) as im:
        arr = np.asarray(im.convert("RGB"))
    reps = ((h + 100) // arr.shape[0] + 1, (w + 150) // arr.shape[1] + 1, 1)
    return np.ascontiguousarray(np.tile(arr, reps)[100 : 100 + h, 150 : 150 + w])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))
