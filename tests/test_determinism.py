"""Decoding must give identical symbols whatever the thread count or CPU instruction set."""

import os
import subprocess
import sys

import numpy as np
from conftest import natural_image
from PIL import Image

DECODE_SCRIPT = """
import sys
import numpy as np, torch
from vaecodec.codec import Codec
torch.set_num_threads(int(sys.argv[2]))
codec = Codec()
data = open(sys.argv[1], "rb").read()
f = codec.parse(data)
s = codec.read_stream(f.payload, (f.width, f.height))
np.save(sys.argv[3], np.asarray(codec.decode(data)))
print(s.digest())
"""


def test_symbols_identical_across_threads_and_isas(shipped_codec, tmp_path):
    rgb = natural_image(200, 136)
    data = shipped_codec.encode(Image.fromarray(rgb), 85)
    vae = tmp_path / "a.vae"
    vae.write_bytes(data)
    f = shipped_codec.parse(data)
    sent = shipped_codec.analyse(rgb, f.quality)
    expected = sent.digest()
    reference = np.asarray(shipped_codec.decode(data)).astype(int)
    settings = [
        ("1", {}),
        ("2", {}),
        ("2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
        ("1", {"ATEN_CPU_CAPABILITY": "default"}),
    ]
    for i, (threads, extra) in enumerate(settings):
        out = tmp_path / f"img{i}.npy"
        env = {**os.environ, **extra}
        r = subprocess.run([sys.executable, "-c", DECODE_SCRIPT, str(vae), threads, str(out)],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == expected, f"symbols differ with threads={threads} {extra}"
        assert np.abs(np.load(out).astype(int) - reference).max() <= 1
