"""Multi-index hashing: exact Hamming range search over 64-bit codes without a full scan.

Norouzi, Punjani and Fleet, "Fast Exact Search in Hamming Space with Multi-Index Hashing"
(CVPR 2012). Each code is cut into ``m`` chunks of consecutive bits. If two codes differ in
at most ``r`` bits, the bits are shared out among the chunks, so some chunk differs in at most
``r // m`` bits (pigeonhole); finer, with ``r = m*k + a``, one of the first ``a + 1`` chunks
differs in at most ``k`` bits or one of the others in at most ``k - 1``. So a query looks up,
in one table per chunk, the buckets of every chunk value that close to its own, and checks
only the codes found there with the full 64-bit distance: the answer is exactly that of a
brute-force scan, at a fraction of its cost while the buckets stay small.

Layout (all numpy, built in bulk): per chunk, the rows of the codes sorted by chunk value
(``uint32``) and a CSR offsets array over the chunk values, the chunks' tables laid end to
end. Memory is ``4*m`` bytes per code plus the offsets (``4 * 2**bits`` per chunk), on top
of the (n,) uint64 codes themselves (held, not copied): with the default chunks 15 more bytes
per code at 10 M codes (3 chunks of 21-22 bits), 17 at 1 M (4 chunks of 16 bits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_MAX_CHUNK_BITS = 24  # a 2**24-entry offsets array is 64 MiB; wider chunks buy nothing here
_CANDIDATES_PER_PASS = 2**18  # about 4 MiB of positions, rows and codes per pass: cache-sized


def default_chunk_bits(n: int) -> tuple[int, ...]:
    """Chunk widths for ``n`` codes: about ``log2(n)`` bits each (rounded down, at least 8,
    at most 24), so that a bucket holds about one code and the offsets cost at most about
    four bytes per code per chunk; the 64 bits shared out as evenly as that allows."""
    bits = min(_MAX_CHUNK_BITS, max(8, int(math.log2(max(n, 2)))))
    return split_bits(math.ceil(64 / bits))


def split_bits(m: int) -> tuple[int, ...]:
    """64 bits as ``m`` chunks of consecutive bits, widest first (``5 -> (13, 13, 13, 13, 12)``)."""
    if not 1 <= m <= 64:
        raise ValueError(f"the number of chunks must be in 1..64, not {m}")
    wide, extra = divmod(64, m)
    return tuple(wide + 1 if j < extra else wide for j in range(m))


def chunk_radii(radius: int, m: int) -> tuple[int, ...]:
    """The radius each of ``m`` chunk tables must be searched at for an exact search at
    ``radius`` bits: ``k = radius // m`` for the first ``radius % m + 1`` chunks and ``k - 1``
    (no lookup at all when negative) for the others."""
    k, a = divmod(radius, m)
    return tuple(k if j <= a else k - 1 for j in range(m))


class MultiIndexHash:
    """Exact Hamming range search over (n,) uint64 codes.

    ``codes``: (n,) uint64, row ``i`` is code ``i`` (held by reference when already a
    contiguous uint64 array); ``ids``: optional (n,) int64 labels returned instead of row
    numbers (an id may repeat: an image with several codes); ``chunk_bits``: the widths of the
    chunks, low bits first, summing to 64 (default: :func:`default_chunk_bits`);
    ``copy_codes``: also keep each table's codes in bucket order (``8*m`` more bytes per
    code), so that checking a candidate reads memory near the last one instead of anywhere:
    about twice as fast at radius 14, little change at radius 8.
    """

    def __init__(
        self,
        codes: np.ndarray,
        ids: np.ndarray | None = None,
        chunk_bits: Sequence[int] | None = None,
        *,
        copy_codes: bool = False,
    ) -> None:
        self.codes = np.ascontiguousarray(np.asarray(codes, dtype=np.uint64))
        if self.codes.ndim != 1:
            raise ValueError("codes must be a (n,) array")
        n = len(self.codes)
        if n >= 2**32:
            raise ValueError("at most 2**32 - 1 codes: rows are stored as uint32")
        self.ids = None if ids is None else np.ascontiguousarray(np.asarray(ids, dtype=np.int64))
        if self.ids is not None and self.ids.shape != (n,):
            raise ValueError("ids and codes must have the same length")
        bits = default_chunk_bits(n) if chunk_bits is None else tuple(int(b) for b in chunk_bits)
        if sum(bits) != 64 or min(bits) < 1 or max(bits) > _MAX_CHUNK_BITS:
            raise ValueError(f"chunk widths must be 1..{_MAX_CHUNK_BITS} bits summing to 64, not {bits}")
        self.chunk_bits = bits
        self._shifts = tuple(np.uint64(s) for s in np.cumsum((0, *bits[:-1])))
        # chunk j's buckets are bucket numbers bases[j] .. bases[j+1]-1 of one offsets array
        self._bases = np.cumsum((0, *(1 << b for b in bits))).astype(np.int64)
        m, total = len(bits), int(self._bases[-1])
        self._rows = np.empty(m * n, dtype=np.uint32)
        offsets = np.empty(total + 1, dtype=np.int64)
        row = np.arange(n, dtype=np.uint64)
        for j, b in enumerate(bits):
            # (value, row) packed in 64 bits and sorted in place: one SIMD sort, ~10x faster
            # than an argsort, and one (n,) temporary
            packed = self.codes >> self._shifts[j]
            packed &= np.uint64((1 << b) - 1)
            packed <<= np.uint64(32)
            packed |= row
            packed.sort()
            self._rows[j * n : (j + 1) * n] = packed  # the low 32 bits: the rows
            packed >>= np.uint64(32)  # the chunk values, ascending
            values = np.arange(1 << b, dtype=np.uint64)
            # the tables lie end to end: chunk j's entries start at j * n
            offsets[self._bases[j] : self._bases[j + 1]] = j * n + np.searchsorted(packed, values)
            del packed
        offsets[total] = m * n
        self._offsets = offsets.astype(np.uint32) if m * n < 2**32 else offsets
        self._sorted = self.codes[self._rows] if copy_codes else None
        self._masks: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def nbytes(self) -> int:
        """Bytes held: codes, ids, tables and offsets (not the small cache of XOR masks)."""
        arrays = (self.codes, self.ids, self._rows, self._offsets, self._sorted)
        return sum(a.nbytes for a in arrays if a is not None)

    def lookups(self, radius: int) -> int:
        """Buckets one probe visits at ``radius``."""
        return sum(_within(b, k) for b, k in self._plan(radius))

    def expected_candidates(self, radius: int) -> float:
        """Codes checked for one probe at ``radius`` when the codes are uniformly random
        (a code found in several tables counts each time)."""
        n = len(self)
        return sum(_within(b, k) * n / 2**b for b, k in self._plan(radius))

    def range_search(
        self, queries: np.ndarray | Sequence[int], radius: int | np.ndarray | Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every code within ``radius`` bits of each query, faiss style.

        ``queries``: (q,) uint64 (or int64 bit patterns, or Python ints in 0..2**64-1);
        ``radius``: an int or (q,) ints, inclusive (a negative radius finds nothing).
        Returns ``lims`` (q+1,) int64, ``distances`` (k,) int16 and ``labels`` (k,) int64:
        query ``i``'s hits are ``labels[lims[i]:lims[i+1]]`` (ids when given, else rows), in
        row order, each row once.
        """
        q = as_codes(queries)
        radii = np.broadcast_to(np.asarray(radius, dtype=np.int64), q.shape)
        groups = [int(r) for r in np.unique(radii) if r >= 0]
        parts = []
        for r in groups:
            which = np.flatnonzero(radii == r)
            probe, rows, dist = self._search(q[which], r)
            parts.append((which[probe], rows, dist))
        if len(parts) == 1:  # already in (probe, row) order
            probe, rows, dist = parts[0]
        elif parts:
            probe, rows, dist = (np.concatenate(a) for a in zip(*parts, strict=True))
            order = np.lexsort((rows, probe))
            probe, rows, dist = probe[order], rows[order], dist[order]
        else:
            probe, rows, dist = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int16)
        lims = np.zeros(len(q) + 1, dtype=np.int64)
        np.cumsum(np.bincount(probe, minlength=len(q)), out=lims[1:])
        return lims, dist, (rows if self.ids is None else self.ids[rows])

    def search(self, query: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """One query: ``(distances (k,) int16, labels (k,) int64)`` within ``radius``, in row order."""
        _, dist, labels = self.range_search([query], radius)
        return dist, labels

    def _chunk(self, codes: np.ndarray, j: int) -> np.ndarray:
        """Chunk ``j`` of (k,) uint64 codes as (k,) int64 values."""
        mask = np.uint64((1 << self.chunk_bits[j]) - 1)
        return ((codes >> self._shifts[j]) & mask).astype(np.int64)

    def _plan(self, radius: int) -> list[tuple[int, int]]:
        """(chunk bits, chunk radius) per chunk; a chunk radius below zero means no lookup."""
        return list(zip(self.chunk_bits, chunk_radii(radius, len(self.chunk_bits)), strict=True))

    def _xor_masks(self, bits: int, k: int) -> np.ndarray:
        """The (c,) int64 values of ``bits`` bits with at most ``k`` set, cached."""
        k = min(k, bits)
        got = self._masks.get((bits, k))
        if got is None:
            if k < 0:
                got = np.zeros(0, dtype=np.int64)
            else:
                values = np.arange(1 << bits, dtype=np.int64)
                got = values[np.bitwise_count(values) <= k]
            self._masks[bits, k] = got
        return got

    def _search(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hits of (q,) uint64 queries at one radius: (probe, row, distance) in (probe, row)
        order. Queries go in groups small enough for their candidates to stay in cache."""
        per_probe = self.expected_candidates(radius) + self.lookups(radius)
        group = max(1, int(_CANDIDATES_PER_PASS // max(per_probe, 1.0)))
        parts = []
        for lo in range(0, len(q), group):
            probe, rows, dist = self._pass(q[lo : lo + group], radius)
            parts.append((probe + lo, rows, dist))
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int16)
        probe, rows, dist = (np.concatenate(a) for a in zip(*parts, strict=True))
        return probe, rows, dist

    def _pass(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(self)
        buckets = [
            self._bases[j] + (self._chunk(q, j)[:, None] ^ masks[None, :])
            for j, (b, k) in enumerate(self._plan(radius))
            if (masks := self._xor_masks(b, k)).size
        ]
        if not n or not buckets or not len(q):
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int16)
        bucket = np.concatenate(buckets, axis=1)  # (q, lookups per probe)
        start = self._offsets[bucket].astype(np.int64)
        length = self._offsets[bucket + 1].astype(np.int64) - start
        probe = np.repeat(np.arange(len(q), dtype=np.int64), length.sum(axis=1))
        start, length = start.ravel(), length.ravel()
        full = length > 0
        start, length = start[full], length[full]
        # positions start..start+length-1 of every bucket, end to end, without a Python loop
        ends = np.cumsum(length)
        pos = np.arange(len(probe), dtype=np.int64) + np.repeat(start - (ends - length), length)
        if self._sorted is not None:
            dist = np.bitwise_count(self._sorted[pos] ^ q[probe])
            near = np.flatnonzero(dist <= radius)
            rows = self._rows[pos[near]].astype(np.int64)
        else:
            rows = self._rows[pos]
            dist = np.bitwise_count(self.codes[rows] ^ q[probe])
            near = np.flatnonzero(dist <= radius)
            rows = rows[near].astype(np.int64)
        # a code may be found in several tables: keep each (probe, row) once
        key, first = np.unique(probe[near] * n + rows, return_index=True)
        probe, row = np.divmod(key, n)
        return probe, row, dist[near][first].astype(np.int16)


def _within(bits: int, k: int) -> int:
    """How many values of ``bits`` bits lie within ``k`` bits of a given one."""
    return sum(math.comb(bits, i) for i in range(min(k, bits) + 1))


def as_codes(values: np.ndarray | Sequence[int]) -> np.ndarray:
    """(q,) uint64 from a uint64 array, an int64 array of bit patterns, or Python ints in
    0..2**64-1."""
    if isinstance(values, np.ndarray) and values.dtype in (np.uint64, np.int64):
        return np.ascontiguousarray(values.reshape(-1)).view(np.uint64)
    out = [int(v) for v in values]
    if any(not 0 <= v < 2**64 for v in out):
        raise ValueError("codes must be in 0..2**64-1")
    return np.array(out, dtype=np.uint64)
