"""Multi-index hashing gives exactly the brute-force answer, however the codes are cut."""

from __future__ import annotations

import numpy as np
import pytest

from detector.stage1 import mih
from detector.stage1.mih import MultiIndexHash, chunk_radii, default_chunk_bits, split_bits

TOP = np.uint64(2**63)


def _flip(code: np.uint64, bits: int, rng: np.random.Generator) -> np.uint64:
    """``code`` with ``bits`` distinct bits flipped."""
    mask = 0
    for b in rng.permutation(64)[:bits]:
        mask |= 1 << int(b)
    return code ^ np.uint64(mask)


def _catalog(n: int, queries: int, radius: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n,) random codes and (queries,) probes, each probe with planted catalog codes at every
    distance 0..radius+1 from it, some of them at the top bit."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64, n, dtype=np.uint64)
    probes = rng.integers(0, 2**64, queries, dtype=np.uint64) | TOP
    rows = rng.permutation(n)
    k = 0
    for q in probes:
        for d in range(radius + 2):
            codes[rows[k]] = _flip(q, d, rng)
            k += 1
    return codes, probes


def _brute(codes: np.ndarray, q: np.uint64, radius: int) -> tuple[np.ndarray, np.ndarray]:
    dist = np.bitwise_count(codes ^ q)
    rows = np.flatnonzero(dist <= radius)
    return dist[rows].astype(np.int16), rows


@pytest.mark.parametrize("chunks", [None, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("copy_codes", [False, True])
def test_equals_brute_force(chunks: int | None, copy_codes: bool) -> None:
    for radius in (0, 1, 2, 3, 5, 8, 11, 14, 16):
        codes, probes = _catalog(3000, 12, radius, seed=radius)
        bits = None if chunks is None else split_bits(chunks)
        index = MultiIndexHash(codes, chunk_bits=bits, copy_codes=copy_codes)
        lims, dist, rows = index.range_search(probes, radius)
        assert lims.tolist()[0] == 0 and lims[-1] == len(rows) == len(dist)
        for i, q in enumerate(probes):
            want_dist, want_rows = _brute(codes, q, radius)
            assert rows[lims[i] : lims[i + 1]].tolist() == want_rows.tolist(), (chunks, radius, i)
            assert dist[lims[i] : lims[i + 1]].tolist() == want_dist.tolist()
            assert len(want_rows) >= radius + 1  # the planted ones at 0..radius, not radius+1


def test_batched_equals_single_and_radius_per_query() -> None:
    codes, probes = _catalog(5000, 16, 10, seed=3)
    index = MultiIndexHash(codes, chunk_bits=split_bits(4))
    radii = np.arange(16) % 11 - 1  # -1 (finds nothing) .. 9
    lims, dist, rows = index.range_search(probes, radii)
    for i, (q, r) in enumerate(zip(probes, radii, strict=True)):
        one_dist, one_rows = index.search(int(q), int(r))
        assert rows[lims[i] : lims[i + 1]].tolist() == one_rows.tolist()
        assert dist[lims[i] : lims[i + 1]].tolist() == one_dist.tolist()
        assert one_rows.tolist() == _brute(codes, q, int(r))[1].tolist()
    assert lims[1] == 0  # radius -1


def test_many_passes_give_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    codes, probes = _catalog(4000, 20, 12, seed=4)
    index = MultiIndexHash(codes)
    whole = index.range_search(probes, 12)
    monkeypatch.setattr(mih, "_CANDIDATES_PER_PASS", 1)  # one probe per pass
    for a, b in zip(whole, index.range_search(probes, 12), strict=True):
        assert a.tolist() == b.tolist()


def test_empty_index_and_no_queries() -> None:
    empty = MultiIndexHash(np.zeros(0, np.uint64))
    lims, dist, rows = empty.range_search([0, 2**64 - 1], 16)
    assert lims.tolist() == [0, 0, 0] and dist.size == 0 and rows.size == 0
    assert len(empty) == 0
    index = MultiIndexHash(np.arange(10, dtype=np.uint64))
    lims, dist, rows = index.range_search(np.zeros(0, np.uint64), 3)
    assert lims.tolist() == [0] and rows.size == 0


def test_duplicate_ids_and_codes_each_row_once() -> None:
    """An image with several codes: its id comes once per code within the radius; a code found
    through several chunks still comes once."""
    codes = np.array([5, 5, 2**64 - 1, 7, 5], dtype=np.uint64)
    ids = np.array([10, 10, 11, 12, 12], dtype=np.int64)
    index = MultiIndexHash(codes, ids)
    dist, labels = index.search(5, 1)
    assert labels.tolist() == [10, 10, 12, 12] and dist.tolist() == [0, 0, 1, 0]
    with pytest.raises(ValueError):
        MultiIndexHash(codes, ids[:3])


def test_codes_at_the_top_bit() -> None:
    codes = np.array([2**63, 2**64 - 1, 2**63 + 1, 0], dtype=np.uint64)
    index = MultiIndexHash(codes, chunk_bits=split_bits(4))
    assert index.search(2**64 - 1, 0)[1].tolist() == [1]
    assert index.search(2**63, 1)[1].tolist() == [0, 2, 3]
    assert index.search(2**63, 1)[0].tolist() == [0, 1, 1]
    assert index.search(1, 0)[1].tolist() == []
    # int64 bit patterns, as SQLite hands them out, mean the same codes
    lims, _, rows = index.range_search(np.array([-1, -(2**63)], dtype=np.int64), 0)
    assert rows.tolist() == [1, 0] and lims.tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        index.search(2**64, 0)


def test_chunk_radii_cover_every_code_within_the_radius() -> None:
    """Pigeonhole: a code within r bits differs in some chunk j by at most chunk_radii(r)[j]."""
    rng = np.random.default_rng(5)
    for m in (3, 4, 5, 6, 8):
        bits = split_bits(m)
        edges = np.cumsum((0, *bits))
        for r in range(0, 20):
            radii = chunk_radii(r, m)
            for _ in range(200):
                d = int(rng.integers(0, r + 1))
                flipped = np.zeros(64, bool)
                flipped[rng.permutation(64)[:d]] = True
                per_chunk = np.add.reduceat(flipped.astype(int), edges[:-1]).tolist()
                assert any(c <= k for c, k in zip(per_chunk, radii, strict=True)), (m, r, per_chunk)


def test_chunk_widths() -> None:
    assert split_bits(4) == (16, 16, 16, 16)
    assert split_bits(5) == (13, 13, 13, 13, 12)
    assert default_chunk_bits(1_000_000) == (16, 16, 16, 16)
    assert default_chunk_bits(10_000_000) == (22, 21, 21)
    assert sum(default_chunk_bits(0)) == 64
    for bad in ((32, 32), (16, 16, 16), (0, 16, 16, 16, 16)):
        with pytest.raises(ValueError):
            MultiIndexHash(np.zeros(3, np.uint64), chunk_bits=bad)


def test_memory_per_code() -> None:
    n = 200_000
    codes = np.random.default_rng(6).integers(0, 2**64, n, dtype=np.uint64)
    compact = MultiIndexHash(codes)
    assert np.shares_memory(compact.codes, codes)  # held, not copied
    assert compact.nbytes == 8 * n + 4 * 4 * n + 4 * (4 * 2**16 + 1)  # codes, rows, offsets
    assert MultiIndexHash(codes, copy_codes=True).nbytes - compact.nbytes == 8 * 4 * n
