"""How fast a training run is still improving: the BD-rate (PSNR) of each periodic validation check in a run's
log.jsonl against the run's first check, and against the check before it.

Usage: python benchmarks/run_pace.py RUN_DIR/log.jsonl [--key val_ema|val] [--json out.json]

The run's own checks use the training-time float weights on the validation split (never Kodak), at the levels
the run validates (0, 4, 7 by default). They are noisy at the 0.1% level, so read a trend over several checks;
this is the number behind the learning-rate and crop decisions in docs/training.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vaecodec.train import validation_bd_rate


def pace(lines: list[dict], key: str = "val_ema") -> list[dict]:
    """Each check's step, points, and BD-rate against the first check and the previous one."""
    checks = [line for line in lines if key in line]
    rows = []
    for i, check in enumerate(checks):
        levels = sorted(check[key], key=int)
        row = {"step": check.get("step"), "bpp": [check[key][lv]["bpp"] for lv in levels],
               "psnr": [check[key][lv]["psnr"] for lv in levels]}
        if i:
            row["bd_vs_first"] = validation_bd_rate(checks[0][key], check[key])
            row["bd_vs_prev"] = validation_bd_rate(checks[i - 1][key], check[key])
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log", type=Path)
    ap.add_argument("--key", default="val_ema", choices=["val_ema", "val"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not args.log.is_file():
        raise SystemExit(f"{args.log}: no such file")
    lines = [json.loads(text) for text in args.log.read_text().splitlines() if text.strip()]
    rows = pace(lines, args.key)
    if not rows:
        raise SystemExit(f"{args.log}: no '{args.key}' checks yet")
    for row in rows:
        points = "  ".join(f"{b:.3f}/{p:.2f}" for b, p in zip(row["bpp"], row["psnr"], strict=True))
        bd = (f"{row['bd_vs_first']:+.2f}% vs first, {row['bd_vs_prev']:+.2f}% vs previous"
              if "bd_vs_first" in row else "reference")
        print(f"step {row['step']}: {points}  ({bd})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
