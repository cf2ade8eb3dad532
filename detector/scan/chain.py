"""The scan as a one-way chain. Follow one query from file to verdict here, then read only the
stage you care about:

    file bytes ── intake (detector.intake.prepare: safe decode, codes, CNN input, grey)
      └─► Case(query)                                       detector.scan.case
            ├─ stage 1  CandidateStage   Hamming radius   detector.stage1.candidates
            ├─ stage 2  DescriptorStage  CNN cosines      detector.stage2.descriptors
            ├─ stage 3  VerificationStage keypoints       detector.stage3.verification
            └─ scoring  ScoringStage     score, verdict   detector.scoring
                 └─► ScanResult                           detector.records

Each stage reads what the stages before it wrote in the case and writes its own part; none
calls back into an earlier one, and the score is computed once per candidate, at the end.
A stage that fails on a batch is run again on each query alone, so one image's fault becomes
that image's error (``StageFailure``) and never costs the others or the run.
Each stage owns its caches and reads its own slice of the settings. The local scan, the
server's checks and the Ray workers all run this chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from detector.config import Settings
from detector.intake.catalog_images import CatalogImages
from detector.intake.prepare import Prepared
from detector.records import ScanResult
from detector.scan.case import Case
from detector.scan.catalog import LoadedCatalog
from detector.scan.insets import in_query, merged
from detector.scoring import ScoringStage
from detector.stage1.candidates import CandidateStage
from detector.stage2.descriptors import DescriptorStage
from detector.stage2.embedding import Models
from detector.stage3.verification import VerificationStage


class Stage(Protocol):
    def fill(self, cases: Sequence[Case]) -> None:
        """Write this stage's part of each case."""


class Chain:
    """The stages over one loaded catalog, in order."""

    def __init__(self, catalog: LoadedCatalog, models: Models, settings: Settings, mode: str) -> None:
        images = CatalogImages(settings)  # catalog files decoded again, for stages 2 and 3
        self.settings = settings
        self.stages: tuple[Stage, ...] = (
            CandidateStage(catalog.index, settings),
            DescriptorStage(catalog, models, settings, mode, images),
            VerificationStage(settings, mode, images),
            ScoringStage(settings),
        )

    def run(self, batch: Sequence[Prepared]) -> list[ScanResult]:
        """One result per prepared query, in order; unusable queries give their error. The
        pictures inside a query (its insets) run through the stages beside it, as queries of
        their own, and what they match is the query's."""
        cases = [Case(p) for p in batch]
        try:
            self._fill_with_insets([c for c in cases if c.query.ok])
        except _Failed:
            cases = [self._alone(p) if p.ok else Case(p) for p in batch]
        return [c.result() for c in cases]

    def _fill_with_insets(self, cases: list[Case]) -> None:
        parts = [(case, inset, Case(inset.query)) for case in cases for inset in case.query.insets]
        self._fill(cases + [part for _, _, part in parts])
        for case, inset, part in parts:
            case.inset_candidates += len(part.candidates)
            case.embedded = case.embedded or part.embedded
            if part.matches:
                found = tuple(in_query(m, inset) for m in part.matches)
                case.matches = merged(case.matches, found, self.settings)

    def _fill(self, cases: list[Case]) -> None:
        for stage in self.stages:
            try:
                stage.fill(cases)
            except Exception as e:  # a fault, not a signal: those are BaseExceptions
                raise _Failed(f"{type(stage).__name__}: {type(e).__name__}: {e}") from e

    def _alone(self, query: Prepared) -> Case:
        """One query through the stages by itself; its error when a stage fails on it."""
        case = Case(query)
        try:
            self._fill_with_insets([case])
        except _Failed as e:
            return Case(Prepared(query.path, sha256=query.sha256, error=f"StageFailure: {e}"))
        return case

    def reporting(self, settings: Settings) -> Chain:
        """This chain, its stages and caches shared, reporting under other output settings
        (``top_k``, ``min_score``); nothing else may differ."""
        clone = object.__new__(Chain)
        clone.settings = settings
        clone.stages = (*self.stages[:-1], ScoringStage(settings))
        return clone


class _Failed(Exception):
    """A stage raised; the message names the stage and the fault."""
