"""A scanner: the chain (:mod:`detector.scan.chain`) over one catalog, loaded once, with the
fingerprint of what its results depend on. ``scan`` and ``check`` and the server's checks use
it directly; a recorded run (:mod:`detector.runs`) drives it batch by batch."""

from __future__ import annotations

from collections.abc import Collection, Generator, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import replace

from detector.config import FAST, MODES, Settings
from detector.errors import SettingError
from detector.intake.prepare import Prepared
from detector.intake.workers import cnn_threads, prepared_batches
from detector.records import ScanResult
from detector.scan.catalog import CatalogSnapshot, LoadedCatalog
from detector.scan.chain import Chain
from detector.scan.state import scan_state
from detector.stage2.embedding import Models
from detector.storage.store import Store


class Scanner:
    """Scans query images against the catalog of ``catalog``: a :class:`Store`, or a
    :class:`CatalogSnapshot` (then nothing is read from a database). The index (and, in
    thorough mode, every catalog descriptor) is loaded once, when the scanner is built;
    ``exclude``: catalog ids hidden from it (held-out images of an evaluation)."""

    def __init__(
        self,
        catalog: Store | CatalogSnapshot,
        models: Models,
        settings: Settings,
        mode: str = FAST,
        exclude: Collection[int] = (),
    ) -> None:
        if mode not in MODES:
            raise SettingError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if isinstance(catalog, CatalogSnapshot):
            loaded = LoadedCatalog.from_snapshot(catalog, mode)
        else:
            loaded = LoadedCatalog.from_store(catalog, mode, exclude)
        self.source = catalog
        self.loaded = loaded
        self.models = models
        self.settings = settings
        self.mode = mode
        self.generation = loaded.generation  # the catalog generation this scanner loaded
        self.state = scan_state(
            settings, mode, loaded.generation, loaded.hidden, loaded.hasher, loaded.embedder
        )
        self.chain = Chain(loaded, models, settings, mode)

    @property
    def store(self) -> Store:
        """The database this scanner reads; not for a snapshot's."""
        if isinstance(self.source, CatalogSnapshot):
            raise TypeError("this scanner was built from a CatalogSnapshot: it has no Store")
        return self.source

    def rebound(self, store: Store) -> Scanner:
        """This scanner's loaded catalog (index and descriptors, not copied) read through
        ``store``'s connection: a process forked after loading must not use its parent's
        SQLite connection, yet should not load the catalog again."""
        if isinstance(self.source, CatalogSnapshot):
            return self
        clone = object.__new__(Scanner)
        clone.__dict__.update(self.__dict__)
        clone.source = store
        clone.loaded = replace(self.loaded, view=store.catalog)
        clone.chain = Chain(clone.loaded, self.models, self.settings, self.mode)
        return clone

    def scan_prepared(self, batch: Sequence[Prepared]) -> list[ScanResult]:
        """The chain on a batch of prepared queries: one result each, in order."""
        return self.chain.run(batch)

    def scan_batches(
        self, batches: Iterable[Sequence[Prepared]], images: int
    ) -> Generator[list[ScanResult], None, None]:
        """The chain on consecutive batches of :func:`prepared_batches` over ``images`` images,
        one result list per batch, in order; the next batch's first stages run while the last
        stages of the one before finish, and the CNN takes the CPUs the intake workers leave."""
        self.models.threads = cnn_threads(self.settings, images)
        return self.chain.run_all(batches)

    def scan(self, paths: Sequence[str]) -> Iterator[ScanResult]:
        """One result per path, in order (nothing is recorded: see :mod:`detector.runs`)."""
        batches = prepared_batches(paths, self.settings)
        with closing(batches), closing(self.scan_batches(batches, len(paths))) as scanned:
            for results in scanned:
                yield from results

    def reporting(self, top_k: int | None = None, min_score: float | None = None) -> Scanner:
        """This scanner, its catalog and caches shared, reporting at most ``top_k`` matches of
        at least ``min_score`` (each None: as it is) for some calls."""
        changes = {k: v for k, v in (("top_k", top_k), ("min_score", min_score)) if v is not None}
        if not changes:
            return self
        clone = object.__new__(Scanner)
        clone.__dict__.update(self.__dict__)
        clone.settings = self.settings.replace(**changes)
        clone.chain = self.chain.reporting(clone.settings)
        return clone
