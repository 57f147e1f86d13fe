"""Image quality and rate-distortion comparison metrics: PSNR, MS-SSIM, Bjøntegaard delta rate."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB over all channels of two 8-bit images (inf for identical images)."""
    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = x.shape[1]
    k = win.shape[0]
    wx = win.view(1, 1, 1, k).repeat(c, 1, 1, 1)
    wy = win.view(1, 1, k, 1).repeat(c, 1, 1, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, wx, groups=c), wy, groups=c)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ssim = (2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs
    return ssim.mean(dim=(2, 3)), cs.mean(dim=(2, 3))


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Multi-scale SSIM (Wang et al. 2003) of two 8-bit images, averaged over channels.

    Uses the standard 11x11 Gaussian window (sigma 1.5) and 5 scales; images too small for 5 scales use as many
    as fit (with renormalized weights).
    """
    x = torch.from_numpy(np.asarray(a, dtype=np.float64))
    y = torch.from_numpy(np.asarray(b, dtype=np.float64))
    if x.ndim == 2:
        x, y = x[:, :, None], y[:, :, None]
    x, y = x.permute(2, 0, 1)[None], y.permute(2, 0, 1)[None]
    win = _gaussian_window()
    levels = 5
    while levels > 1 and min(x.shape[2:]) / 2 ** (levels - 1) < win.shape[0]:
        levels -= 1
    if min(x.shape[2:]) < win.shape[0]:
        win = _gaussian_window(min(x.shape[2:]) // 2 * 2 - 1 or 1)
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=torch.float64)
    weights = weights / weights.sum()
    values = []
    for i in range(levels):
        ssim, cs = _ssim_terms(x, y, win)
        values.append(ssim if i == levels - 1 else cs)
        if i < levels - 1:
            pad = [s % 2 for s in x.shape[2:]]  # as the reference implementations do for odd sizes
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    stack = torch.stack([v.clamp_min(0) for v in values], dim=0)  # (levels, 1, C)
    return float((stack ** weights.view(-1, 1, 1)).prod(dim=0).mean())


def ms_ssim_db(value: float) -> float:
    return math.inf if value >= 1 else -10.0 * math.log10(1.0 - value)


def bd_rate(rate_a, dist_a, rate_b, dist_b) -> float:
    """Bjøntegaard delta rate of curve B against reference curve A, in percent (negative: B is smaller).

    Piecewise cubic (PCHIP) interpolation of log-rate as a function of distortion over the overlapping
    distortion range, integrated exactly, as in the common VCEG-M33 successor implementations.
    """
    from scipy.interpolate import PchipInterpolator

    def curve(rate, dist):
        r, d = np.log(np.asarray(rate, dtype=np.float64)), np.asarray(dist, dtype=np.float64)
        order = np.argsort(d)
        d, r = d[order], r[order]
        keep = np.concatenate([[True], np.diff(d) > 0])
        return d[keep], r[keep]

    da, ra = curve(rate_a, dist_a)
    db, rb = curve(rate_b, dist_b)
    lo, hi = max(da.min(), db.min()), min(da.max(), db.max())
    if hi <= lo or len(da) < 2 or len(db) < 2:
        return math.nan
    ia = PchipInterpolator(da, ra).antiderivative()
    ib = PchipInterpolator(db, rb).antiderivative()
    avg_diff = ((ib(hi) - ib(lo)) - (ia(hi) - ia(lo))) / (hi - lo)
    return float((math.exp(avg_diff) - 1.0) * 100.0)
