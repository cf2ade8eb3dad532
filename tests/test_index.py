"""Stage-1 search by Hamming radius, checked against a plain-Python brute force."""

from __future__ import annotations

import numpy as np
import pytest

from detector.stage1.index import Candidate, HammingIndex


def _flip(code: int, bits: list[int]) -> int:
    for b in bits:
        code ^= 1 << b
    return code


def test_search_matches_brute_force():
    rng = np.random.default_rng(1)
    n = 2000
    phash = rng.integers(0, 2**63, n, dtype=np.int64).view(np.uint64) * np.uint64(2) + np.uint64(1)
    dhash = rng.integers(0, 2**63, n, dtype=np.int64).view(np.uint64)
    ids = np.arange(100, 100 + n, dtype=np.int64)
    index = HammingIndex(ids, phash, dhash)
    qp = _flip(int(phash[7]), [0, 5, 63])
    qd = _flip(int(dhash[1500]), [1, 2, 3, 4, 40])
    got = index.search(qp, qd, radius_phash=6, radius_dhash=6, limit=100)
    expected = sorted(
        (
            (int(p ^ qp).bit_count() + int(d ^ qd).bit_count(), int(i))
            for i, p, d in zip(ids, phash, dhash, strict=True)
            if int(p ^ qp).bit_count() <= 6 or int(d ^ qd).bit_count() <= 6
        )
    )
    assert [c.catalog_id for c in got] == [i for _, i in expected]
    assert {c.catalog_id for c in got} == {107, 1600}
    first = got[0]
    assert first == Candidate(107, 3, int(dhash[7] ^ np.uint64(qd)).bit_count())
    assert first.hamming == 3


def test_radius_is_inclusive_and_limit_applies():
    codes = np.array([0, 0b1, 0b11, 0b111, 0b1111], dtype=np.uint64)
    far = np.full(5, 2**64 - 1, dtype=np.uint64)
    index = HammingIndex(np.arange(5), codes, far)
    assert [c.catalog_id for c in index.search(0, 0, 2, 0, 10)] == [0, 1, 2]
    assert [c.catalog_id for c in index.search(0, 0, 4, 0, 2)] == [0, 1]
    assert index.search(2**64 - 1, 0, 0, 0, 10) == []


def test_top_bit_codes_and_empty_index():
    index = HammingIndex(np.array([1]), np.array([2**64 - 1], np.uint64), np.array([2**63], np.uint64))
    (c,) = index.search(2**64 - 1, 2**63, 0, 0, 5)
    assert (c.hamming_phash, c.hamming_dhash) == (0, 0)
    empty = HammingIndex(np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.uint64))
    assert empty.search(0, 0, 64, 64, 5) == []
    assert len(empty) == 0


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        HammingIndex(np.arange(2), np.zeros(3, np.uint64), np.zeros(2, np.uint64))


def test_several_codes_per_image_and_several_probes_per_query():
    from detector.stage1.hashing import Probe, Transform

    # image 5 owns two codes (its own and a variant); image 3 one.
    index = HammingIndex(
        np.array([5, 3, 5]), np.array([0, 2**40 - 1, 2**63], np.uint64), np.array([0, 0, 0], np.uint64)
    )
    assert index.ids.tolist() == [3, 5, 5]  # kept in id order
    far = 2**64 - 1
    probes = [Probe(Transform.parse("identity"), far, far), Probe(Transform.parse("hflip"), 2**63 | 1, None)]
    (c,) = index.search_probes(probes, 3, 3, 10)
    assert c == Candidate(5, 1, 64, Transform.parse("hflip"))  # the variant code, found by the flipped probe
    assert index.search_probes([Probe(Transform.parse("identity"), 0, far)], 1, 1, 10) == [
        Candidate(5, 0, 64, Transform.parse("identity"))
    ]
    # a probe without a dHash never matches on dHash, even at distance 0 of the stored zeros
    assert index.search_probes([Probe(Transform.parse("rot90"), far, None)], 0, 63, 10) == []
    d = index.probe_distances(probes, 3, 3)
    assert [x.catalog_id for x in index.best_per_image(d, probes, [3, 4, 5])] == [3, 5]


def test_turned_probes_search_a_smaller_radius_and_mirrored_ones_the_full_radius():
    """Upside-down and quarter-turned probes search ``radius_variant``; the query mirrored left
    to right searches the full radius and sum, as the query itself does: a mirrored copy is
    as often cropped as a plain one, and a crop lands 9-14 bits from the catalog's codes."""
    from detector.stage1.hashing import Probe, Transform

    index = HammingIndex(np.array([1]), np.array([0], np.uint64), np.array([2**64 - 1], np.uint64))
    ten_bits = (1 << 10) - 1
    assert index.search_probes([Probe(Transform.parse("identity"), ten_bits, 0)], 12, 12, 5, radius_variant=8)
    assert index.search_probes(
        [Probe(Transform.parse("identity+trim"), ten_bits, 0)], 12, 12, 5, radius_variant=8
    )
    (m,) = index.search_probes([Probe(Transform.parse("hflip"), ten_bits, 0)], 12, 12, 5, radius_variant=8)
    assert m.within_radius and str(m.transform) == "hflip"
    for turn in ("vflip", "rot180"):
        assert not index.search_probes(
            [Probe(Transform.parse(turn), ten_bits, 0)], 12, 12, 5, radius_variant=8
        )
    (c,) = index.search_probes(
        [Probe(Transform.parse("rot90"), ten_bits, None)], 12, 12, 5, radius_variant=10
    )
    assert c.within_radius and str(c.transform) == "rot90"
    d = index.probe_distances([Probe(Transform.parse("vflip"), ten_bits, 0)], 12, 12, 8)
    (far,) = index.best_per_image(d, [Probe(Transform.parse("vflip"), ten_bits, 0)], [1])
    assert not far.within_radius and far.hamming_phash == 10


