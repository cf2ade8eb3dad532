"""Each stage of the chain on its own, with a stub descriptor (no network, no torch): what it
reads of the case record, what it writes, and that the chain runs them in order, once."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector import scoring
from detector.config import FAST, THOROUGH, Settings
from detector.errors import StoreError
from detector.intake.catalog_images import CatalogImages
from detector.intake.loader import content_hash
from detector.intake.prepare import Prepared, prepare_bytes
from detector.runs import ScanRequest, ScanRun
from detector.scan.case import Case
from detector.scan.catalog import LoadedCatalog
from detector.scan.chain import Chain
from detector.scoring import ScoringStage
from detector.stage1.candidates import CandidateStage
from detector.stage1.hashing import HASHER_ID
from detector.stage2.descriptors import DescriptorStage
from detector.stage2.embedding import EMBEDDING_DIM, Models, embedder_id
from detector.stage3.verification import VerificationStage
from detector.storage.store import Store
from detector.tasks.cataloging import add_to_catalog

from .conftest import FIXTURES, textured

SETTINGS = Settings()


class StubEmbedder:
    """A descriptor without a network: the image's 16x16 grey thumbnail, centred, repeated to
    1,280 values and L2-normalised. Equal images get cosine 1; unrelated ones about 0."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.calls = 0

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        self.calls += 1
        out = np.empty((len(images), EMBEDDING_DIM), dtype=np.float32)
        for i, im in enumerate(images):
            grey = cv2.cvtColor(cv2.resize(im, (16, 16), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
            v = np.resize(grey.astype(np.float32).ravel() - grey.mean(), EMBEDDING_DIM)
            out[i] = v / max(float(np.linalg.norm(v)), 1e-6)
        return out


@pytest.fixture(scope="module")
def stub() -> Models:
    return Models(SETTINGS, factory=StubEmbedder)


@pytest.fixture(scope="module")
def store(tmp_path_factory, stub) -> Store:
    db = tmp_path_factory.mktemp("stages") / "s.db"
    opened = Store.open(db, hasher=HASHER_ID, embedder=embedder_id(SETTINGS))
    files = sorted(str(p) for p in (FIXTURES / "catalog").iterdir())
    assert all(r.status == "added" for r in add_to_catalog(opened, stub, files, SETTINGS))
    return opened


def _case(path: Path | str, settings: Settings = SETTINGS) -> Case:
    data = Path(path).read_bytes()
    return Case(prepare_bytes(str(path), data, content_hash(data), settings))


def _ids(store: Store) -> dict[str, int]:
    return {Path(e.path).stem: e.id for e in store.catalog.list()}


def _stage_2(store: Store, stub: Models, mode: str, settings: Settings = SETTINGS) -> DescriptorStage:
    loaded = LoadedCatalog.from_store(store, mode)
    return DescriptorStage(loaded, stub, settings, mode, CatalogImages(settings))


def test_stage_1_finds_a_catalog_image_by_its_codes_and_nothing_for_a_stranger(store, tmp_path):
    stranger = tmp_path / "stranger.png"
    cv2.imwrite(str(stranger), textured(5, (200, 150)))
    copy, other = _case(FIXTURES / "crawl" / "coffee-jpeg.jpg"), _case(stranger)
    CandidateStage(LoadedCatalog.from_store(store, FAST).index, SETTINGS).fill([copy, other])
    best = copy.candidates[0]
    assert best.catalog_id == _ids(store)["coffee"] and best.hamming <= 4 and best.within_radius
    assert copy.hits is not None and copy.hits.candidates == copy.candidates
    assert other.candidates == () and other.hits is not None
    assert not copy.embedded and copy.cosines == {}  # stage 1 writes only its own part


@pytest.mark.parametrize("name", ["coffee", "rocket", "chelsea"])
def test_stage_1_finds_a_catalog_image_turned_a_few_degrees_on_flat_corners(store, tmp_path, name):
    """A copy turned 9 degrees, its corners filled white: the whole image's codes are far from
    the catalog's, the picture set upright is near them."""
    pic = cv2.imread(str(FIXTURES / "catalog" / f"{name}.jpg"))
    h, w = pic.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), 9, 1.0)
    size = (int(h * abs(turn[0, 1]) + w * turn[0, 0]), int(h * turn[0, 0] + w * abs(turn[0, 1])))
    turn[:, 2] += (size[0] / 2 - w / 2, size[1] / 2 - h / 2)
    turned = tmp_path / f"{name}-turned.jpg"
    cv2.imwrite(str(turned), cv2.warpAffine(pic, turn, size, borderValue=(255, 255, 255)))
    copy = _case(turned)
    CandidateStage(LoadedCatalog.from_store(store, FAST).index, SETTINGS).fill([copy])
    found = {c.catalog_id: c for c in copy.candidates}
    assert _ids(store)[name] in found
    assert found[_ids(store)[name]].transform.trimmed and found[_ids(store)[name]].within_radius


