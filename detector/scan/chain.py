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
Over a stream of batches (:meth:`Chain.run_all`), stage 3 and the scoring of one batch run in
a thread while stages 1 and 2 of the next run in the caller's: the same stages in the same
order for each batch, two batches in flight.
Each stage owns its caches and reads its own slice of the settings. The local scan, the
server's checks and the Ray workers all run this chain.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from detector.config import Settings
from detector.intake.catalog_images import CatalogImages
from detector.intake.prepare import Inset, Prepared
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
        started = self._front(batch)
        return self._results(started, self._back(started))

    def run_all(self, batches: Iterable[Sequence[Prepared]]) -> Generator[list[ScanResult], None, None]:
        """:meth:`run` over consecutive batches, one list per batch, in order. While stage 3
        and the scoring of one batch run in a thread of their own, stages 1 and 2 of the next
        run here (OpenCV there, the CNN here: two CPUs at work where one was), and the caller
        handles the batch before; a batch a stage fails on is run a query at a time, here."""
        pool = ThreadPoolExecutor(1, thread_name_prefix="chain-back")
        owner = threading.get_ident()
        ahead: tuple[_Started, Future[bool]] | None = None
        try:
            for batch in batches:
                started = self._front(batch)
                done = None if ahead is None else self._results(ahead[0], ahead[1].result())
                ahead = started, pool.submit(self._back, started)
                if done is not None:
                    yield done
            if ahead is not None:
                yield self._results(ahead[0], ahead[1].result())
        finally:  # a batch still in the thread is dropped: its caller never had it
            # Waited for only here in the caller's thread. A generator its caller dropped
            # unclosed is closed by the garbage collector in whichever thread collects it;
            # in a stage-3 thread the batch in flight waits for, waiting would never end.
            pool.shutdown(wait=threading.get_ident() == owner, cancel_futures=True)

    def _front(self, batch: Sequence[Prepared]) -> _Started:
        """A batch's cases (its usable queries' insets beside them) through stages 1 and 2."""
        cases = [Case(p) for p in batch]
        usable = [c for c in cases if c.query.ok]
        parts = [(case, inset, Case(inset.query)) for case in usable for inset in case.query.insets]
        started = _Started(batch, cases, parts)
        try:
            self._fill(started.filled, self.stages[:2])
        except _Failed as e:
            started.error = str(e)
        return started

    def _back(self, started: _Started) -> bool:
        """Stage 3 and the scoring of a batch through its front, and each query's insets'
        matches made the query's; False where a stage failed on it (``started.error``)."""
        if started.error is not None:
            return False
        try:
            self._fill(started.filled, self.stages[2:])
        except _Failed as e:
            started.error = str(e)
            return False
        for case, inset, part in started.parts:
            case.inset_candidates += len(part.candidates)
            case.embedded = case.embedded or part.embedded
            if part.matches:
                found = tuple(in_query(m, inset) for m in part.matches)
                case.matches = merged(case.matches, found, self.settings)
        return True

    def _results(self, started: _Started, done: bool) -> list[ScanResult]:
        """The batch's results; where a stage failed on the batch, each usable query's run
        through the stages by itself (one image's fault becomes that image's error)."""
        if done:
            return [c.result() for c in started.cases]
        return [self._alone(p).result() if p.ok else Case(p).result() for p in started.batch]

    def _fill(self, cases: list[Case], stages: Sequence[Stage]) -> None:
        for stage in stages:
            try:
                stage.fill(cases)
            except Exception as e:  # a fault, not a signal: those are BaseExceptions
                raise _Failed(f"{type(stage).__name__}: {type(e).__name__}: {e}") from e

    def _alone(self, query: Prepared) -> Case:
        """One query through the stages by itself; its error when a stage fails on it."""
        started = self._front([query])
        if self._back(started):
            return started.cases[0]
        return Case(Prepared(query.path, sha256=query.sha256, error=f"StageFailure: {started.error}"))

    def reporting(self, settings: Settings) -> Chain:
        """This chain, its stages and caches shared, reporting under other output settings
        (``top_k``, ``min_score``); nothing else may differ."""
        clone = object.__new__(Chain)
        clone.settings = settings
        clone.stages = (*self.stages[:-1], ScoringStage(settings))
        return clone


class _Failed(Exception):
    """A stage raised; the message names the stage and the fault."""


@dataclass(eq=False)
class _Started:
    """A batch between the chain's halves: its cases, each inset of its usable queries with
    its query and its own case, and a failed stage's message."""

    batch: Sequence[Prepared]
    cases: list[Case]
    parts: list[tuple[Case, Inset, Case]]
    error: str | None = None

    @property
    def filled(self) -> list[Case]:
        """The cases the stages fill: the usable queries', then their insets'."""
        return [c for c in self.cases if c.query.ok] + [part for _, _, part in self.parts]
