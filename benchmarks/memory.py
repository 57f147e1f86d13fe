"""Peak RSS of encode and decode at several image sizes, each in a fresh process.

Usage: python benchmarks/memory.py [--sizes 1,12,24] [--tile 64] [--json out.json]
The test image is the sample photo tiled up to the requested megapixels (3:2).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import resource, sys, time
import numpy as np
from PIL import Image
from vaecodec.codec import Codec
from vaecodec.imageio import Planes
mp, tile, mode = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
w = int((mp * 1e6 * 1.5) ** 0.5) // 2 * 2
h = int(mp * 1e6 / w)
src = np.asarray(Image.open(sys.argv[4]).convert("RGB"))
rgb = np.ascontiguousarray(np.tile(src, (h // src.shape[0] + 1, w // src.shape[1] + 1, 1))[:h, :w])
codec = Codec(tile=tile)
if mode == "decode":
    data = open(sys.argv[5], "rb").read()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter(); codec.decode(data, max_pixels=None); dt = time.perf_counter() - t
else:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter(); data = codec.encode_planes(Planes(rgb, "RGB"), 75); dt = time.perf_counter() - t
    open(sys.argv[5], "wb").write(data)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(w, h, peak / 1024, base / 1024, dt)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,12,24")
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sample = Path(__file__).resolve().parent.parent / "samples" / "kodim23.png"
    rows = []
    for mp in [float(s) for s in args.sizes.split(",")]:
        vae = Path(f"/tmp/vaecodec_mem_{mp}.vae")
        for mode in ("encode", "decode"):
            r = subprocess.run([sys.executable, "-c", CHILD, str(mp), str(args.tile), mode, str(sample), str(vae)],
                               capture_output=True, text=True, check=True)
            w, h, peak, base, dt = r.stdout.split()
            rows.append({"megapixels": round(int(w) * int(h) / 1e6, 2), "width": int(w), "height": int(h),
                         "mode": mode, "tile": args.tile, "peak_rss_mb": round(float(peak)),
                         "rss_before_mb": round(float(base)), "seconds": round(float(dt), 2)})
            print(json.dumps(rows[-1]), flush=True)
        vae.unlink(missing_ok=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
