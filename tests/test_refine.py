"""Encoder-side latent refinement (--effort): it must lower the rate-distortion objective, keep the stream
decodable by the unchanged decoder, and respect byte targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import natural_image, psnr
from PIL import Image

from vaecodec.cli import main
from vaecodec.container import unpack
from vaecodec.imageio import Planes
from vaecodec.network import quality_position
from vaecodec.refine import EFFORT_ITERATIONS, lambda_at, rd_objective, refine_latents, refine_tiled


def _objective(codec, rgb, y, quality):
    net = codec.net
    pos = quality_position(quality, codec.levels)
    _, inv_gain = net.gains_at(torch.tensor([pos]))
    x = torch.from_numpy(codec._padded(rgb).copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        loss, _, _ = rd_objective(net, y, x, inv_gain, lambda_at(net, pos))
    return float(loss)


def test_lambda_interpolates_log_linearly_between_trained_values(shipped_codec):
    net = shipped_codec.net
    lams = net.config.lambdas
    assert lambda_at(net, 0) == pytest.approx(lams[0])
    assert lambda_at(net, len(lams) - 1) == pytest.approx(lams[-1])
    assert lambda_at(net, 0.5) == pytest.approx(math.sqrt(lams[0] * lams[1]))
    assert lambda_at(net, -3) == pytest.approx(lams[0])


@pytest.mark.parametrize("quality", [20, 90])
def test_refinement_lowers_the_rate_distortion_objective(shipped_codec, quality):
    rgb = natural_image(128, 128)
    lat = shipped_codec.latents(rgb)
    gain, _ = shipped_codec._gains(quality)
    y0 = (lat * gain).clone()
    y = refine_tiled(shipped_codec.net, shipped_codec._padded(rgb), y0, quality_position(quality, 8), 8, 48)
    assert y.shape == y0.shape and not torch.equal(y, y0)
    assert _objective(shipped_codec, rgb, y, quality) < _objective(shipped_codec, rgb, y0, quality) * 0.99
    assert not any(p.requires_grad is False for p in shipped_codec.net.parameters())  # flags restored


def test_refine_never_returns_worse_than_the_start(tiny_codec):
    rgb = natural_image(64, 64)
    net = tiny_codec.net
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y0 = net.g_a(x) * net.gains_at(torch.tensor([1.0]))[0]
    _, inv_gain = net.gains_at(torch.tensor([1.0]))
    lam = lambda_at(net, 1.0)
    with torch.no_grad():
        before = float(rd_objective(net, y0, x, inv_gain.detach(), lam)[0])
    y = refine_latents(net, x, y0, 1.0, iterations=3, lr=50.0)  # absurd steps: must fall back to the best
    with torch.no_grad():
        after = float(rd_objective(net, y, x, inv_gain.detach(), lam)[0])
    assert after <= before


def test_tiled_refinement_covers_every_latent(shipped_codec):
    rgb = natural_image(200, 136)  # 13x9 latents after padding to 256x192... tiles of 4 leave ragged edges
    lat = shipped_codec.latents(rgb)
    y0 = lat * shipped_codec._gains(60)[0]
    y = refine_tiled(shipped_codec.net, shipped_codec._padded(rgb), y0.clone(), quality_position(60, 8), 3, 4)
    changed = (y - y0).abs().amax(dim=1)[0] > 0
    assert changed.float().mean() > 0.9  # every tile was refined, including the ragged last row/column


def test_higher_effort_file_decodes_with_the_unchanged_decoder_and_is_better(shipped_codec):
    rgb = natural_image(192, 128)
    planes = Planes(rgb, "RGB")
    plain = shipped_codec.encode_planes(planes, 50, effort=1)
    better = shipped_codec.encode_planes(planes, 50, effort=4)
    assert unpack(better).quality == unpack(plain).quality
    out_plain = np.asarray(shipped_codec.decode(plain))
    out_better = np.asarray(shipped_codec.decode(better))
    assert out_better.shape == rgb.shape
    # the RD cost (bits + lambda * 255^2 * MSE, per pixel) of the real files must drop
    lam = lambda_at(shipped_codec.net, quality_position(50, 8))

    def cost(data, out):
        mse = np.mean((out.astype(np.float64) - rgb) ** 2)
        return 8 * len(data) / rgb[..., 0].size + lam * mse

    assert cost(better, out_better) < cost(plain, out_plain)
    assert psnr(rgb, out_better) > psnr(rgb, out_plain) - 0.5


def test_effort_with_target_size_still_fits(shipped_codec):
    planes = Planes(natural_image(128, 128), "RGB")
    target = 1200
    data, fits = shipped_codec.encode_to_size(planes, target, effort=3)
    assert fits and len(data) <= target


def test_unknown_effort_is_rejected(shipped_codec):
    with pytest.raises(ValueError):
        shipped_codec.analyse(natural_image(64, 64), 50, effort=max(EFFORT_ITERATIONS) + 1)


def test_cli_effort_option(tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(natural_image(96, 64)).save(src)
    r = CliRunner().invoke(main, ["encode", str(src), "-o", str(tmp_path / "a.vae"), "-e", "2"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["decode", str(tmp_path / "a.vae"), "-o", str(tmp_path / "b.png")])
    assert r.exit_code == 0 and Image.open(tmp_path / "b.png").size == (96, 64)
    r = CliRunner().invoke(main, ["encode", str(src), "-o", str(tmp_path / "c.vae"), "-e", "9"])
    assert r.exit_code != 0 and not (tmp_path / "c.vae").exists()
