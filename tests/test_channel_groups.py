"""Channel groups on top of the checkerboard: the decoding order is respected, the exact integer path agrees
with the float model, streams round-trip, and a checkerboard model starts a grouped one unchanged."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import natural_image
from PIL import Image

from vaecodec.cli import main
from vaecodec.codec import Codec
from vaecodec.integer_net import ACT_BITS
from vaecodec.model_io import export_model, load_model
from vaecodec.network import GainedHyperprior, ModelConfig, anchor_mask, default_channel_groups
from vaecodec.train import load_init_weights

GROUPS = (4, 8, 12)
TINY = dict(N=16, M=24, lambdas=(0.002, 0.02, 0.2), context="checkerboard")


def grouped_net(seed: int = 11, std: float = 0.3) -> GainedHyperprior:
    """A tiny grouped model whose context and group nets all change the predictions a lot (last layers far
    from 0), so that feeding any net the wrong inputs shows."""
    torch.manual_seed(seed)
    net = GainedHyperprior(ModelConfig(**TINY, channel_groups=GROUPS))
    for last in [net.ctx_params[-1], *(n[-1] for n in net.group_anchor), *(n[-1] for n in net.group_other)]:
        for p in last.parameters():
            torch.nn.init.normal_(p, std=std)
    return net.eval()


@pytest.fixture(scope="module")
def grouped_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("grouped") / "grouped.safetensors"
    export_model(grouped_net(), path, "grouped")
    return path


@pytest.fixture(scope="module")
def grouped(grouped_path) -> Codec:
    return Codec(grouped_path)


def passes(h: int, w: int) -> list[tuple[int, int, torch.Tensor]]:
    """(first channel, end channel, positions) of each pass in decoding order."""
    a = anchor_mask(h, w)[0, 0].bool()
    bounds = [(0, 4), (4, 12), (12, 24)]
    return [(s, e, a) for s, e in bounds] + [(s, e, ~a) for s, e in bounds]


def test_parameters_depend_only_on_latents_decoded_before():
    """Changing the latents of one pass leaves the means and scales of that pass and every earlier one as
    they were, and does change a later pass's: the float model follows the decoder's order."""
    net = grouped_net()
    g = torch.Generator().manual_seed(0)
    h, w = 7, 8
    y = torch.randn(1, 24, h, w, generator=g) * 6
    hyper = torch.randn(1, 48, h, w, generator=g)
    with torch.no_grad():
        base = net.entropy_parameters(y, hyper, torch.round)
    order = passes(h, w)
    for n, (s, e, where) in enumerate(order):
        moved = y.clone()
        moved[:, s:e] += 5.0 * where
        with torch.no_grad():
            out = net.entropy_parameters(moved, hyper, torch.round)
        changed_later = False
        for m, (s2, e2, where2) in enumerate(order):
            diff = torch.cat([(out - base)[:, s2:e2], (out - base)[:, 24 + s2 : 24 + e2]], 1).abs() * where2
            if m <= n:
                assert float(diff.max()) == 0.0, (n, m)
            else:
                changed_later |= float(diff.max()) > 0
        assert changed_later or n == len(order) - 1, n


@pytest.mark.parametrize("size", [(1, 1), (70, 45), (300, 140)])
def test_round_trip_decodes_the_same_symbols_and_parameters(grouped, size):
    w, h = size
    rgb = natural_image(w, h)
    data = grouped.encode(Image.fromarray(rgb), 60)
    f = grouped.parse(data)
    sent = grouped.analyse(rgb, f.quality)
    got = grouped.read_stream(f.payload, (w, h))
    assert sent.digest() == got.digest()
    assert np.array_equal(sent.means, got.means) and np.array_equal(sent.scale_index, got.scale_index)
    assert grouped.decode(data).size == (w, h)


def exact_reference(codec: Codec, hyper: torch.Tensor, y_res: np.ndarray) -> torch.Tensor:
    """The final exact parameters computed independently of the codec's pass driver: every integer net at
    full resolution, chained in the float model's order, results masked to where they apply."""
    model, m = codec.model, codec.model.config.M
    a = anchor_mask(*y_res.shape[1:]).double()
    p = hyper.clone()
    y = torch.from_numpy(y_res).double()[None] * 2**ACT_BITS

    def run(layers, x):
        for layer in layers:
            x = layer(x)
        return x

    def correct(net, s, e, mask, decoded):
        d = run(net.layers, torch.cat([p[:, s:e], p[:, m + s : m + e], decoded], dim=1))
        p[:, s:e] += d[:, : e - s] * mask
        p[:, m + s : m + e] += d[:, e - s :] * mask

    for k, (s, e) in enumerate(model.channel_groups):
        if k:
            correct(model.group_anchor_int[k - 1], s, e, a, (y[:, :s] + p[:, m : m + s]) * a)
    ctx = model.context_int
    p += run(ctx.params, torch.cat([p, ctx.ctx((y + p[:, m:]) * a)], dim=1)) * (1 - a)
    for k, (s, e) in enumerate(model.channel_groups):
        if k:
            correct(model.group_other_int[k - 1], s, e, 1 - a, y[:, :s] + p[:, m : m + s])
    return p