def test_stage_2_fast_embeds_only_queries_with_candidates(store, stub, tmp_path):
    stranger = tmp_path / "stranger.png"
    cv2.imwrite(str(stranger), textured(6, (200, 150)))
    copy, other = _case(FIXTURES / "crawl" / "rocket-jpeg.jpg"), _case(stranger)
    CandidateStage(LoadedCatalog.from_store(store, FAST).index, SETTINGS).fill([copy, other])
    _stage_2(store, stub, FAST).fill([copy, other])
    rocket = _ids(store)["rocket"]
    assert copy.embedded and not other.embedded
    assert copy.cosines[rocket] > 0.95 and set(copy.entries) == set(copy.cosines)
    assert copy.rivals is None and not copy.blurred  # thorough-mode parts stay empty


def test_stage_2_thorough_adds_the_nearest_descriptors_as_candidates(store, stub, tmp_path):
    settings = SETTINGS.replace(neighbours=3)
    stranger = tmp_path / "stranger.png"
    cv2.imwrite(str(stranger), textured(7, (200, 150)))
    case = _case(stranger, settings)
    CandidateStage(LoadedCatalog.from_store(store, THOROUGH).index, settings).fill([case])
    assert case.candidates == ()
    _stage_2(store, stub, THOROUGH, settings).fill([case])
    assert case.embedded and len(case.candidates) == 3
    assert not any(c.within_radius for c in case.candidates)  # found by their descriptors only
    assert case.rivals is not None and set(case.rivals) == set(case.cosines)


def test_stage_3_confirms_a_crop_and_has_no_say_when_switched_off(store, stub):
    crop = _case(FIXTURES / "crawl" / "chelsea-crop.jpg")
    CandidateStage(LoadedCatalog.from_store(store, FAST).index, SETTINGS).fill([crop])
    _stage_2(store, stub, FAST).fill([crop])
    images = CatalogImages(SETTINGS)
    VerificationStage(SETTINGS, FAST, images).fill([crop])
    chelsea = _ids(store)["chelsea"]
    assert crop.evidence is not None and (crop.evidence[chelsea].inliers or 0) > SETTINGS.inliers_full
    assert crop.evidence[chelsea].query_region is not None
    off = SETTINGS.replace(verify=False)
    again = _case(FIXTURES / "crawl" / "chelsea-crop.jpg", off)
    again.candidates, again.cosines, again.entries, again.embedded = (
        crop.candidates,
        crop.cosines,
        crop.entries,
        True,
    )
    VerificationStage(off, FAST, images).fill([again])
    assert again.evidence is None


def test_stage_3_in_threads_gives_the_evidence_of_one_thread_and_uses_them(store, stub, monkeypatch):
    """``verify_threads`` shares a batch's queries out between threads; each query's evidence
    is the same as when one thread checks them all, in the same order."""
    files = sorted(p for p in (FIXTURES / "crawl").iterdir() if p.suffix == ".jpg")[:16]
    evidence = {}
    workers: dict[int, set[str]] = {}
    real = VerificationStage._verify

    for threads in (1, 3):
        names: set[str] = set()

        def spy(self, case, names=names):
            names.add(threading.current_thread().name)
            return real(self, case)

        monkeypatch.setattr(VerificationStage, "_verify", spy)
        settings = SETTINGS.replace(verify_threads=threads)
        cases = [_case(f, settings) for f in files]
        cases = [c for c in cases if c.query.ok]
        CandidateStage(LoadedCatalog.from_store(store, THOROUGH).index, settings).fill(cases)
        _stage_2(store, stub, THOROUGH, settings).fill(cases)
        VerificationStage(settings, THOROUGH, CatalogImages(settings)).fill(cases)
        evidence[threads] = [(c.query.path, c.evidence) for c in cases]
        workers[threads] = names
    assert evidence[1] == evidence[3]
    assert sum(e is not None and any(v.confirms(SETTINGS) for v in e.values()) for _, e in evidence[1]) >= 8
    assert workers[1] == {threading.current_thread().name} and len(workers[3]) == 3


