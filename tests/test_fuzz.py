"""Seeded in-suite fuzzing of the container parser and decoder: every input ends in an image or a clean
VaecodecError, quickly. The long campaign lives in benchmarks/fuzz_decoder.py."""

import struct
import time
import zlib

import numpy as np
import pytest
from conftest import natural_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vaecodec.container import VaeFile, pack, padded_pixels, unpack
from vaecodec.errors import VaecodecError

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def valid(tiny_codec):
    return tiny_codec.encode(Image.fromarray(natural_image(70, 45)), 60)


def decode_or_clean_error(codec, data: bytes) -> None:
    t0 = time.perf_counter()
    try:
        img = codec.decode(data, max_pixels=1 << 20)
        assert padded_pixels(*img.size) <= 1 << 20
    except VaecodecError as exc:
        assert str(exc) and "\n" not in str(exc)
    assert time.perf_counter() - t0 < 60


def reseal(data: bytes) -> bytes:
    """Recompute the CRC so that damage reaches the decoder instead of the checksum."""
    body = data[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_every_truncation(tiny_codec, valid):
    for n in range(len(valid)):
        with pytest.raises(VaecodecError):
            tiny_codec.decode(valid[:n])


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=8))
def test_bit_flips_are_caught(tiny_codec, valid, flips):
    bad = bytearray(valid)
    for pos, bit in flips:
        bad[pos % len(bad)] ^= 1 << bit
    if bytes(bad) != valid:
        with pytest.raises(VaecodecError):
            tiny_codec.decode(bytes(bad))


@FUZZ
@given(payload=st.binary(min_size=0, max_size=400))
def test_random_stream_with_valid_crc(tiny_codec, valid, payload):
    f = unpack(valid)
    f.payload = payload
    decode_or_clean_error(tiny_codec, pack(f))


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=6))
def test_resealed_bit_flips(tiny_codec, valid, flips):
    bad = bytearray(valid)
    for pos, bit in flips:
        bad[pos % (len(bad) - 4)] ^= 1 << bit
    decode_or_clean_error(tiny_codec, reseal(bytes(bad)))


@FUZZ
@given(w=st.integers(1, 1 << 20), h=st.integers(1, 1 << 20), stream=st.binary(max_size=64),
       layout=st.sampled_from(["RGB", "L", "RGBA", "LA"]))
def test_declared_sizes_are_bounded(tiny_codec, valid, w, h, stream, layout):
    f = unpack(valid)
    g = VaeFile(w, h, layout, f.quality, f.model_name, f.model_fingerprint, stream,
                {b"ALPH": zlib.compress(b"\0" * 10)} if layout in ("RGBA", "LA") else {})
    decode_or_clean_error(tiny_codec, pack(g))


@FUZZ
@given(tail=st.binary(max_size=200))
def test_random_bytes_after_magic(tiny_codec, tail):
    decode_or_clean_error(tiny_codec, b"\x89VAE" + tail)


def test_zero_length_stream_and_huge_escapes(tiny_codec, valid):
    f = unpack(valid)
    f.payload = b""
    decode_or_clean_error(tiny_codec, pack(f))
    f.payload = np.full(64, 0xFFFFFFFF, dtype=np.uint32).tobytes()
    decode_or_clean_error(tiny_codec, pack(f))
