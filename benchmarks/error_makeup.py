"""What the reconstruction error is made of, level by level, on the validation split of the training folder
(never Kodak): its mean squared error, the share of it that is low-frequency (the 8x8 block means of the error),
and its mean per RGB channel (a colour or brightness offset).

Usage: python benchmarks/error_makeup.py TRAIN_DIR [--model M] [--images 16] [--levels 0,5,9] [--json out.json]

A shortfall that lives in the block means or the channel means would be a cheap fix (a decoder-side offset or a
post-filter); one that lives in fine detail needs a better transform (training, capacity). Uses the network's
hard-quantized pass and its own bit estimate (train.estimate_image, as the training's validation checks do).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.nn import functional as F

from vaecodec.data import list_images, load_images, split_images
from vaecodec.model_io import load_model
from vaecodec.train import estimate_image


def error_makeup(net, images: list[torch.Tensor], level: float) -> dict:
    """Mean over images of bpp, MSE (8-bit scale), low-frequency share of the MSE and per-channel mean error."""
    bpp = mse = low = 0.0
    bias = torch.zeros(3)
    for img in images:
        img_bpp, err = estimate_image(net, img, level)
        bpp += img_bpp
        mse += float(err.pow(2).mean())
        low += float(F.avg_pool2d(err, 8).pow(2).mean())
        bias += err.mean(dim=(0, 2, 3))
    n = len(images)
    return {"bpp": bpp / n, "mse": mse / n, "low_freq_share": low / mse, "channel_mean_error": (bias / n).tolist()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("train_dir", type=Path)
    ap.add_argument("--model", type=Path, default=Path("models/hp2.safetensors"))
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--levels", default="0,5,9")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    net = load_model(args.model).network.eval()
    _, val_paths = split_images(list_images(args.train_dir), 2.0)
    images = load_images(val_paths[: args.images], 2)
    report = {}
    for level in (float(v) for v in args.levels.split(",")):
        r = report[f"{level:g}"] = error_makeup(net, images, level)
        bias = " ".join(f"{b:+.3f}" for b in r["channel_mean_error"])
        print(f"level {level:g}: {r['bpp']:.3f} bpp, MSE {r['mse']:.2f}, low-frequency share "
              f"{100 * r['low_freq_share']:.1f}%, mean error R G B {bias}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
