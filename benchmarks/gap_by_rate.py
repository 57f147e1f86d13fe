"""Where on the curve vaecodec loses: at each of its points in a `vaecodec eval` report, the quality another
codec reaches at the same bpp (the difference in dB), and the bits it needs for the same quality (in percent;
what BD-rate averages).

Usage: python benchmarks/gap_by_rate.py docs/kodak.json [--metric psnr|ms_ssim_db] [--reference NAME=FILE ...]
       [--json out.json]

BD-rate gives one number over the whole overlap; this splits it by rate, which says whether the next lever should
be aimed at the low or the high qualities (more low-λ steps, balancing, or capacity at the top). Other codecs'
quality is interpolated linearly in log(bpp) between their own measured points (and log(bpp) linearly in quality
for the rate gap), never extrapolated: outside their range the cell is empty. `--reference` adds an outside
curve in CompressAI's results format (`{"results": {"bpp": [...], "psnr" or "psnr-rgb": [...]}}`), e.g. a
published learned codec for scale; such files are the user's own, nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def _interp(pairs: list[tuple[float, float]], x: float) -> float | None:
    """Piecewise-linear y(x) through `pairs` (sorted by x here); None outside their x range."""
    pts = sorted(pairs)
    if not pts or x < pts[0][0] or x > pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (x - x0) / (x1 - x0) * (y1 - y0)
    return pts[0][1]  # a single-point curve at exactly this x


def quality_at(points: list[tuple[float, float]], bpp: float) -> float | None:
    """The curve's quality at `bpp`, linear in log(bpp) between its measured (bpp, quality) points."""
    return _interp([(math.log(r), q) for r, q in points], math.log(bpp))


def rate_at(points: list[tuple[float, float]], quality: float) -> float | None:
    """The bpp at which the curve reaches `quality`, log(bpp) linear in quality between its points."""
    log_rate = _interp([(q, math.log(r)) for r, q in points], quality)
    return None if log_rate is None else math.exp(log_rate)


def report_curves(report: dict, metric: str) -> dict[str, list[tuple[float, float]]]:
    """Each codec's (bpp, metric) points from a `vaecodec eval --json` report."""
    return {
        name: [(p["bpp"], p[metric]) for p in codec["points"] if metric in p]
        for name, codec in report["codecs"].items()
    }


def reference_curve(data: dict, metric: str) -> list[tuple[float, float]]:
    """(bpp, metric) points of a CompressAI-style results file (PSNR only: its MS-SSIM is linear, not dB)."""
    if metric != "psnr":
        raise SystemExit("--reference curves are compared on PSNR only")
    res = data["results"]
    key = "psnr-rgb" if "psnr-rgb" in res else "psnr"
    return list(zip(res["bpp"], res[key], strict=True))


def gaps(curves: dict[str, list[tuple[float, float]]], ours: str = "vaecodec") -> list[dict]:
    """One row per point of `ours`: its bpp and quality; each other codec's quality minus ours at that bpp
    (`dq`), and the percent more bits ours needs than it for the same quality (`extra_bits`)."""
    rows = []
    for bpp, q in sorted(curves[ours]):
        row = {"bpp": bpp, ours: q, "dq": {}, "extra_bits": {}}
        for name, pts in curves.items():
            if name != ours:
                other_q, other_r = quality_at(pts, bpp), rate_at(pts, q)
                row["dq"][name] = None if other_q is None else other_q - q
                row["extra_bits"][name] = None if other_r is None else 100.0 * (bpp / other_r - 1.0)
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report", type=Path)
    ap.add_argument("--metric", default="psnr", choices=["psnr", "ms_ssim_db"])
    ap.add_argument("--reference", action="append", default=[], metavar="NAME=FILE")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    curves = report_curves(json.loads(args.report.read_text()), args.metric)
    for spec in args.reference:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--reference wants NAME=FILE, got {spec!r}")
        curves[name] = reference_curve(json.loads(Path(path).read_text()), args.metric)
    rows = gaps(curves)
    others = [n for n in curves if n != "vaecodec"]
    for key, title, fmt in (
        ("dq", "other codec minus vaecodec at vaecodec's bpp, dB", "{:>+8.2f}"),
        ("extra_bits", "percent more bits vaecodec needs for the same quality", "{:>+7.1f}%"),
    ):
        print(f"{args.metric}: {title} (positive: vaecodec is behind)")
        print(f"{'bpp':>6} {'vaecodec':>8} " + " ".join(f"{n:>8}" for n in others))
        for row in rows:
            cells = " ".join(f"{'':>8}" if row[key][n] is None else fmt.format(row[key][n]) for n in others)
            print(f"{row['bpp']:>6.3f} {row['vaecodec']:>8.2f} {cells}")
    if args.json:
        args.json.write_text(json.dumps({"metric": args.metric, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
