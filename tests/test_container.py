import pytest

from vaecodec.container import MAGIC, VaeFile, pack, unpack
from vaecodec.errors import CorruptFileError, NotAVaeFileError, UnsupportedVersionError


def sample_file(**kw) -> VaeFile:
    args = dict(width=300, height=200, layout="RGB", quality=75.0, model_name="hp1",
                model_fingerprint=bytes(range(8)), payload=bytes(range(40)) * 3, chunks={})
    args.update(kw)
    return VaeFile(**args)


def test_round_trip_keeps_every_field():
    f = sample_file(layout="RGBA", quality=33.33, chunks={b"ALPH": b"\x01\x02\x03"})
    g = unpack(pack(f))
    assert (g.width, g.height, g.layout, g.quality, g.model_name) == (300, 200, "RGBA", 33.33, "hp1")
    assert g.model_fingerprint == f.model_fingerprint and g.payload == f.payload and g.chunks == f.chunks


def test_header_is_small():
    f = sample_file(width=768, height=512)
    assert len(pack(f)) - len(f.payload) <= 40
    assert f.header_size <= 40


def test_every_single_bit_flip_is_detected():
    data = pack(sample_file(payload=b"\x55" * 16))
    for i in range(len(data)):
        for bit in (0, 3, 7):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises((CorruptFileError, NotAVaeFileError, UnsupportedVersionError)):
                unpack(bytes(bad))


def test_every_truncation_is_detected():
    data = pack(sample_file())
    for n in range(len(data)):
        with pytest.raises((CorruptFileError, NotAVaeFileError)):
            unpack(data[:n])


def test_foreign_and_empty_files_get_their_own_errors():
    with pytest.raises(NotAVaeFileError, match="empty"):
        unpack(b"")
    with pytest.raises(NotAVaeFileError, match="PNG"):
        unpack(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(NotAVaeFileError, match="not a .vae file"):
        unpack(b"hello world, this is text")


def test_newer_version_is_refused_clearly():
    data = bytearray(pack(sample_file()))
    data[len(MAGIC)] = 99
    with pytest.raises(UnsupportedVersionError, match="version 99"):
        unpack(bytes(data))


def test_absurd_dimensions_refused_before_decoding():
    data = pack(sample_file(width=100_000, height=100_000))
    with pytest.raises(CorruptFileError, match="over the limit"):
        unpack(data, max_pixels=64 * 1024 * 1024)
