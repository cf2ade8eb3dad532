"""Stage-1 candidate search: Hamming radius over 64-bit codes held in numpy.

A catalog image may own several codes (its own, and variants such as its content box), and a
query is searched with several probes (its own codes, their flips and quarter turns, and its
content box). A candidate is a catalog image with some code within the radius of some probe,
reported once, with the closest pair.

Small catalogs are searched by brute force with ``np.bitwise_count`` over (n,) uint64 arrays
(about 10 ms per probe per million codes with both codes and the radius rules). Large ones
are searched through one multi-index hash per code type (:mod:`detector.stage1.mih`): the rows
within a probe's pHash or dHash radius, then the same rules on those rows only, so the
answers are identical. The hash tables are built once brute force has cost about as much
as building them would (ski rental: never more than twice the better of the two).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detector.stage1.hashing import IDENTITY, Probe, Transform
from detector.stage1.mih import MultiIndexHash

_NO_CODE = 64  # the distance given to a probe without a dHash: never within any radius
_MIH_MIN_CODES = 5_000  # measured: the tables are 4x faster at 5,000 codes, 45x at 1 M
_MIH_AFTER_PROBES = 16  # measured: building both tables costs 8 to 12 brute-force probes
_MIH_MAX_RADIUS = 24  # beyond this a radius search visits too much of the catalog to pay
_MIH_COST = 4  # a candidate found through the tables costs about this many brute-force rows


@dataclass(frozen=True)
class Candidate:
    """A catalog image within the stage-1 radius of a query. Distances are bits of 64;
    ``transform`` names the probe that came closest (see :class:`detector.stage1.hashing.Probe`)."""

    catalog_id: int
    hamming_phash: int
    hamming_dhash: int
    transform: Transform = IDENTITY
    within_radius: bool = True  # False for a candidate only the embedding found

    @property
    def hamming(self) -> int:
        """The stage-1 distance: the closer of the two codes."""
        return min(self.hamming_phash, self.hamming_dhash)

    @property
    def turn(self) -> str:
        """How the query is turned to compare it with this candidate: as its probe matched
        when that was within the radius; as it is for a candidate that only the embedding
        found (its closest probe is then chance)."""
        return self.transform.turn if self.within_radius else "identity"


@dataclass(frozen=True)
class ProbeDistances:
    """Each indexed code's distance to the closest of a query's probes: ``phash`` and
    ``dhash`` (k,) int16 bits of that probe, ``probe`` (k,) its index in the probe list,
    ``excess`` (k,) int16 bits beyond that probe's radius (a hit when <= 0). ``rows``: None
    when the arrays cover every code (k = n, row i at i), else the (k,) ascending rows they
    cover, every other row being beyond the radius of every probe. ``radii``: the
    ``(radius_phash, radius_dhash, radius_variant, radius_sum)`` they were computed with."""

    phash: np.ndarray
    dhash: np.ndarray
    probe: np.ndarray
    excess: np.ndarray
    rows: np.ndarray | None = None
    radii: tuple[int, int, int, int] = (64, 64, 64, 128)


class HammingIndex:
    """Codes of the catalog, searched by Hamming radius.

    ``ids``: (n,) catalog ids, an id repeated for each of its codes (held as uint32 when
    they fit, else int64); ``phash``, ``dhash``: (n,) uint64 codes. Rows are kept in id
    order. ``mih``: search through
    multi-index hash tables (same answers, for large catalogs): True builds them now,
    False never, None (the default) once the catalog holds at least 5,000 codes and 16
    probes have been searched by brute force (about what building the tables costs).
    """

    def __init__(
        self, ids: np.ndarray, phash: np.ndarray, dhash: np.ndarray, *, mih: bool | None = None
    ) -> None:
        if not (len(ids) == len(phash) == len(dhash)):
            raise ValueError("ids, phash and dhash must have the same length")
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        # catalog ids (SQLite rowids) fit 32 bits in any real catalog: 4 bytes per code saved
        narrow = len(ids) and 0 <= ids.min() and ids.max() < 2**31
        self.ids = np.ascontiguousarray(ids[order].astype(np.uint32 if narrow else np.int64))
        self.phash = np.ascontiguousarray(np.asarray(phash, dtype=np.uint64)[order])
        self.dhash = np.ascontiguousarray(np.asarray(dhash, dtype=np.uint64)[order])
        self._mih_policy = mih
        self._tables: tuple[MultiIndexHash, MultiIndexHash] | None = None
        self._brute_probes = 0
        if mih:
            self._build_tables()

    def __len__(self) -> int:
        return len(self.ids)

    def warm(self) -> None:
        """Build the hash tables now if they would ever be built (the policy allows them and
        the catalog is large enough): a server that forks its engines after this shares one
        copy of the tables instead of each engine building its own on its first checks."""
        if self._tables is None and self._mih_policy is not False and len(self) >= _MIH_MIN_CODES:
            self._build_tables()

    def probe_distances(
        self,
        probes: Sequence[Probe],
        radius_phash: int,
        radius_dhash: int,
        radius_variant: int = 64,
        radius_sum: int = 128,
    ) -> ProbeDistances:
        """For every code, the probe that comes closest: the one with the smallest distance
        relative to its radius (the lower of pHash and dHash), then the smallest sum. Probes
        of upside-down or quarter-turned queries search at most ``radius_variant`` bits: eight times
        the probes would otherwise bring eight times the chance hits; the query as it is and
        mirrored left to right search the full radius. These two must also
        keep pHash + dHash within ``radius_sum``: a chance hit is close on one code and far
        on the other, a copy is fairly close on both (measured: at radius 14 and sum 34,
        stage 1 finds more copies than at radius 12 alone and hands the CNN fewer strangers).

        Through the hash tables only the rows within some probe's pHash or dHash radius are
        measured (``ProbeDistances.rows``): the other rows are hits of no probe, so
        :meth:`within` and :meth:`best_per_image` give the same answers either way."""
        radii = (radius_phash, radius_dhash, radius_variant, radius_sum)
        rows = self._candidate_rows(probes, radii)
        return self._distances(slice(None) if rows is None else rows, probes, radii)

    @property
    def nbytes(self) -> int:
        """Bytes held: ids and codes, and the hash tables once built."""
        held = self.ids.nbytes + self.phash.nbytes + self.dhash.nbytes
        if self._tables is not None:  # the tables share the codes arrays
            held += sum(t.nbytes - t.codes.nbytes for t in self._tables)
        return held

    def _distances(
        self, rows: slice | np.ndarray, probes: Sequence[Probe], radii: tuple[int, int, int, int]
    ) -> ProbeDistances:
        """:meth:`probe_distances` for the given rows (all of them with ``slice(None)``)."""
        phash, dhash = self.phash[rows], self.dhash[rows]
        n = len(phash)
        best_key = np.full(n, np.iinfo(np.int32).max, dtype=np.int32)
        best_p = np.zeros(n, dtype=np.int16)
        best_d = np.zeros(n, dtype=np.int16)
        best_i = np.zeros(n, dtype=np.int16)
        for i, probe in enumerate(probes):
            dp = np.bitwise_count(phash ^ np.uint64(probe.phash)).astype(np.int16)
            if probe.dhash is None:
                dd = np.full(n, _NO_CODE, dtype=np.int16)
            else:
                dd = np.bitwise_count(dhash ^ np.uint64(probe.dhash)).astype(np.int16)
            excess = _excess(dp, dd, probe, radii)
            key = excess.astype(np.int32) * 256 + dp + dd
            better = key < best_key
            best_key[better] = key[better]
            best_p[better] = dp[better]
            best_d[better] = dd[better]
            best_i[better] = i
        excess = (best_key // 256).astype(np.int16)
        covered = None if isinstance(rows, slice) else rows
        return ProbeDistances(best_p, best_d, best_i, excess, covered, radii)

    def _candidate_rows(self, probes: Sequence[Probe], radii: tuple[int, int, int, int]) -> np.ndarray | None:
        """The ascending rows within some probe's pHash or dHash radius, found through the
        hash tables; None where brute force is the better way (or the only one)."""
        if self._mih_policy is False or not len(self) or not probes:
            return None
        if self._tables is None and (self._mih_policy is None and len(self) < _MIH_MIN_CODES):
            return None
        queries: tuple[list[int], list[int]] = ([], [])
        limits: tuple[list[int], list[int]] = ([], [])
        for probe in probes:
            r_p, r_d, _ = _probe_radii(probe, radii)
            if max(r_p, r_d) > _MIH_MAX_RADIUS:
                return None  # dhash None with r_d >= 64 lands here too: every row is within
            queries[0].append(probe.phash)
            limits[0].append(r_p)
            if probe.dhash is not None:
                queries[1].append(probe.dhash)
                limits[1].append(r_d)
        tables = self._tables
        if tables is None:
            # ski rental: brute force until it has cost what building the tables would
            self._brute_probes += len(probes)
            if self._brute_probes < _MIH_AFTER_PROBES:
                return None
            tables = self._build_tables()
        if self._mih_policy is None:
            cost = sum(
                t.expected_candidates(r) + t.lookups(r)
                for t, rs in zip(tables, limits, strict=True)
                for r in rs
            )
            if _MIH_COST * cost > len(self) * len(probes):
                return None
        found = [
            t.range_search(np.array(q, dtype=np.uint64), np.array(r, dtype=np.int64))[2]
            for t, q, r in zip(tables, queries, limits, strict=True)
            if q
        ]
        return np.unique(np.concatenate(found))

    def _build_tables(self) -> tuple[MultiIndexHash, MultiIndexHash]:
        """One multi-index hash per code type, over the codes held (not copied)."""
        self._tables = (MultiIndexHash(self.phash), MultiIndexHash(self.dhash))
        return self._tables

    def search(
        self, phash: int, dhash: int, radius_phash: int, radius_dhash: int, limit: int
    ) -> list[Candidate]:
        """Catalog images with a code whose pHash is within ``radius_phash`` bits or whose dHash
        is within ``radius_dhash`` bits of the query's, closest first (by the sum of both
        distances), at most ``limit``."""
        return self.search_probes([Probe(IDENTITY, phash, dhash)], radius_phash, radius_dhash, limit)

    def search_probes(
        self,
        probes: Sequence[Probe],
        radius_phash: int,
        radius_dhash: int,
        limit: int,
        radius_variant: int = 64,
        radius_sum: int = 128,
    ) -> list[Candidate]:
        """:meth:`search` with several probes per query; each catalog image comes once, with
        its closest probe and code."""
        if not len(self) or not probes:
            return []
        d = self.probe_distances(probes, radius_phash, radius_dhash, radius_variant, radius_sum)
        return self.within(d, probes, limit)

    def within(self, d: ProbeDistances, probes: Sequence[Probe], limit: int) -> list[Candidate]:
        """:meth:`search_probes` on distances already computed by :meth:`probe_distances`."""
        hit = np.flatnonzero(d.excess <= 0)  # positions in d's arrays
        if not hit.size:
            return []
        total = d.phash[hit].astype(np.int32) + d.dhash[hit]
        hit = hit[np.argsort(total, kind="stable")]
        rows = hit if d.rows is None else d.rows[hit]
        _, first = np.unique(self.ids[rows], return_index=True)  # each image's closest code
        chosen = np.sort(first)[:limit]
        return [
            self._candidate(d, probes, int(i), int(r)) for i, r in zip(hit[chosen], rows[chosen], strict=True)
        ]

    def best_per_image(
        self, d: ProbeDistances, probes: Sequence[Probe], ids: Sequence[int]
    ) -> list[Candidate]:
        """The closest code of each of the given catalog ids as a candidate, whatever its
        distance (for candidates found another way, such as embedding neighbours)."""
        out = []
        for cid in ids:
            lo, hi = (int(x) for x in np.searchsorted(self.ids, np.array([cid, cid + 1], dtype=np.int64)))
            if lo == hi:
                continue
            if d.rows is None:
                near, at = d, lo
            else:  # rows beyond every radius were left out of d: measure this image's now
                near, at = self._distances(slice(lo, hi), probes, d.radii), 0
            total = near.phash[at : at + hi - lo].astype(np.int32) + near.dhash[at : at + hi - lo]
            best = int(np.argmin(total))
            out.append(self._candidate(near, probes, at + best, lo + best))
        return out

    def _candidate(self, d: ProbeDistances, probes: Sequence[Probe], i: int, row: int) -> Candidate:
        """The candidate of row ``row``, whose distances are at position ``i`` of ``d``."""
        return Candidate(
            int(self.ids[row]),
            int(d.phash[i]),
            int(d.dhash[i]),
            probes[int(d.probe[i])].transform,
            bool(d.excess[i] <= 0),
        )


# Probes searched at the full radius: the query as it is, and mirrored left to right (a
# mirrored copy is as common as a plain one, and as often cropped: a crop needs the full radius).
_FULL_RADIUS_TURNS = frozenset({"identity", "hflip"})


def _probe_radii(probe: Probe, radii: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """A probe's pHash, dHash and sum radii: the query as it is and mirrored left to right
    search the full radius and sum; upside-down and quarter-turned probes at most
    ``radius_variant`` bits on each code and no sum."""
    r_p, r_d, r_v, r_s = radii
    if probe.transform.turn in _FULL_RADIUS_TURNS:
        return r_p, r_d, r_s
    return min(r_p, r_v), min(r_d, r_v), 128


def _excess(dp: np.ndarray, dd: np.ndarray, probe: Probe, radii: tuple[int, int, int, int]) -> np.ndarray:
    """Bits beyond a probe's radius (a hit at <= 0) of codes at pHash ``dp`` and dHash ``dd``
    bits from it. A mirrored probe is also a hit under the turned probes' rule (one code within
    ``radius_variant``, no sum): its dHash is derived from the query's gradients, and a
    mirrored copy's pHash can be 2 bits away while its derived dHash is 34."""
    r_p, r_d, r_s = _probe_radii(probe, radii)
    excess = np.maximum(np.minimum(dp - r_p, dd - r_d), dp + dd - r_s)
    if probe.transform.turn == "hflip":
        r_v = radii[2]
        excess = np.minimum(excess, np.minimum(dp - min(r_p, r_v), dd - min(r_d, r_v)))
    return excess
