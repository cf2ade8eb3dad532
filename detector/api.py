"""copyscan from Python: one object for a catalog database, with the calls a user needs.

    import detector

    with detector.open_catalog("copyscan.db", create=True) as catalog:
        catalog.add(["photos/"], owner="Acme Pictures")
        for result in catalog.scan(["crawl/"]):          # a recorded, resumable run
            if result.flagged:
                print(result.query, result.matches[0].catalog_path, result.matches[0].score)
        print(catalog.check("upload.jpg").flagged)        # one image, nothing recorded

Everything here goes through the same library objects as the command line: the run's life
(:class:`detector.runs.ScanRun`), the settings in force (defaults, then those saved in the
database by calibration, then the caller's), the one writer lock per database.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from detector.config import FAST, EffectiveSettings, Settings, effective_settings
from detector.intake.loader import content_hash
from detector.intake.prepare import prepare_bytes
from detector.intake.sources import check_roots, expand_sources
from detector.outputs.report import Report
from detector.records import RunInfo, ScanResult
from detector.runs import ScanRequest, ScanRun
from detector.scan.scanner import Scanner
from detector.stage1.hashing import HASHER_ID
from detector.stage2.embedding import Models, embedder_id
from detector.storage.locking import DatabaseLock
from detector.storage.store import Store
from detector.tasks.cataloging import AddResult, add_to_catalog

PathLike = str | os.PathLike[str]


def open_catalog(
    path: PathLike = "copyscan.db",
    *,
    create: bool = False,
    settings: Mapping[str, Any] | None = None,
    wait: float = 0.0,
) -> Catalog:
    """Open the copyscan database at ``path`` (``create``: make it when missing). ``settings``:
    values that beat the defaults and those saved in the database (``{"top_k": 3}``; see
    :class:`detector.config.Settings`). ``wait``: seconds a write waits for another run
    holding the database before :class:`~detector.storage.locking.Locked` is raised.
    Raises :class:`~detector.errors.StoreError` for a database that cannot be used."""
    overrides = dict(settings or {})
    plain = effective_settings({}, overrides).settings
    store = Store.open(Path(path), hasher=HASHER_ID, embedder=embedder_id(plain), create=create)
    return Catalog(store, overrides, wait)


class Catalog:
    """An open catalog database. Use :func:`open_catalog`; close with :meth:`close` or ``with``."""

    def __init__(self, store: Store, overrides: Mapping[str, Any], wait: float = 0.0) -> None:
        self.store = store
        self.overrides = dict(overrides)
        self.wait = wait
        self._models: Models | None = None
        self._scanners: dict[str, Scanner] = {}

    @property
    def effective(self) -> EffectiveSettings:
        """The settings in force and where each came from (default, stored, set)."""
        return effective_settings(self.store.saved_settings.read(), self.overrides)

    @property
    def settings(self) -> Settings:
        """The settings in force."""
        return self.effective.settings

    @property
    def models(self) -> Models:
        """The CNN, built on first use and kept."""
        if self._models is None:
            self._models = Models(self.settings)
        return self._models

    def add(self, paths: Iterable[PathLike], owner: str | None = None) -> list[AddResult]:
        """Index image files, folders (recursively) and list files into the catalog; one
        result per image file, in order. Content already catalogued is 'known'; a named path
        that does not exist raises :class:`~detector.errors.MissingInput`."""
        roots = list(paths)
        check_roots(roots)
        files = expand_sources(roots)
        with DatabaseLock(self.store.path, "catalog add", self.wait):
            return list(add_to_catalog(self.store, self.models, files, self.settings, owner=owner))

    def remove(self, ids: Iterable[int] = (), paths: Iterable[str] = (), owner: str | None = None) -> int:
        """Remove catalog images by id, stored path or owner; returns how many went."""
        with DatabaseLock(self.store.path, "catalog remove", self.wait):
            return self.store.catalog.remove(ids=list(ids), paths=list(paths), owner=owner)

    def scan(
        self,
        paths: Iterable[PathLike],
        *,
        mode: str = FAST,
        top_k: int | None = None,
        min_score: float | None = None,
        rescan: bool = False,
    ) -> Iterator[ScanResult]:
        """Scan files, folders, list files, webdataset and Parquet shards and CSV or JSON Lines
        manifests (see :mod:`detector.intake.sources`) as a recorded run: one result per image, in
        order, each batch stored as it completes. The run ends 'finished' when the iteration
        does, 'interrupted' when the caller stops early (:meth:`resume` goes on with it)."""
        request = ScanRequest(
            tuple(os.fspath(p) for p in paths), mode, top_k, min_score, rescan, self.overrides
        )
        with ScanRun.start(self.store, request, models=self.models, wait=self.wait) as run:
            yield from run.results()

    def resume(self, run_id: int | None = None) -> Iterator[ScanResult]:
        """Go on with a killed or interrupted scan run (the newest without ``run_id``): first
        the results it recorded but never handed on, then the rest."""
        with ScanRun.resume(self.store, run_id, models=self.models, wait=self.wait) as run:
            yield from run.backlog()
            yield from run.results()

    def check(self, path: PathLike, mode: str = FAST) -> ScanResult:
        """One image against the catalog, as a moderator checks an upload; nothing recorded."""
        return next(self._scanner(mode).scan([os.fspath(path)]))

    def check_bytes(self, data: bytes, name: str = "", mode: str = FAST) -> ScanResult:
        """An image's bytes against the catalog (``name`` is what the result calls it)."""
        prepared = prepare_bytes(name, data, content_hash(data), self.settings)
        (result,) = self._scanner(mode).scan_prepared([prepared])
        return result

    def runs(self, limit: int | None = 20) -> list[RunInfo]:
        """Recorded scan runs, newest first."""
        return self.store.history.runs(limit)

    def report(self, run_id: int | None = None, new_only: bool = False) -> Report:
        """The flagged pairs of a run (the newest without ``run_id``), best first."""
        return self.store.reports.load(run_id, new_only=new_only)

    def _scanner(self, mode: str) -> Scanner:
        """The scanner of ``mode``, loaded again when the catalog or its settings changed."""
        settings = self.settings
        found = self._scanners.get(mode)
        if found is None or found.generation != self.store.catalog.generation() or found.settings != settings:
            found = Scanner(self.store, self.models, settings, mode=mode)
            self._scanners[mode] = found
        return found

    @property
    def path(self) -> Path:
        return self.store.path

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
