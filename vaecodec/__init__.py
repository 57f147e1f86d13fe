"""vaecodec: a learned image codec (variable-rate hyperprior VAE + exact range coding).

    import vaecodec
    data = vaecodec.encode(Image.open("a.png"), quality=75)   # -> bytes of a .vae file
    img = vaecodec.decode(data)                                # -> PIL.Image
    codec = vaecodec.Codec("my_model.safetensors")             # another model
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Codec", "encode", "decode", "load_model", "__version__"]

_default_codec = None


def __getattr__(name):  # lazy imports keep `vaecodec --version` and --help fast
    if name == "Codec":
        from .codec import Codec

        return Codec
    if name == "load_model":
        from .model_io import load_model

        return load_model
    raise AttributeError(name)


def _codec(model=None):
    global _default_codec
    from .codec import Codec

    if model is not None:
        return model if isinstance(model, Codec) else Codec(model)
    if _default_codec is None:
        _default_codec = Codec()
    return _default_codec


def encode(image, quality: float = 75.0, model=None, effort: int = 1) -> bytes:  # 1 = effort.DEFAULT_EFFORT
    """Encode a PIL image (or a path) into the bytes of a .vae file (effort 1..5: see Codec.encode)."""
    from .imageio import open_image

    if not hasattr(image, "mode"):
        image = open_image(image)
    return _codec(model).encode(image, quality, effort=effort)


def decode(data: bytes, model=None):
    """Decode the bytes of a .vae file into a PIL image."""
    return _codec(model).decode(data)
