"""Long fuzz campaign over the container parser and decoder (outside CI).

Mutates valid .vae files made with a small random-weight model (bit flips, truncations, byte splices,
random streams under a resealed CRC, random declared sizes) and checks every input ends in an image or a
clean VaecodecError within a time bound. Any other outcome is saved to tests/fuzz_crashers/ as a regression
fixture. Usage: python benchmarks/fuzz_decoder.py --count 100000 --json fuzz.json
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import tempfile
import time
import traceback
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vaecodec.codec import Codec
from vaecodec.container import VaeFile, pack, unpack
from vaecodec.errors import VaecodecError
from vaecodec.model_io import export_model
from vaecodec.network import GainedHyperprior, ModelConfig

CRASHERS = Path(__file__).resolve().parent.parent / "tests" / "fuzz_crashers"


def reseal(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    kind = rng.randrange(7)
    if kind == 0:  # bit flips, CRC left alone
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 1:  # truncation
        return bytes(data[: rng.randrange(len(data))])
    if kind == 2:  # bit flips under a recomputed CRC
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data) - 4)] ^= 1 << rng.randrange(8)
        return reseal(bytes(data[:-4]))
    if kind == 3:  # random stream
        f = unpack(bytes(data))
        f.payload = rng.randbytes(rng.randrange(0, 600))
        return pack(f)
    if kind == 4:  # random declared size
        f = unpack(bytes(data))
        g = VaeFile(rng.randint(1, 1 << 20), rng.randint(1, 1 << 20), f.layout, f.quality, f.model_name,
                    f.model_fingerprint, f.payload, f.chunks)
        return pack(g)
    if kind == 5:  # random bytes after the magic
        return b"\x89VAE" + rng.randbytes(rng.randrange(0, 300))
    # splice: random run of bytes overwritten, then resealed
    i = rng.randrange(len(data) - 4)
    n = rng.randint(1, 16)
    data[i : i + n] = rng.randbytes(n)
    return reseal(bytes(data[:-4]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=10.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.safetensors"
        export_model(GainedHyperprior(ModelConfig(N=16, M=24, lambdas=(0.002, 0.02, 0.2))), path, "fuzz")
        codec = Codec(path)
    rng = random.Random(args.seed)
    nrng = np.random.default_rng(args.seed)
    seeds = []
    for w, h, mode in ((70, 45, "RGB"), (1, 1, "RGB"), (130, 64, "RGBA"), (33, 17, "L")):
        img = Image.fromarray(nrng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)
        seeds.append(codec.encode(img, rng.uniform(1, 100)))
    counts = {"inputs": 0, "decoded": 0, "clean_errors": 0, "crashers": 0, "slow": 0}
    t_start = time.time()
    for i in range(args.count):
        data = mutate(rng, seeds)
        t0 = time.perf_counter()
        try:
            codec.decode(data, max_pixels=1 << 20)
            counts["decoded"] += 1
        except VaecodecError:
            counts["clean_errors"] += 1
        except Exception:
            counts["crashers"] += 1
            CRASHERS.mkdir(exist_ok=True)
            (CRASHERS / f"crash-{args.seed}-{i}.vae").write_bytes(data)
            print(traceback.format_exc())
        if time.perf_counter() - t0 > args.max_seconds:
            counts["slow"] += 1
        counts["inputs"] += 1
    counts["seconds"] = round(time.time() - t_start, 1)
    print(json.dumps(counts))
    if args.json:
        args.json.write_text(json.dumps(counts, indent=1) + "\n")


if __name__ == "__main__":
    main()
