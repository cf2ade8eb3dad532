"""Stage 1 as a stage of the chain: each query's probes searched in the Hamming index."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from detector.config import Settings
from detector.stage1.hashing import Probe
from detector.stage1.index import Candidate, HammingIndex, ProbeDistances

if TYPE_CHECKING:
    from detector.scan.case import Case


@dataclass(frozen=True, eq=False)
class Stage1Hits:
    """What stage 1 hands on for one query: its ``candidates`` (catalog images within the
    radius of some probe, closest first) and the distances behind them, with which a later
    stage can ask for any other catalog image's closest code (:meth:`closest`)."""

    candidates: tuple[Candidate, ...]
    distances: ProbeDistances
    probes: tuple[Probe, ...]
    index: HammingIndex

    def closest(self, ids: Sequence[int]) -> list[Candidate]:
        """The given catalog images as candidates with their closest code to the query's
        probes, whatever the distance (for candidates found by their descriptors)."""
        return self.index.best_per_image(self.distances, self.probes, ids)


class CandidateStage:
    """Stage 1: sets ``case.hits`` and ``case.candidates`` (at most ``max_candidates``) from
    the query's probes, under the radius settings (``radius_phash``, ``radius_dhash``,
    ``radius_variant``, ``radius_sum``)."""

    def __init__(self, index: HammingIndex, settings: Settings) -> None:
        self.index = index
        self.settings = settings

    def fill(self, cases: Sequence[Case]) -> None:
        s = self.settings
        radii = (s.radius_phash, s.radius_dhash, s.radius_variant, s.radius_sum)
        for case in cases:
            probes = case.query.probes
            d = self.index.probe_distances(probes, *radii)
            hits = Stage1Hits(tuple(self.index.within(d, probes, s.max_candidates)), d, probes, self.index)
            case.hits = hits
            case.candidates = hits.candidates
