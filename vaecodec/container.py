"""The .vae container: a small header, one range-coded stream, optional tagged chunks, a CRC32 trailer.

See docs/format.md for the byte layout. Parsing validates every length against the file size and every
declared size against limits before anything is allocated.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from .errors import CorruptFileError, NotAVaeFileError, UnsupportedVersionError

MAGIC = b"\x89VAE"
FORMAT_VERSION = 1
MAX_DIMENSION = 1 << 20
# Until tiled transforms exist, the whole image goes through the network at once: keep the default modest.
DEFAULT_MAX_PIXELS = 4096 * 4096

LAYOUTS = {0: "RGB", 1: "L", 2: "RGBA", 3: "LA"}
LAYOUT_CODES = {v: k for k, v in LAYOUTS.items()}


@dataclass
class VaeFile:
    width: int
    height: int
    layout: str  # RGB, L, RGBA or LA: what decode gives back
    quality: float  # stored with 0.01 resolution
    model_name: str
    model_fingerprint: bytes  # 8 bytes
    payload: bytes  # the range-coded latents
    chunks: dict[bytes, bytes] = field(default_factory=dict)  # tag (4 bytes) -> data, e.g. b"ALPH"

    @property
    def header_size(self) -> int:
        return len(pack(self)) - len(self.payload) - sum(len(v) for v in self.chunks.values())


def padded_pixels(width: int, height: int) -> int:
    """Pixels the transforms actually process: both sides rounded up to the model stride of 64."""
    return -(-width // 64) * 64 * (-(-height // 64) * 64)


def quantize_quality(quality: float) -> float:
    return round(min(max(float(quality), 1.0), 100.0) * 100) / 100


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes, end: int):
        self.data, self.pos, self.end = data, 0, end

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise CorruptFileError(f"file is truncated or damaged ({what} runs past the end)")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def varint(self, what: str) -> int:
        n, shift = 0, 0
        while True:
            b = self.take(1, what)[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
            if shift > 56:
                raise CorruptFileError(f"file is damaged (bad {what})")


def pack(f: VaeFile) -> bytes:
    name = f.model_name.encode("ascii")
    if len(name) > 255 or len(f.model_fingerprint) != 8:
        raise ValueError("bad model identity")
    out = bytearray(MAGIC)
    out += bytes([FORMAT_VERSION, LAYOUT_CODES[f.layout]])
    out += _varint(f.width) + _varint(f.height)
    out += struct.pack("<H", int(round(quantize_quality(f.quality) * 100)))
    out += bytes([len(name)]) + name + f.model_fingerprint
    out += _varint(len(f.payload)) + f.payload
    for tag, data in f.chunks.items():
        if len(tag) != 4:
            raise ValueError("chunk tags are 4 bytes")
        out += tag + _varint(len(data)) + data
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def unpack(data: bytes, max_pixels: int | None = None) -> VaeFile:
    if len(data) == 0:
        raise NotAVaeFileError("file is empty")
    if len(data) < 4 and MAGIC.startswith(data):
        raise CorruptFileError("file is truncated (shorter than a .vae header)")
    if not data.startswith(MAGIC):
        kind = _sniff(data)
        raise NotAVaeFileError(f"not a .vae file{f' (looks like {kind})' if kind else ''}")
    if len(data) < 4 + 2 + 4:
        raise CorruptFileError("file is truncated (shorter than a .vae header)")
    version = data[4]
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"unsupported .vae format version {version} (this vaecodec reads {FORMAT_VERSION})")
    (crc,) = struct.unpack("<I", data[-4:])
    body_end = len(data) - 4
    if zlib.crc32(data[:body_end]) != crc:
        raise CorruptFileError("file is damaged or truncated (checksum mismatch)")
    r = _Reader(data, body_end)
    r.take(5, "header")
    layout_code = r.take(1, "header")[0]
    if layout_code not in LAYOUTS:
        raise CorruptFileError(f"file is damaged (unknown channel layout {layout_code})")
    width, height = r.varint("width"), r.varint("height")
    if not (1 <= width <= MAX_DIMENSION and 1 <= height <= MAX_DIMENSION):
        raise CorruptFileError(f"file declares an impossible size {width}x{height}")
    if max_pixels is not None and padded_pixels(width, height) > max_pixels:
        raise CorruptFileError(
            f"image is {width}x{height} ({padded_pixels(width, height) / 1e6:.1f} MP padded to the model's "
            f"stride), over the limit of {max_pixels / 1e6:.1f} MP (raise it with --max-pixels)")
    (q100,) = struct.unpack("<H", r.take(2, "quality"))
    if not 100 <= q100 <= 10000:
        raise CorruptFileError("file is damaged (quality out of range)")
    name_len = r.take(1, "model name")[0]
    try:
        name = r.take(name_len, "model name").decode("ascii")
    except UnicodeDecodeError:
        raise CorruptFileError("file is damaged (model name)") from None
    fingerprint = r.take(8, "model fingerprint")
    payload = r.take(r.varint("stream length"), "coded stream")
    chunks: dict[bytes, bytes] = {}
    while r.pos < body_end:
        tag = r.take(4, "chunk tag")
        chunks[tag] = r.take(r.varint("chunk length"), "chunk")
    return VaeFile(width, height, LAYOUTS[layout_code], q100 / 100, name, fingerprint, payload, chunks)


def _sniff(data: bytes) -> str:
    sigs = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"RIFF": "a RIFF/WebP file",
            b"GIF8": "a GIF image", b"\xff\x0a": "a JPEG XL image", b"\x00\x00\x00": "an ISO-BMFF (AVIF/HEIC) file",
            b"BM": "a BMP image", b"%PDF": "a PDF document", b"PK\x03\x04": "a ZIP archive"}
    for sig, kind in sigs.items():
        if data.startswith(sig):
            return kind
    return ""
