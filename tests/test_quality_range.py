"""Quality 1..100 spans the trained lambdas plus an extrapolated stretch below the lowest one (lowest_position),
recorded in the model file so files keep decoding with the mapping they were made with."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import natural_image, psnr

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
    lams = (0.002, 0.01, 0.2)  # uneven steps: only the first segment's slope gives the right answer
    net = GainedHyperprior(ModelConfig(N=16, M=24, lambdas=lams, lowest_position=-2.0))
    torch.manual_seed(3)
    with torch.no_grad():
        net.log_gain.copy_(torch.randn_like(net.log_gain))
        net.log_inv_gain.copy_(torch.randn_like(net.log_inv_gain))
        for which in (0, 1):
            g = {p: net.gains_at(torch.tensor([p]))[which].log().flatten() for p in (-2.0, -1.0, -0.5, 0.0, 1.0)}
            table = (net.log_gain, net.log_inv_gain)[which]
            step = table[1] - table[0]
            for p in (-2.0, -1.0, -0.5):
                assert torch.allclose(g[p], table[0] + p * step, atol=1e-5)
            assert torch.allclose(g[1.0], table[1], atol=1e-6)
            assert torch.allclose(net.gains_at(torch.tensor([-5.0]))[which].log().flatten(), g[-2.0])  # clamped
    assert lambda_at(net, -1.0) == pytest.approx(0.002 / 5)
    assert lambda_at(net, -9.0) == pytest.approx(0.002 / 25)
    assert lambda_at(net, 1.5) == pytest.approx(math.sqrt(0.01 * 0.2))


def test_lowest_position_must_be_finite_and_below_the_last_lambda():
    for bad in (float("nan"), 2.0, -100.0):
        with pytest.raises(ValueError):
            ModelConfig(lambdas=(0.01, 0.1, 1.0), lowest_position=bad)


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
    out = np.asarray(b.decode(b.encode_planes(planes, 1)))
    x = torch.from_numpy(planes.rgb.copy()).permute(2, 0, 1)[None].float() / 255

    def estimate(position):
        with torch.no_grad():
            est = b.net.estimate(x, position)["x_hat"].clamp(0, 1) * 255
        return est.round()[0].permute(1, 2, 0).numpy().astype(np.uint8)

    # The decoder must use the same extrapolated gains as the encoder: its output is closest to the float
    # estimate at -2. The exact coding path rounds some means differently from the float estimate (40 dB apart
    # with the 17,169-step hp2, 32.7 dB with the 47,420-step one, whose group nets move the means more), while a
    # decoder at another position scales every latent wrongly: 30.2 dB at -1.9, 28.4 at -1.5, 26.5 at 0.
    closeness = {p: psnr(out, estimate(p)) for p in (-2.0, -1.8, -1.0, 0.0)}
    assert closeness[-2.0] > max(closeness[-1.8], closeness[-1.0], closeness[0.0]) + 2.0, closeness
    assert abs(psnr(out, planes.rgb) - psnr(estimate(-2.0), planes.rgb)) < 0.3  # and codes as well as it


def test_export_keeps_the_runs_lowest_position_unless_told(tmp_path, tiny_model_path):
    """The default is the checkpoint's own quality scale (so a fine-tune of a 10-λ model is not shipped with
    the -2 of a fresh run); --lowest-position overrides it."""
    from vaecodec.model_io import load_float_state

    cfg = ModelConfig(N=16, M=24, lambdas=(0.002, 0.02, 0.2)).to_dict()
    legacy = dict(cfg)
    del legacy["lowest_position"]  # a checkpoint from before the field: its first lambda
    for i, (model_config, args, expect) in enumerate((
            (cfg, [], DEFAULT_LOWEST_POSITION), ({**cfg, "lowest_position": 0.0}, [], 0.0), (legacy, [], 0.0),
            ({**cfg, "lowest_position": 0.0}, ["--lowest-position", "-1"], -1.0))):
        state = {"model": load_float_state(tiny_model_path), "model_config": model_config, "step": 3,
                 "train_config": {"batch_size": 1}, "elapsed": 1.0}
        ckpt = tmp_path / f"last{i}.pt"
        torch.save(state, ckpt)
        out = tmp_path / f"m{i}.safetensors"
        r = CliRunner().invoke(main, ["export", str(ckpt), "-o", str(out), *args])
        assert r.exit_code == 0, r.output
        assert load_model(out).config.lowest_position == expect, (i, r.output)


def test_export_help_names_the_default():
    r = CliRunner().invoke(main, ["export", "--help"])
    assert "--lowest-position" in r.output and "run's own" in r.output


def _random_gains(net: GainedHyperprior, seed: int) -> GainedHyperprior:
    torch.manual_seed(seed)
    with torch.no_grad():
        net.log_gain.copy_(torch.randn_like(net.log_gain) * 0.3)
        net.log_inv_gain.copy_(torch.randn_like(net.log_inv_gain) * 0.3)
    return net.eval()


@pytest.mark.parametrize("init_kind", ["safetensors", "checkpoint"])
def test_init_with_lower_lambdas_codes_every_quality_as_before(tmp_path, init_kind):
    """Extending the lambda set downward (so the lowest qualities become trained levels) starts the new levels
    at the extrapolation the old model used there: same latents, rates and images at every quality."""
    from vaecodec.train import load_init_weights

    old = _random_gains(GainedHyperprior(ModelConfig(N=16, M=24, lambdas=(0.002, 0.01, 0.2),
                                                     lowest_position=-2.0)), 5)
    if init_kind == "safetensors":
        path = tmp_path / "old.safetensors"
        export_model(old, path, "old", half=False)
        old = load_model(path).network.eval()  # what the init actually reads (integer hyper-synthesis rounded)
    else:
        path = tmp_path / "old.pt"
        torch.save({"model": old.state_dict(), "model_config": old.config.to_dict(), "step": 7}, path)
    new = GainedHyperprior(ModelConfig(N=16, M=24, lambdas=(0.0004, 0.0009, 0.002, 0.01, 0.2),
                                       lowest_position=0.0))
    load_init_weights(new, str(path))
    new.eval()
    x = torch.from_numpy(natural_image(64, 64)).permute(2, 0, 1)[None].float() / 255
    for q in (1, 5, 20, 50, 100):
        p_old = quality_position(q, 3, -2.0)
        p_new = quality_position(q, 5, 0.0)
        assert p_new == pytest.approx(p_old + 2)
        a, b = old.estimate(x, p_old), new.estimate(x, p_new)
        assert torch.allclose(a["x_hat"], b["x_hat"], atol=1e-5), q
        assert torch.allclose(a["y_lik"], b["y_lik"], atol=1e-5), q
    assert torch.equal(new.log_gain[2:], old.log_gain)  # the trained levels are copied, not recomputed


def test_init_refuses_lambdas_that_do_not_extend_the_old_set(tmp_path):
    from vaecodec.train import load_init_weights

    old = GainedHyperprior(ModelConfig(N=16, M=24, lambdas=(0.002, 0.01, 0.2)))
    path = tmp_path / "old.pt"
    torch.save({"model": old.state_dict(), "model_config": old.config.to_dict(), "step": 0}, path)
    for lams in ((0.001, 0.003, 0.01, 0.2), (0.002, 0.2, 0.3, 0.4)):  # one changed, one dropped
        with pytest.raises(ValueError, match="do not extend"):
            load_init_weights(GainedHyperprior(ModelConfig(N=16, M=24, lambdas=lams)), str(path))
