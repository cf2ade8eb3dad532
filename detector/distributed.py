"""Scanning a crawl on Ray Data: the same results as :meth:`Scanner.scan`, computed by workers.

The driver holds the database. It takes a :class:`CatalogSnapshot` of the catalog (codes,
descriptors, entries) and puts it in Ray's object store once; every worker (an actor, built
once) builds a :class:`Scanner` from it and runs the very same chain
(:meth:`Scanner.scan_prepared`) on its batches: read or take the bytes, hash, decode, stage
1, CNN rerank and stage 3. The batches are the ones the local scan makes (``batch_size``
consecutive items), and come back in order; the run (:class:`detector.runs.ScanRun`) records
each one in the scan history as the local scan does (one transaction per batch), and the
results are identical.

Inputs are what a local scan reads (:func:`detector.intake.sources.expand_inputs`: files,
folders, list files, webdataset and Parquet shards, manifests), listed by the driver and
read by the workers: on a cluster they must see the same paths, as must stage 3 the catalog
files. Ray is an optional dependency (``pip install 'copyscan[distributed]'``), imported
only when a distributed scan starts.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from detector.config import Settings
from detector.errors import DistributedError
from detector.intake.inputs import Input, InputReader
from detector.intake.prepare import Prepared, batched, prepare_batch
from detector.records import ScanResult
from detector.scan.catalog import CatalogSnapshot
from detector.scan.scanner import Scanner
from detector.stage2.embedding import Models


def require(module: str) -> Any:
    """Import an optional dependency of the distributed engine, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DistributedError(
            f"{module} is not installed: pip install 'copyscan[distributed]' (Ray Data, pyarrow)"
        ) from e


@dataclass(frozen=True)
class RayCluster:
    """Where a distributed scan runs: ``address`` of an existing Ray cluster (None: start a
    local one with ``workers`` CPUs, or use $RAY_ADDRESS when it is set); ``workers``: scanner
    actors, one CPU each (None: every CPU of the local machine or of the cluster)."""

    workers: int | None = None
    address: str | None = None


class _Worker:
    """One scanner actor: builds its :class:`Scanner` from the snapshot once, then scans one
    batch (one row of the input dataset) per call."""

    def __init__(
        self, snapshot: Any, settings: Settings, model_settings: Settings, mode: str, known: Any
    ) -> None:
        import ray

        # The object refs come wrapped in a list, so Ray hands them over unresolved and the
        # actor fetches them itself (zero-copy from the node's object store for the arrays).
        snapshot, known = ray.get([snapshot[0], known[0]])
        self.settings = settings
        self.known: frozenset[str] = known
        self.scanner = Scanner(snapshot, Models(model_settings), settings, mode=mode)
        self.reader = InputReader(settings)  # keeps the shard it reads open between batches

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        blobs = []
        known = (lambda _digests: self.known) if self.known else None
        for index, raw in zip(batch["index"], batch["items"], strict=True):
            items = [Input.from_json(text) for text in json.loads(str(raw))]
            prepared = prepare_batch(items, self.settings, known=known, reader=self.reader)
            fresh = iter(self.scanner.scan_prepared([p for p in prepared if not p.skipped]))
            out = [p if p.skipped else next(fresh) for p in prepared]
            blobs.append(pickle.dumps((int(index), out)))
        return {"results": blobs}


def ray_batches(
    scanner: Scanner, items: Sequence[Input], cluster: RayCluster, known: frozenset[str] = frozenset()
) -> Iterator[list[ScanResult | Prepared]]:
    """The chain on Ray: each batch of ``items`` (``batch_size`` consecutive ones) scanned by a
    worker, in order; content whose sha256 is in ``known`` comes back unscanned, as a skipped
    :class:`Prepared`, for the caller to repeat its stored result. ``scanner`` is built from
    the Store; its catalog is sent to the workers once."""
    ray = require("ray")
    require("ray.data")

    snapshot = CatalogSnapshot.load(scanner.store)
    if snapshot.generation != scanner.generation:
        raise DistributedError("the catalog changed while the scan started: run it again")
    started_here = not ray.is_initialized()
    if started_here:
        _start(cluster)
    try:
        yield from _scan(ray, scanner, snapshot, items, cluster, known)
    finally:
        if started_here:
            ray.shutdown()


def _start(cluster: RayCluster) -> None:
    import logging

    import ray

    address = cluster.address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if address is None:
        options["num_cpus"] = cluster.workers or os.cpu_count() or 1
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise DistributedError(f"cannot start Ray{f' at {address}' if address else ''}: {e}") from e
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # stderr carries copyscan's status lines


def _scan(
    ray: Any,
    scanner: Scanner,
    snapshot: CatalogSnapshot,
    items: Sequence[Input],
    cluster: RayCluster,
    known: frozenset[str],
) -> Iterator[list[ScanResult | Prepared]]:
    import ray.data

    if not items:
        return
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # batches come back in input order
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    workers = cluster.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    batches = [
        {"index": i, "items": json.dumps([item.to_json() for item in b])}
        for i, b in enumerate(batched(list(items), scanner.settings.batch_size))
    ]
    dataset = ray.data.from_items(batches, override_num_blocks=len(batches)).map_batches(
        _Worker,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(workers, len(batches))),
        num_cpus=1,
        fn_constructor_kwargs={
            "snapshot": [ray.put(snapshot)],
            "settings": scanner.settings,
            "model_settings": scanner.models.settings,
            "mode": scanner.mode,
            "known": [ray.put(known)],
        },
    )
    expected = 0
    for row in dataset.iter_rows():
        index, out = pickle.loads(row["results"])
        if index != expected:
            raise DistributedError(f"batch {index} came back in place of batch {expected}")
        expected += 1
        yield out
    if expected != len(batches):
        raise DistributedError(f"{len(batches) - expected} batches did not come back")
