"""Quality 1..100 spans the trained lambdas plus an extrapolated stretch below the lowest one (lowest_position),
recorded in the model file so files keep decoding with the mapping they were made with."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from click.testing import CliRunner
from conftest import natural_image

from vaecodec.cli import main
from vaecodec.codec import Codec
from vaecodec.imageio import Planes
from vaecodec.model_io import export_model, load_model
from vaecodec.network import DEFAULT_LOWEST_POSITION, GainedHyperprior, ModelConfig, quality_position
from vaecodec.refine import lambda_at


def test_quality_maps_linearly_from_lowest_position_to_last_lambda():
    assert quality_position(1, 8, -2.0) == pytest.approx(-2.0)
    assert quality_position(100, 8, -2.0) == pytest.approx(7.0)
    assert quality_position(50.5, 8, -2.0) == pytest.approx(2.5)
    assert quality_position(1, 8) == 0.0  # the mapping of model files from before lowest_position


def test_config_without_the_field_keeps_the_old_mapping():
    d = ModelConfig().to_dict()
    assert d["lowest_position"] == DEFAULT_LOWEST_POSITION
    del d["lowest_position"]
    assert ModelConfig.from_dict(d).lowest_position == 0.0
    assert ModelConfig.from_dict(ModelConfig(lowest_position=-1.5).to_dict()).lowest_position == -1.5


def test_gains_and_lambda_extrapolate_below_the_first_trained_value():
    net = GainedHyperprior(ModelConfig(N=16, M=24, lambdas=(0.002, 0.02, 0.2), lowest_position=-2.0))
    with torch.no_grad():
        g = [net.gains_at(torch.tensor([p]))[0].log().flatten() for p in (-2.0, -1.0, 0.0, 1.0)]
        g_clamped = net.gains_at(torch.tensor([-5.0]))[0].log().flatten()
    step = g[3] - g[2]
    assert torch.allclose(g[1], g[2] - step, atol=1e-5) and torch.allclose(g[0], g[2] - 2 * step, atol=1e-5)
    assert torch.allclose(g_clamped, g[0])  # never beyond lowest_position
    assert lambda_at(net, -1.0) == pytest.approx(0.002 * 0.1)
    assert lambda_at(net, -9.0) == pytest.approx(0.002 * 0.01)


def test_lowest_position_reaches_lower_rates_and_travels_in_the_model_file(tmp_path):
    net = load_model().network  # real weights, so rates are meaningful
    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    net.config = dataclasses.replace(net.config, lowest_position=0.0)
    export_model(net, old, "m")
    net.config = dataclasses.replace(net.config, lowest_position=-2.0)
    export_model(net, new, "m")
    assert load_model(old).config.lowest_position == 0.0 and load_model(new).config.lowest_position == -2.0
    planes = Planes(natural_image(256, 192), "RGB")
    a, b = Codec(old), Codec(new)
    assert len(b.encode_planes(planes, 1)) < 0.8 * len(a.encode_planes(planes, 1))
    assert a.analyse(planes.rgb, 100).digest() == b.analyse(planes.rgb, 100).digest()  # same top end
    assert b.decode(b.encode_planes(planes, 1)).size == (256, 192)


def test_export_default_matches_the_network_default():
    opt = next(p for p in main.commands["export"].params if p.name == "lowest_position")
    assert opt.default == DEFAULT_LOWEST_POSITION
    r = CliRunner().invoke(main, ["export", "--help"])
    assert "--lowest-position" in r.output
