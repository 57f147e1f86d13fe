"""Running the analysis and synthesis transforms over overlapping tiles, so memory stays bounded for any
image size. Each tile carries a halo wider than the transform's receptive field, and only its centre is
kept, so the result matches whole-image processing up to float rounding."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

LATENT_STRIDE = 16  # pixels per latent
HALO = 6  # latents of context on each side; the transforms' receptive fields span under 3


def tile_ranges(n: int, tile: int, halo: int = HALO) -> Iterator[tuple[int, int, int, int]]:
    """(keep_start, keep_end, read_start, read_end) in latent units along one axis."""
    for start in range(0, n, tile):
        end = min(n, start + tile)
        yield start, end, max(0, start - halo), min(n, end + halo)


def pixels_to_tensor(patch: np.ndarray, device, dtype=torch.float32) -> torch.Tensor:
    """(h, w, 3) uint8 pixels -> (1, 3, h, w) in [0, 1], channels_last (faster oneDNN convolutions)."""
    x = torch.from_numpy(np.ascontiguousarray(patch)).to(device).permute(2, 0, 1)[None]
    return x.to(dtype).div_(255.0).contiguous(memory_format=torch.channels_last)


BYTES_PER_TILE_PIXEL = 512  # measured: ~400-480 B per tile pixel at N=128 (benchmarks/memory.py)


def tile_for_memory(max_bytes: int, channels: int = 128) -> int:
    """Largest tile (latents per side, halo included in the cost) whose transforms fit in max_bytes."""
    per_pixel = BYTES_PER_TILE_PIXEL * channels / 128
    side_px = math.sqrt(max(max_bytes, 1) / per_pixel)
    return max(4, int(side_px // LATENT_STRIDE) - 2 * HALO)


def analyse_tiled(g_a: Callable, rgb_padded: np.ndarray, tile: int, device, dtype=torch.float32) -> torch.Tensor:
    """rgb_padded (H, W, 3) uint8 with H, W multiples of 64 -> g_a output (1, M, H/16, W/16)."""
    h, w = rgb_padded.shape[0] // LATENT_STRIDE, rgb_padded.shape[1] // LATENT_STRIDE
    out = None
    for r0, r1, a0, a1 in tile_ranges(h, tile):
        for c0, c1, b0, b1 in tile_ranges(w, tile):
            s = LATENT_STRIDE
            patch = rgb_padded[a0 * s : a1 * s, b0 * s : b1 * s]
            y = g_a(pixels_to_tensor(patch, device, dtype))
            if out is None:
                out = torch.empty((1, y.shape[1], h, w), dtype=y.dtype, device=y.device)
            out[:, :, r0:r1, c0:c1] = y[:, :, r0 - a0 : r1 - a0, c0 - b0 : c1 - b0]
    return out


def synthesize_tiled(g_s: Callable, y_hat: torch.Tensor, tile: int, size: tuple[int, int]) -> np.ndarray:
    """y_hat (1, M, h, w) -> pixels (H, W, 3) uint8 cropped to size = (W, H)."""
    width, height = size
    _, _, h, w = y_hat.shape
    out = np.empty((height, width, 3), dtype=np.uint8)
    s = LATENT_STRIDE
    for r0, r1, a0, a1 in tile_ranges(h, tile):
        if r0 * s >= height:
            break
        for c0, c1, b0, b1 in tile_ranges(w, tile):
            if c0 * s >= width:
                break
            x = g_s(y_hat[:, :, a0:a1, b0:b1].contiguous(memory_format=torch.channels_last))
            keep = x[0, :, (r0 - a0) * s : (r1 - a0) * s, (c0 - b0) * s : (c1 - b0) * s]
            rows, cols = min(r1 * s, height) - r0 * s, min(c1 * s, width) - c0 * s
            keep = keep[:, :rows, :cols].clamp(0, 1).mul(255).round().to(torch.uint8)
            out[r0 * s : r0 * s + rows, c0 * s : c0 * s + cols] = keep.permute(1, 2, 0).cpu().numpy()
    return out
