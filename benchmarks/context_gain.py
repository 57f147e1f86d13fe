"""What the context model buys: real .vae files of a checkerboard model against the same model with its context
switched off (last integer layer of the context nets zeroed, so every latent uses the hyperprior's parameters),
or with `--off groups` only its channel groups switched off (what they add over the checkerboard).

Usage: python benchmarks/context_gain.py MODEL.safetensors IMAGE_DIR [--limit 8] [--qualities 5,35,65,92]
       [--off context|groups] [--json out.json]

Everything else (transforms, hyper-synthesis, tables) is shared, so the difference is the context alone.
Prints bpp / PSNR per quality for both and the BD-rate of the context (negative: smaller files).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vaecodec.codec import Codec
from vaecodec.evaluate import load_images
from vaecodec.metrics import bd_rate, psnr

GROUP_NETS = ("group_anchor", "group_other")


def context_off_twin(path: Path, out: Path, off: str = "context") -> Path:
    """The same file with the last integer layer of the context nets (off="context": all of them; "groups":
    the channel groups' only) zeroed: every other number bit-identical."""
    from safetensors.numpy import load_file, save_file

    from vaecodec.model_io import _fingerprint, read_metadata

    meta = read_metadata(path)
    if "int_context_layers" not in meta:
        raise SystemExit(f"{path} has no context model")
    layers = json.loads(meta["int_context_layers"])
    nets = [] if off == "groups" else [("ctx_params", layers["ctx_params"])]
    nets += [(f"{kind}.{i}", net) for kind in GROUP_NETS for i, net in enumerate(layers.get(kind, []))]
    if not nets:
        raise SystemExit(f"{path} has no channel groups")
    arrays = load_file(str(path))
    for name, net in nets:
        for part in ("weight", "bias"):
            key = f"int.{name}.{len(net) - 1}.{part}"
            arrays[key] = np.zeros_like(arrays[key])
    meta["name"] = meta["name"] + ("-nogroups" if off == "groups" else "-noctx")
    meta["fingerprint"] = _fingerprint(arrays, meta)
    save_file(arrays, str(out), metadata=meta)
    return out


def measure(codec: Codec, images, qualities) -> list[dict]:
    rows = []
    for q in qualities:
        bits, psnrs = 0.0, []
        pixels = 0
        for _, rgb in images:
            data = codec.encode(Image.fromarray(rgb), q)
            out = np.asarray(codec.decode(data).convert("RGB"))
            bits += 8 * len(data)
            pixels += rgb.shape[0] * rgb.shape[1]
            psnrs.append(psnr(rgb, out))
        rows.append({"quality": q, "bpp": bits / pixels, "psnr": float(np.mean(psnrs))})
        print(f"  q{q}: {rows[-1]['bpp']:.4f} bpp {rows[-1]['psnr']:.2f} dB", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("images", type=Path)
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--qualities", default="5,35,65,92")
    ap.add_argument("--off", choices=["context", "groups"], default="context")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    qualities = [float(x) for x in args.qualities.split(",")]
    images = load_images(args.images, args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        twin = context_off_twin(args.model, Path(tmp) / "off.safetensors", args.off)
        print(f"{args.off} on:")
        on = measure(Codec(args.model), images, qualities)
        print(f"{args.off} off:")
        off = measure(Codec(twin), images, qualities)
    bd = bd_rate([r["bpp"] for r in off], [r["psnr"] for r in off], [r["bpp"] for r in on], [r["psnr"] for r in on])
    print(f"BD-rate of the {args.off} (PSNR): {bd:+.2f}%")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model.name, "images": len(images), "off": args.off,
                                         "context_on": on, "context_off": off, "bd_rate_psnr_pct": bd},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