def test_unturned_probes_must_stay_close_on_both_codes() -> None:
    """Within the radius on one code but far on the other is a chance hit: radius_sum drops it,
    for the query as it is and mirrored; turned probes keep their own tighter radius and are
    not limited by the sum."""
    from detector.stage1.hashing import Probe, Transform

    ten_bits = (1 << 10) - 1
    far = (1 << 30) - 1  # 30 bits away
    index = HammingIndex(np.array([1]), np.array([0], dtype=np.uint64), np.array([0], dtype=np.uint64))
    assert index.search_probes(
        [Probe(Transform.parse("identity"), ten_bits, ten_bits)], 14, 14, 5, radius_sum=34
    )
    assert not index.search_probes(
        [Probe(Transform.parse("identity"), ten_bits, far)], 14, 14, 5, radius_sum=34
    )
    assert not index.search_probes(
        [Probe(Transform.parse("hflip"), ten_bits, far)], 14, 14, 5, radius_variant=8, radius_sum=34
    )
    # ... unless one code is within the turned probes' radius: a mirrored probe's derived
    # dHash can be far although its pHash is close (as before mirrored probes had the full radius)
    (m,) = index.search_probes(
        [Probe(Transform.parse("hflip"), 3, far)], 14, 14, 5, radius_variant=8, radius_sum=34
    )
    assert m.within_radius and m.hamming_phash == 2
    assert index.search_probes(
        [Probe(Transform.parse("identity"), ten_bits, far)], 14, 14, 5
    )  # no sum: found
    (c,) = index.search_probes(
        [Probe(Transform.parse("rot90"), 0, far)], 14, 14, 5, radius_variant=8, radius_sum=34
    )
    assert str(c.transform) == "rot90" and c.hamming_dhash == 30


def _scanner_like(seed: int) -> tuple[HammingIndex, HammingIndex, list[list]]:
    """The same catalog searched by brute force and through hash tables, and query probe
    sets like the scanner's: unturned and turned, some without a dHash, near some images."""
    from detector.stage1.hashing import Probe, Transform

    rng = np.random.default_rng(seed)
    n = 3000
    ids = rng.integers(0, 1000, n)  # about three codes per image
    phash = rng.integers(0, 2**64, n, dtype=np.uint64)
    dhash = rng.integers(0, 2**64, n, dtype=np.uint64)
    brute = HammingIndex(ids, phash, dhash, mih=False)
    tables = HammingIndex(ids, phash, dhash, mih=True)
    queries = []
    for _ in range(12):
        rows = rng.integers(0, n, 6)
        probes = []
        for k, r in enumerate(rows):
            bits = [int(b) for b in rng.permutation(64)[: rng.integers(0, 18)]]
            name = ("identity", "identity+trim", "hflip", "rot90", "rot90+trim", "vflip")[k]
            dh = None if name.startswith("rot90") else _flip(int(dhash[r]), bits[::2])
            probes.append(Probe(Transform.parse(name), _flip(int(phash[r]), bits), dh))
        queries.append(probes)
    return brute, tables, queries


@pytest.mark.parametrize(
    "radii", [(14, 14, 8, 34), (14, 14, 8, 128), (6, 9, 64, 128), (0, 0, 0, 0), (12, 30, 8, 34)]
)
def test_hash_tables_give_the_brute_force_answers(radii: tuple[int, int, int, int]) -> None:
    brute, tables, queries = _scanner_like(7)
    assert tables._tables is not None and brute._tables is None
    for probes in queries:
        a = brute.probe_distances(probes, *radii)
        b = tables.probe_distances(probes, *radii)
        assert a.rows is None
        assert brute.within(a, probes, 50) == tables.within(b, probes, 50)
        assert brute.within(a, probes, 3) == tables.within(b, probes, 3)
        some = [int(i) for i in brute.ids[::97]] + [5000]  # far or near, and one unknown id
        assert brute.best_per_image(a, probes, some) == tables.best_per_image(b, probes, some)
    # a radius past what the tables serve falls back to brute force, with the same answer
    probes = queries[0]
    wide = tables.probe_distances(probes, 40, 14)
    assert wide.rows is None and tables.within(wide, probes, 9) == brute.search_probes(probes, 40, 14, 9)


def test_hash_tables_are_built_once_brute_force_has_cost_as_much(monkeypatch: pytest.MonkeyPatch) -> None:
    from detector.stage1 import index as index_module

    monkeypatch.setattr(index_module, "_MIH_MIN_CODES", 1000)
    brute, _, queries = _scanner_like(8)
    auto = HammingIndex(brute.ids, brute.phash, brute.dhash)
    for probes in queries:  # 6 probes each: the tables come after _MIH_AFTER_PROBES
        built = auto._tables is not None
        assert auto.search_probes(probes, 14, 14, 20, 8, 34) == brute.search_probes(probes, 14, 14, 20, 8, 34)
        assert (auto._tables is not None) == (built or auto._brute_probes >= index_module._MIH_AFTER_PROBES)
    assert auto._tables is not None and auto.nbytes > brute.nbytes
    small = HammingIndex(brute.ids[:999], brute.phash[:999], brute.dhash[:999])
    for probes in queries * 3:
        small.search_probes(probes, 14, 14, 20)
    assert small._tables is None  # too few codes to pay
