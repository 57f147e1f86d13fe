"""What encoder effort buys: rate-distortion and encode time of real .vae files at each --effort level, and
each level's BD-rate against effort 1 (negative = smaller files at the same quality). Decoding is the same
for every level.

Usage: python benchmarks/effort.py IMAGE_DIR [--efforts 1,2,3,4,5] [--qualities 5,35,65,92] [--limit 8]
       [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from vaecodec.codec import Codec
from vaecodec.evaluate import bd_table, eval_vaecodec, load_images, summarize


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("directory", type=Path)
    ap.add_argument("--efforts", default="1,2,3,4,5")
    ap.add_argument("--qualities", default="5,35,65,92")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    codec = Codec(args.model)
    images = load_images(args.directory, args.limit)
    qualities = [float(q) for q in args.qualities.split(",")]
    efforts = [int(e) for e in args.efforts.split(",")]
    results = {}
    with tqdm(total=len(images) * len(qualities) * len(efforts), unit="enc") as bar:
        for e in efforts:
            rows = eval_vaecodec(codec, images, qualities, bar, effort=e)
            results[f"effort {e}"] = {"points": summarize(rows), "images": rows}
    report = {"dataset": str(args.directory), "images": len(images), "model": codec.model.name,
              "fingerprint": codec.model.fingerprint, "threads": args.threads, "efforts": {}}
    base = f"effort {efforts[0]}"
    for e in efforts:
        key = f"effort {e}"
        pts = results[key]["points"]
        bd = bd_table({key: results[key], base: results[base]}, anchor=key)[base] if key != base else None
        report["efforts"][key] = {"points": pts, f"bd_rate_vs_{base.replace(' ', '')}": bd}
        curve = "  ".join(f"q{p['quality']:g} {p['bpp']:.3f}/{p['psnr']:.2f}" for p in pts)
        enc = sum(p["enc_s"] for p in pts) / len(pts)
        bd_txt = f"BD-rate PSNR {bd['psnr']:+.1f}% MS-SSIM {bd['ms_ssim']:+.1f}%" if bd else "reference"
        print(f"{key}: enc {enc:.2f} s/image  {bd_txt}\n  {curve}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
