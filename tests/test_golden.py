"""A committed .vae file must keep decoding to the same symbols: guards the bitstream against changes in our
code or in constriction's model quantization. After shipping a new model, run tests/make_golden.py."""

import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"


def test_golden_file_decodes_to_the_recorded_symbols(shipped_codec):
    expected = json.loads((DATA / "golden_hp1.json").read_text())
    assert expected["model_fingerprint"] == shipped_codec.model.fingerprint, \
        "the shipped model changed: regenerate the fixture with `python tests/make_golden.py`"
    data = (DATA / "golden_hp1.vae").read_bytes()
    f = shipped_codec.parse(data)
    s = shipped_codec.read_stream(f.payload, (f.width, f.height))
    assert s.digest() == expected["symbols_sha256"]
    out = np.asarray(shipped_codec.decode(data))
    assert out.shape == (f.height, f.width, 3)
