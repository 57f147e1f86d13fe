"""Probability models of the latents: a learned factorized density for the hyper-latent z and a
conditional Gaussian for y, plus the export of both into the fixed integer tables the range coder uses."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .layers import lower_bound

LIKELIHOOD_BOUND = 1e-9
SCALE_BOUND = 0.11


class FactorizedDensity(nn.Module):
    """Ballé et al. (2018) non-parametric density, one per channel, learned through its CDF."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        self.channels = channels
        dims = (1, *filters, 1)
        scale = init_scale ** (1.0 / (len(dims) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cdf(self, v: torch.Tensor) -> torch.Tensor:
        """v: (C, 1, K) values -> (C, 1, K) logits of the CDF."""
        logits = v
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases, strict=True)):
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if i < len(self.factors):
                logits = logits + torch.tanh(self.factors[i]) * torch.tanh(logits)
        return logits

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """Probability mass of the unit-width bin around every value of z (B, C, H, W)."""
        b, c, h, w = z.shape
        v = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self.logits_cdf(v - 0.5)
        upper = self.logits_cdf(v + 0.5)
        sign = -torch.sign(lower + upper).detach()
        lik = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        lik = lik.reshape(c, b, h, w).permute(1, 0, 2, 3)
        return lower_bound(lik, LIKELIHOOD_BOUND)

    @torch.no_grad()
    def integer_pmfs(self, max_value: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel pmf over the integers -max_value..max_value (float64, rows sum to <= 1)."""
        grid = torch.arange(-max_value, max_value + 1, dtype=torch.float32)
        v = grid.view(1, 1, -1).expand(self.channels, 1, -1)
        lower = self.logits_cdf(v - 0.5).double()
        upper = self.logits_cdf(v + 0.5).double()
        sign = -torch.sign(lower + upper)
        pmf = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))[:, 0, :]
        return pmf.numpy(), grid.numpy().astype(np.int64)


def gaussian_likelihood(residual: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mass of the unit bin around residual under a zero-mean Gaussian of the given scale."""
    scale = lower_bound(scale, SCALE_BOUND)
    v = torch.abs(residual)
    upper = 0.5 * torch.erfc(-(0.5 - v) / (scale * math.sqrt(2.0)))
    lower = 0.5 * torch.erfc(-(-0.5 - v) / (scale * math.sqrt(2.0)))
    return lower_bound(upper - lower, LIKELIHOOD_BOUND)


def scale_table(min_scale: float = SCALE_BOUND, max_scale: float = 256.0, levels: int = 64) -> np.ndarray:
    """The fixed set of Gaussian scales the coder knows; a latent uses the largest one <= its scale."""
    return np.exp(np.linspace(math.log(min_scale), math.log(max_scale), levels))


# --- integer tables -------------------------------------------------------------------------------------

TABLE_PRECISION = 16  # every table's frequencies sum to 2**16


def quantize_pmf(pmf: np.ndarray) -> np.ndarray:
    """Integer frequencies summing to 2**TABLE_PRECISION, every symbol at least 1."""
    total = 1 << TABLE_PRECISION
    pmf = np.asarray(pmf, dtype=np.float64)
    pmf = pmf / pmf.sum()
    freq = np.maximum(1, np.floor(pmf * (total - len(pmf))).astype(np.int64))
    # hand out what is left to the largest entries so that the sum is exact
    deficit = total - int(freq.sum())
    order = np.argsort(-pmf, kind="stable")
    i = 0
    while deficit != 0:
        j = order[i % len(order)]
        if deficit > 0:
            freq[j] += 1
            deficit -= 1
        elif freq[j] > 1:
            freq[j] -= 1
            deficit += 1
        i += 1
    return freq


def gaussian_tables(scales: np.ndarray, tail: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """One integer table per scale over -R..R (+2 escape bins), packed into a (levels, width) array.

    Returns (freqs, radii): freqs[k, :2*R_k+3] holds [escape_low, -R_k..R_k, escape_high].
    """
    from math import erfc, sqrt

    radii = []
    rows = []
    for s in scales:
        r = 1
        while 0.5 * erfc((r + 0.5) / (s * sqrt(2.0))) * 2 > tail:
            r += 1
        v = np.arange(-r, r + 1, dtype=np.float64)
        upper = np.array([0.5 * erfc(-(x + 0.5) / (s * sqrt(2.0))) for x in v])
        lower = np.array([0.5 * erfc(-(x - 0.5) / (s * sqrt(2.0))) for x in v])
        pmf = upper - lower
        tail_mass = max(0.5 * erfc((r + 0.5) / (s * sqrt(2.0))), 1e-12)
        rows.append(quantize_pmf(np.concatenate([[tail_mass], pmf, [tail_mass]])))
        radii.append(r)
    width = max(len(row) for row in rows)
    freqs = np.zeros((len(rows), width), dtype=np.int32)
    for k, row in enumerate(rows):
        freqs[k, : len(row)] = row
    return freqs, np.array(radii, dtype=np.int32)


def factorized_tables(density: FactorizedDensity, tail: float = 1e-7, max_value: int = 256):
    """Per-channel integer tables for the hyper-latent: [escape_low, lo..hi, escape_high] per channel.

    Returns (freqs (C, width), lows (C,), highs (C,)).
    """
    pmf, grid = density.integer_pmfs(max_value)
    rows, lows, highs = [], [], []
    for c in range(pmf.shape[0]):
        p = pmf[c]
        cdf = np.cumsum(p)
        lo_idx = int(np.searchsorted(cdf, tail / 2))
        hi_idx = int(np.searchsorted(cdf, cdf[-1] - tail / 2))
        hi_idx = max(hi_idx, lo_idx)
        core = p[lo_idx : hi_idx + 1]
        low_tail = max(float(cdf[lo_idx] - p[lo_idx]), 1e-12)
        high_tail = max(float(1.0 - cdf[hi_idx]), 1e-12)
        rows.append(quantize_pmf(np.concatenate([[low_tail], core, [high_tail]])))
        lows.append(int(grid[lo_idx]))
        highs.append(int(grid[hi_idx]))
    width = max(len(r) for r in rows)
    freqs = np.zeros((len(rows), width), dtype=np.int32)
    for c, row in enumerate(rows):
        freqs[c, : len(row)] = row
    return freqs, np.array(lows, dtype=np.int32), np.array(highs, dtype=np.int32)
