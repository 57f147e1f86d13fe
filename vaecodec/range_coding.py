"""Range coding of integer symbols with fixed integer tables (constriction's RangeEncoder/RangeDecoder).

A table is [escape_low, lo..hi, escape_high] as integer frequencies. Values outside lo..hi are coded as an
escape bin followed, after all in-range symbols of the same group, by their excess in a simple
Elias-gamma-like code. Symbols are grouped by table so each group is one vectorized constriction call.
"""

from __future__ import annotations

import constriction
import numpy as np

from .entropy_models import TABLE_PRECISION
from .errors import CorruptFileError

MAX_EXCESS_BITS = 40
_UNIFORM_NBITS = constriction.stream.model.Uniform(MAX_EXCESS_BITS + 1)
_UNIFORM_CHUNK = constriction.stream.model.Uniform(1 << 16)


class Table:
    """One fixed distribution over lo..hi plus two escape bins."""

    def __init__(self, freq: np.ndarray, lo: int, hi: int):
        n = hi - lo + 3
        freq = np.asarray(freq[:n], dtype=np.float64)
        if len(freq) != n or (freq <= 0).any():
            raise ValueError("malformed entropy table")
        self.lo, self.hi = int(lo), int(hi)
        self.model = constriction.stream.model.Categorical(freq / float(1 << TABLE_PRECISION), perfect=False)


class SymbolWriter:
    def __init__(self):
        self.enc = constriction.stream.queue.RangeEncoder()

    def write(self, values: np.ndarray, table: Table) -> None:
        """Code values (any shape, flattened in C order) with one table; excess of escapes follows."""
        v = np.asarray(values, dtype=np.int64).ravel()
        if v.size == 0:
            return
        idx = np.clip(v - table.lo + 1, 0, table.hi - table.lo + 2).astype(np.int32)
        self.enc.encode(idx, table.model)
        low, high = v < table.lo, v > table.hi
        if low.any() or high.any():
            excess = np.where(low, table.lo - 1 - v, v - table.hi - 1)[low | high]
            self._write_excess(excess)

    def _write_excess(self, excess: np.ndarray) -> None:
        """Bit length of each excess (uniform over 0..40), then all of them in 16-bit chunks, low first."""
        excess = np.asarray(excess, dtype=np.int64)
        nbits = _bit_length(excess)
        if (nbits > MAX_EXCESS_BITS).any():
            raise ValueError("latent value out of the codable range")
        self.enc.encode(nbits.astype(np.int32), _UNIFORM_NBITS)
        nchunks = (nbits + 15) // 16
        owner = np.repeat(np.arange(len(excess)), nchunks)
        index = np.arange(len(owner)) - np.repeat(np.cumsum(nchunks) - nchunks, nchunks)
        chunks = (excess[owner] >> (16 * index)) & 0xFFFF
        if len(chunks):
            self.enc.encode(chunks.astype(np.int32), _UNIFORM_CHUNK)

    def getvalue(self) -> bytes:
        return self.enc.get_compressed().astype("<u4").tobytes()  # little-endian on every host


class SymbolReader:
    def __init__(self, data: bytes):
        if len(data) % 4:
            raise CorruptFileError("entropy-coded stream has a broken length")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        self.dec = constriction.stream.queue.RangeDecoder(words)

    def read(self, count: int, table: Table) -> np.ndarray:
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        try:
            idx = np.asarray(self.dec.decode(table.model, count), dtype=np.int64)
        except BaseException as exc:  # constriction raises (or panics) on impossible states in damaged streams
            _reraise_interrupts(exc)
            raise CorruptFileError("entropy-coded stream is damaged") from None
        v = idx + table.lo - 1
        low, high = idx == 0, idx == table.hi - table.lo + 2
        n_esc = int(low.sum() + high.sum())
        if n_esc:
            excess = self._read_excess(n_esc)
            esc = low | high
            v[esc] = np.where(low[esc], table.lo - 1 - excess, table.hi + 1 + excess)
        return v

    def _read_excess(self, n: int) -> np.ndarray:
        try:
            nbits = np.asarray(self.dec.decode(_UNIFORM_NBITS, n), dtype=np.int64)
            nchunks = (nbits + 15) // 16
            total = int(nchunks.sum())
            chunks = np.zeros(0, np.int64)
            if total:
                chunks = np.asarray(self.dec.decode(_UNIFORM_CHUNK, total), dtype=np.int64)
        except BaseException as exc:
            _reraise_interrupts(exc)
            raise CorruptFileError("entropy-coded stream is damaged") from None
        owner = np.repeat(np.arange(n), nchunks)
        index = np.arange(total) - np.repeat(np.cumsum(nchunks) - nchunks, nchunks)
        out = np.zeros(n, dtype=np.int64)
        np.add.at(out, owner, chunks << (16 * index))
        if (out >> np.maximum(nbits, 0) != 0).any():
            raise CorruptFileError("entropy-coded stream is damaged (escape value wider than declared)")
        return out


def _bit_length(v: np.ndarray) -> np.ndarray:
    out = np.zeros(v.shape, dtype=np.int64)
    x = v.copy()
    while (x > 0).any():
        out += x > 0
        x >>= 1
    return out


def _reraise_interrupts(exc: BaseException) -> None:
    """constriction's Rust panics arrive as pyo3 PanicException, a BaseException: treat them as damage,
    but never swallow Ctrl-C or SystemExit."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        raise exc
