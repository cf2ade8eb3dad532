"""Stage-1 candidate search: Hamming radius over 64-bit codes held in numpy.

A catalog image may own several codes (its own, and variants such as its content box), and a
query is searched with several probes (its own codes, their flips and quarter turns, and its
content box). A candidate is a catalog image with some code within the radius of some probe,
reported once, with the closest pair.

The search is brute force with ``np.bitwise_count`` over (n,) uint64 arrays: about a
millisecond per probe per million codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .hashing import Probe

_NO_CODE = 64  # the distance given to a probe without a dHash: never within any radius


@dataclass(frozen=True)
class Candidate:
    """A catalog image within the stage-1 radius of a query. Distances are bits of 64;
    ``transform`` names the probe that came closest (see :class:`detector.hashing.Probe`)."""

    catalog_id: int
    hamming_phash: int
    hamming_dhash: int
    transform: str = "identity"
    within_radius: bool = True  # False for a candidate only the embedding found

    @property
    def hamming(self) -> int:
        """The stage-1 distance: the closer of the two codes."""
        return min(self.hamming_phash, self.hamming_dhash)


@dataclass(frozen=True)
class ProbeDistances:
    """Each indexed code's distance to the closest of a query's probes: ``phash`` and
    ``dhash`` (n,) int16 bits of that probe, ``probe`` (n,) its index in the probe list,
    ``excess`` (n,) int16 bits beyond that probe's radius (a hit when <= 0)."""

    phash: np.ndarray
    dhash: np.ndarray
    probe: np.ndarray
    excess: np.ndarray


class HammingIndex:
    """Codes of the catalog, searched by Hamming radius.

    ``ids``: (n,) int64 catalog ids, an id repeated for each of its codes; ``phash``,
    ``dhash``: (n,) uint64 codes. Rows are kept in id order.
    """

    def __init__(self, ids: np.ndarray, phash: np.ndarray, dhash: np.ndarray) -> None:
        if not (len(ids) == len(phash) == len(dhash)):
            raise ValueError("ids, phash and dhash must have the same length")
        order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
        self.ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64)[order])
        self.phash = np.ascontiguousarray(np.asarray(phash, dtype=np.uint64)[order])
        self.dhash = np.ascontiguousarray(np.asarray(dhash, dtype=np.uint64)[order])

    def __len__(self) -> int:
        return len(self.ids)

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
        of flipped or turned queries search at most ``radius_variant`` bits: eight times the
        probes would otherwise bring eight times the chance hits. Unturned probes must also
        keep pHash + dHash within ``radius_sum``: a chance hit is close on one code and far
        on the other, a copy is fairly close on both (measured: at radius 14 and sum 34,
        stage 1 finds more copies than at radius 12 alone and hands the CNN fewer strangers)."""
        n = len(self)
        best_key = np.full(n, np.iinfo(np.int32).max, dtype=np.int32)
        best_p = np.zeros(n, dtype=np.int16)
        best_d = np.zeros(n, dtype=np.int16)
        best_i = np.zeros(n, dtype=np.int16)
        for i, probe in enumerate(probes):
            r_p, r_d, r_s = radius_phash, radius_dhash, radius_sum
            if not probe.transform.startswith("identity"):
                r_p, r_d, r_s = min(r_p, radius_variant), min(r_d, radius_variant), 128
            dp = np.bitwise_count(self.phash ^ np.uint64(probe.phash)).astype(np.int16)
            if probe.dhash is None:
                dd = np.full(n, _NO_CODE, dtype=np.int16)
            else:
                dd = np.bitwise_count(self.dhash ^ np.uint64(probe.dhash)).astype(np.int16)
            excess = np.maximum(np.minimum(dp - r_p, dd - r_d), dp + dd - r_s)
            key = excess.astype(np.int32) * 256 + dp + dd
            better = key < best_key
            best_key[better] = key[better]
            best_p[better] = dp[better]
            best_d[better] = dd[better]
            best_i[better] = i
        excess = (best_key // 256).astype(np.int16)
        return ProbeDistances(best_p, best_d, best_i, excess)

    def search(
        self, phash: int, dhash: int, radius_phash: int, radius_dhash: int, limit: int
    ) -> list[Candidate]:
        """Catalog images with a code whose pHash is within ``radius_phash`` bits or whose dHash
        is within ``radius_dhash`` bits of the query's, closest first (by the sum of both
        distances), at most ``limit``."""
        return self.search_probes([Probe("identity", phash, dhash)], radius_phash, radius_dhash, limit)

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
        hit = np.flatnonzero(d.excess <= 0)
        if not hit.size:
            return []
        total = d.phash[hit].astype(np.int32) + d.dhash[hit]
        hit = hit[np.argsort(total, kind="stable")]
        _, first = np.unique(self.ids[hit], return_index=True)  # each image's closest code
        rows = hit[np.sort(first)][:limit]
        return [self._candidate(d, probes, int(r)) for r in rows]

    def best_per_image(
        self, d: ProbeDistances, probes: Sequence[Probe], ids: Sequence[int]
    ) -> list[Candidate]:
        """The closest code of each of the given catalog ids as a candidate, whatever its
        distance (for candidates found another way, such as embedding neighbours)."""
        out = []
        total = d.phash.astype(np.int32) + d.dhash
        for cid in ids:
            lo, hi = np.searchsorted(self.ids, [cid, cid + 1])
            if lo == hi:
                continue
            out.append(self._candidate(d, probes, int(lo + np.argmin(total[lo:hi]))))
        return out

    def _candidate(self, d: ProbeDistances, probes: Sequence[Probe], row: int) -> Candidate:
        return Candidate(
            int(self.ids[row]),
            int(d.phash[row]),
            int(d.dhash[row]),
            probes[int(d.probe[row])].transform,
            bool(d.excess[row] <= 0),
        )
