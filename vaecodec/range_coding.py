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
        for e in excess.tolist():
            nbits = int(e).bit_length()
            if nbits > MAX_EXCESS_BITS:
                raise ValueError("latent value out of the codable range")
            self.enc.encode(nbits, constriction.stream.model.Uniform(MAX_EXCESS_BITS + 1))
            for shift in range(0, nbits, 16):
                chunk = (e >> shift) & 0xFFFF
                width = min(16, nbits - shift)
                self.enc.encode(int(chunk), constriction.stream.model.Uniform(1 << width))

    def getvalue(self) -> bytes:
        return self.enc.get_compressed().tobytes()


class SymbolReader:
    def __init__(self, data: bytes):
        if len(data) % 4:
            raise CorruptFileError("entropy-coded stream has a broken length")
        words = np.frombuffer(data, dtype=np.uint32).copy()
        self.dec = constriction.stream.queue.RangeDecoder(words)

    def read(self, count: int, table: Table) -> np.ndarray:
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        try:
            idx = np.asarray(self.dec.decode(table.model, count), dtype=np.int64)
        except Exception as exc:  # constriction raises on impossible states in damaged streams
            raise CorruptFileError("entropy-coded stream is damaged") from exc
        v = idx + table.lo - 1
        low, high = idx == 0, idx == table.hi - table.lo + 2
        n_esc = int(low.sum() + high.sum())
        if n_esc:
            excess = self._read_excess(n_esc)
            esc = low | high
            v[esc] = np.where(low[esc], table.lo - 1 - excess, table.hi + 1 + excess)
        return v

    def _read_excess(self, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.int64)
        try:
            for i in range(n):
                nbits = int(self.dec.decode(constriction.stream.model.Uniform(MAX_EXCESS_BITS + 1)))
                e = 0
                for shift in range(0, nbits, 16):
                    width = min(16, nbits - shift)
                    e |= int(self.dec.decode(constriction.stream.model.Uniform(1 << width))) << shift
                out[i] = e
        except Exception as exc:
            raise CorruptFileError("entropy-coded stream is damaged") from exc
        return out
