"""Building blocks of the transforms: strided convolutions and (inverse) generalized divisive normalization."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows when it pushes x back up (Ballé et al.'s trick)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        pass_through = (x >= ctx.bound) | (grad < 0)
        return grad * pass_through.to(grad.dtype), None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return LowerBound.apply(x, bound)


class GDN(nn.Module):
    """Generalized divisive normalization, y = x / sqrt(beta + gamma * x^2) (inverse: multiply).

    beta and gamma are reparameterized as squares of bounded values so that they stay positive.
    """

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.beta_min = beta_min
        self.pedestal = 2.0**-18
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + self.pedestal))
        self.gamma = nn.Parameter(torch.sqrt(gamma_init * torch.eye(channels) + self.pedestal))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        beta = lower_bound(self.beta, (self.beta_min + self.pedestal) ** 0.5) ** 2 - self.pedestal
        gamma = lower_bound(self.gamma, self.pedestal**0.5) ** 2 - self.pedestal
        norm = F.conv2d(x * x, gamma.view(c, c, 1, 1).to(x.dtype), beta.to(x.dtype))
        if norm.requires_grad:
            norm = torch.sqrt(norm)
            return x * norm if self.inverse else x / norm
        # Inference: the same values without two more full-size temporaries (GDN is memory-bound on CPUs).
        norm.sqrt_()
        return norm.mul_(x) if self.inverse else torch.div(x, norm, out=norm)


def conv(in_ch: int, out_ch: int, kernel: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2)


def deconv(in_ch: int, out_ch: int, kernel: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(
        in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, output_padding=stride - 1
    )
