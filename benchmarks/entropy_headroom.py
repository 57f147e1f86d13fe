"""How many bits could a better entropy model save on the current transforms? Measured before building one.

Freezes the analysis transform and the gains, then trains only the entropy model (hyper-analysis,
hyper-synthesis, checkerboard context, channel-group nets, z density) on the rate alone, with additive noise as
in training or (`--hard`) on the rounded latents it actually codes, optionally with an extra channel-group
context on top (for models trained without one). A rate-only step needs no synthesis pass and no gradient
through the analysis transform, so it is ~4x cheaper than a training step. Reports the validation split's
estimated bpp (hard quantization, as in `vaecodec train`'s validation) before and after; PSNR does not change,
the transforms are fixed.

  python benchmarks/entropy_headroom.py ../shared/data/train /work/ckpt/hp2/step5443.pt --steps 1000
  python benchmarks/entropy_headroom.py ../shared/data/train models/hp2.safetensors --steps 500 \
      --channel-groups 16,16,32,64,64
  python benchmarks/entropy_headroom.py ../shared/data/train models/hp2.safetensors --steps 500 --hard

The channel-group variant codes all anchors first, then all non-anchors, each group after the groups before it
(its nets see only what a decoder would have decoded by then); it is an estimate in float arithmetic, not a
codec. A .pt checkpoint is read with its weight average (what export ships).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from vaecodec.data import CropSampler, list_images, load_images, split_images
from vaecodec.entropy_models import gaussian_likelihood
from vaecodec.network import GainedHyperprior, ModelConfig, anchor_mask, ste_round

ENTROPY_MODULES = ("h_a", "h_s", "ctx", "ctx_params", "group_anchor", "group_other", "density_z")


def load(path: Path) -> GainedHyperprior:
    if path.suffix == ".pt":
        state = torch.load(path, map_location="cpu", weights_only=False)
        model = GainedHyperprior(ModelConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
        model.load_state_dict(state.get("ema", {}), strict=False)  # the parameters export would ship
        return model
    from vaecodec.model_io import load_model

    return load_model(path).network


def group_net(cin: int, cout: int) -> nn.Sequential:
    net = nn.Sequential(nn.Conv2d(cin, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 1), nn.ReLU(),
                        nn.Conv2d(128, 2 * cout, 1))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class ChannelGroups(nn.Module):
    """Per-group corrections of means and scales from the groups decoded before (anchor and non-anchor pass)."""

    def __init__(self, groups: list[int]):
        super().__init__()
        self.groups = groups
        starts = [sum(groups[:k]) for k in range(len(groups))]
        pairs = list(zip(groups[1:], starts[1:], strict=True))
        self.anchor_nets = nn.ModuleList(group_net(2 * c + s, c) for c, s in pairs)
        self.other_nets = nn.ModuleList(group_net(2 * c + s, c) for c, s in pairs)

    def forward(self, y, hyper, scales, means, rounding):
        anchors = anchor_mask(y.shape[2], y.shape[3], y.device)
        h_sc, h_mu = (t.split(self.groups, 1) for t in hyper.chunk(2, dim=1))
        sc, mu, ys = list(scales.split(self.groups, 1)), list(means.split(self.groups, 1)), y.split(self.groups, 1)
        decoded = [rounding(ys[0] - mu[0]) + mu[0]]
        for k in range(1, len(self.groups)):
            prev = torch.cat(decoded, 1)
            # the anchor pass sees hyper parameters only: its neighbours' context-corrected ones depend on it
            d_a = self.anchor_nets[k - 1](torch.cat([h_sc[k], h_mu[k], prev * anchors], 1))
            d_o = self.other_nets[k - 1](torch.cat([sc[k], mu[k], prev], 1))
            d_sc, d_mu = (d_a * anchors + d_o * (1 - anchors)).chunk(2, 1)
            sc[k], mu[k] = sc[k] + d_sc, mu[k] + d_mu
            decoded.append(rounding(ys[k] - mu[k]) + mu[k])
        return torch.cat(sc, 1), torch.cat(mu, 1)


def bits_per_pixel(model, extra, x, level, train: bool, hard: bool = False) -> torch.Tensor:
    """Estimated bits per pixel. Training uses additive noise for the rate (as `vaecodec train` does), or with
    `hard`, rounding with straight-through gradients: the entropy model then fits the rounded latents it codes,
    as in the hard-quantization stage of Guo et al. 2021 (soft-then-hard); the transforms stay frozen either way."""
    gain, _ = model.gains_at(level.float())
    with torch.no_grad():
        y = model.g_a(x) * gain
    z = model.h_a(y)
    rounding = ste_round if train else torch.round
    if train and not hard:
        z_lik = model.density_z.likelihood(z + torch.empty_like(z).uniform_(-0.5, 0.5))
    else:
        z_lik = model.density_z.likelihood(rounding(z))
    hyper = model.h_s(rounding(z))
    scales, means = model.entropy_parameters(y, hyper, rounding).chunk(2, dim=1)
    if extra is not None:
        scales, means = extra(y, hyper, scales, means, rounding)
    if train and not hard:
        residual = y + torch.empty_like(y).uniform_(-0.5, 0.5) - means
    else:
        residual = rounding(y - means)
    bits = -torch.log2(gaussian_likelihood(residual, scales)).flatten(1).sum(1)
    bits = bits - torch.log2(z_lik).flatten(1).sum(1)
    return bits / (x.shape[2] * x.shape[3])


@torch.no_grad()
def validation_bpp(model, extra, images, levels) -> dict[int, float]:
    out = {}
    for level in levels:
        values = []
        for img in images:
            x = img[None].float() / 255.0
            x = x[:, :, : x.shape[2] // 64 * 64, : x.shape[3] // 64 * 64]
            values.append(float(bits_per_pixel(model, extra, x, torch.tensor([level]), False)))
        out[level] = sum(values) / len(values)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("train_dir", type=Path)
    ap.add_argument("model", type=Path, help=".safetensors model or .pt checkpoint (its weight average)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--channel-groups", default="", help="e.g. 16,16,32,64,64 (sum: the latent channels)")
    ap.add_argument("--levels", default="0,2,4,7")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--hard", action="store_true", help="train the rate on rounded latents (straight-through)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(1)
    model = load(args.model)
    extra = None
    if args.channel_groups:
        groups = [int(g) for g in args.channel_groups.split(",")]
        if sum(groups) != model.config.M:
            raise SystemExit(f"--channel-groups must add up to {model.config.M}")
        extra = ChannelGroups(groups)
    for p in model.parameters():
        p.requires_grad_(False)
    trained = [p for n, p in model.named_parameters() if n.split(".")[0] in ENTROPY_MODULES]
    for p in trained:
        p.requires_grad_(True)
    if extra is not None:
        trained += list(extra.parameters())
    optimizer = torch.optim.Adam(trained, lr=args.lr)
    train_paths, val_paths = split_images(list_images(args.train_dir), 2.0)
    gen = torch.Generator().manual_seed(5)
    sampler = CropSampler(load_images(train_paths, 2), args.crop, gen)
    val = load_images(val_paths[: args.images], 2)
    levels = [int(v) for v in args.levels.split(",")]
    L = len(model.config.lambdas)
    before = validation_bpp(model, extra, val, levels)
    print("before", {k: round(v, 4) for k, v in before.items()}, flush=True)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        x = sampler.sample(args.batch_size)
        level = torch.randint(0, L, (args.batch_size,), generator=gen)
        loss = bits_per_pixel(model, extra, x, level, True, args.hard).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            print(json.dumps({"step": step, "s_per_step": round((time.time() - t0) / step, 3)}), flush=True)
    after = validation_bpp(model, extra, val, levels)
    change = {k: 100 * (after[k] / before[k] - 1) for k in levels}
    print("after ", {k: round(v, 4) for k, v in after.items()}, flush=True)
    print("change %", {k: round(v, 2) for k, v in change.items()}, flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "steps": args.steps, "lr": args.lr,
                                         "channel_groups": args.channel_groups, "hard": args.hard, "before_bpp": before,
                                         "after_bpp": after, "change_percent": change}, indent=1))


if __name__ == "__main__":
    main()