def test_a_stage_3_failure_in_a_thread_is_the_stage_s_failure(store, stub, monkeypatch):
    """A query whose check raises in one of the threads fails the stage as it did on one
    thread (the chain then runs each query alone: tests/test_cron_safety.py)."""
    settings = SETTINGS.replace(verify_threads=2)
    cases = [_case(FIXTURES / "crawl" / n, settings) for n in ("chelsea-crop.jpg", "coffee-jpeg.jpg")]
    CandidateStage(LoadedCatalog.from_store(store, FAST).index, settings).fill(cases)
    _stage_2(store, stub, FAST, settings).fill(cases)
    real = VerificationStage._verify

    def failing(self, case):
        if "coffee" in case.query.path:
            raise RuntimeError("keypoints exploded")
        return real(self, case)

    monkeypatch.setattr(VerificationStage, "_verify", failing)
    with pytest.raises(RuntimeError, match="keypoints exploded"):
        VerificationStage(settings, FAST, CatalogImages(settings)).fill(cases)


def test_the_chain_runs_each_stage_once_in_order_and_scores_each_candidate_once(store, stub, monkeypatch):
    chain = Chain(LoadedCatalog.from_store(store, THOROUGH), stub, SETTINGS, THOROUGH)
    order: list[str] = []
    for stage in chain.stages:
        fill, label = stage.fill, type(stage).__name__

        def spy(cases, fill=fill, name=label):
            order.append(name)
            fill(cases)

        monkeypatch.setattr(stage, "fill", spy)
    judged: list[int] = []
    real = scoring.judge

    def counting(c, *args, **kw):
        judged.append(c.catalog_id)
        return real(c, *args, **kw)

    monkeypatch.setattr(scoring, "judge", counting)
    bad = Prepared("broken.jpg", error="CorruptImage: truncated")
    results = chain.run([_case(FIXTURES / "crawl" / "astronaut-crop.jpg").query, bad])
    assert order == ["CandidateStage", "DescriptorStage", "VerificationStage", "ScoringStage"]
    assert results[1].status == "error" and results[1].error == "CorruptImage: truncated"
    assert results[0].matches[0].catalog_id == _ids(store)["astronaut"]
    assert len(judged) == len(set(judged)) == results[0].candidates  # once per candidate


def _batches(size: int) -> list[list[Prepared]]:
    files = sorted((FIXTURES / "crawl").iterdir())
    queries = [_case(f).query for f in files if f.suffix in (".jpg", ".png")][:12]
    queries.insert(3, Prepared("broken.jpg", error="CorruptImage: truncated"))
    return [queries[k : k + size] for k in range(0, len(queries), size)]


def test_run_all_gives_what_run_gives_batch_by_batch(store, stub):
    chain = Chain(LoadedCatalog.from_store(store, THOROUGH), stub, SETTINGS, THOROUGH)
    batches = _batches(4)
    one_by_one = [chain.run(b) for b in batches]
    streamed = list(chain.run_all(iter(batches)))
    assert streamed == one_by_one and len(streamed) == 4
    assert streamed[0][3].status == "error" and sum(bool(r.matches) for b in streamed for r in b) >= 8


def test_run_all_runs_the_next_batch_s_first_stages_while_the_last_finish(store, stub, monkeypatch):
    """Stage 3 of the first batch waits for stage 2 of the second: it can only end because the
    chain runs them at once, stage 3 in a thread of its own."""
    chain = Chain(LoadedCatalog.from_store(store, FAST), stub, SETTINGS, FAST)
    second_front = threading.Event()
    seen: list[tuple[str, int, bool]] = []
    stage2, stage3 = chain.stages[1], chain.stages[2]
    fill2, fill3 = stage2.fill, stage3.fill
    calls = {"DescriptorStage": 0, "VerificationStage": 0}

    def front(cases):
        calls["DescriptorStage"] += 1
        fill2(cases)
        if calls["DescriptorStage"] == 2:
            second_front.set()

    def back(cases):
        calls["VerificationStage"] += 1
        main = threading.current_thread() is threading.main_thread()
        waited = second_front.wait(timeout=20) if calls["VerificationStage"] == 1 else True
        seen.append(("stage 3", calls["VerificationStage"], main and waited))
        fill3(cases)

    monkeypatch.setattr(stage2, "fill", front)
    monkeypatch.setattr(stage3, "fill", back)
    batches = _batches(6)[:2]
    streamed = list(chain.run_all(iter(batches)))
    assert second_front.is_set() and seen == [("stage 3", 1, False), ("stage 3", 2, False)]
    assert [len(b) for b in streamed] == [6, 6] and streamed[0][3].status == "error"


