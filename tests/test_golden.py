"""A committed .vae file must keep decoding to the same symbols: guards the bitstream against changes in our
code or in constriction's model quantization. After shipping a new model, run tests/make_golden.py."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from vaecodec.model_io import DEFAULT_MODEL_NAME

DATA = Path(__file__).resolve().parent / "data"
SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "kodim23.png"


def test_golden_file_decodes_to_the_recorded_symbols(shipped_codec):
    expected = json.loads((DATA / f"golden_{DEFAULT_MODEL_NAME}.json").read_text())
    assert expected["model_fingerprint"] == shipped_codec.model.fingerprint, \
        "the shipped model changed: regenerate the fixture with `python tests/make_golden.py`"
    data = (DATA / f"golden_{DEFAULT_MODEL_NAME}.vae").read_bytes()
    f = shipped_codec.parse(data)
    s = shipped_codec.read_stream(f.payload, (f.width, f.height))
    assert s.digest() == expected["symbols_sha256"]
    out = np.asarray(shipped_codec.decode(data))
    assert out.shape == (f.height, f.width, 3)
    # the pixels too (quality -> inverse gain must not drift): float synthesis may move a pixel by 1 at most
    src = np.asarray(Image.open(SAMPLE).convert("RGB"))[200:264, 300:380].astype(np.float64)
    psnr = 10 * np.log10(255.0**2 / np.mean((out.astype(np.float64) - src) ** 2))
    assert abs(psnr - expected["decoded_psnr"]) < 0.05


def test_the_shipped_model_carries_its_own_name(shipped_codec):
    """.vae files record the model's name, and errors and `vaecodec info` show it: a candidate exported under
    another name (e.g. c20_ema) must be re-exported with --name before it ships."""
    card = json.loads((Path(__file__).resolve().parent.parent / "models" / f"{DEFAULT_MODEL_NAME}.json").read_text())
    assert shipped_codec.model.name == DEFAULT_MODEL_NAME == card["name"]
    assert card["fingerprint"].startswith(shipped_codec.model.fingerprint[:16])
