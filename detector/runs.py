"""A scan run's life in the database, in one place for the command line, the Python API, the
server and the Ray driver.

A run is started (its request and the scan state it runs against are recorded) or resumed
(a killed or interrupted run goes on with the same request, scanning only what it had not
recorded, and only while the catalog, the settings and copyscan are what they were). Its
results are recorded a batch at a time, one transaction each; content some run already
scanned against the same state is repeated from the database instead of scanned again,
unless the request says ``rescan``. It ends 'finished', or 'interrupted' when it was
stopped or failed; a run left 'running' by a process that died is marked 'killed' by the
next run on the database. The settings in force are the defaults, then the front end's own,
then those saved in the database by calibration, then the request's overrides.

One writer at a time: a run holds the database's lock (:mod:`detector.storage.locking`)
from start to end. The paths it scans are made absolute when it starts (a resume from another
folder reads the same files), and a path the caller named that does not exist stops it before
anything is recorded. The run also counts the results that reached the caller, batch by batch
(:meth:`ScanRun.results`), so that a resume first hands back what a broken pipe or a full
disk kept from its outputs (:meth:`ScanRun.backlog`).
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from detector.config import FAST, MODES, effective_settings
from detector.errors import NotFound, SettingError, StoreError
from detector.intake.inputs import Input
from detector.intake.prepare import Prepared
from detector.intake.sources import check_roots, expand_inputs
from detector.intake.workers import prepared_batches
from detector.records import RunInfo, ScanResult
from detector.scan.scanner import Scanner
from detector.stage2.embedding import Models
from detector.storage.locking import DatabaseLock
from detector.storage.store import Store

SCAN = "scan"
FINISHED = "finished"
INTERRUPTED = "interrupted"
RESUMABLE = ("killed", INTERRUPTED)


@dataclass(frozen=True)
class ScanRequest:
    """What a scan run is asked to do; recorded with the run, so ``resume`` does the same.
    ``overrides``: settings the caller set (they beat saved ones); ``options``: a front end's
    own options to keep with the run (output formats and files, the engine), given back on
    resume."""

    paths: tuple[str, ...]
    mode: str = FAST
    top_k: int | None = None
    min_score: float | None = None
    rescan: bool = False
    overrides: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SettingError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")

    def args(self, images: int) -> dict[str, Any]:
        """The request as the run's recorded arguments."""
        return {
            **self.options,
            "paths": list(self.paths),
            "mode": self.mode,
            "top_k": self.top_k,
            "min_score": self.min_score,
            "rescan": self.rescan,
            "set": dict(self.overrides),
            "images": images,
        }

    def resolved(self) -> ScanRequest:
        """The request with its paths made absolute (from the current folder)."""
        return dataclasses.replace(self, paths=tuple(os.path.abspath(p) for p in self.paths))

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> ScanRequest:
        """The request a run was recorded with."""
        known = {"paths", "mode", "top_k", "min_score", "rescan", "set", "images"}
        return cls(
            paths=tuple(str(p) for p in args.get("paths") or ()),
            mode=str(args.get("mode") or FAST),
            top_k=args.get("top_k"),
            min_score=args.get("min_score"),
            rescan=bool(args.get("rescan")),
            overrides=dict(args.get("set") or {}),
            options={k: v for k, v in args.items() if k not in known},
        )


