"""The front of the pipeline in worker processes: the same results as in the main process, in
order; content already known is never decoded; a worker that dies costs only its image."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from detector.config import Settings
from detector.intake import workers
from detector.intake.prepare import Prepared, prepare_batch, prepare_bytes
from detector.intake.workers import CRASHED, cnn_threads, prepared_batches, worker_count
from detector.scan.scanner import Scanner
from detector.stage1.hashing import HASHER_ID
from detector.storage.store import Store
from detector.tasks.cataloging import ADDED, KNOWN, add_to_catalog

PARALLEL = Settings().replace(batch_size=4, jobs=2)


def crash_on_marked(path: str, data: bytes, sha: str, settings: Settings, catalog: bool) -> Prepared:
    """prepare_bytes, except that the worker process dies on a file named '*crash*'."""
    if "crash" in Path(path).name:
        os._exit(3)
    return prepare_bytes(path, data, sha, settings, catalog)


@pytest.fixture
def inputs(make_image, tmp_path: Path) -> list[str]:
    """14 images, a corrupt file and a missing path: four batches of four."""
    paths = [str(make_image(f"img{i:02d}.jpg", seed=i)) for i in range(14)]
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths.insert(5, str(tmp_path / "corrupt.jpg"))
    paths.insert(9, str(tmp_path / "missing.jpg"))
    return paths


def _same(a: Prepared, b: Prepared) -> bool:
    arrays = all(
        (x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))
        for x, y in ((a.small, b.small), (a.grey, b.grey))
    )
    names = ("path", "sha256", "error", "skipped", "codes", "probes", "box_codes", "variants")
    return arrays and all(getattr(a, n) == getattr(b, n) for n in names)


def crash_in_workers(path: str, data: bytes, sha: str, settings: Settings, catalog: bool) -> Prepared:
    """prepare_bytes, except that every worker process dies (as one that cannot even start)."""
    if multiprocessing.parent_process() is not None:
        os._exit(3)
    return prepare_bytes(path, data, sha, settings, catalog)


def test_worker_count():
    assert worker_count(Settings(), 1000) == 1  # the library starts no processes unless asked
    assert worker_count(PARALLEL, 7) == 1  # under two batches: not worth starting workers
    assert worker_count(PARALLEL, 8) == 2
    assert worker_count(PARALLEL.replace(jobs=1), 1000) == 1
    assert worker_count(PARALLEL.replace(jobs=0), 1000) == len(os.sched_getaffinity(0))


def test_the_cnn_takes_the_cpus_the_workers_leave(monkeypatch):
    monkeypatch.setattr(workers, "usable_cpus", lambda: 4)
    assert cnn_threads(PARALLEL, 1000) == 2  # two workers on four CPUs
    assert cnn_threads(PARALLEL.replace(jobs=0), 1000) == 1  # a worker per CPU: one thread
    assert cnn_threads(PARALLEL.replace(jobs=1), 1000) == 4  # no workers
    assert cnn_threads(PARALLEL, 7) == 4  # too few images to start them
    assert cnn_threads(PARALLEL.replace(jobs=8), 1000) == 1  # at least one
    assert cnn_threads(PARALLEL.replace(cnn_threads=3), 1000) == 3  # as set


@pytest.mark.parametrize("catalog", [False, True])
def test_workers_give_what_the_main_process_gives_in_order(inputs, catalog):
    batches = list(prepared_batches(inputs, PARALLEL, catalog=catalog))
    assert [len(b) for b in batches] == [4, 4, 4, 4]
    here = [prepare_batch(inputs[i : i + 4], PARALLEL, catalog=catalog) for i in range(0, 16, 4)]
    flat, expected = [p for b in batches for p in b], [p for b in here for p in b]
    assert [p.path for p in flat] == inputs
    assert all(_same(a, b) for a, b in zip(flat, expected, strict=True))
    assert [p.ok for p in flat].count(False) == 2
    assert "CorruptImage" in (flat[5].error or "") and flat[9].error is not None
    assert flat[0].variants if catalog else not flat[0].variants


def test_known_content_is_skipped_before_any_worker_sees_it(inputs):
    first = prepare_batch(inputs[:2], PARALLEL)
    shas = {p.sha256 for p in first}
    asked: list[str] = []

    def known(digests):
        asked.extend(digests)
        return shas

    flat = [p for b in prepared_batches(inputs, PARALLEL, known=known, prepare=crash_on_marked) for p in b]
    assert [p.skipped for p in flat[:3]] == [True, True, False]
    assert flat[0].codes is None and flat[2].ok
    assert len(asked) == 15  # every readable file (the corrupt one too), once


def test_a_worker_that_dies_costs_only_its_image(inputs, make_image):
    crashing = str(make_image("crash.jpg", seed=99))
    paths = [*inputs[:6], crashing, *inputs[6:]]
    flat = [p for b in prepared_batches(paths, PARALLEL, prepare=crash_on_marked) for p in b]
    assert [p.path for p in flat] == paths
    assert flat[6].error == CRASHED and flat[6].sha256 is not None
    assert [p.ok for p in flat].count(True) == 14  # every other image, after the pool restarted


def test_workers_that_cannot_run_are_given_up_for_this_process(inputs):
    flat = [p for b in prepared_batches(inputs, PARALLEL, prepare=crash_in_workers) for p in b]
    assert [p.path for p in flat] == inputs
    assert [p.error for p in flat[:2]] == [CRASHED, CRASHED]  # before the third in a row
    assert all(p.ok for i, p in enumerate(flat[2:], 2) if i not in (5, 9))
    assert "CorruptImage" in (flat[5].error or "")


def test_the_command_line_decodes_in_workers_by_default():
    from cli.main import App

    assert App(db="x.db", quiet=True, overrides={}).settings.jobs == 0
    assert App(db="x.db", quiet=True, overrides={"jobs": 1}).settings.jobs == 1


def _store(tmp_path: Path, settings: Settings) -> Store:
    from detector.stage2.embedding import embedder_id

    return Store.open(tmp_path / "w.db", hasher=HASHER_ID, embedder=embedder_id(settings), create=True)


def test_catalog_add_with_workers_stores_content_seen_twice_once(inputs, models, tmp_path):
    store = _store(tmp_path, PARALLEL)
    # The first two files again in the next batch, read (and looked up) before the first is stored.
    paths = [*inputs[:4], inputs[0], inputs[1], *inputs[4:]]
    results = list(add_to_catalog(store, models, paths, PARALLEL))
    assert [r.status for r in results].count(ADDED) == 14
    assert (results[4].status, results[5].status) == (KNOWN, KNOWN)
    assert (results[4].catalog_id, results[5].catalog_id) == (results[0].catalog_id, results[1].catalog_id)
    assert len(list(store.catalog.list())) == 14


def test_a_scan_with_workers_equals_one_without(inputs, models, tmp_path, catalog_dir):
    store = _store(tmp_path, PARALLEL)
    catalog = sorted(str(p) for p in catalog_dir.iterdir())
    list(add_to_catalog(store, models, catalog + inputs[:3], PARALLEL.replace(jobs=1)))
    queries = [*inputs, *catalog]
    here = list(Scanner(store, models, PARALLEL.replace(jobs=1)).scan(queries))
    assert models.threads == len(os.sched_getaffinity(0))
    there = list(Scanner(store, models, PARALLEL).scan(queries))
    assert models.threads == max(1, len(os.sched_getaffinity(0)) - 2)  # beside two workers
    assert here == there
    assert sum(1 for r in there if r.matches) >= len(catalog) + 3
