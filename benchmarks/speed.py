"""Where encode and decode time goes, stage by stage, beside the classical codecs in the same run.

Usage: python benchmarks/speed.py KODAK_IMAGE [--big-mp 24] [--threads 1,2] [--json out.json]
Stages: start-up (python + import + model load, in a fresh process), analysis transform, hyper path
(h_a, rounding, exact integer h_s), range coding, container, and for decode: parse, range decoding
(with the integer h_s), synthesis transform, PNG writing.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vaecodec.codec import Codec
from vaecodec.imageio import Planes


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def stages(codec: Codec, rgb: np.ndarray, quality: float = 75.0) -> dict:
    h, w = rgb.shape[:2]
    planes = Planes(rgb, "RGB")
    codec.encode_planes(Planes(rgb[:64, :64].copy(), "RGB"), quality)  # warm-up
    lat, t_analysis = timed(codec.latents, rgb)
    sym, t_hyper = timed(codec.quantize, lat, quality)
    stream, t_code = timed(codec.write_stream, sym)
    data, t_pack = timed(codec._pack, planes, quality, stream, {})
    f, t_parse = timed(codec.parse, data, None)
    sym2, t_decode_stream = timed(codec.read_stream, f.payload, (w, h))
    pix, t_synth = timed(codec.synthesize, sym2, f.quality, (w, h))
    buf = io.BytesIO()
    _, t_png = timed(Image.fromarray(pix).save, buf, "PNG")
    enc = t_analysis + t_hyper + t_code + t_pack
    dec = t_parse + t_decode_stream + t_synth
    return {
        "width": w, "height": h, "bytes": len(data), "bpp": 8 * len(data) / (w * h),
        "encode": {"analysis": t_analysis, "hyper_and_quantize": t_hyper, "range_coding": t_code,
                   "container": t_pack, "total": enc, "megapixels_per_s": w * h / 1e6 / enc},
        "decode": {"parse": t_parse, "range_decoding_and_hyper": t_decode_stream, "synthesis": t_synth,
                   "total": dec, "png_write": t_png, "megapixels_per_s": w * h / 1e6 / dec},
    }


def startup_seconds() -> float:
    code = "import time; t=time.perf_counter(); from vaecodec.codec import Codec; Codec(); print(time.perf_counter()-t)"
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {"process_total": time.perf_counter() - t, "import_and_model_load": float(r.stdout)}


def classical(rgb: np.ndarray) -> dict:
    out = {}
    settings = {"avif_speed4": ("AVIF", {"quality": 60, "speed": 4, "subsampling": "4:4:4"}),
                "avif_speed6": ("AVIF", {"quality": 60, "speed": 6, "subsampling": "4:4:4"}),
                "webp_m6": ("WEBP", {"quality": 75, "method": 6}),
                "jpeg": ("JPEG", {"quality": 85, "optimize": True})}
    try:
        import pillow_jxl  # noqa: F401

        settings["jxl_e7"] = ("JXL", {"quality": 80, "effort": 7})
    except ImportError:
        pass
    img = Image.fromarray(rgb)
    for name, (fmt, params) in settings.items():
        buf = io.BytesIO()
        _, t_enc = timed(img.save, buf, fmt, **params)
        data = buf.getvalue()

        def dec(d=data):
            with Image.open(io.BytesIO(d)) as im:
                im.load()

        _, t_dec = timed(dec)
        out[name] = {"encode": t_enc, "decode": t_dec, "bytes": len(data)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("image", type=Path)
    ap.add_argument("--big-mp", type=float, default=24.0, help="also a photo of this many megapixels (0: skip)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    src = np.asarray(Image.open(args.image).convert("RGB")).copy()
    images = {"kodak": src}
    if args.big_mp:
        w = int((args.big_mp * 1e6 * 1.5) ** 0.5)
        h = int(args.big_mp * 1e6 / w)
        reps = (h // src.shape[0] + 1, w // src.shape[1] + 1, 1)
        images[f"{args.big_mp:g}MP"] = np.ascontiguousarray(np.tile(src, reps)[:h, :w])
    report = {"startup": startup_seconds(), "runs": []}
    codec = Codec()
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for name, rgb in images.items():
            row = {"image": name, "threads": threads, "vaecodec": stages(codec, rgb)}
            row["classical"] = classical(rgb)
            for k, v in row["classical"].items():
                row["classical"][k]["vaecodec_encode_ratio"] = row["vaecodec"]["encode"]["total"] / v["encode"]
                row["classical"][k]["vaecodec_decode_ratio"] = row["vaecodec"]["decode"]["total"] / v["decode"]
            report["runs"].append(row)
            print(json.dumps({"image": name, "threads": threads, "encode": row["vaecodec"]["encode"]["total"],
                              "decode": row["vaecodec"]["decode"]["total"]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
