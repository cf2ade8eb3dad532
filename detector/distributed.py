"""Scanning a crawl on Ray Data: the same results as :meth:`Scanner.scan`, computed by workers.

The driver holds the database. It takes a :class:`CatalogSnapshot` of the catalog (codes,
descriptors, entries) and puts it in Ray's object store once; every worker (an actor, built
once) builds a :class:`Scanner` from it and runs the very same chain
(:meth:`Scanner.scan_prepared`) on its batches: read or take the bytes, hash, decode, stage
1, CNN rerank and stage 3. The batches are the ones the local scan makes (``batch_size``
consecutive items), and come back in order; the run (:class:`detector.runs.ScanRun`) records
each one in the scan history as the local scan does (one transaction per batch), and the
results are identical.

Inputs are files, folders and list files (read by the workers: on a cluster they must see
the same paths, as must stage 3 the catalog files) and Parquet shards with columns ``path``
(string) and ``bytes`` (binary): a ``.parquet`` file, or a folder holding ``.parquet``
files. Ray is an optional dependency (``pip install 'copyscan[distributed]'``), imported
only when a distributed scan starts.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detector.config import Settings
from detector.errors import DistributedError
from detector.intake.loader import content_hash
from detector.intake.prepare import Prepared, batched, prepare_batch, prepare_bytes
from detector.intake.sources import expand_sources
from detector.outputs.records import json_text, match_record
from detector.records import ScanResult
from detector.scan.catalog import CatalogSnapshot
from detector.scan.scanner import Scanner
from detector.stage2.embedding import Models

PARQUET_SUFFIX = ".parquet"
FILE_ROW = -1  # the row of an item that is a file, not a Parquet row

# One query image to scan: a file path and FILE_ROW, or a Parquet shard and a row in it.
Item = tuple[str, int]


def require(module: str) -> Any:
    """Import an optional dependency of the distributed engine, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DistributedError(
            f"{module} is not installed: pip install 'copyscan[distributed]' (Ray Data, pyarrow)"
        ) from e


def crawl_items(paths: Iterable[str], skip: frozenset[str] = frozenset()) -> list[Item]:
    """Every item the named sources hold, in order: Parquet shards (a ``.parquet`` file, or
    every ``.parquet`` file of a folder, sorted) row by row; anything else as ``scan`` expands
    it (:func:`detector.intake.sources.expand_sources`). Items whose query path is in ``skip`` (those
    a resumed run recorded) are left out."""
    pq = require("pyarrow.parquet")

    items: list[Item] = []
    files: list[str] = []

    def flush() -> None:
        items.extend((f, FILE_ROW) for f in expand_sources(files) if f not in skip)
        files.clear()

    for raw in paths:
        shards = _shards(Path(raw))
        if not shards:
            files.append(raw)
            continue
        flush()
        for shard in shards:
            try:
                if skip:
                    names = pq.read_table(shard, columns=["path"]).column("path").to_pylist()
                    items.extend((shard, i) for i, name in enumerate(names) if name not in skip)
                else:
                    items.extend((shard, i) for i in range(pq.ParquetFile(shard).metadata.num_rows))
            except (OSError, KeyError, ValueError) as e:  # pyarrow's errors derive from these
                raise DistributedError(f"cannot read Parquet shard {shard}: {e}") from e
    flush()
    return items


