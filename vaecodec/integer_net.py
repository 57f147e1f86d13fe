"""Exact fixed-point re-evaluation of the hyper-synthesis and the context model (Ballé et al. 2019,
"Integer networks").

Everything that decides a probability must be bit-identical in encoder and decoder on any machine. Float
convolutions are not (summation order, SIMD width, Winograd). Here weights and activations are integers,
the convolutions run in float64 on the CPU as plain sums of products of integers whose every partial sum
stays below 2**53 (so any summation order gives the same exact integer), and rescaling is a division by a
power of two followed by floor, which is exact too.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ACT_BITS = 8  # activations carry 8 fractional bits
WEIGHT_MAX = 2**14  # largest integer weight magnitude
EXACT_LIMIT = 2.0**52
BAND_HALO = 3  # z rows/columns of context: the hyper-synthesis sees under 2 either side
BAND_BUDGET = 784  # z positions per tile (28 x 28): float64 im2col buffers stay under 0.4 GB


class IntegerLayer:
    """One conv or transposed conv with integer weights/bias and a per-output-channel power-of-two shift.

    out_int = floor((conv(x_int, w_int) + b_int) / 2**shift[c] + 1/2), optionally ReLU'd;
    x_int carries ACT_BITS fractional bits, w_int carries shift[c] fractional bits, so out_int does too.
    """

    def __init__(self, kind: str, weight: np.ndarray, bias: np.ndarray, shift: np.ndarray, stride: int,
                 padding: int, output_padding: int, relu: bool):
        self.kind, self.stride, self.padding, self.output_padding, self.relu = (
            kind, stride, padding, output_padding, relu)
        self.weight = torch.from_numpy(np.asarray(weight, dtype=np.float64))
        self.bias = torch.from_numpy(np.asarray(bias, dtype=np.float64))
        self.divisor = torch.from_numpy(2.0 ** np.asarray(shift, dtype=np.float64)).view(1, -1, 1, 1)
        self.shift = np.asarray(shift, dtype=np.int64)
        wsum = self.weight.abs().sum(dim=(0, 2, 3) if kind == "deconv" else (1, 2, 3)).max()
        self.weight_l1 = float(wsum)

    def __call__(self, x: torch.Tensor, stride: int | None = None, padding: int | None = None) -> torch.Tensor:
        """The layer on integer activations x; a conv may be run at another stride or padding (the context
        model evaluates its 5x5 conv only where the checkerboard needs it)."""
        bound = float(x.abs().max()) * self.weight_l1 + float(self.bias.abs().max()) if x.numel() else 0.0
        if bound >= EXACT_LIMIT:
            raise OverflowError("integer hyper-synthesis would leave the exact float64 range")
        stride = self.stride if stride is None else stride
        padding = self.padding if padding is None else padding
        if self.kind == "deconv":
            acc = F.conv_transpose2d(x, self.weight, None, stride, padding, self.output_padding)
        else:
            acc = F.conv2d(x, self.weight, None, stride, padding)
        acc = acc + self.bias.view(1, -1, 1, 1)
        out = torch.floor(acc / self.divisor + 0.5)
        return out.clamp_min(0) if self.relu else out


def layer_signature(layer: nn.Module, relu: bool) -> dict:
    """What a model file declares about one integer layer besides its numbers (checked again at load)."""
    deconv = isinstance(layer, nn.ConvTranspose2d)
    return {"kind": "deconv" if deconv else "conv", "stride": layer.stride[0], "padding": layer.padding[0],
            "output_padding": layer.output_padding[0] if deconv else 0, "relu": relu}


SIGNATURE_KEYS = ("kind", "stride", "padding", "output_padding", "relu")


def quantize_layer(layer: nn.Module, relu: bool) -> dict:
    """Integer weights for one float layer, choosing per output channel the largest exact shift."""
    w = layer.weight.detach().double().cpu().numpy()
    b = layer.bias.detach().double().cpu().numpy()
    out_axis = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
    wmax = np.abs(np.moveaxis(w, out_axis, 0)).reshape(w.shape[out_axis], -1).max(axis=1)
    shift = np.floor(np.log2(WEIGHT_MAX / np.maximum(wmax, 1e-12))).astype(np.int64)
    shift = np.clip(shift, 0, 30)
    shape = [1] * w.ndim
    shape[out_axis] = -1
    w_int = np.round(w * (2.0 ** shift).reshape(shape))
    b_int = np.round(b * 2.0 ** (shift + ACT_BITS))
    return {"weight": w_int.astype(np.int32), "bias": b_int.astype(np.int64), "shift": shift,
            **layer_signature(layer, relu)}


def sequential_layers(seq) -> list[tuple[nn.Module, bool]]:
    """(conv layer, followed by ReLU) pairs of a Conv/ConvTranspose/ReLU stack; anything else has no exact form."""
    mods = list(seq)
    layers = []
    for i, m in enumerate(mods):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            layers.append((m, i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU)))
        elif not isinstance(m, nn.ReLU):
            raise TypeError(f"no exact integer form for {type(m).__name__}")
    return layers


def quantize_sequential(seq: nn.Sequential) -> list[dict]:
    return [quantize_layer(m, relu) for m, relu in sequential_layers(seq)]


class IntegerNet:
    """The integer hyper-synthesis: integer symbols in, means and scales with ACT_BITS fraction bits out."""

    def __init__(self, layers: list[dict]):
        self.layers = [IntegerLayer(**spec) for spec in layers]

    @torch.no_grad()
    def __call__(self, z_symbols: torch.Tensor, band: int | None = None) -> torch.Tensor:
        """Run over square tiles of z (`band` positions a side, with a halo covering the receptive field) to
        bound the float64 im2col buffers; integer arithmetic makes the result identical to one whole pass,
        whatever the tile. Square tiles waste less on halos than full-width row bands."""
        z = z_symbols.to(torch.float64).cpu() * 2.0**ACT_BITS
        h, w = z.shape[2:]
        band = band or max(2, int(BAND_BUDGET**0.5))
        if h <= band and w <= band:
            return self._run(z)
        up = self.upsampling
        result = None  # filled tile by tile: no second full-size copy
        for r0 in range(0, h, band):
            r1 = min(h, r0 + band)
            a0, a1 = max(0, r0 - BAND_HALO), min(h, r1 + BAND_HALO)
            for c0 in range(0, w, band):
                c1 = min(w, c0 + band)
                b0, b1 = max(0, c0 - BAND_HALO), min(w, c1 + BAND_HALO)
                out = self._run(z[:, :, a0:a1, b0:b1])
                if result is None:
                    result = torch.empty((z.shape[0], out.shape[1], h * up, w * up), dtype=out.dtype)
                result[:, :, r0 * up : r1 * up, c0 * up : c1 * up] = (
                    out[:, :, (r0 - a0) * up : (r1 - a0) * up, (c0 - b0) * up : (c1 - b0) * up])
        return result

    @property
    def upsampling(self) -> int:
        f = 1
        for layer in self.layers:
            if layer.kind == "deconv":
                f *= layer.stride
        return f

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:  # float64 convolutions on the CPU never take oneDNN/Winograd paths
            x = layer(x)
        return x  # integer-valued float64, ACT_BITS fractional bits


def checkerboard_windows(sources: tuple[torch.Tensor, ...], h: int, w: int, tile: int, halo: int, parity: int):
    """Walk the positions with (row + col) % 2 == parity, tile by tile and per tile in its two stride-2
    sub-grids. Yields (window, rows, cols): the sources (1, C, h, w) concatenated over the tile plus a halo, zero
    outside the image (what a conv's own padding would read), offset so that a stride-2 conv without padding
    gives one output per position of the sub-grid; and the row and column slices of those positions."""
    for r0 in range(0, h, tile):
        r1 = min(h, r0 + tile)
        for c0 in range(0, w, tile):
            c1 = min(w, c0 + tile)
            a0, a1, b0, b1 = max(0, r0 - halo), min(h, r1 + halo), max(0, c0 - halo), min(w, c1 + halo)
            window = F.pad(torch.cat([t[:, :, a0:a1, b0:b1] for t in sources], dim=1),
                           (b0 - (c0 - halo), (c1 + halo) - b1, a0 - (r0 - halo), (r1 + halo) - a1))
            for dr in (0, 1):
                dc = (r0 + c0 + dr + parity) % 2  # the sub-grid's first column in row r0 + dr
                if r0 + dr < r1 and c0 + dc < c1:
                    yield window[:, :, dr:, dc:], slice(r0 + dr, r1, 2), slice(c0 + dc, c1, 2)


CONTEXT_TILE = 48  # y positions per tile side for the context model: float64 im2col of 5x5xM stays ~0.1 GB


class IntegerContext:
    """The checkerboard context model in exact integers: decoded anchors and hyper-synthesis output (both with
    ACT_BITS fraction bits) in, the corrections to the non-anchors' scales and means out.

    Mirrors GainedHyperprior.entropy_parameters: delta = ctx_params([params, ctx(anchors)])."""

    def __init__(self, ctx: dict, params: list[dict]):
        self.ctx = IntegerLayer(**ctx)
        self.params = [IntegerLayer(**spec) for spec in params]
        self.halo = self.ctx.weight.shape[-1] // 2

    @torch.no_grad()
    def apply(self, anchors_int: torch.Tensor, params_int: torch.Tensor, tile: int = CONTEXT_TILE) -> None:
        """Add the corrections into params_int (1, 2M, h, w) in place at the non-anchors ((row + col) odd);
        anchors_int (1, M, h, w) must be zero there.

        Only the non-anchors are computed (half the work of a full pass): per tile, the 5x5 conv runs at
        stride 2 over the two sub-grids of non-anchors, and the 1x1 layers only on their positions. A tile
        reads a halo covering the kernel and only its own positions of params_int, which no other tile
        changes, so the in-place update equals one whole pass whatever the tile."""
        h, w = params_int.shape[2:]
        for window, rows, cols in checkerboard_windows((anchors_int,), h, w, tile, self.halo, parity=1):
            target = params_int[:, :, rows, cols]
            x = torch.cat([target, self.ctx(window, stride=2, padding=0)], dim=1)  # one output per non-anchor
            for layer in self.params:
                x = layer(x)
            target += x


GROUP_TILE = 48  # y positions per tile side for a channel group's net


class IntegerGroupNet:
    """One channel group's correction net in exact integers (mirrors network.group_net): the group's current
    scales and means and the earlier groups' decoded values (all with ACT_BITS fraction bits) in, corrections
    of the group's scales and means out."""

    def __init__(self, layers: list[dict]):
        self.layers = [IntegerLayer(**spec) for spec in layers]
        self.halo = self.layers[0].weight.shape[-1] // 2

    @torch.no_grad()
    def apply(self, params_int: torch.Tensor, decoded_int: torch.Tensor, start: int, stop: int, anchors: bool,
              tile: int = GROUP_TILE) -> None:
        """Add the corrections into params_int (1, 2M, h, w) in place, for channels start:stop, at the anchors
        ((row + col) even) or at the rest; decoded_int (1, start, h, w) holds the earlier groups' values (zero
        where not decoded yet).

        As in IntegerContext, only the positions that change are computed: per tile, the first conv runs at
        stride 2 over the two sub-grids of those positions. Every tile reads the parameters as they were
        before the call (the corrections are collected first), so the result equals one whole pass."""
        m = params_int.shape[1] // 2
        h, w = params_int.shape[2:]
        parity = 0 if anchors else 1
        inputs = (params_int[:, start:stop], params_int[:, m + start : m + stop], decoded_int)
        delta = torch.zeros((1, 2 * (stop - start), h, w), dtype=torch.float64)
        for window, rows, cols in checkerboard_windows(inputs, h, w, tile, self.halo, parity):
            x = self.layers[0](window, stride=2, padding=0)
            for layer in self.layers[1:]:
                x = layer(x)
            delta[:, :, rows, cols] = x
        c = stop - start
        params_int[:, start:stop] += delta[:, :c]
        params_int[:, m + start : m + stop] += delta[:, c:]
