"""Reading images from any Pillow format into 8-bit planes (RGB or gray, plus alpha) and back.

Defined behaviour: EXIF orientation is applied; grayscale stays grayscale; RGBA/LA keep their alpha
(stored losslessly by the codec); 16-bit, palette, CMYK and other modes are converted with a notice.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .container import padded_pixels
from .errors import InputImageError

Image.MAX_IMAGE_PIXELS = None

# File suffixes treated as images when a directory is given (training, eval, batch encode)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pnm",
                  ".avif", ".jxl", ".heic", ".heif", ".tga", ".qoi"}  # vaecodec applies its own --max-pixels limit


# .vae chunk tag -> key in PIL's image.info (and the save() argument of the same name)
METADATA_CHUNKS = {b"ICCP": "icc_profile", b"EXIF": "exif", b"XMP ": "xmp"}


@dataclass
class Planes:
    rgb: np.ndarray  # (H, W, 3) uint8; for grayscale all three channels are equal
    layout: str  # RGB, L, RGBA or LA
    alpha: np.ndarray | None = None  # (H, W) uint8
    notices: list[str] = field(default_factory=list)
    metadata: dict[bytes, bytes] = field(default_factory=dict)  # chunk tag -> bytes

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def open_image(source, max_pixels: int | None = None) -> Image.Image:
    """Open a path, bytes or file object with Pillow and apply the EXIF orientation."""
    name = str(source) if isinstance(source, (str, Path)) else "input"
    try:
        if isinstance(source, (bytes, bytearray)):
            source = io.BytesIO(source)
        img = Image.open(source)
        w, h = img.size
        if max_pixels is not None and padded_pixels(w, h) > max_pixels:
            raise InputImageError(
                f"{name}: {w}x{h} is {padded_pixels(w, h) / 1e6:.1f} MP padded to the model's stride, over the "
                f"limit of {max_pixels / 1e6:.1f} MP (raise it with --max-pixels)")
        img.load()
        return ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise InputImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputImageError(f"{name}: is a directory") from None
    except UnidentifiedImageError:
        raise InputImageError(f"{name}: not an image format Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputImageError(f"{name}: cannot read image ({exc})") from None


def _sixteen_to_eight(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype == np.float32 or arr.dtype == np.float64:
        return np.clip(np.round(arr), 0, 255).astype(np.uint8)
    arr = arr.astype(np.int64)
    # I;16 modes are 16-bit by definition; plain 32-bit "I" is 16-bit data unless it never exceeds 255
    top = 65535 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
    return np.clip(np.round(arr * 255.0 / top), 0, 255).astype(np.uint8)


def _metadata(img: Image.Image) -> dict[bytes, bytes]:
    meta = {}
    for tag, key in METADATA_CHUNKS.items():
        value = img.info.get(key)
        if key == "exif" and value is None and img.getexif():
            value = img.getexif().tobytes()
        if isinstance(value, str):
            value = value.encode("utf-8")
        if isinstance(value, (bytes, bytearray)) and value:
            meta[tag] = bytes(value)
    return meta


def to_planes(img: Image.Image) -> Planes:
    """Pixels as 8-bit planes plus the metadata worth keeping (ICC profile, EXIF, XMP)."""
    planes = _to_planes(img)
    planes.metadata = _metadata(img)
    if img.mode == "CMYK":
        planes.metadata.pop(b"ICCP", None)  # the pixels were converted out of that profile
    return planes


def _to_planes(img: Image.Image) -> Planes:
    notices: list[str] = []
    mode = img.mode
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        notices.append(f"palette image converted to {img.mode}")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        gray = _sixteen_to_eight(img)
        notices.append(f"{mode} image converted to 8-bit grayscale")
        return Planes(np.repeat(gray[:, :, None], 3, axis=2), "L", None, notices)
    if mode == "1":
        img, mode = img.convert("L"), "L"
    if mode == "L":
        g = np.asarray(img, dtype=np.uint8)
        return Planes(np.repeat(g[:, :, None], 3, axis=2), "L", None, notices)
    if mode in ("LA", "La"):
        arr = np.asarray(img.convert("LA"), dtype=np.uint8)
        return Planes(np.repeat(arr[:, :, :1], 3, axis=2), "LA", arr[:, :, 1].copy(), notices)
    if mode in ("RGBA", "RGBa"):
        arr = np.asarray(img.convert("RGBA"), dtype=np.uint8)
        return Planes(arr[:, :, :3].copy(), "RGBA", arr[:, :, 3].copy(), notices)
    if mode == "CMYK" and img.info.get("icc_profile"):
        img = _cmyk_to_srgb(img)
        notices.append("CMYK image converted to sRGB through its ICC profile")
    elif mode != "RGB":
        notices.append(f"{mode} image converted to RGB")
        img = img.convert("RGB")
    return Planes(np.asarray(img, dtype=np.uint8).copy(), "RGB", None, notices)


def from_planes(rgb: np.ndarray, layout: str, alpha: np.ndarray | None = None) -> Image.Image:
    img = Image.fromarray(rgb, "RGB")
    if layout in ("L", "LA"):
        img = img.convert("L")
    if layout in ("RGBA", "LA") and alpha is not None:
        img.putalpha(Image.fromarray(alpha, "L"))
    return img


def _cmyk_to_srgb(img: Image.Image) -> Image.Image:
    from PIL import ImageCms

    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
        out = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        out.info.pop("icc_profile", None)
        return out
    except (ImageCms.PyCMSError, OSError, ValueError):
        return img.convert("RGB")
