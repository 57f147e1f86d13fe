"""Tune the encoder effort search's step size on the training folder's validation split (never Kodak).

For each trade-off position and each multiplier of the current step size (refine.step_size), runs the latent
search for a given number of iterations on held-out images and reports how much it lowered the search's own
objective (rate + lambda * 255^2 * MSE, hard-quantized) against the analysis transform's latents, as the mean of
the per-image relative change. The best multiplier per position says how to reshape step_size.

Usage: python benchmarks/refine_step.py TRAIN_DIR [--model M.safetensors] [--images 8] [--iterations 8]
       [--positions 0,2,4,7] [--multipliers 0.5,1,2,4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vaecodec.data import list_images, load_images, split_images
from vaecodec.model_io import load_model
from vaecodec.network import STRIDE
from vaecodec.refine import lambda_at, rd_objective, refine_latents, step_size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("train_dir", type=Path)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--positions", default="0,2,4,7")
    ap.add_argument("--multipliers", default="0.5,1,2,4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = load_model(args.model).network.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    _, val_paths = split_images(list_images(args.train_dir), 2.0)
    # crop to whole multiples of the model's stride, so any held-out image works without padding
    images = [x[:, : x.shape[1] // STRIDE * STRIDE, : x.shape[2] // STRIDE * STRIDE].float().div(255)[None]
              for x in load_images(val_paths[: args.images], 2)]
    images = [x for x in images if x.numel()]
    positions = [float(p) for p in args.positions.split(",")]
    multipliers = [float(m) for m in args.multipliers.split(",")]
    report = {"model": str(args.model or "default"), "images": len(images), "iterations": args.iterations,
              "positions": {}}
    for pos in positions:
        lam = lambda_at(net, pos)
        with torch.no_grad():
            gain, inv_gain = net.gains_at(torch.tensor([pos]))
        base, row = step_size(net, pos), {}
        t0 = time.perf_counter()
        for m in multipliers:
            changes, bpps, mses = [], [], []
            for x in images:
                with torch.no_grad():
                    y0 = net.g_a(x) * gain
                    loss0, _, _ = rd_objective(net, y0, x, inv_gain, lam)
                y = refine_latents(net, x, y0, pos, args.iterations, lr=base * m)
                with torch.no_grad():
                    loss, bpp, mse = rd_objective(net, y, x, inv_gain, lam)
                changes.append(float(loss / loss0) - 1.0)
                bpps.append(float(bpp))
                mses.append(float(mse))
            row[f"{m:g}"] = {"lr": base * m, "objective_change": sum(changes) / len(changes),
                             "bpp": sum(bpps) / len(bpps), "mse": sum(mses) / len(mses)}
        best = min(row, key=lambda k: row[k]["objective_change"])
        report["positions"][f"{pos:g}"] = {"lambda": lam, "step_size": base, "best_multiplier": float(best),
                                          "multipliers": row}
        text = "  ".join(f"x{k} {v['objective_change'] * 100:+.2f}%" for k, v in row.items())
        print(f"position {pos:g} (lambda {lam:.4g}, step {base:.4g}): {text}  best x{best} "
              f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
