"""Huge images with bounded memory: seams of the tiled transforms, a 100 MP round trip, a --max-memory sweep.

Usage: python benchmarks/huge_image.py KODAK_DIR [--seam-images 4] [--huge-mp 100] [--sweep-mp 24]
       [--sweep 256,512,1024,2048] [--json docs/results/huge_image.json]

1. Seams: each photo is encoded and decoded once as a whole (one tile) and once with the smallest tile
   (4 latents = 64 px, so a 768x512 photo has 96 tile borders); the symbol streams must be identical and the
   pixel difference is reported (float convolutions over different extents round differently, nothing more).
2. Huge: a photo mosaic (Kodak images upscaled 2x with Lanczos, so it has camera-like detail at every scale)
   of the requested size goes through the real CLI (`vaecodec encode/decode --max-pixels ...`) in a child
   process; wall time, peak RSS (of that child) and PSNR are reported.
3. Sweep: the same for a smaller mosaic at several `--max-memory` budgets.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """In row chunks: float64 copies of two 100 MP images would take ~5 GB."""
    sq = sum(float(np.sum((a[r : r + 256].astype(np.float64) - b[r : r + 256]) ** 2)) for r in range(0, len(a), 256))
    return 10 * math.log10(255.0**2 / max(sq / a.size, 1e-12))


def seams(photos: list[Path], quality: float) -> list[dict]:
    from vaecodec.codec import Codec
    from vaecodec.imageio import Planes

    whole, tiled = Codec(tile=1 << 16), Codec(tile=4)
    rows = []
    for p in photos:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        a, b = whole.encode_planes(Planes(rgb, "RGB"), quality), tiled.encode_planes(Planes(rgb, "RGB"), quality)
        da = np.asarray(whole.decode(a).convert("RGB")).astype(np.int16)
        db = np.asarray(tiled.decode(b).convert("RGB")).astype(np.int16)
        diff = np.abs(da - db)
        rows.append({"image": p.name, "identical_streams": a == b, "max_abs_diff": int(diff.max()),
                     "pixels_differing": int((diff.max(axis=2) > 0).sum()),
                     "pixels": int(diff.shape[0] * diff.shape[1]),
                     "psnr_whole": round(psnr(rgb, da), 3), "psnr_tiled": round(psnr(rgb, db), 3)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def mosaic(photos: list[Path], megapixels: float, out: Path) -> tuple[int, int]:
    """A 3:2 photo mosaic of Kodak images upscaled 2x, written as uncompressed PPM (fast to write and read)."""
    w = int((megapixels * 1e6 * 1.5) ** 0.5) // 16 * 16
    h = int(megapixels * 1e6 / w) // 16 * 16
    canvas = np.empty((h, w, 3), dtype=np.uint8)
    tiles = []
    for p in photos:
        im = Image.open(p).convert("RGB")
        if im.height > im.width:  # portrait photos are turned, not stretched
            im = im.transpose(Image.Transpose.ROTATE_90)
        tiles.append(np.asarray(im.resize((im.width * 2, im.height * 2), Image.LANCZOS))[:1024, :1536])
    k = 0
    for r in range(0, h, 1024):
        for c in range(0, w, 1536):
            t = tiles[k % len(tiles)]
            k += 1
            canvas[r : r + 1024, c : c + 1536] = t[: min(1024, h - r), : min(1536, w - c)]
    Image.fromarray(canvas).save(out)
    return w, h


def round_trip(src: Path, tmp: Path, megapixels: float, max_memory: int | None, quality: float) -> dict:
    """Encode and decode through the CLI. RUSAGE_CHILDREN keeps the largest child so far, so each call runs
    in its own fresh Python process to isolate its peak."""
    child = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
subprocess.run(sys.argv[2:], check=True)
print(json.dumps([time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))
"""
    limit = ["--max-pixels", str(int(megapixels * 1.2e6))]
    mem = ["--max-memory", str(max_memory)] if max_memory else []
    vae, png = tmp / "big.vae", tmp / "big.ppm"
    result = {"megapixels": round(megapixels, 1), "max_memory_mb": max_memory}
    for mode, cmd in (("encode", ["encode", str(src), "-o", str(vae), "-q", str(quality), "--force", "--quiet"]),
                      ("decode", ["decode", str(vae), "-o", str(png), "--force", "--quiet"])):
        r = subprocess.run([sys.executable, "-c", child, "x", sys.executable, "-m", "vaecodec", *cmd, *limit, *mem],
                           capture_output=True, text=True, check=True)
        dt, peak = json.loads(r.stdout.strip().splitlines()[-1])
        result[f"{mode}_s"], result[f"{mode}_peak_rss_mb"] = round(dt, 1), round(peak)
    result["bpp"] = round(vae.stat().st_size * 8 / (megapixels * 1e6), 4)
    a, b = np.asarray(Image.open(src)), np.asarray(Image.open(png))
    result["psnr"] = round(psnr(a, b), 3)
    print(json.dumps(result), flush=True)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kodak", type=Path)
    ap.add_argument("--quality", type=float, default=75)
    ap.add_argument("--seam-images", type=int, default=4)
    ap.add_argument("--huge-mp", type=float, default=100)
    ap.add_argument("--sweep-mp", type=float, default=24)
    ap.add_argument("--sweep", default="256,512,1024,2048", help="--max-memory budgets in MB ('' to skip)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    photos = sorted(args.kodak.glob("*.png"))
    report = {"quality": args.quality}
    if args.seam_images:
        report["seams"] = seams(photos[: args.seam_images], args.quality)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.huge_mp:
            src = tmp / "huge.ppm"
            w, h = mosaic(photos, args.huge_mp, src)
            report["huge"] = {"width": w, "height": h, **round_trip(src, tmp, w * h / 1e6, None, args.quality)}
            src.unlink()
        if args.sweep:
            src = tmp / "sweep.ppm"
            w, h = mosaic(photos, args.sweep_mp, src)
            report["sweep"] = [round_trip(src, tmp, w * h / 1e6, int(m), args.quality)
                               for m in args.sweep.split(",")]
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