def test_run_all_runs_a_batch_a_stage_fails_on_a_query_at_a_time(store, stub, monkeypatch):
    chain = Chain(LoadedCatalog.from_store(store, FAST), stub, SETTINGS, FAST)
    real = VerificationStage._verify

    def failing(self, case):
        if case.query.path.endswith("chelsea-crop.jpg"):
            raise ValueError("a fault in stage 3")
        return real(self, case)

    batches = _batches(4)
    before = list(chain.run_all(iter(batches)))
    monkeypatch.setattr(VerificationStage, "_verify", failing)
    after = list(chain.run_all(iter(batches)))
    for old, new in zip(before, after, strict=True):
        for a, b in zip(old, new, strict=True):
            if a.query.endswith("chelsea-crop.jpg"):
                assert b.error == "StageFailure: VerificationStage: ValueError: a fault in stage 3"
            else:
                assert a == b
    assert any(p.path.endswith("chelsea-crop.jpg") for b in batches for p in b)


def test_run_all_closed_in_a_thread_its_batch_in_flight_waits_for_does_not_wait_for_it(
    store, stub, monkeypatch
):
    """A stream dropped unclosed is closed by the garbage collector in whichever thread collects
    it: in the CI, a stage-3 thread, which the batch in flight waited for. Closing there must
    not wait for that batch (the scan hung at exit after a full disk)."""
    chain = Chain(LoadedCatalog.from_store(store, FAST), stub, SETTINGS, FAST)
    stage3 = chain.stages[2]
    fill3, in_flight, released, calls = stage3.fill, threading.Event(), threading.Event(), []

    def back(cases):
        calls.append(len(cases))
        if len(calls) == 2:  # the second batch: in flight once the first is handed out
            in_flight.set()
            assert released.wait(timeout=60)
        fill3(cases)

    monkeypatch.setattr(stage3, "fill", back)
    stream = chain.run_all(iter(_batches(4)))
    assert len(next(stream)) == 4 and in_flight.wait(timeout=20)

    def collector():
        stream.close()
        released.set()

    closer = threading.Thread(target=collector, daemon=True)
    closer.start()
    closer.join(timeout=10)
    hung = closer.is_alive()
    released.set()  # let the batch in flight end either way
    assert not hung and len(calls) == 2


def test_a_scan_run_whose_recording_fails_has_stopped_its_stages_when_the_failure_arrives(
    store, stub, tmp_path, monkeypatch
):
    """A full disk fails the run's recording. The failure, held with its traceback (as the
    command line holds it while it reports), must not keep the chain's thread alive: it was
    later shut down by the garbage collector, in a thread that deadlocked."""
    db = tmp_path / "s.db"
    with sqlite3.connect(store.path) as source, sqlite3.connect(db) as target:
        source.backup(target)
    opened = Store.open(db, hasher=HASHER_ID, embedder=embedder_id(SETTINGS))
    request = ScanRequest((str(FIXTURES / "crawl"),), FAST, overrides={"jobs": 1, "batch_size": 4})
    before = {t for t in threading.enumerate() if t.name.startswith("chain-back")}
    run = ScanRun.start(opened, request, models=stub)
    real, recorded = opened.history.record, []

    def record(run_id, batch):
        if recorded:
            raise StoreError(f"cannot write to {db}: database or disk is full")
        recorded.append(len(batch))
        return real(run_id, batch)

    monkeypatch.setattr(opened.history, "record", record)
    with pytest.raises(StoreError) as failure:
        with run:
            for _ in run.results():
                pass
    assert failure.value.__traceback__ is not None and recorded == [4]
    alive = {t for t in threading.enumerate() if t.name.startswith("chain-back")} - before
    assert not alive
    assert opened.history.run(run.id).status == "interrupted"


def test_reporting_shares_the_stages_and_changes_only_the_output(store, stub):
    chain = Chain(LoadedCatalog.from_store(store, FAST), stub, SETTINGS, FAST)
    narrow = chain.reporting(SETTINGS.replace(top_k=1, min_score=0.0))
    assert narrow.stages[:3] == chain.stages[:3] and isinstance(narrow.stages[3], ScoringStage)
    query = _case(FIXTURES / "crawl" / "retina-jpeg.jpg").query
    (wide,) = chain.reporting(SETTINGS.replace(min_score=0.0)).run([query])
    (one,) = narrow.run([query])
    assert len(one.matches) == 1 and one.matches[0] == wide.matches[0]
