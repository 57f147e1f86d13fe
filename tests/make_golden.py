"""Regenerate the golden .vae fixture after the shipped model changes: python tests/make_golden.py"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
# This checkout's package and models/, not an installed copy that may carry older weights.
sys.path.insert(0, str(HERE.parent))

from vaecodec.codec import Codec  # noqa: E402
from vaecodec.model_io import DEFAULT_MODEL_NAME, default_model_path  # noqa: E402

if default_model_path().resolve() != (HERE.parent / "models" / f"{DEFAULT_MODEL_NAME}.safetensors").resolve():
    sys.exit(f"make_golden: the default model resolves to {default_model_path()}, not this checkout's models/")
rgb = np.asarray(Image.open(HERE.parent / "samples" / "kodim23.png").convert("RGB"))[200:264, 300:380].copy()
codec = Codec()
data = codec.encode(Image.fromarray(rgb), 60)
f = codec.parse(data)
s = codec.read_stream(f.payload, (f.width, f.height))
(HERE / "data" / f"golden_{DEFAULT_MODEL_NAME}.vae").write_bytes(data)
(HERE / "data" / f"golden_{DEFAULT_MODEL_NAME}.json").write_text(json.dumps({
    "model_fingerprint": codec.model.fingerprint,
    "symbols_sha256": s.digest(),
    "decoded_psnr": round(float(10 * np.log10(255.0**2 / np.mean(
        (np.asarray(codec.decode(data)).astype(np.float64) - rgb) ** 2))), 4),
}, indent=1) + "\n")
