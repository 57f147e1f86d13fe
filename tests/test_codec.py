import io

import numpy as np
import pytest
import torch
from conftest import natural_image, psnr
from PIL import Image

import vaecodec
from vaecodec.codec import Codec
from vaecodec.errors import ModelMismatchError
from vaecodec.imageio import to_planes
from vaecodec.model_io import export_model
from vaecodec.network import GainedHyperprior, ModelConfig


@pytest.mark.parametrize("size", [(1, 1), (17, 33), (64, 64), (300, 200), (120, 260)])
def test_round_trip_any_size_gives_same_symbols_and_size(tiny_codec, size):
    w, h = size
    rgb = natural_image(w, h)
    data = tiny_codec.encode(Image.fromarray(rgb), 60)
    f = tiny_codec.parse(data)
    assert (f.width, f.height) == (w, h)
    sent = tiny_codec.analyse(rgb, f.quality)
    got = tiny_codec.read_stream(f.payload, (w, h))
    assert np.array_equal(sent.z, got.z) and np.array_equal(sent.y, got.y)
    out = tiny_codec.decode(data)
    assert out.size == (w, h) and out.mode == "RGB"


def test_grayscale_comes_back_grayscale(tiny_codec):
    gray = Image.fromarray(natural_image(40, 30)[:, :, 1])
    out = tiny_codec.decode(tiny_codec.encode(gray, 80))
    assert out.mode == "L" and out.size == (40, 30)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_kept_losslessly(tiny_codec, mode):
    rgb = natural_image(50, 40)
    alpha = (np.arange(50 * 40).reshape(40, 50) % 256).astype(np.uint8)
    img = Image.fromarray(rgb).convert("RGBA" if mode == "RGBA" else "LA")
    img.putalpha(Image.fromarray(alpha))
    out = tiny_codec.decode(tiny_codec.encode(img, 50))
    assert out.mode == mode
    assert np.array_equal(np.asarray(out)[:, :, -1], alpha)


def test_file_from_another_model_is_refused(tiny_codec, tmp_path):
    torch.manual_seed(99)
    other = tmp_path / "other.safetensors"
    export_model(GainedHyperprior(ModelConfig(N=16, M=24, lambdas=(0.002, 0.02, 0.2))), other, "other")
    data = Codec(other).encode(Image.fromarray(natural_image(32, 32)), 50)
    with pytest.raises(ModelMismatchError, match="other"):
        tiny_codec.decode(data)


def test_palette_and_sixteen_bit_inputs_are_converted_with_a_notice():
    pal = Image.fromarray(natural_image(20, 20)).convert("P")
    planes = to_planes(pal)
    assert planes.layout == "RGB" and planes.notices
    sixteen = Image.fromarray((np.arange(400).reshape(20, 20) * 164).astype(np.uint16))
    planes = to_planes(sixteen)
    assert planes.layout == "L" and planes.rgb.max() > 200 and planes.notices


def test_exif_orientation_is_applied(tiny_codec):
    img = Image.fromarray(natural_image(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    data = vaecodec.encode(io.BytesIO(buf.getvalue()), quality=50, model=tiny_codec)
    assert tiny_codec.parse(data).width == 20 and tiny_codec.parse(data).height == 40


# --- the shipped model ------------------------------------------------------------------------------------

def test_quality_is_monotone_in_bytes_and_psnr(shipped_codec):
    rgb = natural_image(256, 192)
    img = Image.fromarray(rgb)
    sizes, psnrs = [], []
    for q in (1, 25, 50, 75, 100):
        data = shipped_codec.encode(img, q)
        sizes.append(len(data))
        psnrs.append(psnr(np.asarray(shipped_codec.decode(data)), rgb))
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert psnrs[0] < psnrs[2] < psnrs[-1]


def test_high_quality_reaches_a_sensible_psnr(shipped_codec):
    rgb = natural_image(256, 256)
    data = shipped_codec.encode(Image.fromarray(rgb), 100)
    out = np.asarray(shipped_codec.decode(data))
    assert psnr(out, rgb) > 30.0
    assert 8 * len(data) / rgb[:, :, 0].size < 4.0


def test_python_api_round_trip(shipped_codec):
    rgb = natural_image(64, 48)
    data = vaecodec.encode(Image.fromarray(rgb), quality=90, model=shipped_codec)
    assert data[:4] == b"\x89VAE"
    out = vaecodec.decode(data, model=shipped_codec)
    assert out.size == (64, 48)


def test_tampered_or_misshapen_model_files_are_refused(tiny_model_path, tmp_path):
    from safetensors.numpy import load_file, save_file

    from vaecodec.errors import ModelFileError
    from vaecodec.model_io import _fingerprint, load_model, read_metadata

    data = bytearray(tiny_model_path.read_bytes())
    data[-100] ^= 0x01  # one bit inside the tensor data
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="modified"):
        load_model(bad)
    arrays, meta = load_file(str(tiny_model_path)), read_metadata(tiny_model_path)
    arrays["float.g_s.0.weight"] = arrays["float.g_s.0.weight"][:, :3].copy()
    meta["fingerprint"] = _fingerprint(arrays, meta)  # a consistent file, but of the wrong architecture
    save_file(arrays, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="does not match"):
        load_model(tmp_path / "shape.safetensors")
