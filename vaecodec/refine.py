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
from .tiling import LATENT_STRIDE, pixels_to_tensor, tile_ranges

REFINE_HALO = 8  # latents of fixed context around each refined tile (a multiple of 4 keeps the z grid aligned)
DEFAULT_REFINE_TILE = 48  # latents per side: a 768x512 photo in one tile; up to ~1.5 GB with the halo
REFINE_BYTES_PER_TILE_PIXEL = 1536  # measured ~1300-1500 B at N=128: back-propagation keeps the activations


MIN_REFINE_TILE = 16  # below this the fixed halo would multiply the search's work (24x24 patches for 8x8 kept)


def refine_tile_for_memory(max_bytes: int, channels: int = 128) -> int:
    """Largest refinement tile (latents per side, a multiple of 4) whose search fits in max_bytes; never below
    MIN_REFINE_TILE (~0.4 GB with its halo), so tiny budgets are exceeded rather than made many times slower."""
    side_px = math.sqrt(max(max_bytes, 1) / (REFINE_BYTES_PER_TILE_PIXEL * channels / 128))
    return max(MIN_REFINE_TILE, (int(side_px // 16) - 2 * REFINE_HALO) // 4 * 4)


def lambda_at(net: GainedHyperprior, position: float) -> float:
    """The trade-off lambda at a continuous position among the trained ones (log-linear, like the gains, and
    extrapolated like them below position 0)."""
    lams = [float(v) for v in net.config.lambdas]
    if len(lams) == 1:
        return lams[0]
    position = min(max(position, min(net.config.lowest_position, 0.0)), len(lams) - 1.0)
    lo = max(0, min(int(math.floor(position)), len(lams) - 2))
    frac = position - lo
    return math.exp(math.log(lams[lo]) * (1 - frac) + math.log(lams[lo + 1]) * frac)


def step_size(net: GainedHyperprior, position: float) -> float:
    """Adam step size for the gained latents: larger at high rates, where distortion dominates the objective
    (tuned on the training folder's validation split: 0.005 is best at the lowest trained lambda, 0.02 at the
    highest; below the lowest one it keeps shrinking with lambda, untuned)."""
    return 0.005 * (lambda_at(net, position) / float(net.config.lambdas[0])) ** 0.3


def rd_objective(net: GainedHyperprior, y: torch.Tensor, x: torch.Tensor, inv_gain: torch.Tensor, lam: float,
                 valid: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, bpp, mse) of gained latents y for image x under hard quantization (straight-through).

    valid = (rows, cols) of x that are real pixels: the rest is padding the decoder crops away, so it counts
    for neither the distortion nor the pixel count (its bits are still paid)."""
    rows, cols = valid or x.shape[2:]
    z = net.h_a(y)
    z_hat = ste_round(z)
    bits_z = -torch.log2(net.density_z.likelihood(z_hat)).sum()
    scales, means = net.entropy_parameters(y, net.h_s(z_hat), ste_round).chunk(2, dim=1)
    res = ste_round(y - means)
    bits_y = -torch.log2(gaussian_likelihood(res, scales)).sum()
    x_hat = net.g_s((res + means) * inv_gain)
    bpp = (bits_y + bits_z) / (rows * cols)
    mse = (x_hat[:, :, :rows, :cols] - x[:, :, :rows, :cols]).pow(2).mean()
    return bpp + lam * 255.0**2 * mse, bpp, mse


def refine_latents(net: GainedHyperprior, x: torch.Tensor, y0: torch.Tensor, position: float,
                   iterations: int, lr: float | None = None, free: torch.Tensor | None = None,
                   valid: tuple[int, int] | None = None) -> torch.Tensor:
    """Gained latents y0 (1, M, h, w) of image x (1, 3, 16h, 16w) -> refined gained latents.

    Adam on y with a step size that decays linearly to zero; only latents where `free` (1, 1, h, w) is true
    move (the rest is fixed context). Returns the best iterate by the objective, so never worse than y0 on it.
    Gradients are taken for y alone: the network's parameters are neither touched nor flagged.
    """
    lr = step_size(net, position) if lr is None else lr
    with torch.no_grad():
        _, inv_gain = net.gains_at(torch.tensor([float(position)], device=x.device))
    lam = lambda_at(net, position)
    y = y0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([y], lr=lr)
    best, best_loss = y0.detach(), math.inf
    for i in range(iterations + 1):
        loss, _, _ = rd_objective(net, y, x, inv_gain, lam, valid)
        if loss.item() < best_loss:
            best_loss, best = loss.item(), y.detach().clone()
        if i == iterations:
            break
        for group in opt.param_groups:
            group["lr"] = lr * (1 - i / iterations)
        (grad,) = torch.autograd.grad(loss, y)
        y.grad = grad if free is None else grad * free
        opt.step()
    return best


def refine_tiled(net: GainedHyperprior, rgb_padded, y0: torch.Tensor, position: float, iterations: int,
                 tile: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Refine gained latents y0 (1, M, h, w) of rgb_padded (H, W, 3) uint8 tile by tile, so memory stays
    bounded for any image size. Each tile moves only its own latents; a frozen halo of already-refined (or
    not yet refined) neighbours gives it context. size = (width, height) of the real image inside the padding.

    Each tile keeps its best iterate by its own objective; the halo (2 hyper-latent cells) is narrower than the
    rate model's full reach, so tile edges see a slightly approximate rate."""
    if iterations <= 0:
        return y0
    _, _, h, w = y0.shape
    if h % 4 or w % 4 or rgb_padded.shape[0] != 16 * h or rgb_padded.shape[1] != 16 * w:
        raise ValueError("latents must be a multiple of 4 per side and match the padded image")
    width, height = size or (rgb_padded.shape[1], rgb_padded.shape[0])
    with torch.inference_mode(False), torch.enable_grad():
        return _refine_tiles(net, rgb_padded, y0.clone(), position, iterations, max(4, tile // 4 * 4),
                             (height, width))


def _refine_tiles(net, rgb_padded, out, position, iterations, tile, real):
    _, _, h, w = out.shape
    s = LATENT_STRIDE
    for r0, r1, a0, a1 in tile_ranges(h, tile, REFINE_HALO):
        for c0, c1, b0, b1 in tile_ranges(w, tile, REFINE_HALO):
            x = pixels_to_tensor(rgb_padded[a0 * s : a1 * s, b0 * s : b1 * s], out.device)
            free = torch.zeros((1, 1, a1 - a0, b1 - b0), device=out.device)
            free[:, :, r0 - a0 : r1 - a0, c0 - b0 : c1 - b0] = 1
            valid = (min(real[0] - a0 * s, x.shape[2]), min(real[1] - b0 * s, x.shape[3]))  # padding is < 1 tile
            y = refine_latents(net, x, out[:, :, a0:a1, b0:b1], position, iterations, free=free, valid=valid)
            out[:, :, r0:r1, c0:c1] = y[:, :, r0 - a0 : r1 - a0, c0 - b0 : c1 - b0]
    return out
