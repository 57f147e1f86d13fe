"""Encoder-side latent refinement: search for latents that the fixed decoder turns into a better
rate-distortion trade-off than the analysis transform's one-shot guess.

The analysis transform is an amortized approximation; per image, a few gradient steps on the latents
themselves against R + lambda * 255^2 * MSE close part of that gap (Campos et al. 2019; Yang et al. 2020).
Only the encoder spends the time; the stream format and the decoder are unchanged.
"""

from __future__ import annotations

import math

import torch

from .entropy_models import gaussian_likelihood
from .network import GainedHyperprior, ste_round


def lambda_at(net: GainedHyperprior, position: float) -> float:
    """The trade-off lambda at a continuous position among the trained ones (log-linear, like the gains)."""
    lams = [float(v) for v in net.config.lambdas]
    if len(lams) == 1:
        return lams[0]
    position = min(max(position, 0.0), len(lams) - 1.0)
    lo = min(int(math.floor(position)), len(lams) - 2)
    frac = position - lo
    return math.exp(math.log(lams[lo]) * (1 - frac) + math.log(lams[lo + 1]) * frac)


def rd_objective(net: GainedHyperprior, y: torch.Tensor, x: torch.Tensor, inv_gain: torch.Tensor,
                 lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, bpp, mse) of gained latents y for image x under hard quantization (straight-through)."""
    z = net.h_a(y)
    z_hat = ste_round(z)
    bits_z = -torch.log2(net.density_z.likelihood(z_hat)).sum()
    scales, means = net.h_s(z_hat).chunk(2, dim=1)
    res = ste_round(y - means)
    bits_y = -torch.log2(gaussian_likelihood(res, scales)).sum()
    x_hat = net.g_s((res + means) * inv_gain)
    bpp = (bits_y + bits_z) / (x.shape[2] * x.shape[3])
    mse = (x_hat - x).pow(2).mean()
    return bpp + lam * 255.0**2 * mse, bpp, mse


def step_size(net: GainedHyperprior, position: float) -> float:
    """Adam step size for the gained latents: larger at high rates, where distortion dominates the objective
    (tuned on the training folder's validation split: 0.005 is best at the lowest lambda, 0.02 at the highest)."""
    return 0.005 * (lambda_at(net, position) / float(net.config.lambdas[0])) ** 0.3


def refine_latents(net: GainedHyperprior, x: torch.Tensor, y0: torch.Tensor, position: float,
                   iterations: int, lr: float | None = None) -> torch.Tensor:
    """Gained latents y0 (1, M, h, w) of image x (1, 3, 16h, 16w) -> refined gained latents.

    Adam on y with a step size that decays linearly to zero; returns the best iterate seen, so the result
    is never worse (by the model's own estimate) than y0.
    """
    lr = step_size(net, position) if lr is None else lr
    with torch.no_grad():
        _, inv_gain = net.gains_at(torch.tensor([float(position)], device=x.device))
    lam = lambda_at(net, position)
    frozen = [(p, p.requires_grad) for p in net.parameters()]
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        y = y0.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([y], lr=lr)
        best, best_loss = y0.detach().clone(), math.inf
        for i in range(iterations + 1):
            loss, _, _ = rd_objective(net, y, x, inv_gain, lam)
            if loss.item() < best_loss:
                best_loss, best = loss.item(), y.detach().clone()
            if i == iterations:
                break
            for group in opt.param_groups:
                group["lr"] = lr * (1 - i / iterations)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    return best


REFINE_HALO = 8  # latents of context around each refined tile: a multiple of 4 keeps the z grid aligned

# effort -> gradient steps on the latents; effort 1 is the analysis transform alone
EFFORT_ITERATIONS = {1: 0, 2: 4, 3: 8, 4: 16, 5: 32}
MAX_EFFORT = max(EFFORT_ITERATIONS)
DEFAULT_EFFORT = 1


def refine_tiled(net: GainedHyperprior, rgb_padded, y0: torch.Tensor, position: float, iterations: int,
                 tile: int) -> torch.Tensor:
    """Refine gained latents y0 (1, M, h, w) of rgb_padded (H, W, 3) uint8 tile by tile (each with a halo
    of context, only its centre kept), so memory stays bounded for any image size."""
    if iterations <= 0:
        return y0
    with torch.inference_mode(False), torch.enable_grad():
        return _refine_tiles(net, rgb_padded, y0.clone(), position, iterations, tile)


def _refine_tiles(net, rgb_padded, y0, position, iterations, tile):
    tile = max(4, tile // 4 * 4)
    _, _, h, w = y0.shape
    out = y0.clone()
    s = 16
    for r0 in range(0, h, tile):
        r1, a0 = min(h, r0 + tile), max(0, r0 - REFINE_HALO)
        a1 = min(h, r1 + REFINE_HALO)
        for c0 in range(0, w, tile):
            c1, b0 = min(w, c0 + tile), max(0, c0 - REFINE_HALO)
            b1 = min(w, c1 + REFINE_HALO)
            patch = rgb_padded[a0 * s : a1 * s, b0 * s : b1 * s]
            x = torch.from_numpy(patch.copy()).to(y0.device).permute(2, 0, 1)[None].float().div_(255.0)
            x = x.contiguous(memory_format=torch.channels_last)
            y = refine_latents(net, x, y0[:, :, a0:a1, b0:b1], position, iterations)
            out[:, :, r0:r1, c0:c1] = y[:, :, r0 - a0 : r1 - a0, c0 - b0 : c1 - b0]
    return out
