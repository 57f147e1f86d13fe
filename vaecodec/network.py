"""The variable-rate mean-scale hyperprior (Minnen et al. 2018) with asymmetric gain units (Cui et al. 2021),
optionally with a checkerboard context model (He et al. 2021).

One network covers every rate: a gain vector scales the latents before quantization and an inverse gain
undoes it after, one learned pair per trained trade-off lambda, interpolated in the log domain between them
(and extrapolated below the lowest one, down to the config's lowest_position).

With context="checkerboard" the latents are coded in two passes: the anchors ((row + col) even) with the
hyperprior's means and scales, then the rest with those refined from the decoded anchors around them. That
costs one extra parallel step, not a serial scan.

With channel_groups (e.g. 16,16,32,64,64, as in He et al. 2022's uneven groups) each pass is further split
into channel groups decoded one after another: every anchor group, then every non-anchor group, each group's
means and scales corrected by a small net from the groups decoded before it. The anchor-first order keeps the
checkerboard context valid (it sees all anchors), so a checkerboard model can start a grouped one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .entropy_models import FactorizedDensity, gaussian_likelihood
from .layers import GDN, conv, deconv

DEFAULT_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.18)
DEFAULT_LOWEST_POSITION = -2.0  # quality 1 sits two lambda steps below the lowest trained one
CONTEXTS = ("none", "checkerboard")
CONTEXT_KERNEL = 5  # the checkerboard context sees decoded anchors up to 2 latents away
GROUP_KERNEL = 3  # a channel group's net sees the groups before it up to 1 latent away
GROUP_HIDDEN = 128  # width of a channel group's net


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters; stored in checkpoints and shipped model files."""

    arch: str = "gained-mean-scale-hyperprior"
    N: int = 128
    M: int = 192
    lambdas: tuple[float, ...] = field(default=DEFAULT_LAMBDAS)
    # Position among the trained lambdas that quality 1 maps to (quality 100 maps to the last one). Below 0 the
    # gains are extrapolated log-linearly, which reaches lower rates than were trained at a graceful loss.
    lowest_position: float = DEFAULT_LOWEST_POSITION
    context: str = "none"  # "checkerboard": two-pass coding with a spatial context model (see module doc)
    channel_groups: tuple[int, ...] = ()  # with the checkerboard: latent channel groups coded in turn (sum M)

    def __post_init__(self):
        if self.context not in CONTEXTS:
            raise ValueError(f"unknown context model {self.context!r} (known: {', '.join(CONTEXTS)})")
        if self.channel_groups:
            if self.context != "checkerboard":
                raise ValueError("channel groups need the checkerboard context model")
            if min(self.channel_groups) < 1 or sum(self.channel_groups) != self.M or len(self.channel_groups) < 2:
                raise ValueError(f"channel groups {list(self.channel_groups)} must be 2 or more positive sizes "
                                 f"adding up to M={self.M}")
        if not -len(self.lambdas) * 4.0 <= self.lowest_position < max(len(self.lambdas) - 1, 1):
            raise ValueError(f"lowest_position {self.lowest_position} must lie below the last lambda's position")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lambdas"] = list(self.lambdas)
        if self.channel_groups:
            d["channel_groups"] = list(self.channel_groups)
        else:  # absent, as before the field existed: re-exports of older runs keep their fingerprint
            del d["channel_groups"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["lambdas"] = tuple(float(x) for x in d["lambdas"])
        d["lowest_position"] = float(d.get("lowest_position", 0.0))  # files from before the field: first lambda
        d["context"] = str(d.get("context", "none"))
        d["channel_groups"] = tuple(int(g) for g in d.get("channel_groups", ()))
        return cls(**d)


STRIDE = 64  # total downsampling from pixels to the hyper-latent


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def anchor_mask(h: int, w: int, device=None) -> torch.Tensor:
    """(1, 1, h, w) float mask, 1 on the checkerboard's anchors ((row + col) even), decoded first."""
    r = torch.arange(h, device=device)[:, None]
    c = torch.arange(w, device=device)[None, :]
    return ((r + c) % 2 == 0).float()[None, None]


def default_channel_groups(M: int, context: str) -> tuple[int, ...]:
    """The groups `vaecodec train` uses unless told otherwise: He et al. 2022's uneven 16/16/32/64/rest
    (small groups first, where the gain per channel is largest) with the checkerboard and M > 128; else none."""
    return (16, 16, 32, 64, M - 128) if context == "checkerboard" and M > 128 else ()


def group_net(cin: int, channels: int) -> nn.Sequential:
    """A channel group's correction net: 3x3 conv, two 1x1 (ReLU between), output (scales, means) deltas.
    Only Conv/ReLU (re-evaluated exactly in integers); the last layer starts at zero, so a model without
    groups can start a grouped one unchanged."""
    net = nn.Sequential(conv(cin, GROUP_HIDDEN, GROUP_KERNEL, 1), nn.ReLU(), conv(GROUP_HIDDEN, GROUP_HIDDEN, 1, 1),
                        nn.ReLU(), conv(GROUP_HIDDEN, 2 * channels, 1, 1))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def quality_position(quality: float, levels: int, lowest: float = 0.0) -> float:
    """Map quality 1..100 linearly onto the continuous position lowest..levels-1 among the trained lambdas."""
    q = min(max(float(quality), 1.0), 100.0)
    return lowest + (q - 1.0) / 99.0 * (levels - 1 - lowest)


class GainedHyperprior(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        N, M, L = config.N, config.M, len(config.lambdas)
        self.g_a = nn.Sequential(
            conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M)
        )
        self.g_s = nn.Sequential(
            deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
            deconv(N, N), GDN(N, inverse=True), deconv(N, 3),
        )
        self.h_a = nn.Sequential(
            conv(M, N, 3, 1), nn.LeakyReLU(inplace=True), conv(N, N), nn.LeakyReLU(inplace=True), conv(N, N)
        )
        # Only Conv/ConvTranspose/ReLU here: this path is re-evaluated in exact integer arithmetic.
        self.h_s = nn.Sequential(
            deconv(N, M), nn.ReLU(), deconv(M, M * 3 // 2), nn.ReLU(), conv(M * 3 // 2, 2 * M, 3, 1)
        )
        if config.context == "checkerboard":
            # Only Conv/ReLU, like h_s: re-evaluated exactly in integers. The last layer starts at zero, so a
            # model initialised from a context-free one starts out identical to it.
            self.ctx = conv(M, M, CONTEXT_KERNEL, 1)
            self.ctx_params = nn.Sequential(
                conv(3 * M, 2 * M, 1, 1), nn.ReLU(), conv(2 * M, 2 * M, 1, 1), nn.ReLU(), conv(2 * M, 2 * M, 1, 1)
            )
            nn.init.zeros_(self.ctx_params[-1].weight)
            nn.init.zeros_(self.ctx_params[-1].bias)
        if config.channel_groups:
            # Group k > 0 sees its own current means and scales and the groups before it; one net for its
            # anchors (seeing earlier groups' anchors) and one for the rest (seeing earlier groups whole).
            sizes = list(zip(config.channel_groups[1:], self.group_starts[1:], strict=True))
            self.group_anchor = nn.ModuleList(group_net(2 * c + s, c) for c, s in sizes)
            self.group_other = nn.ModuleList(group_net(2 * c + s, c) for c, s in sizes)
        self.density_z = FactorizedDensity(N)
        lam = torch.tensor(config.lambdas, dtype=torch.float64)
        init = 0.5 * torch.log(lam / lam.sqrt().prod() ** (2.0 / L)).float()  # gain ~ sqrt(lambda)
        self.log_gain = nn.Parameter(init[:, None].repeat(1, M))
        self.log_inv_gain = nn.Parameter(-init[:, None].repeat(1, M))
        self.register_buffer("lambdas", lam.float(), persistent=False)

    @property
    def group_starts(self) -> list[int]:
        g = self.config.channel_groups
        return [sum(g[:k]) for k in range(len(g))]

    # --- gains ------------------------------------------------------------------------------------------
    def gains_at(self, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain, inverse gain), each (B, M, 1, 1), at continuous positions (B,) among the lambdas; positions
        below 0 (down to config.lowest_position) extrapolate the first segment in the log domain."""
        L = self.log_gain.shape[0]
        position = position.to(self.log_gain.device).clamp(min(self.config.lowest_position, 0.0), L - 1)
        lo = position.floor().long().clamp(0, L - 2) if L > 1 else torch.zeros_like(position, dtype=torch.long)
        frac = (position - lo.to(position.dtype))[:, None]
        if L > 1:
            lg = self.log_gain[lo] * (1 - frac) + self.log_gain[lo + 1] * frac
            lig = self.log_inv_gain[lo] * (1 - frac) + self.log_inv_gain[lo + 1] * frac
        else:
            lg, lig = self.log_gain[lo], self.log_inv_gain[lo]
        return lg.exp()[:, :, None, None], lig.exp()[:, :, None, None]

    # --- probability model of y ----------------------------------------------------------------------------
    def entropy_parameters(self, y: torch.Tensor, params: torch.Tensor, rounding) -> torch.Tensor:
        """Means and scales (B, 2M, h, w) of gained latents y given the hyper-synthesis output `params`.

        Without a context model that is `params` itself. With the checkerboard, non-anchor positions get
        params + ctx_params([params, ctx(decoded anchors)]); `rounding` (torch.round or ste_round) makes the
        anchors' reconstruction the decoder will see."""
        if self.config.context == "none":
            return params
        if self.config.channel_groups:
            return self._grouped_parameters(y, params, rounding)
        scales, means = params.chunk(2, dim=1)
        anchors = anchor_mask(y.shape[2], y.shape[3], y.device)
        y_anchor = (rounding(y - means) + means) * anchors
        delta = self.ctx_params(torch.cat([params, self.ctx(y_anchor)], dim=1))
        return params + delta * (1.0 - anchors)

    def _grouped_parameters(self, y: torch.Tensor, params: torch.Tensor, rounding) -> torch.Tensor:
        """entropy_parameters with channel groups, in the decoder's order: the anchors group by group (each
        corrected from the earlier groups' anchors), the checkerboard context from all anchors, then the
        non-anchors group by group (each corrected from the earlier groups, now whole)."""
        groups = list(self.config.channel_groups)
        anchors = anchor_mask(y.shape[2], y.shape[3], y.device)
        others = 1.0 - anchors
        ys = y.split(groups, dim=1)

        def split(p):
            sc, mu = p.chunk(2, dim=1)
            return list(sc.split(groups, dim=1)), list(mu.split(groups, dim=1))

        sc, mu = split(params)
        decoded: list[torch.Tensor] = []  # anchors only
        for k in range(len(groups)):
            if k:
                d_sc, d_mu = self.group_anchor[k - 1](torch.cat([sc[k], mu[k], *decoded], dim=1)).chunk(2, dim=1)
                sc[k], mu[k] = sc[k] + d_sc * anchors, mu[k] + d_mu * anchors
            decoded.append((rounding(ys[k] - mu[k]) + mu[k]) * anchors)
        delta = self.ctx_params(torch.cat([params, self.ctx(torch.cat(decoded, dim=1))], dim=1))
        d_sc, d_mu = split(delta * others)
        sc = [a + b for a, b in zip(sc, d_sc, strict=True)]
        mu = [a + b for a, b in zip(mu, d_mu, strict=True)]
        for k in range(len(groups)):
            if k:
                d_sc, d_mu = self.group_other[k - 1](torch.cat([sc[k], mu[k], *decoded[:k]], dim=1)).chunk(2, dim=1)
                sc[k], mu[k] = sc[k] + d_sc * others, mu[k] + d_mu * others
            if k + 1 < len(groups):
                decoded[k] = decoded[k] + (rounding(ys[k] - mu[k]) + mu[k]) * others
        return torch.cat(sc + mu, dim=1)

    # --- training forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, level: torch.Tensor, autocast: bool = False) -> dict:
        """Noisy-quantization forward pass for training; level is an integer lambda index per sample."""
        gain, inv_gain = self.gains_at(level.float())
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            y = self.g_a(x)
        y = y.float() * gain
        z = self.h_a(y)
        z_lik = self.density_z.likelihood(z + torch.empty_like(z).uniform_(-0.5, 0.5))
        params = self.entropy_parameters(y, self.h_s(ste_round(z)), ste_round)
        scales, means = params.chunk(2, dim=1)
        noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        y_lik = gaussian_likelihood(noisy - means, scales)
        y_hat = (ste_round(y - means) + means) * inv_gain
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            x_hat = self.g_s(y_hat)
        return {"x_hat": x_hat.float(), "y_lik": y_lik, "z_lik": z_lik}

    @torch.no_grad()
    def estimate(self, x: torch.Tensor, position: float) -> dict:
        """Hard-quantized pass (no coder): reconstruction and the model's own bit estimate, plus the quantized
        residuals q, their means and scales and the inverse gain, from which the synthesis input is rebuilt."""
        pos = torch.full((x.shape[0],), float(position))
        gain, inv_gain = self.gains_at(pos)
        y = self.g_a(x) * gain
        z_hat = torch.round(self.h_a(y))
        z_lik = self.density_z.likelihood(z_hat)
        scales, means = self.entropy_parameters(y, self.h_s(z_hat), torch.round).chunk(2, dim=1)
        q = torch.round(y - means)
        y_lik = gaussian_likelihood(q, scales)
        x_hat = self.g_s((q + means) * inv_gain)
        return {"x_hat": x_hat, "y_lik": y_lik, "z_lik": z_lik, "q": q, "means": means, "scales": scales,
                "inv_gain": inv_gain}
