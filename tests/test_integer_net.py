import numpy as np
import pytest
import torch

from vaecodec.integer_net import ACT_BITS, IntegerNet, quantize_sequential


def test_integer_hyper_synthesis_matches_float_closely(tiny_codec):
    net = tiny_codec.model.network
    z = torch.randint(-6, 7, (1, net.config.N, 3, 5))
    with torch.no_grad():
        ref = net.h_s(z.float()).double()
    got = tiny_codec.model.h_s_int(z) / 2**ACT_BITS
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < 0.05
    assert torch.equal(got * 2**ACT_BITS, torch.round(got * 2**ACT_BITS))  # integers


def test_result_does_not_depend_on_thread_count(tiny_codec):
    z = torch.randint(-20, 21, (1, tiny_codec.model.config.N, 6, 7))
    torch.set_num_threads(1)
    a = tiny_codec.model.h_s_int(z)
    torch.set_num_threads(2)
    b = tiny_codec.model.h_s_int(z)
    assert torch.equal(a, b)


def test_overflow_is_refused_not_silently_inexact():
    seq = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1))
    net = IntegerNet(quantize_sequential(seq))
    with pytest.raises(OverflowError):
        net(torch.full((1, 4, 3, 3), 2**40, dtype=torch.int64))


def test_only_exact_layers_are_accepted():
    with pytest.raises(TypeError):
        quantize_sequential(torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.Sigmoid()))
    assert np.isfinite(ACT_BITS)


def test_tiled_evaluation_is_identical_to_one_pass(tiny_codec):
    z = torch.randint(-9, 10, (1, tiny_codec.model.config.N, 11, 9))
    whole = tiny_codec.model.h_s_int(z, band=100)
    for band in (1, 2, 3, 5):
        assert torch.equal(tiny_codec.model.h_s_int(z, band=band), whole)
