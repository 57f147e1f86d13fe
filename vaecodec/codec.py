"""Image <-> .vae bytes: pixels -> latents -> integer symbols -> range-coded stream -> container, and back.

The float transforms (g_a, h_a, g_s) may differ slightly between machines; everything that decides a
probability (z symbols, the integer hyper-synthesis, scale indices, means) is exact, so the stream always
decodes to the same symbols and the pixels differ by at most rounding of the float synthesis.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .container import VaeFile, pack, quantize_quality, unpack
from .errors import CorruptFileError, ModelMismatchError
from .imageio import Planes, from_planes, to_planes
from .integer_net import ACT_BITS
from .model_io import LoadedModel, load_model
from .network import STRIDE, quality_position
from .range_coding import SymbolReader, SymbolWriter

DEFAULT_QUALITY = 75.0
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024


@dataclass
class Symbols:
    """The integer content of a stream: hyper-latent symbols and latent residuals around their means,
    with what the exact hyper-synthesis derived from z (kept so it is computed once)."""

    z: np.ndarray  # (N, h, w) int64
    y: np.ndarray  # (M, H, W) int64
    means: np.ndarray  # (M, H, W) float64, multiples of 2**-ACT_BITS
    scale_index: np.ndarray  # (M, H, W) int64, which y table each latent uses


class Codec:
    """A loaded model plus the encode/decode pipeline. Reuse one instance: loading costs more than coding."""

    def __init__(self, model: LoadedModel | str | None = None, device: str = "cpu"):
        self.model = model if isinstance(model, LoadedModel) else load_model(model)
        self.device = torch.device(device)
        self.net = self.model.network.to(self.device).eval()
        self.levels = len(self.model.config.lambdas)

    # --- internals ------------------------------------------------------------------------------------
    def _gains(self, quality: float) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.tensor([quality_position(quality, self.levels)], dtype=torch.float32, device=self.device)
        return self.net.gains_at(pos)

    def _hyper(self, z_symbols: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Exact means (float64, multiples of 2**-ACT_BITS) and scale-table indices from z symbols."""
        params = self.model.h_s_int(torch.from_numpy(z_symbols)[None])[0].numpy()
        m = self.model.config.M
        h, w = shape
        scales_int, means_int = params[:m, :h, :w], params[m:, :h, :w]
        idx = np.searchsorted(self.model.y_thresholds, scales_int.astype(np.int64), side="right") - 1
        idx = np.clip(idx, 0, len(self.model.y_tables) - 1)
        return means_int / float(2**ACT_BITS), idx

    @torch.inference_mode()
    def analyse(self, rgb: np.ndarray, quality: float) -> Symbols:
        """Pixels (H, W, 3) uint8 -> integer symbols at the given quality."""
        h, w = rgb.shape[:2]
        if not rgb.flags.writeable:
            rgb = rgb.copy()
        x = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1)[None].float().div_(255.0)
        ph, pw = math.ceil(h / STRIDE) * STRIDE, math.ceil(w / STRIDE) * STRIDE
        x = F.pad(x, (0, pw - w, 0, ph - h), mode="replicate")
        gain, _ = self._gains(quality)
        y = self.net.g_a(x) * gain
        z = self.net.h_a(y)
        z_sym = torch.round(z)[0].cpu().to(torch.int64).numpy()
        means, idx = self._hyper(z_sym, y.shape[2:])
        y_res = np.round(y[0].cpu().double().numpy() - means).astype(np.int64)
        return Symbols(z_sym, y_res, means, idx)

    @torch.inference_mode()
    def synthesize(self, symbols: Symbols, quality: float, size: tuple[int, int]) -> np.ndarray:
        """Integer symbols -> pixels (H, W, 3) uint8."""
        _, inv_gain = self._gains(quality)
        y_hat = torch.from_numpy(symbols.y + symbols.means).float().to(self.device)[None] * inv_gain
        x_hat = self.net.g_s(y_hat)
        w, h = size
        x_hat = x_hat[0, :, :h, :w].clamp_(0, 1).mul_(255).round_().to(torch.uint8)
        return x_hat.permute(1, 2, 0).cpu().numpy()

    def write_stream(self, symbols: Symbols) -> bytes:
        writer = SymbolWriter()
        for c, table in enumerate(self.model.z_tables):
            writer.write(symbols.z[c], table)
        for k, table in enumerate(self.model.y_tables):
            writer.write(symbols.y[symbols.scale_index == k], table)
        return writer.getvalue()

    def read_stream(self, payload: bytes, size: tuple[int, int]) -> Symbols:
        w, h = size
        ph, pw = math.ceil(h / STRIDE) * STRIDE, math.ceil(w / STRIDE) * STRIDE
        zh, zw = ph // STRIDE, pw // STRIDE
        reader = SymbolReader(payload)
        z = np.empty((len(self.model.z_tables), zh, zw), dtype=np.int64)
        for c, table in enumerate(self.model.z_tables):
            z[c] = reader.read(zh * zw, table).reshape(zh, zw)
        yh, yw = ph // 16, pw // 16
        means, idx = self._hyper(z, (yh, yw))
        y = np.empty(idx.shape, dtype=np.int64)
        for k, table in enumerate(self.model.y_tables):
            mask = idx == k
            y[mask] = reader.read(int(mask.sum()), table)
        return Symbols(z, y, means, idx)

    # --- public ---------------------------------------------------------------------------------------
    def encode_planes(self, planes: Planes, quality: float = DEFAULT_QUALITY) -> bytes:
        quality = quantize_quality(quality)
        symbols = self.analyse(planes.rgb, quality)
        chunks = {}
        if planes.alpha is not None:
            chunks[b"ALPH"] = zlib.compress(planes.alpha.tobytes(), 9)
        w, h = planes.size
        f = VaeFile(w, h, planes.layout, quality, self.model.name, self.model.fingerprint_bytes,
                    self.write_stream(symbols), chunks)
        return pack(f)

    def encode(self, image, quality: float = DEFAULT_QUALITY) -> bytes:
        """PIL image -> .vae bytes."""
        return self.encode_planes(to_planes(image), quality)

    def parse(self, data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> VaeFile:
        f = unpack(data, max_pixels=max_pixels)
        if f.model_fingerprint != self.model.fingerprint_bytes:
            raise ModelMismatchError(
                f"file was made with model '{f.model_name}' ({f.model_fingerprint.hex()}), but the loaded "
                f"model is '{self.model.name}' ({self.model.fingerprint_bytes.hex()}); pass its --model")
        return f

    def decode(self, data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        """.vae bytes -> PIL image (mode RGB, L, RGBA or LA as encoded)."""
        f = self.parse(data, max_pixels)
        symbols = self.read_stream(f.payload, (f.width, f.height))
        rgb = self.synthesize(symbols, f.quality, (f.width, f.height))
        alpha = None
        if f.layout in ("RGBA", "LA"):
            alpha = _inflate_alpha(f.chunks.get(b"ALPH"), f.width * f.height).reshape(f.height, f.width)
        return from_planes(rgb, f.layout, alpha)


def _inflate_alpha(data: bytes | None, size: int) -> np.ndarray:
    if data is None:
        raise CorruptFileError("file is damaged (alpha plane missing)")
    d = zlib.decompressobj()
    try:
        raw = d.decompress(data, size + 1)
    except zlib.error:
        raise CorruptFileError("file is damaged (alpha plane)") from None
    if len(raw) != size:
        raise CorruptFileError("file is damaged (alpha plane has the wrong size)")
    return np.frombuffer(raw, dtype=np.uint8)
