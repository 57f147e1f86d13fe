"""Would the decoder gain from reconstructing latents off the quantization grid?

A Gaussian residual's mass inside the bin of a nonzero symbol k sits closer to zero than k, so the bin's
centroid is a lower-MSE reconstruction of the latent than the grid point, at no cost in bits (the decoder has
the scales). This measures the PSNR of the shipped network when the decoder moves nonzero residuals toward the
mean by a fraction `alpha` of that centroid offset, or by a flat `delta`, on the validation split of the
training folder (never Kodak). The bitstream is unchanged; only the synthesis input moves.

Usage: python benchmarks/reconstruction_offset.py TRAIN_DIR [--model M] [--images 8] [--positions 0,7]
       [--alphas 0,0.25,0.5,1] [--deltas 0.05,0.1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from vaecodec.data import list_images, load_images, split_images
from vaecodec.entropy_models import SCALE_BOUND
from vaecodec.metrics import psnr
from vaecodec.model_io import load_model
from vaecodec.network import STRIDE


def centroid_shift(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Signed shift from symbol q to the centroid of N(0, scale) over q's bin (0 for q = 0)."""
    normal = torch.distributions.Normal(0.0, 1.0)
    a, b = (q.abs() - 0.5) / scale, (q.abs() + 0.5) / scale
    pdf = lambda t: torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)  # noqa: E731
    mass = (normal.cdf(b) - normal.cdf(a)).clamp_min(1e-12)
    centroid = scale * (pdf(a) - pdf(b)) / mass
    # Far in the tail mass and moment underflow; the centroid then tends to the bin's inner edge. It never leaves
    # the inner half of the bin for a density that falls away from zero.
    inward = torch.where(mass > 1e-10, (centroid - q.abs()).clamp(-0.5, 0.0), torch.full_like(q, -0.5))
    return torch.where(q != 0, inward * torch.sign(q), torch.zeros_like(q))


def to_8bit(x: torch.Tensor) -> np.ndarray:
    return (x[0].clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("train_dir", type=Path)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--positions", default="0,7")
    ap.add_argument("--alphas", default="0,0.25,0.5,1")
    ap.add_argument("--deltas", default="0.05,0.1")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    _, val_paths = split_images(list_images(args.train_dir), 2.0)
    images = load_images(val_paths[: args.images], 2)
    net = load_model(args.model).network.eval()
    alphas = [float(a) for a in args.alphas.split(",")]
    deltas = [float(d) for d in args.deltas.split(",")]
    report = {}
    with torch.no_grad():
        for pos in [float(p) for p in args.positions.split(",")]:
            sums = {f"centroid x{a:g}": 0.0 for a in alphas} | {f"flat {d:g}": 0.0 for d in deltas}
            for img in images:
                x = img[None].float() / 255.0
                h, w = x.shape[2] // STRIDE * STRIDE, x.shape[3] // STRIDE * STRIDE
                x = x[:, :, :h, :w]
                est = net.estimate(x, pos)  # the same hard-quantized pass as training's validation
                q, means, inv_gain = est["q"], est["means"], est["inv_gain"]
                shift = centroid_shift(q, est["scales"].clamp_min(SCALE_BOUND))
                ref = to_8bit(x)
                for a in alphas:
                    sums[f"centroid x{a:g}"] += psnr(to_8bit(net.g_s((q + means + a * shift) * inv_gain)), ref)
                for d in deltas:
                    sums[f"flat {d:g}"] += psnr(to_8bit(net.g_s((q + means - d * torch.sign(q)) * inv_gain)), ref)
            report[f"{pos:g}"] = {k: v / len(images) for k, v in sums.items()}
            print(f"position {pos:g}: " + ", ".join(f"{k} {v:.3f} dB" for k, v in report[f"{pos:g}"].items()),
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps({"images": len(images), "psnr_db": report}, indent=1) + "\n")


if __name__ == "__main__":
    main()
