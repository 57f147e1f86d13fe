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
from vaecodec.effort import EFFORT_ITERATIONS
from vaecodec.errors import VaecodecError
from vaecodec.imageio import Planes
from vaecodec.refine import lambda_at, rd_objective, refine_latents, refine_tiled


def _objective(codec, rgb, y, quality):
    net = codec.net
    pos = codec.position(quality)
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
    lowest = min(net.config.lowest_position, 0.0)
    assert lambda_at(net, -9) == pytest.approx(lambda_at(net, lowest))  # clamped at quality 1's position
    assert lambda_at(net, lowest) <= lams[0] * (1 + 1e-12)  # equal (up to exp/log round-off) when quality 1 is trained


@pytest.mark.parametrize(("quality", "iterations"), [(20, 32), (90, 8)])
def test_refinement_lowers_the_rate_distortion_objective(shipped_codec, quality, iterations):
    rgb = natural_image(256, 192)  # on a 128x128 crop hp2 gains <1% at quality 20 in 8 steps
    lat = shipped_codec.latents(rgb)
    gain, _ = shipped_codec._gains(quality)
    y0 = (lat * gain).clone()
    pos = shipped_codec.position(quality)
    y = refine_tiled(shipped_codec.net, shipped_codec._padded(rgb), y0, pos, iterations, 48)
    assert y.shape == y0.shape and not torch.equal(y, y0)
    # the better the model, the less a search finds: 1.75% at q20 with the 12,400-step hp2, 0.67% at 15,243,
    # 0.39% at 189,217, 0.16% at 215,164 (2.1% at q90), nothing at 294,460 (8 steps keep the start; 16 steps
    # 0.02%, 32 steps 0.39%: hence 32 at q20). The objective is deterministic, so any drop is the search's, not
    # noise, and a search that did nothing or made it worse fails here
    assert _objective(shipped_codec, rgb, y, quality) < _objective(shipped_codec, rgb, y0, quality) * 0.999
    assert all(p.grad is None for p in shipped_codec.net.parameters())  # the model itself is untouched


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


