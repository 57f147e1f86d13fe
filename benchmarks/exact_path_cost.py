"""What exact decoding costs in rate: real .vae bytes vs the model's ideal information content.

For each image and quality:
  ideal_float  -log2 of the float model's likelihoods (float hyper-synthesis and context, continuous scales)
  ideal_int    the same with the integer networks' means and scales (continuous scales)
  coded        the stream bytes actually written (integer tables of 64 scales, escapes, coder overhead)
  file         the whole .vae file (header and CRC included)
Usage: python benchmarks/exact_path_cost.py KODAK_DIR [--limit N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from vaecodec.codec import Codec
from vaecodec.entropy_models import gaussian_likelihood
from vaecodec.evaluate import load_images
from vaecodec.imageio import Planes
from vaecodec.integer_net import ACT_BITS


@torch.inference_mode()
def ideal_bits(codec: Codec, rgb: np.ndarray, quality: float) -> tuple[float, float]:
    net = codec.net
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[2:]
    ph, pw = math.ceil(h / 64) * 64, math.ceil(w / 64) * 64
    x = torch.nn.functional.pad(x, (0, pw - w, 0, ph - h), mode="replicate")
    pos = torch.tensor([codec.position(quality)])
    gain, _ = net.gains_at(pos)
    y = net.g_a(x) * gain
    z = torch.round(net.h_a(y))
    z_bits = float(-torch.log2(net.density_z.likelihood(z)).sum())
    scales_f, means_f = net.entropy_parameters(y, net.h_s(z), torch.round).chunk(2, 1)
    bits_f = float(-torch.log2(gaussian_likelihood(torch.round(y - means_f), scales_f)).sum())
    sym = codec._symbols(y)  # the exact path: integer hyper-synthesis (and context model), continuous scales
    params = codec._hyper_params(sym.z, y.shape[2:])

    def decoded(start, stop, part, means, idx, y_res):  # replay the coded residuals pass by pass
        y_res[start:stop] = sym.y[start:stop] if part is None else np.where(part, sym.y[start:stop], y_res[start:stop])

    codec._code_latents(params, y.shape[2:], decoded, decoding=False)  # leaves the final parameters in params
    p = params / 2**ACT_BITS
    m = codec.model.config.M
    scales_i, means_i = p[:, :m].float(), p[:, m:].float()
    bits_i = float(-torch.log2(gaussian_likelihood(torch.round(y - means_i), scales_i)).sum())
    return z_bits + bits_f, z_bits + bits_i


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("directory", type=Path)
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--qualities", default="20,50,80,100")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--model", type=Path, help="model file (default: the shipped one)")
    args = ap.parse_args()
    codec = Codec(args.model)
    rows = []
    for name, rgb in load_images(args.directory, args.limit):
        for q in [float(v) for v in args.qualities.split(",")]:
            f_bits, i_bits = ideal_bits(codec, rgb, q)
            data = codec.encode_planes(Planes(rgb, "RGB"), q)
            stream = len(codec.parse(data).payload)
            rows.append({"image": name, "quality": q, "ideal_float_bytes": f_bits / 8, "ideal_int_bytes": i_bits / 8,
                         "coded_bytes": stream, "file_bytes": len(data)})
    tot = {k: sum(r[k] for r in rows) for k in ("ideal_float_bytes", "ideal_int_bytes", "coded_bytes", "file_bytes")}
    summary = {
        "integer_hyper_synthesis_cost_pct": 100 * (tot["ideal_int_bytes"] / tot["ideal_float_bytes"] - 1),
        "tables_and_coder_cost_pct": 100 * (tot["coded_bytes"] / tot["ideal_int_bytes"] - 1),
        "exact_path_total_cost_pct": 100 * (tot["coded_bytes"] / tot["ideal_float_bytes"] - 1),
        "header_cost_pct": 100 * (tot["file_bytes"] / tot["coded_bytes"] - 1),
        "model": codec.model.name, "images": args.limit, "qualities": args.qualities,
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