class ScanRun:
    """One recorded scan run; build with :meth:`start` or :meth:`resume`, then iterate
    :meth:`results` inside ``with run:`` (the run ends 'finished' when the block completes,
    'interrupted' when anything stops it). ``files``: what is left to scan; ``settings``: the
    settings in force; ``killed``: runs found left 'running' by a dead process (now 'killed');
    ``notes``: warnings about saved settings that could not be used."""

    def __init__(
        self,
        store: Store,
        scanner: Scanner,
        request: ScanRequest,
        run: RunInfo,
        files: Sequence[Any],
        lock: DatabaseLock,
        resumed: bool,
        killed: Sequence[int],
        notes: Sequence[str],
        engine: Any = None,
    ) -> None:
        self.store = store
        self.scanner = scanner
        self.settings = scanner.settings
        self.request = request
        self.run = run
        self.id = run.id
        self.files = files
        self.resumed = resumed
        self.killed = tuple(killed)
        self.notes = tuple(notes)
        self.engine = engine
        self._lock = lock
        self._ended = False
        self._written = store.history.written(run.id)

    @classmethod
    def start(
        cls,
        store: Store,
        request: ScanRequest,
        *,
        models: Models | None = None,
        base: Mapping[str, Any] | None = None,
        engine: Any = None,
        wait: float = 0.0,
    ) -> ScanRun:
        """Take the database's lock (waiting up to ``wait`` seconds; else
        :class:`~detector.storage.locking.Locked`), mark dead runs killed, and record a new
        run of ``request``. ``base``: the front end's own defaults; ``models``: a loaded model
        to share (else one is built); ``engine``: a :class:`~detector.distributed.RayCluster`
        to scan on, or None for this process."""
        request = request.resolved()
        check_roots(request.paths)
        lock = _lock(store, wait)
        try:
            killed = store.history.mark_killed()
            scanner, notes = _scanner(store, request, models, base)
            files = _inputs(request.paths)
            run_id = store.history.start(
                SCAN, request.args(len(files)), mode=request.mode, state=scanner.state
            )
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        run = store.history.run(run_id)
        return cls(store, scanner, request, run, files, lock, False, killed, notes, engine)

    @classmethod
    def resume(
        cls,
        store: Store,
        run_id: int | None = None,
        *,
        models: Models | None = None,
        base: Mapping[str, Any] | None = None,
        engine: Any = None,
        wait: float = 0.0,
        runtime: Mapping[str, Any] | None = None,
    ) -> ScanRun:
        """Go on with run ``run_id`` (or the newest killed or interrupted scan): its request,
        its settings, only the items it has not recorded. Refused (:class:`StoreError`) when
        the catalog, the settings or copyscan changed since it started. ``runtime``: settings
        that change no result (:data:`detector.config.RUNTIME`) to run it with now."""
        lock = _lock(store, wait)
        try:
            killed = store.history.mark_killed()
            run = _resumable(store, run_id)
            request = ScanRequest.from_args(run.args)
            if runtime:
                request = dataclasses.replace(request, overrides={**request.overrides, **runtime})
            scanner, notes = _scanner(store, request, models, base)
            if scanner.state != run.state:
                raise StoreError(
                    f"the catalog, the settings or copyscan changed since run {run.id} started; "
                    "its results would not be comparable: start a new scan instead"
                )
            check_roots(request.paths)
            done = frozenset(store.history.scanned_paths(run.id))
            files = _inputs(request.paths, done)
            store.history.reopen(run.id)
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        return cls(store, scanner, request, run, files, lock, True, killed, notes, engine)

    def results(self) -> Iterator[ScanResult]:
        """One result per file left, in order, each batch recorded as it completes, and
        counted as written once the caller has taken all of it (asked for the next result)."""
        self._mark_written(len(self.backlog()))  # the caller has been handed the backlog
        batches = self._local_batches() if self.engine is None else self._ray_batches()
        with closing(batches):  # its threads and workers stop here when recording fails
            for batch in batches:
                batch = self.store.history.record(self.id, batch)
                yield from batch
                self._mark_written(len(batch))

    def backlog(self) -> list[ScanResult]:
        """Results this run recorded that never reached the caller (a resumed run whose output
        broke), in order; hand them on before :meth:`results`."""
        return self.store.history.items_of(self.id, skip=self._written)

    def recorded(self) -> list[ScanResult]:
        """Every result this run has recorded, in order (to write an output file again)."""
        return self.store.history.items_of(self.id)

    def _mark_written(self, items: int) -> None:
        if items:
            self._written += items
            self.store.history.mark_written(self.id, self._written)

    def finish(self, status: str = FINISHED) -> None:
        """Record the end of the run (once) and release the database. Where even that cannot
        be written (a full disk), the run stays 'running' and the next run marks it 'killed':
        resumable either way."""
        if self._ended:
            return
        self._ended = True
        try:
            self.store.history.finish(self.id, status)
        except StoreError:
            if status == FINISHED:
                raise
        finally:
            self._lock.__exit__(None, None, None)

    def __enter__(self) -> ScanRun:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish(FINISHED if kind is None else INTERRUPTED)

    def _local_batches(self) -> Generator[list[ScanResult], None, None]:
        reusable: dict[str, int] = {}
        state = self.scanner.state

        def known(digests: Sequence[str]) -> dict[str, int]:
            reusable.update(self.store.history.reusable_items(digests, state))
            return reusable

        reuse = not self.request.rescan
        in_flight: deque[list[Prepared]] = deque()  # batches the chain has, oldest first

        def to_scan(batches: Iterable[list[Prepared]]) -> Iterator[list[Prepared]]:
            for prepared in batches:
                in_flight.append(prepared)
                yield [p for p in prepared if not p.skipped]

        batches = prepared_batches(self.files, self.settings, known=known if reuse else None)
        scanned = self.scanner.scan_batches(to_scan(batches), len(self.files))
        with closing(batches), closing(scanned):
            for results in scanned:
                prepared = in_flight.popleft()
                fresh = iter(results)
                yield [
                    self._repeat(p.path, p.sha256, reusable[p.sha256], p.source)
                    if p.skipped and p.sha256
                    else next(fresh)
                    for p in prepared
                ]

    def _ray_batches(self) -> Generator[list[ScanResult], None, None]:
        from detector.distributed import ray_batches

        reuse = not self.request.rescan
        state = self.scanner.state
        known = frozenset(self.store.history.reusable_digests(state)) if reuse else frozenset()
        for out in ray_batches(self.scanner, self.files, self.engine, known):
            yield self._settle(out, reuse)

    def _settle(self, out: Sequence[ScanResult | Prepared], reuse: bool) -> list[ScanResult]:
        """A batch from the workers as the local scan gives it: content some run (this one's
        earlier batches included) already scanned against the same state is repeated."""
        if not reuse:
            return [r for r in out if isinstance(r, ScanResult)]
        digests = [r.sha256 for r in out]
        reusable = self.store.history.reusable_items([d for d in digests if d], self.scanner.state)
        results = []
        for r in out:
            path = r.path if isinstance(r, Prepared) else r.query
            if r.sha256 and r.sha256 in reusable:
                results.append(self._repeat(path, r.sha256, reusable[r.sha256], r.source))
            elif isinstance(r, Prepared):
                raise StoreError(f"the stored result for {path} is gone")
            else:
                results.append(r)
        return results

    def _repeat(self, path: str, sha256: str, item_id: int, source: Input | None) -> ScanResult:
        """The stored result of an earlier scan of the same content, under this input's name
        and with its source (the same picture found at another URL is another finding)."""
        item = self.store.history.item(item_id)
        return dataclasses.replace(item, query=path, sha256=sha256, status="ok", error=None, source=source)