def test_tiled_refinement_maps_every_tile_back_to_its_place(shipped_codec, monkeypatch):
    """A fake search that adds 1 to its free latents: every latent must come back +1 exactly once, each search
    must see exactly its own pixels and real-pixel extent, and its halo must already hold refined neighbours."""
    import vaecodec.refine as refine

    width, height = 1000, 700  # padded to 1024x704: 44x64 latents; tiles of 16 have interior halos, ragged row
    padded = shipped_codec._padded(natural_image(width, height))
    base = torch.arange(44.0).view(1, 1, 44, 1).expand(1, 4, 44, 64).clone()
    seen = []

    def fake(net, x, y, position, iterations, free=None, valid=None):
        seen.append((x, y.clone(), free, valid))
        return y + free

    monkeypatch.setattr(refine, "refine_latents", fake)
    y = refine_tiled(shipped_codec.net, padded, base.clone(), 3.0, 2, 16, (width, height))
    assert torch.equal(y, base + 1)
    assert len(seen) == 3 * 4
    halo = refine.REFINE_HALO
    for k, (x, y_in, free, valid) in enumerate(seen):
        r0, c0 = 16 * (k // 4), 16 * (k % 4)
        r1, c1 = min(44, r0 + 16), min(64, c0 + 16)
        a0, b0, a1, b1 = max(0, r0 - halo), max(0, c0 - halo), min(44, r1 + halo), min(64, c1 + halo)
        assert y_in.shape[-2:] == (a1 - a0, b1 - b0)
        expect = torch.from_numpy(padded[a0 * 16 : a1 * 16, b0 * 16 : b1 * 16].copy()).permute(2, 0, 1)[None]
        assert torch.equal(x, expect.float() / 255)
        assert valid == (min(height - a0 * 16, x.shape[2]), min(width - b0 * 16, x.shape[3]))
        assert float(free.sum()) == (r1 - r0) * (c1 - c0)
        assert float(free[0, 0, r0 - a0 : r1 - a0, c0 - b0 : c1 - b0].sum()) == (r1 - r0) * (c1 - c0)
        assert torch.equal(y_in[:, :, r0 - a0 : r1 - a0, c0 - b0 : c1 - b0], base[:, :, r0:r1, c0:c1])  # not yet
        if r0 > 0:  # the halo row above was refined by the previous row of tiles
            assert torch.equal(y_in[:, :, r0 - 1 - a0], base[:, :, r0 - 1, b0:b1] + 1)


def test_padding_does_not_count_as_distortion(shipped_codec):
    net = shipped_codec.net
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y = net.g_a(x)
        _, inv_gain = net.gains_at(torch.tensor([2.0]))
        full = rd_objective(net, y, x, inv_gain, 0.01)
        x2 = x.clone()
        x2[:, :, 40:, :] = 0.5  # change only rows outside the valid area
        part = rd_objective(net, y, x, inv_gain, 0.01, valid=(40, 64))
        part2 = rd_objective(net, y, x2, inv_gain, 0.01, valid=(40, 64))
    assert float(part[2]) == pytest.approx(float(part2[2]))
    assert float(part[1]) == pytest.approx(float(full[1]) * 64 / 40)  # same bits over fewer real pixels


def test_higher_effort_file_decodes_with_the_unchanged_decoder_and_is_better(shipped_codec):
    rgb = natural_image(192, 128)
    planes = Planes(rgb, "RGB")

    def cost(data, out, lam):  # the RD cost (bits + lambda * 255^2 * MSE, per pixel) of a real file
        mse = np.mean((out.astype(np.float64) - rgb) ** 2)
        return 8 * len(data) / rgb[..., 0].size + lam * mse

    # Summed over low, middle and high quality: on a crop this small one quality alone moves by a few bytes of
    # coder granularity either way (the 441,909-step model: effort 4 won at 20 and 80 and lost 0.2% at 50)
    total_plain = total_better = 0.0
    for quality in (20, 50, 80):
        plain = shipped_codec.encode_planes(planes, quality, effort=1)
        better = shipped_codec.encode_planes(planes, quality, effort=4)
        assert unpack(better).quality == unpack(plain).quality
        out_plain = np.asarray(shipped_codec.decode(plain))
        out_better = np.asarray(shipped_codec.decode(better))
        assert out_better.shape == rgb.shape
        assert psnr(rgb, out_better) > psnr(rgb, out_plain) - 0.5
        lam = lambda_at(shipped_codec.net, shipped_codec.position(quality))
        total_plain += cost(plain, out_plain, lam)
        total_better += cost(better, out_better, lam)
    assert total_better < total_plain


@pytest.mark.parametrize("target", [1200, 10**7])  # a mid-range target, and one that quality 100 fits
def test_effort_with_target_size_refines_and_still_fits(shipped_codec, target):
    planes = Planes(natural_image(128, 128), "RGB")
    plain, _ = shipped_codec.encode_to_size(planes, target, effort=1)
    data, fits = shipped_codec.encode_to_size(planes, target, effort=3)
    assert fits and len(data) <= target
    assert data != plain  # the refined stream was kept
    assert unpack(data).quality <= unpack(plain).quality


def test_unknown_effort_is_rejected(shipped_codec):
    for bad in (0, max(EFFORT_ITERATIONS) + 1):
        with pytest.raises(VaecodecError):
            shipped_codec.analyse(natural_image(64, 64), 50, effort=bad)
        with pytest.raises(VaecodecError):
            shipped_codec.encode_to_size(Planes(natural_image(64, 64), "RGB"), 5000, effort=bad)


def test_cli_effort_option(tmp_path, monkeypatch):
    from vaecodec.codec import Codec

    efforts = []  # the search may find nothing better on a small image (same bytes), so watch the call itself
    analyse = Codec.analyse
    monkeypatch.setattr(Codec, "analyse", lambda self, rgb, q, effort=1: efforts.append(effort)
                        or analyse(self, rgb, q, effort))
    src = tmp_path / "a.png"
    Image.fromarray(natural_image(96, 64)).save(src)
    r = CliRunner().invoke(main, ["encode", str(src), "-o", str(tmp_path / "a.vae"), "-e", "2"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["encode", str(src), "-o", str(tmp_path / "a1.vae")])
    assert r.exit_code == 0, r.output
    assert efforts == [2, 1]  # the option reached the codec, and the default is effort 1
    r = CliRunner().invoke(main, ["decode", str(tmp_path / "a.vae"), "-o", str(tmp_path / "b.png")])
    assert r.exit_code == 0 and Image.open(tmp_path / "b.png").size == (96, 64)
    r = CliRunner().invoke(main, ["encode", str(src), "-o", str(tmp_path / "c.vae"), "-e", "9"])
    assert r.exit_code == 2 and not (tmp_path / "c.vae").exists()
    assert r.output.strip().count("\n") == 0 and r.output.startswith("vaecodec: error:")  # one line
