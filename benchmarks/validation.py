"""Model selection without Kodak: compare model files on the validation split of the training folder, and
measure each one's train-vs-validation gap on the same number of training images.

Usage: python benchmarks/validation.py TRAIN_DIR MODEL.safetensors [MODEL2 ...] [--images 64]
       [--levels 0,2,4,7 | --qualities 1,12,23,45,67,100] [--json out.json]
       python benchmarks/validation.py --summary out.json

Ends with a summary: each model's validation BD-rate (PSNR) against the first model given (the shipped one, by
convention), which is the number that decides what ships, and its train-vs-validation gap per level.

Uses the same fixed split (by file-name hash) and the same hard-quantized estimate as `vaecodec train`'s
periodic validation, but on the shipped form of the weights (fp16 transforms), so expect small offsets from the
`val` lines of a run's log.jsonl.

--levels are positions among each model's own lambdas; --qualities compare models at the same codec quality
settings instead, which is what models with different lambda sets (e.g. 8 levels from 0.0018 with quality 1
extrapolated two levels below, against 10 levels from 0.00048) need. For the 8-level hp2, qualities 23, 45,
67 and 100 are levels 0, 2, 4 and 7, and qualities 1 and 12 the extrapolated positions -2 and -1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vaecodec.data import list_images, load_images, split_images
from vaecodec.model_io import load_model
from vaecodec.network import quality_position
from vaecodec.train import validate, validation_bd_rate


def summarize(report: dict) -> list[str]:
    """One line per model: validation BD-rate against the first model, and the train - val gap per level."""
    names = list(report)
    lines = []
    for name in names:
        gap = " / ".join(f"{report[name]['train'][lv]['psnr'] - report[name]['val'][lv]['psnr']:+.2f}"
                         for lv in sorted(report[name]["val"], key=int))
        bd = validation_bd_rate(report[names[0]]["val"], report[name]["val"])
        lines.append(f"{name}: BD-rate {bd:+.2f}% vs {names[0]} (validation, PSNR); train - val gap {gap} dB")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("train_dir", type=Path, nargs="?")
    ap.add_argument("models", type=Path, nargs="*")
    ap.add_argument("--summary", type=Path, help="only summarize an earlier --json report")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--levels", default="0,2,4,7")
    ap.add_argument("--qualities", help="compare at these codec qualities (1..100) instead of --levels")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.summary:
        print("\n".join(summarize(json.loads(args.summary.read_text()))))
        return
    if args.train_dir is None or not args.models:
        ap.error("TRAIN_DIR and at least one MODEL are required")
    torch.set_num_threads(2)
    train_paths, val_paths = split_images(list_images(args.train_dir), 2.0)
    if not val_paths or not train_paths:
        raise SystemExit(f"{args.train_dir}: too few images for a validation split")
    val = load_images(val_paths[: args.images], 2)
    train = load_images(train_paths[:: max(1, len(train_paths) // args.images)][: args.images], 2)
    points = [int(x) for x in (args.qualities or args.levels).split(",")]
    unit = "quality" if args.qualities else "level"
    report = {}
    for path in args.models:
        model = load_model(path).network  # the shipped float network, fingerprint checked
        # Models are named by file name, or by path where two share a name (candidates are often all hp2.*).
        key = path.name if sum(m.name == path.name for m in args.models) == 1 else str(path)
        cfg = model.config
        positions = ([quality_position(q, len(cfg.lambdas), cfg.lowest_position) for q in points]
                     if args.qualities else points)
        report[key] = {}
        for part, images in (("val", val), ("train", train)):
            results = validate(model, images, positions).values()
            report[key][part] = {str(p): r for p, r in zip(points, results, strict=True)}
        for p in points:
            v, t = report[key]["val"][str(p)], report[key]["train"][str(p)]
            print(f"{key} {unit} {p}: val {v['bpp']:.3f} bpp {v['psnr']:.2f} dB | "
                  f"train {t['bpp']:.3f} bpp {t['psnr']:.2f} dB", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print("\n".join(summarize(report)))


if __name__ == "__main__":
    main()
