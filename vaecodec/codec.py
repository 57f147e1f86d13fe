"""Image <-> .vae bytes: pixels -> latents -> integer symbols -> range-coded stream -> container, and back.

The float transforms (g_a, h_a, g_s) may differ slightly between machines; everything that decides a
probability (z symbols, the integer hyper-synthesis and context model, scale indices, means) is exact, so the
stream always decodes to the same symbols and the pixels differ by at most rounding of the float synthesis.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from .container import DEFAULT_MAX_PIXELS, VaeFile, pack, quantize_quality, unpack
from .effort import DEFAULT_EFFORT, EFFORT_ITERATIONS, check_effort
from .errors import CorruptFileError, ModelMismatchError, VaecodecError
from .imageio import METADATA_CHUNKS, Planes, from_planes, to_planes
from .integer_net import ACT_BITS
from .model_io import LoadedModel, load_model
from .network import STRIDE, anchor_mask, quality_position
from .range_coding import SymbolReader, SymbolWriter
from .refine import DEFAULT_REFINE_TILE, MIN_REFINE_TILE, refine_tiled
from .tiling import analyse_tiled, synthesize_tiled

DEFAULT_QUALITY = 75.0
Z_LIMIT = 1 << 15  # |z| symbols beyond this are clamped by the encoder and mean a damaged file to the decoder
Y_LIMIT = 1 << 20  # likewise for latent residuals
DEFAULT_TILE = 64  # latents (1024 pixels) per tile side


@dataclass
class Symbols:
    """The integer content of a stream: hyper-latent symbols and latent residuals around their means,
    with what the exact hyper-synthesis derived from z (kept so it is computed once)."""

    z: np.ndarray  # (N, h, w) int64
    y: np.ndarray  # (M, H, W) int32 (|y| <= Y_LIMIT)
    means: np.ndarray  # (M, H, W) float64, multiples of 2**-ACT_BITS
    scale_index: np.ndarray  # (M, H, W) uint8, which y table each latent uses

    def digest(self) -> str:
        """SHA-256 of the coded integers (z then y, little-endian int64): the same on every machine."""
        return hashlib.sha256(self.z.astype("<i8").tobytes() + self.y.astype("<i8").tobytes()).hexdigest()


class Codec:
    """A loaded model plus the encode/decode pipeline. Reuse one instance: loading costs more than coding."""

    def __init__(self, model: LoadedModel | str | None = None, device: str = "cpu", tile: int = DEFAULT_TILE,
                 refine_tile: int | None = None):
        self.model = model if isinstance(model, LoadedModel) else load_model(model)
        self.device = torch.device(device)
        self.tile = tile  # latents per tile side: bounds the transforms' memory whatever the image size
        # likewise for the latent search of effort >= 2 (about 3x the memory per pixel): by default 3/4 of the
        # transforms' tile, so a smaller `tile` asked for less memory there too
        self.refine_tile = refine_tile or max(MIN_REFINE_TILE, min(DEFAULT_REFINE_TILE, tile * 3 // 4 // 4 * 4))
        # channels_last makes oneDNN's convolutions markedly faster on CPU; it never touches the symbols' path
        self.net = self.model.network.to(self.device).eval().to(memory_format=torch.channels_last)
        self.levels = len(self.model.config.lambdas)

    # --- internals ------------------------------------------------------------------------------------
    def position(self, quality: float) -> float:
        """Where a quality sits among the model's trained lambdas (fractional; below 0 extrapolates)."""
        return quality_position(quality, self.levels, self.model.config.lowest_position)

    @torch.no_grad()
    def _gains(self, quality: float) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.tensor([self.position(quality)], dtype=torch.float32, device=self.device)
        return self.net.gains_at(pos)

    def _hyper_params(self, z_symbols: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
        """Exact hyper-synthesis output (1, 2M, h, w): scales then means, integer-valued float64 carrying
        ACT_BITS fraction bits."""
        try:
            params = self.model.h_s_int(torch.from_numpy(z_symbols)[None])
        except OverflowError:
            raise CorruptFileError("file is damaged (hyper-latent out of range)") from None
        h, w = shape
        return params[:, :, :h, :w].contiguous()

    def _scale_index(self, scales_int: np.ndarray) -> np.ndarray:
        """(M, h, w) uint8: which y table each latent uses, from its exact scale."""
        thresholds = np.asarray(self.model.y_thresholds, dtype=np.float64)
        idx = np.empty(scales_int.shape, dtype=np.uint8)  # one channel at a time: no full-size int64 temporaries
        for c in range(scales_int.shape[0]):
            i = np.searchsorted(thresholds, scales_int[c], side="right") - 1
            idx[c] = np.clip(i, 0, len(self.model.y_tables) - 1)
        return idx

    def _anchors(self, shape: tuple[int, int]) -> np.ndarray | None:
        """(h, w) bool, True where the checkerboard's first pass codes; None for a context-free model."""
        if self.model.context_int is None:
            return None
        return anchor_mask(*shape)[0, 0].numpy().astype(bool)

    def _apply_context(self, params: torch.Tensor, y_res: np.ndarray, anchors: np.ndarray,
                       decoding: bool = True) -> None:
        """Refine the non-anchors' means and scales in `params` (in place) from the decoded anchors."""
        m = self.model.config.M
        mask = torch.from_numpy(anchors)
        anchors_int = torch.from_numpy(y_res).to(torch.float64)  # the one full-size temporary
        anchors_int.mul_(2**ACT_BITS).add_(params[0, m:]).mul_(mask)
        try:
            self.model.context_int.apply(anchors_int[None], params)
        except OverflowError:
            raise _range_error(decoding) from None

    def _apply_group(self, params: torch.Tensor, y_res: np.ndarray, start: int, anchors: np.ndarray,
                     anchor_pass: bool, decoding: bool) -> None:
        """Correct the means and scales of the channel group starting at `start` (in place) from the groups
        before it: at the anchors from their anchors, or at the rest from them whole."""
        m = self.model.config.M
        group = [a for a, _ in self.model.channel_groups].index(start)
        stop = self.model.channel_groups[group][1]
        net = (self.model.group_anchor_int if anchor_pass else self.model.group_other_int)[group - 1]
        decoded = torch.from_numpy(y_res[:start]).to(torch.float64).mul_(2**ACT_BITS).add_(params[0, m : m + start])
        if anchor_pass:
            decoded.mul_(torch.from_numpy(anchors))
        try:
            net.apply(params, decoded[None], start, stop, anchor_pass)
        except OverflowError:
            raise _range_error(decoding) from None

    def _split(self, params: torch.Tensor, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(means as float64 multiples of 2**-ACT_BITS, scale-table indices) of channels start:stop from exact
        parameters."""
        m = self.model.config.M
        stop = m if stop is None else stop
        p = params[0].numpy()
        return p[m + start : m + stop] / float(2**ACT_BITS), self._scale_index(p[start:stop])

    def _passes(self, anchors: np.ndarray | None) -> list[tuple[int, int, np.ndarray | None]]:
        """Coding passes over the latents in decoding order, as (first channel, end channel, positions or None
        for all): one pass; or the checkerboard's anchors then the rest; or with channel groups every anchor
        group then every non-anchor group. `anchors` comes from _anchors (the same object marks anchor passes)."""
        if anchors is None:
            return [(0, self.model.config.M, None)]
        groups = self.model.channel_groups or [(0, self.model.config.M)]
        return [(a, b, anchors) for a, b in groups] + [(a, b, ~anchors) for a, b in groups]

    def _code_latents(self, params: torch.Tensor, shape: tuple[int, int], code, decoding: bool):
        """Walk the coding passes in decoding order, refining `params` in place before each pass that depends
        on earlier ones, and call code(start, stop, part, means, scale_index, y_res) to fill y_res there (the
        encoder computes residuals, the decoder reads them). Returns (y_res, means, scale_index)."""
        m = self.model.config.M
        h, w = shape
        y_res = np.zeros((m, h, w), dtype=np.int32)
        means = np.empty((m, h, w), dtype=np.float64)
        idx = np.empty((m, h, w), dtype=np.uint8)
        anchors = self._anchors(shape)
        for start, stop, part in self._passes(anchors):
            anchor_pass = part is anchors
            if anchors is not None and not anchor_pass and start == 0:
                self._apply_context(params, y_res, anchors, decoding)  # all anchors are decoded: refine the rest
            if start > 0:
                self._apply_group(params, y_res, start, anchors, anchor_pass, decoding)
            means[start:stop], idx[start:stop] = self._split(params, start, stop)
            code(start, stop, part, means, idx, y_res)
        return y_res, means, idx

    def _padded(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        ph, pw = math.ceil(h / STRIDE) * STRIDE, math.ceil(w / STRIDE) * STRIDE
        return np.pad(rgb, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")

    @torch.inference_mode()
    def latents(self, rgb: np.ndarray) -> torch.Tensor:
        """Pixels (H, W, 3) uint8 -> analysis-transform output before any gain (quality-independent)."""
        return analyse_tiled(self.net.g_a, self._padded(rgb), self.tile, self.device)

    @torch.inference_mode()
    def quantize(self, latents: torch.Tensor, quality: float) -> Symbols:
        """Analysis output -> integer symbols at the given quality."""
        gain, _ = self._gains(quality)
        return self._symbols(latents * gain)

    def refine(self, rgb: np.ndarray, latents: torch.Tensor, quality: float, effort: int) -> Symbols:
        """Symbols after `EFFORT_ITERATIONS[effort]` gradient steps on the latents (see refine.py)."""
        gain, _ = self._gains(quality)
        y = refine_tiled(self.net, self._padded(rgb), latents * gain, self.position(quality),
                         EFFORT_ITERATIONS[check_effort(effort)], self.refine_tile, (rgb.shape[1], rgb.shape[0]))
        with torch.inference_mode():
            return self._symbols(y)

    def _symbols(self, y: torch.Tensor) -> Symbols:
        """Gained latents -> hyper-latent symbols, exact hyper-synthesis (and context), latent residuals."""
        z = self.net.h_a(y)
        z_sym = torch.round(z).clamp_(-Z_LIMIT, Z_LIMIT)[0].cpu().to(torch.int64).numpy()
        params = self._hyper_params(z_sym, y.shape[2:])
        y_np = y[0].cpu().numpy()

        def residuals(start, stop, part, means, idx, y_res):
            for c in range(start, stop):  # small float64 temporaries
                r = np.clip(np.round(y_np[c].astype(np.float64) - means[c]), -Y_LIMIT, Y_LIMIT).astype(np.int32)
                if part is None:
                    y_res[c] = r
                else:
                    y_res[c][part] = r[part]

        y_res, means, idx = self._code_latents(params, y.shape[2:], residuals, decoding=False)
        return Symbols(z_sym, y_res, means, idx)

    def analyse(self, rgb: np.ndarray, quality: float, effort: int = DEFAULT_EFFORT) -> Symbols:
        """Pixels (H, W, 3) uint8 -> integer symbols at the given quality."""
        check_effort(effort)
        latents = self.latents(rgb)
        if EFFORT_ITERATIONS[effort] == 0:
            return self.quantize(latents, quality)
        return self.refine(rgb, latents, quality, effort)

    @torch.inference_mode()
    def synthesize(self, symbols: Symbols, quality: float, size: tuple[int, int]) -> np.ndarray:
        """Integer symbols -> pixels (H, W, 3) uint8."""
        _, inv_gain = self._gains(quality)
        y_hat = torch.from_numpy(symbols.y + symbols.means).float().to(self.device)[None] * inv_gain
        return synthesize_tiled(self.net.g_s, y_hat, self.tile, size)

    def write_stream(self, symbols: Symbols) -> bytes:
        writer = SymbolWriter()
        for c, table in enumerate(self.model.z_tables):
            writer.write(symbols.z[c], table)
        for start, stop, part in self._passes(self._anchors(symbols.y.shape[1:])):
            y, idx = symbols.y[start:stop], symbols.scale_index[start:stop]
            for k, table in enumerate(self.model.y_tables):
                sel = idx == k
                writer.write(y[sel if part is None else sel & part], table)
        return writer.getvalue()

    def read_stream(self, payload: bytes, size: tuple[int, int]) -> Symbols:
        w, h = size
        ph, pw = math.ceil(h / STRIDE) * STRIDE, math.ceil(w / STRIDE) * STRIDE
        zh, zw = ph // STRIDE, pw // STRIDE
        reader = SymbolReader(payload)
        z = np.empty((len(self.model.z_tables), zh, zw), dtype=np.int64)
        for c, table in enumerate(self.model.z_tables):
            z[c] = reader.read(zh * zw, table).reshape(zh, zw)
        if np.abs(z).max(initial=0) > Z_LIMIT:
            raise CorruptFileError("file is damaged (hyper-latent out of range)")
        shape = (ph // 16, pw // 16)

        def read(start, stop, part, means, idx, y_res):
            y, ix = y_res[start:stop], idx[start:stop]
            for k, table in enumerate(self.model.y_tables):
                mask = ix == k if part is None else (ix == k) & part
                y[mask] = np.clip(reader.read(int(mask.sum()), table), -Y_LIMIT - 1, Y_LIMIT + 1)
            if np.abs(y).max(initial=0) > Y_LIMIT:
                raise CorruptFileError("file is damaged (latent out of range)")

        y, means, idx = self._code_latents(self._hyper_params(z, shape), shape, read, decoding=True)
        return Symbols(z, y, means, idx)

    # --- public ---------------------------------------------------------------------------------------
    def _pack(self, planes: Planes, quality: float, stream: bytes, chunks: dict) -> bytes:
        w, h = planes.size
        return pack(VaeFile(w, h, planes.layout, quality, self.model.name, self.model.fingerprint_bytes,
                            stream, chunks))

    @staticmethod
    def _chunks(planes: Planes, keep_metadata: bool) -> dict[bytes, bytes]:
        chunks = {}
        if planes.alpha is not None:
            chunks[b"ALPH"] = zlib.compress(planes.alpha.tobytes(), 9)
        if keep_metadata:
            chunks.update({tag: data for tag, data in planes.metadata.items() if data})
        return chunks

    def encode_planes(self, planes: Planes, quality: float = DEFAULT_QUALITY, keep_metadata: bool = True,
                      effort: int = DEFAULT_EFFORT) -> bytes:
        quality = quantize_quality(quality)
        stream = self.write_stream(self.analyse(planes.rgb, quality, effort))
        return self._pack(planes, quality, stream, self._chunks(planes, keep_metadata))

    def encode_to_size(self, planes: Planes, max_bytes: int, keep_metadata: bool = True,
                       steps: int = 12, effort: int = DEFAULT_EFFORT) -> tuple[bytes, bool]:
        """The highest quality whose whole file fits in max_bytes (bisection over the continuous quality,
        the analysis transform run once). Returns (file, fits); if even quality 1 is larger, the smallest file
        made. With effort > 1 the latents are then refined at the chosen quality, or at slightly lower ones if
        the refined file would overshoot (up to 3 searches, so up to 3x that effort's time); the plain file is
        kept if no refined one fits."""
        latents = self.latents(planes.rgb)
        chunks = self._chunks(planes, keep_metadata)

        sizes: dict[float, int] = {}

        def make(q: float) -> bytes:
            q = quantize_quality(q)
            data = self._pack(planes, q, self.write_stream(self.quantize(latents, q)), chunks)
            sizes[q] = len(data)
            return data

        def make_refined(q: float) -> bytes:
            return self._pack(planes, q, self.write_stream(self.refine(planes.rgb, latents, q, effort)), chunks)

        refining = EFFORT_ITERATIONS[check_effort(effort)] > 0
        best = make(1.0)
        if len(best) > max_bytes:
            if refining:
                refined = make_refined(unpack(best).quality)
                return (refined, True) if len(refined) <= max_bytes else (min(best, refined, key=len), False)
            return best, False
        top = make(100.0)
        if len(top) <= max_bytes:
            best = top
        else:
            lo, hi = 1.0, 100.0
            for _ in range(steps):
                mid = (lo + hi) / 2
                data = make(mid)
                if len(data) <= max_bytes:
                    lo, best = mid, data
                else:
                    hi = mid
                if hi - lo < 0.02:
                    break
        if not refining:
            return best, True
        # Refinement moves the rate a few percent either way at a fixed quality, so try the plain search's
        # answer first, then the qualities whose plain files left 2% and 5% of the budget free.
        q_best = unpack(best).quality
        tries = [q_best] + [max((q for q, n in sizes.items() if n <= max_bytes * f), default=1.0)
                            for f in (0.98, 0.95)]
        for q in dict.fromkeys(tries):
            refined = make_refined(q)
            if len(refined) <= max_bytes:
                return refined, True
        return best, True  # no refined file fits: the plain one does

    def encode(self, image, quality: float = DEFAULT_QUALITY, keep_metadata: bool = True,
               effort: int = DEFAULT_EFFORT) -> bytes:
        """PIL image -> .vae bytes (ICC profile, EXIF and XMP kept unless keep_metadata is False).
        Higher effort (1..5) searches the latents longer: a better size/quality trade-off (at a fixed quality
        usually a better image, not always a smaller file), much slower encoding."""
        return self.encode_planes(to_planes(image), quality, keep_metadata, effort)

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
        img = from_planes(rgb, f.layout, alpha)
        for tag, key in METADATA_CHUNKS.items():
            if tag in f.chunks:
                img.info[key] = f.chunks[tag]
        return img


def _range_error(decoding: bool) -> VaecodecError:
    """What a latent beyond the context model's exact integer range means: damage when decoding, an image the
    model cannot code when encoding."""
    if decoding:
        return CorruptFileError("file is damaged (latent out of range)")
    return VaecodecError("image gives latents beyond the context model's exact range")


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