@pytest.mark.parametrize("size", [(128, 128), (200, 72)])
def test_coded_parameters_equal_an_independent_exact_evaluation(grouped, size):
    rgb = natural_image(*size)
    sym = grouped.analyse(rgb, 55)
    hyper = grouped._hyper_params(sym.z, sym.y.shape[1:])
    want = exact_reference(grouped, hyper, sym.y)
    m = grouped.model.config.M
    assert np.array_equal(sym.means, want[0, m:].numpy() / 2**ACT_BITS)
    assert np.array_equal(sym.scale_index, grouped._scale_index(want[0, :m].numpy()))
    assert float((want - hyper).abs().max()) > 2**ACT_BITS  # the nets move the parameters a lot


def test_the_pass_driver_uses_only_passes_already_coded(grouped):
    """Residuals changed in one pass leave the means and scale indices of that pass and all before it
    bit-identical, and change a later one's."""
    rgb = natural_image(96, 80)
    sym = grouped.analyse(rgb, 55)
    shape = sym.y.shape[1:]

    def run(changed: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
        seen = []

        def code(start, stop, part, means, idx, y_res):
            seen.append((means[start:stop][:, part].copy(), idx[start:stop][:, part].copy()))
            r = sym.y[start:stop] + (7 if len(seen) - 1 == changed else 0)
            y_res[start:stop] = np.where(part, r, y_res[start:stop])

        hyper = grouped._hyper_params(sym.z, shape)
        grouped._code_latents(hyper, shape, code, decoding=True)
        return seen

    base = run(None)
    assert len(base) == 2 * len(GROUPS)
    for n in range(len(base) - 1):
        got = run(n)
        for k in range(n + 1):
            assert np.array_equal(got[k][0], base[k][0]) and np.array_equal(got[k][1], base[k][1]), (n, k)
        assert any(not np.array_equal(got[k][0], base[k][0]) for k in range(n + 1, len(base))), n


def test_integer_path_matches_the_float_model(grouped):
    net = grouped.model.network
    rgb = natural_image(128, 128)
    with torch.no_grad():
        y = grouped.latents(rgb) * net.gains_at(torch.tensor([1.0]))[0]
        sym = grouped._symbols(y)
        params = grouped._hyper_params(sym.z, y.shape[2:]).float() / 2**ACT_BITS
        ref = net.entropy_parameters(y, params, torch.round).double()
    assert float((ref - params.double())[0, 24:].abs().max()) > 1.0  # the nets move the means a lot
    close = np.abs(sym.means - ref[0, 24:].numpy()) < 0.05
    assert close.mean() > 0.99  # integer rounding may flip a rare latent's rounding and what follows from it


def test_zeroed_groups_code_like_the_checkerboard_model(tmp_path):
    torch.manual_seed(4)
    ckbd = GainedHyperprior(ModelConfig(**TINY))
    torch.nn.init.normal_(ckbd.ctx_params[-1].weight, std=0.05)
    export_model(ckbd.eval(), tmp_path / "c.safetensors", "c")
    net = GainedHyperprior(ModelConfig(**TINY, channel_groups=GROUPS))
    load_init_weights(net, str(tmp_path / "c.safetensors"))
    export_model(net.eval(), tmp_path / "g.safetensors", "g")
    rgb = natural_image(100, 70)
    a, b = Codec(tmp_path / "c.safetensors").analyse(rgb, 50), Codec(tmp_path / "g.safetensors").analyse(rgb, 50)
    assert a.digest() == b.digest() and np.array_equal(a.means, b.means)


@pytest.mark.parametrize("anchors", [True, False])
def test_group_net_on_its_positions_equals_a_full_pass_masked(grouped, anchors):
    """The strided, tiled evaluation gives exactly what the full-resolution layers give where it applies,
    and leaves every other position and channel alone."""
    net = grouped.model.group_other_int[1]
    g = torch.Generator().manual_seed(3)
    for h, w in ((1, 1), (1, 6), (7, 1), (11, 9), (10, 13)):
        params = torch.randint(-600, 600, (1, 48, h, w), generator=g).double()
        decoded = torch.randint(-2000, 2000, (1, 12, h, w), generator=g).double()
        where = anchor_mask(h, w)[0, 0].bool()
        where = where if anchors else ~where
        x = torch.cat([params[:, 12:24], params[:, 36:48], decoded], dim=1)
        for layer in net.layers:
            x = layer(x)
        want = params.clone()
        want[:, 12:24] += x[:, :12] * where
        want[:, 36:48] += x[:, 12:] * where
        assert not torch.equal(want, params) or not where.any()
        for tile in (1, 2, 3, 100):
            got = params.clone()
            net.apply(got, decoded, 12, 24, anchors, tile=tile)
            assert torch.equal(got, want), (h, w, tile)


def test_checkerboard_weights_start_a_grouped_model_unchanged(tmp_path):
    torch.manual_seed(2)
    ckbd = GainedHyperprior(ModelConfig(**TINY))
    torch.nn.init.normal_(ckbd.ctx_params[-1].weight, std=0.05)
    path = tmp_path / "ckbd.safetensors"
    export_model(ckbd.eval(), path, "ckbd")
    ckbd = load_model(path).network
    net = GainedHyperprior(ModelConfig(**TINY, channel_groups=GROUPS))
    load_init_weights(net, str(path))
    y, hyper = torch.randn(1, 24, 6, 6) * 5, torch.randn(1, 48, 6, 6)
    with torch.no_grad():
        assert torch.allclose(net.entropy_parameters(y, hyper, torch.round),
                              ckbd.entropy_parameters(y, hyper, torch.round), atol=1e-6)


@pytest.mark.parametrize("bad", [dict(context="none", channel_groups=(12, 12)), dict(channel_groups=(12, 11)),
                                 dict(channel_groups=(24,)), dict(channel_groups=(0, 24))])
def test_channel_groups_are_checked(bad):
    with pytest.raises(ValueError):
        ModelConfig(**{**TINY, **bad})


def test_default_groups_follow_the_latent_width():
    assert default_channel_groups(192, "checkerboard") == (16, 16, 32, 64, 64)
    assert default_channel_groups(320, "checkerboard") == (16, 16, 32, 64, 192)
    assert default_channel_groups(192, "none") == () and default_channel_groups(128, "checkerboard") == ()


def test_config_round_trips_and_old_files_have_no_groups():
    cfg = ModelConfig(**TINY, channel_groups=GROUPS)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    d = cfg.to_dict()
    del d["channel_groups"]
    assert ModelConfig.from_dict(d).channel_groups == ()


def test_model_file_with_missing_group_layers_is_refused(grouped_path, tmp_path):
    import json

    from safetensors.numpy import load_file, save_file

    from vaecodec.errors import ModelFileError
    from vaecodec.model_io import _fingerprint, read_metadata

    arrays = load_file(str(grouped_path))
    meta = read_metadata(grouped_path)
    layers = json.loads(meta["int_context_layers"])
    layers["group_other"] = layers["group_other"][:1]
    meta["int_context_layers"] = json.dumps(layers)
    meta["fingerprint"] = _fingerprint(arrays, meta)
    bad = tmp_path / "bad.safetensors"
    save_file(arrays, str(bad), metadata=meta)
    with pytest.raises(ModelFileError, match="architecture"):
        load_model(bad)


def test_cli_trains_a_grouped_model_and_rejects_bad_groups(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(4):
        Image.fromarray(np.roll(natural_image(96, 80), 13 * i, axis=1)).save(d / f"{i}.png")
    opts = ["--N", "16", "--M", "24", "--lambdas", "0.005,0.05", "--crop", "64", "--batch-size", "2",
            "--no-compile", "--no-bf16", "--val-every", "2", "--ckpt-every", "2"]
    bad = CliRunner().invoke(main, ["train", str(d), "--run-dir", str(tmp_path / "bad"), "--steps", "2",
                                    "--channel-groups", "8,8", *opts])
    assert bad.exit_code != 0 and "M=24" in bad.output and "Traceback" not in bad.output
    out = tmp_path / "g.safetensors"
    r = CliRunner().invoke(main, ["train", str(d), "--run-dir", str(tmp_path / "run"), "--steps", "2",
                                  "--channel-groups", "4,8,12", "--out", str(out), *opts])
    assert r.exit_code == 0, r.output
    codec = Codec(out)
    assert codec.model.config.channel_groups == GROUPS and len(codec.model.group_anchor_int) == 2
    img = Image.fromarray(natural_image(70, 50))
    assert codec.decode(codec.encode(img, 50)).size == img.size
    again = CliRunner().invoke(main, ["train", str(d), "--run-dir", str(tmp_path / "run"), "--steps", "3",
                                      "--resume", "--channel-groups", "none"])
    assert again.exit_code != 0 and "cannot change" in again.output
    same = CliRunner().invoke(main, ["train", str(d), "--run-dir", str(tmp_path / "run"), "--steps", "3",
                                     "--resume", "--channel-groups", "4,8,12"])
    assert same.exit_code == 0, same.output