def _lock(store: Store, wait: float) -> DatabaseLock:
    lock = DatabaseLock(store.path, SCAN, wait)
    lock.__enter__()
    return lock


def _scanner(
    store: Store, request: ScanRequest, models: Models | None, base: Mapping[str, Any] | None
) -> tuple[Scanner, tuple[str, ...]]:
    """The scanner of a request under the settings in force for it on ``store``."""
    found = effective_settings(store.saved_settings.read(), request.overrides, base)
    output = {k: v for k, v in (("top_k", request.top_k), ("min_score", request.min_score)) if v is not None}
    settings = found.settings.replace(**output)
    return Scanner(store, models or Models(settings), settings, mode=request.mode), found.ignored


def _inputs(paths: Sequence[str], done: frozenset[str] = frozenset()) -> list[Input]:
    """What a run scans: the inputs the paths name (files, shards, manifest records), less
    those named in ``done``."""
    return expand_inputs(paths, skip=done)


def _resumable(store: Store, run_id: int | None) -> RunInfo:
    """The run ``resume`` names, or the newest killed or interrupted scan."""
    if run_id is None:
        for run in store.history.runs():
            if run.command == SCAN and run.status in RESUMABLE:
                return run
        raise NotFound("no killed or interrupted scan run to resume")
    run = store.history.run(run_id)
    if run.command != SCAN or run.status not in RESUMABLE:
        raise StoreError(f"run {run_id} is {run.status}, not killed or interrupted: nothing to resume")
    return run