def _shards(p: Path) -> list[str]:
    if p.is_file() and p.suffix.lower() == PARQUET_SUFFIX:
        return [str(p)]
    if p.is_dir():
        return sorted(str(s) for s in p.glob("*") if s.suffix.lower() == PARQUET_SUFFIX and s.is_file())
    return []


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
        self._table: tuple[str, int, Any] | None = None  # the last row group read: shard, first row, table

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        blobs = []
        for index, raw in zip(batch["index"], batch["items"], strict=True):
            items: list[Item] = [(str(s), int(r)) for s, r in json.loads(str(raw))]
            prepared = self._prepare(items)
            fresh = iter(self.scanner.scan_prepared([p for p in prepared if not p.skipped]))
            out = [p if p.skipped else next(fresh) for p in prepared]
            blobs.append(pickle.dumps((int(index), out)))
        return {"results": blobs}

    def _prepare(self, items: Sequence[Item]) -> list[Prepared]:
        """As :func:`prepare_batch` does for files, also for Parquet rows; the same order."""
        known = (lambda _digests: self.known) if self.known else None
        out: list[Prepared | None] = [None] * len(items)
        files = [i for i, (_, row) in enumerate(items) if row == FILE_ROW]
        done = prepare_batch([items[i][0] for i in files], self.settings, known=known)
        for i, p in zip(files, done, strict=True):
            out[i] = p
        for i, (shard, row) in enumerate(items):
            if row != FILE_ROW:
                path, data = self._row(shard, row)
                out[i] = self._prepare_bytes(path, data)
        return [p for p in out if p is not None]

    def _prepare_bytes(self, path: str, data: bytes | None) -> Prepared:
        if data is None:
            return Prepared(path=path, error=f"UnreadablePath: no bytes for {path} in its Parquet shard")
        if len(data) > self.settings.max_file_bytes:  # as read_bytes refuses a file
            return Prepared(
                path=path,
                error=f"DecompressionBomb: file is {len(data)} bytes, "
                f"over the limit of {self.settings.max_file_bytes}",
            )
        sha = content_hash(data)
        if sha in self.known:
            return Prepared(path=path, sha256=sha, skipped=True)
        return prepare_bytes(path, data, sha, self.settings)

    def _row(self, shard: str, row: int) -> tuple[str, bytes | None]:
        """Path and bytes of one Parquet row; the row group holding it is read once and kept."""
        import pyarrow.parquet as pq

        if (
            self._table is None
            or self._table[0] != shard
            or not (self._table[1] <= row < self._table[1] + self._table[2].num_rows)
        ):
            f = pq.ParquetFile(shard)
            start = 0
            for g in range(f.metadata.num_row_groups):
                size = f.metadata.row_group(g).num_rows
                if row < start + size:
                    self._table = (shard, start, f.read_row_group(g, columns=["path", "bytes"]))
                    break
                start += size
            else:
                raise DistributedError(f"{shard} has no row {row}")
        _, start, table = self._table
        path = table.column("path")[row - start].as_py()
        return str(path), table.column("bytes")[row - start].as_py()


def ray_batches(
    scanner: Scanner, items: Sequence[Item], cluster: RayCluster, known: frozenset[str] = frozenset()
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
    items: Sequence[Item],
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
        {"index": i, "items": json.dumps(list(b))}
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


class ParquetResults:
    """Writes scan results to a Parquet file, one row group per batch written: ``query``,
    ``status``, ``error``, ``sha256``, ``best_verdict``, ``best_score`` and ``matches`` (the
    JSON Lines ``matches`` list, as JSON text). Use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        pa = require("pyarrow")
        pq = require("pyarrow.parquet")

        self._pa = pa
        self.schema = pa.schema(
            [
                ("query", pa.string()),
                ("status", pa.string()),
                ("error", pa.string()),
                ("sha256", pa.string()),
                ("best_verdict", pa.string()),
                ("best_score", pa.float64()),
                ("matches", pa.string()),
            ]
        )
        self._writer = pq.ParquetWriter(str(path), self.schema)
        self._rows: list[dict[str, Any]] = []

    def write(self, r: ScanResult, flush_every: int = 1024) -> None:
        best = r.matches[0] if r.matches else None
        self._rows.append(
            {
                "query": r.query,
                "status": r.status,
                "error": r.error,
                "sha256": r.sha256,
                "best_verdict": best.verdict if best else None,
                "best_score": best.score if best else None,
                "matches": json_text([match_record(m) for m in r.matches]),
            }
        )
        if len(self._rows) >= flush_every:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            self._writer.write_table(self._pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows = []

    def close(self) -> None:
        self.flush()
        self._writer.close()

    def __enter__(self) -> ParquetResults:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
