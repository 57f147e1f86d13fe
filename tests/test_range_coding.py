import numpy as np
import pytest

from vaecodec.entropy_models import TABLE_PRECISION, gaussian_tables, quantize_pmf, scale_table
from vaecodec.errors import CorruptFileError
from vaecodec.range_coding import SymbolReader, SymbolWriter, Table


def test_quantized_pmf_sums_exactly_and_keeps_every_symbol():
    freq = quantize_pmf(np.array([0.5, 0.25, 1e-12, 0.25 - 1e-12]))
    assert freq.sum() == 1 << TABLE_PRECISION and (freq >= 1).all()


def test_round_trip_with_escapes_and_many_tables():
    freqs, radii = gaussian_tables(scale_table(levels=8))
    tables = [Table(freqs[k], -int(r), int(r)) for k, r in enumerate(radii)]
    rng = np.random.default_rng(0)
    groups = [np.round(rng.normal(0, s, size=500)).astype(np.int64) for s in scale_table(levels=8)]
    groups[0][:3] = [1000, -70000, 2**35]  # far outside the table: escapes
    w = SymbolWriter()
    for g, t in zip(groups, tables, strict=True):
        w.write(g, t)
    data = w.getvalue()
    r = SymbolReader(data)
    for g, t in zip(groups, tables, strict=True):
        assert np.array_equal(r.read(len(g), t), g)


def test_wider_distributions_cost_more_bits():
    freqs, radii = gaussian_tables(scale_table(levels=8))
    sizes = []
    for k in (0, 4, 7):
        t = Table(freqs[k], -int(radii[k]), int(radii[k]))
        w = SymbolWriter()
        w.write(np.zeros(5000, dtype=np.int64), t)
        sizes.append(len(w.getvalue()))
    assert sizes[0] < sizes[1] < sizes[2]


def test_broken_stream_length_is_an_error():
    with pytest.raises(CorruptFileError):
        SymbolReader(b"\x01\x02\x03")
