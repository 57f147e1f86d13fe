"""The checkerboard context model: exact two-pass coding, integer/float agreement, and starting a context
model from a context-free one."""

import json

import numpy as np
import pytest
import torch
from conftest import natural_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vaecodec.codec import Codec
from vaecodec.container import pack, unpack
from vaecodec.errors import ModelFileError, VaecodecError
from vaecodec.integer_net import ACT_BITS
from vaecodec.model_io import export_model, load_model
from vaecodec.network import GainedHyperprior, ModelConfig, anchor_mask
from vaecodec.train import load_init_weights

TINY = dict(N=16, M=24, lambdas=(0.002, 0.02, 0.2))


def checkerboard_net(seed: int = 7) -> GainedHyperprior:
    """A tiny checkerboard model whose context actually changes the predictions (its last layer is not 0)."""
    torch.manual_seed(seed)
    net = GainedHyperprior(ModelConfig(**TINY, context="checkerboard"))
    for p in net.ctx_params[-1].parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net.eval()


@pytest.fixture(scope="module")
def ckbd_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckbd") / "ckbd.safetensors"
    export_model(checkerboard_net(), path, "ckbd")
    return path


@pytest.fixture(scope="module")
def ckbd(ckbd_path) -> Codec:
    return Codec(ckbd_path)


def test_anchor_mask_is_a_checkerboard():
    m = anchor_mask(3, 4)[0, 0]
    assert m.tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]


@pytest.mark.parametrize("size", [(1, 1), (70, 45), (300, 140)])
def test_round_trip_decodes_the_same_symbols_and_parameters(ckbd, size):
    w, h = size
    rgb = natural_image(w, h)
    data = ckbd.encode(Image.fromarray(rgb), 60)
    f = ckbd.parse(data)
    sent = ckbd.analyse(rgb, f.quality)
    got = ckbd.read_stream(f.payload, (w, h))
    assert sent.digest() == got.digest()
    assert np.array_equal(sent.means, got.means) and np.array_equal(sent.scale_index, got.scale_index)
    assert ckbd.decode(data).size == (w, h)


def test_context_changes_only_the_non_anchors(ckbd):
    rgb = natural_image(128, 96)
    sym = ckbd.analyse(rgb, 50)
    params = ckbd._hyper_params(sym.z, sym.y.shape[1:])
    hyper_means, hyper_idx = ckbd._split(params)
    anchors = anchor_mask(*sym.y.shape[1:])[0, 0].numpy().astype(bool)
    assert np.array_equal(sym.means[:, anchors], hyper_means[:, anchors])
    assert np.array_equal(sym.scale_index[:, anchors], hyper_idx[:, anchors])
    assert not np.array_equal(sym.means[:, ~anchors], hyper_means[:, ~anchors])


def test_integer_context_matches_the_float_model(ckbd):
    net = ckbd.model.network
    m = net.config.M
    rgb = natural_image(128, 128)
    with torch.no_grad():
        y = ckbd.latents(rgb) * net.gains_at(torch.tensor([1.0]))[0]
    sym = ckbd._symbols(y)
    hyper = ckbd._hyper_params(sym.z, y.shape[2:])
    exact = hyper.clone()
    ckbd._apply_context(exact, sym.y, anchor_mask(*y.shape[2:])[0, 0].numpy().astype(bool))
    with torch.no_grad():  # float model from the same (exact) hyper output
        params = hyper.float() / 2**ACT_BITS
        ref = net.entropy_parameters(y, params, torch.round).double()
    got = exact / 2**ACT_BITS
    correction = (ref - params.double()).abs().max()
    assert correction > 0.05  # the context does something the comparison would miss if skipped
    assert float((got - ref).abs().max()) < 0.01  # means and scales
    assert np.array_equal(sym.means, got[0, m:].numpy())


def test_tiled_context_equals_one_pass(ckbd):
    ctx = ckbd.model.context_int
    m = ckbd.model.config.M
    g = torch.Generator().manual_seed(3)
    h, w = 11, 9
    params = torch.randint(-600, 600, (1, 2 * m, h, w), generator=g).double()
    anchors = anchor_mask(h, w)[0, 0].bool()
    y = torch.randint(-2000, 2000, (1, m, h, w), generator=g).double() * anchors
    whole = params.clone()
    ctx.apply(y, whole, tile=100)
    assert not torch.equal(whole, params)
    for tile in (1, 2, 3, 5):
        p = params.clone()
        ctx.apply(y, p, tile=tile)
        assert torch.equal(p, whole)


