"""The case record: one query image on its way through the chain, filled left to right."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from detector.intake.prepare import Prepared
from detector.records import Match, ScanResult
from detector.stage1.candidates import Stage1Hits
from detector.stage1.index import Candidate
from detector.stage3.verification import Evidence
from detector.storage.catalog import CatalogEntry


@dataclass(eq=False)
class Case:
    """One query and what each stage found for it. Intake gives ``query``; stage 1 sets
    ``hits`` and ``candidates``; stage 2 sets ``embedded`` (the CNN ran on it), adds
    neighbours to ``candidates`` (thorough mode) and sets ``entries``, ``query_vectors``
    ((1280,) float32 per candidate, the query turned as that candidate's probe matched),
    ``cosines`` (per candidate that has a stored descriptor and entry: the ones scored),
    ``blurred`` and ``rivals``; stage 3 sets ``evidence``; scoring sets ``matches``."""

    query: Prepared
    hits: Stage1Hits | None = None
    candidates: tuple[Candidate, ...] = ()
    embedded: bool = False
    entries: dict[int, CatalogEntry] = field(default_factory=dict)
    query_vectors: dict[int, np.ndarray] = field(default_factory=dict)
    cosines: dict[int, float] = field(default_factory=dict)
    blurred: bool = False
    rivals: dict[int, float] | None = None
    evidence: dict[int, Evidence] | None = None
    matches: tuple[Match, ...] = ()
    inset_candidates: int = 0  # candidates its insets had (the chain merges their matches in)

    def result(self) -> ScanResult:
        """The case as the record every output takes."""
        p = self.query
        if p.codes is None:
            return ScanResult(query=p.path, status="error", error=p.error, sha256=p.sha256, source=p.source)
        return ScanResult(
            query=p.path,
            status="ok",
            matches=self.matches,
            sha256=p.sha256,
            phash=p.codes.phash,
            dhash=p.codes.dhash,
            candidates=len(self.candidates) + self.inset_candidates,
            embedded=self.embedded,
            source=p.source,
        )