def test_context_on_the_non_anchors_equals_a_full_pass_masked(ckbd):
    """The strided evaluation gives exactly what the full-resolution layers give at the non-anchors."""
    ctx = ckbd.model.context_int
    m = ckbd.model.config.M
    g = torch.Generator().manual_seed(5)
    for h, w in ((1, 1), (1, 6), (7, 1), (10, 13), (13, 10)):
        params = torch.randint(-600, 600, (1, 2 * m, h, w), generator=g).double()
        anchors = anchor_mask(h, w)[0, 0].bool()
        y = torch.randint(-2000, 2000, (1, m, h, w), generator=g).double() * anchors
        x = torch.cat([params, ctx.ctx(y)], dim=1)
        for layer in ctx.params:
            x = layer(x)
        want = params + x * (~anchors).double()
        for tile in (2, 3, 100):
            got = params.clone()
            ctx.apply(y, got, tile=tile)
            assert torch.equal(got, want), (h, w, tile)


def test_zero_initialised_context_predicts_like_the_hyperprior():
    net = GainedHyperprior(ModelConfig(**TINY, context="checkerboard"))
    y = torch.randn(1, 24, 8, 8) * 4
    params = torch.randn(1, 48, 8, 8)
    assert torch.equal(net.entropy_parameters(y, params, torch.round), params)


def test_context_free_weights_start_a_checkerboard_model(tmp_path, tiny_model_path):
    net = GainedHyperprior(ModelConfig(**TINY, context="checkerboard"))
    load_init_weights(net, str(tiny_model_path))
    plain = load_model(tiny_model_path).network
    assert torch.equal(net.g_s[0].weight, plain.g_s[0].weight)
    wrong = GainedHyperprior(ModelConfig(N=16, M=32, lambdas=TINY["lambdas"], context="checkerboard"))
    with pytest.raises((ValueError, RuntimeError)):
        load_init_weights(wrong, str(tiny_model_path))


def test_effort_refinement_runs_through_the_context(ckbd):
    rgb = natural_image(64, 64)
    data = ckbd.encode(Image.fromarray(rgb), 40, effort=2)
    assert ckbd.decode(data).size == (64, 64)


def test_config_names_a_known_context_and_old_files_have_none():
    with pytest.raises(ValueError):
        ModelConfig(context="raster")
    d = ModelConfig().to_dict()
    del d["context"]
    assert ModelConfig.from_dict(d).context == "none"


def test_model_file_without_its_context_layers_is_refused(ckbd_path, tmp_path):
    from safetensors.numpy import load_file, save_file

    from vaecodec.model_io import _fingerprint, read_metadata

    arrays = {k: v for k, v in load_file(str(ckbd_path)).items() if not k.startswith("int.ctx")}
    meta = read_metadata(ckbd_path)
    del meta["int_context_layers"]
    meta["fingerprint"] = _fingerprint(arrays, meta)
    bad = tmp_path / "bad.safetensors"
    save_file(arrays, str(bad), metadata=meta)
    with pytest.raises(ModelFileError, match="architecture"):
        load_model(bad)
    assert json.loads(meta["config"])["context"] == "checkerboard"


def test_model_file_with_altered_context_layers_is_refused(ckbd_path, tmp_path):
    from safetensors.numpy import load_file, save_file

    from vaecodec.model_io import _fingerprint, read_metadata

    arrays = load_file(str(ckbd_path))
    meta = read_metadata(ckbd_path)
    layers = json.loads(meta["int_context_layers"])
    layers["ctx"][0]["stride"] = 2  # would change what the decoder computes, and break the in-place tiling
    meta["int_context_layers"] = json.dumps(layers)
    meta["fingerprint"] = _fingerprint(arrays, meta)
    bad = tmp_path / "bad.safetensors"
    save_file(arrays, str(bad), metadata=meta)
    with pytest.raises(ModelFileError, match="architecture"):
        load_model(bad)


@pytest.fixture(scope="module")
def valid(ckbd):
    return ckbd.encode(Image.fromarray(natural_image(70, 45)), 60)


def test_every_payload_cut_decodes_or_fails_cleanly(ckbd, valid):
    """Cuts inside and between the two passes reach the stream decoder (the container is resealed)."""
    f = unpack(valid)
    payload = f.payload
    for n in range(len(payload)):
        f.payload = payload[:n]
        try:
            ckbd.decode(pack(f))
        except VaecodecError as exc:
            assert "\n" not in str(exc)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(min_size=0, max_size=400))
def test_random_streams_decode_or_fail_cleanly(ckbd, valid, payload):
    f = unpack(valid)
    f.payload = payload
    try:
        ckbd.decode(pack(f))
    except VaecodecError as exc:
        assert "\n" not in str(exc)
