"""The copyscan command line: parses arguments, calls ``detector``, prints. No engine logic."""

from __future__ import annotations

import csv
import dataclasses
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click

from detector import __version__
from detector.config import Settings, parse_setting, settings_table
from detector.errors import CopyscanError

EXIT_MATCH = 0
EXIT_NO_MATCH = 1
EXIT_ERROR = 2
EXIT_LOCKED = 3  # another copyscan run holds the database
# Where the command line's defaults differ from the library's: a copyscan process decodes in
# worker processes (the library does not start processes unless asked, since Python re-imports
# the caller's main module in each worker).
CLI_DEFAULTS: dict[str, Any] = {"jobs": 0}


@dataclass
class App:
    """What the group options give every command."""

    db: str
    quiet: bool
    overrides: dict[str, Any]  # --set NAME=VALUE, which beat settings stored in the database
    settings: Settings = field(default_factory=Settings)
    _models: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.settings = Settings().replace(**{**CLI_DEFAULTS, **self.overrides})

    def open_store(self, create: bool = False, rehashing: bool = False) -> Any:
        """Open the database; settings it stores (calibrated thresholds) become this run's
        defaults, under any --set. ``rehashing``: a database of another hasher is accepted."""
        from detector.stage1.hashing import HASHER_ID
        from detector.stage2.embedding import embedder_id
        from detector.storage.store import Store

        store = Store.open(
            self.db, hasher=HASHER_ID, embedder=embedder_id(self.settings), create=create, rehashing=rehashing
        )
        stored = {}
        for name, raw in store.saved_settings.read().items():
            if name in self.overrides:
                continue
            try:
                stored[name] = parse_setting(name, raw)
            except (KeyError, ValueError):
                self.say(f"warning: ignoring stored setting {name}={raw!r}")
        self.settings = Settings().replace(**{**CLI_DEFAULTS, **stored, **self.overrides})
        return store

    @property
    def models(self) -> Any:
        if self._models is None:
            from detector.intake.prepare import Models

            self._models = Models(self.settings)
        return self._models

    def progress(self, length: int, label: str) -> Any:
        """A progress bar on stderr (``.update(n)``), only when stderr is a terminal and not
        --quiet; otherwise a silent stand-in."""
        if self.quiet or not sys.stderr.isatty():
            return _no_bar()
        return click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True)

    def say(self, message: str) -> None:
        """A status line on stderr, unless --quiet."""
        if not self.quiet:
            click.echo(message, err=True)


class _SilentBar:
    def update(self, n: int) -> None:
        pass


@contextmanager
def _no_bar() -> Iterator[_SilentBar]:
    yield _SilentBar()


def _parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    names = [name for name, _, _ in settings_table()]
    changes: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in names:
            raise click.BadParameter(
                f"{pair!r}: expected NAME=VALUE with NAME one of: {', '.join(names)}",
                param_hint="--set",
            )
        try:
            changes[name] = parse_setting(name, raw)
        except ValueError as e:
            raise click.BadParameter(f"{pair!r}: {e}", param_hint="--set") from e
    return changes


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_object(App).quiet = True


quiet_option = click.option(
    "-q",
    "--quiet",
    is_flag=True,
    expose_value=False,
    callback=_set_quiet,
    help="No progress bar or status lines on stderr.",
)


wait_option = click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    metavar="SECONDS",
    help="Wait this long for another run holding the database to finish (else exit 3).",
)


@contextmanager
def _locked(app: App, command: str, wait: float) -> Iterator[None]:
    """Hold the database's writer lock; another run holding it exits with status 3."""
    from detector.storage.locking import DatabaseLock, Locked

    try:
        with DatabaseLock(app.db, command, wait):
            yield
    except Locked as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(EXIT_LOCKED)


class _Stopped(BaseException):
    """SIGTERM during a scan: the run is recorded as interrupted, then the process exits."""


def _raise_stopped(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


@contextmanager
def _errors_to_click() -> Iterator[None]:
    """Domain errors become one clear line and exit status 1, never a traceback."""
    try:
        yield
    except CopyscanError as e:
        raise click.ClickException(str(e)) from e


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--db",
    envvar="COPYSCAN_DB",
    default="copyscan.db",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="SQLite database (also from $COPYSCAN_DB).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or status lines on stderr.")
@click.option(
    "--set",
    "set_",
    multiple=True,
    metavar="NAME=VALUE",
    help="Change an engine setting; `copyscan settings` lists them.",
)
@click.version_option(__version__, prog_name="copyscan")
@click.pass_context
def cli(ctx: click.Context, db: str, quiet: bool, set_: tuple[str, ...]) -> None:
    """copyscan: find copies of catalog images in piles of other images.

    Stage 1 finds candidates by pHash/dHash Hamming distance; stage 2 reranks them by
    CNN-embedding cosine and gives each a score in [0, 1] and a verdict.
    """
    ctx.obj = App(db=db, quiet=quiet, overrides=_parse_settings(set_))


@cli.command()
def settings() -> None:
    """List the engine settings with their defaults (change them with --set NAME=VALUE)."""
    for name, default, help_text in settings_table():
        click.echo(f"{name:<26} {default!s:<12} {help_text}")


# --- catalog ---------------------------------------------------------------------------------


@cli.group()
def catalog() -> None:
    """Manage the catalog of protected images."""


@catalog.command("add")
@quiet_option
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--owner", help="Rights holder recorded with these images.")
@wait_option
@click.pass_obj
def catalog_add(app: App, paths: tuple[str, ...], owner: str | None, wait: float) -> None:
    """Index image files, folders (recursively) or list files (.txt/.lst, one path a line).

    Content already in the catalog is skipped, so a killed run can simply be rerun.
    Unusable images are reported on stderr; the run goes on.
    """
    from detector.intake.sources import expand_sources
    from detector.tasks.cataloging import add_to_catalog

    started = time.perf_counter()
    counts: Counter[str] = Counter()
    with _errors_to_click(), _locked(app, "catalog add", wait), app.open_store(create=True) as store:
        files = expand_sources(paths)
        with app.progress(len(files), "indexing") as bar:
            for result in add_to_catalog(store, app.models, files, app.settings, owner=owner):
                bar.update(1)
                counts[result.status] += 1
                if result.error:
                    click.echo(f"error: {result.path}: {result.error}", err=True)
    elapsed = time.perf_counter() - started
    click.echo(f"added {counts['added']}, already in catalog {counts['known']}, errors {counts['error']}")
    app.say(f"{len(files)} files in {elapsed:.1f} s ({len(files) / max(elapsed, 1e-9):.1f} images/s)")


@catalog.command("rehash")
@quiet_option
@click.option(
    "--drop-missing",
    is_flag=True,
    help="Remove from the catalog the images whose file is gone or changed, so the rest can switch.",
)
@wait_option
@click.pass_obj
def catalog_rehash(app: App, drop_missing: bool, wait: float) -> None:
    """Recompute every catalog image's stage-1 codes from its file, after an upgrade changed
    copyscan's hasher (the database is refused until then). Descriptors, owners and scan
    history are kept; a killed run goes on where it stopped. The catalog switches to the new
    codes only when every image has them: images whose file is gone or changed are listed,
    and kept with the old hasher unless --drop-missing."""
    from detector.stage1.hashing import HASHER_ID
    from detector.tasks.rehashing import rehash_catalog

    started = time.perf_counter()
    with _errors_to_click(), _locked(app, "catalog rehash", wait), app.open_store(rehashing=True) as store:
        old = store.rehash.stored_hasher
        if old == HASHER_ID:
            click.echo(f"the catalog already uses hasher {HASHER_ID}: nothing to do")
            return
        with app.progress(store.stats().images, "rehashing") as bar:
            result = rehash_catalog(store, app.settings, drop_missing=drop_missing, progress=bar.update)
    for cid, path, why in result.failed:
        click.echo(f"error: catalog image {cid}: {path}: {why}", err=True)
    elapsed = time.perf_counter() - started
    click.echo(
        f"rehashed {result.rehashed} (and {result.staged_before} from an earlier run) of "
        f"{result.images} catalog images, {len(result.failed)} unreadable or changed, "
        f"{result.dropped} removed"
    )
    rate = result.rehashed / max(elapsed, 1e-9)
    app.say(f"{result.rehashed} images in {elapsed:.1f} s ({rate:.1f} images/s)")
    if not result.switched:
        raise click.ClickException(
            f"the catalog keeps hasher {old}: restore those files and run again, or add --drop-missing"
        )
    click.echo(f"the catalog now uses hasher {HASHER_ID}")


@catalog.command("list")
@click.option("--owner", help="Only this owner's images.")
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl"]), default="table", show_default=True)
@click.pass_obj
def catalog_list(app: App, owner: str | None, fmt: str) -> None:
    """List catalog images: id, owner, size, pHash, path."""
    with _errors_to_click(), app.open_store() as store:
        for e in store.catalog.list(owner=owner):
            if fmt == "jsonl":
                click.echo(
                    json.dumps(
                        {
                            "id": e.id,
                            "path": e.path,
                            "owner": e.owner,
                            "width": e.width,
                            "height": e.height,
                            "sha256": e.sha256,
                            "phash": f"{e.phash:016x}",
                            "dhash": f"{e.dhash:016x}",
                            "added_at": e.added_at,
                        }
                    )
                )
            else:
                size = f"{e.width}x{e.height}"
                click.echo(f"{e.id:>6}  {e.owner or '-':<16} {size:>11}  {e.phash:016x}  {e.path}")


@catalog.command("stats")
@click.pass_obj
def catalog_stats(app: App) -> None:
    """Counts of the catalog: images, owners, runs, database size and identities."""
    with _errors_to_click(), app.open_store() as store:
        s = store.stats()
    click.echo(f"database        {app.db} ({s.file_bytes / 1e6:.1f} MB, schema v{s.schema_version})")
    click.echo(f"catalog images  {s.images}")
    click.echo(f"scan runs       {s.runs}")
    click.echo(f"hasher          {s.hasher}")
    click.echo(f"embedder        {s.embedder}")
    for owner, n in s.owners.items():
        click.echo(f"owner           {owner or '(none)'}: {n}")


@catalog.command("remove")
@click.argument("targets", nargs=-1)
@click.option("--owner", help="Remove every image of this owner.")
@click.pass_obj
def catalog_remove(app: App, targets: tuple[str, ...], owner: str | None) -> None:
    """Remove catalog images by id or by stored path, or all of one --owner."""
    if not targets and owner is None:
        raise click.UsageError("name ids or paths to remove, or --owner")
    ids = [int(t) for t in targets if t.isdigit()]
    paths = [t for t in targets if not t.isdigit()]
    with _errors_to_click(), _locked(app, "catalog remove", 0), app.open_store() as store:
        n = store.catalog.remove(ids=ids, paths=paths, owner=owner)
    click.echo(f"removed {n}")


# --- scan / check / dedupe ------------------------------------------------------------------


def _scan_settings(app: App, top_k: int | None, min_score: float | None) -> Settings:
    changes: dict[str, Any] = {}
    if top_k is not None:
        changes["top_k"] = top_k
    if min_score is not None:
        changes["min_score"] = min_score
    return app.settings.replace(**changes)


class _Writer:
    """Writes scan results in one format to one stream."""

    def __init__(self, fmt: str, out: IO[str]) -> None:
        from detector.outputs import records as report

        self.fmt = fmt
        self.out = out
        self.report = report
        self.csv = csv.writer(out) if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(report.CSV_COLUMNS)

    def write(self, result: Any) -> None:
        if self.fmt == "jsonl":
            self.out.write(json.dumps(self.report.scan_record(result), ensure_ascii=False) + "\n")
        elif self.csv is not None:
            self.csv.writerows(self.report.csv_rows(result))
        else:
            self.out.write("\n".join(self.report.table_lines(result)) + "\n")
        self.out.flush()


def _scan_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option(
                "--format",
                "fmt",
                type=click.Choice(["jsonl", "csv", "table"]),
                default="table",
                show_default=True,
                help="Output format on stdout.",
            ),
            click.option("--top-k", type=click.IntRange(min=1), help="Most matches per image [default: 5]."),
            click.option(
                "--min-score",
                type=click.FloatRange(0, 1),
                help="Lowest score listed; 0 lists every reranked candidate "
                "[default: the near-duplicate threshold].",
            ),
            click.option(
                "--mode",
                type=click.Choice(["fast", "thorough"]),
                default="fast",
                show_default=True,
                help="fast: CNN only where stage 1 found candidates; thorough: CNN on every image.",
            ),
        ]
    ):
        f = option(f)
    return f


@cli.command()
@quiet_option
@click.argument("paths", nargs=-1, type=click.Path())
@_scan_options
@click.option(
    "--jsonl",
    "jsonl_path",
    type=click.Path(dir_okay=False),
    help="Also write JSON Lines records to this file.",
)
@click.option(
    "--rescan",
    is_flag=True,
    help="Scan every image again, even content an earlier run scanned against the same catalog "
    "and settings (by default its stored results are repeated).",
)
@click.option(
    "--resume",
    type=int,
    is_flag=False,
    flag_value=0,
    default=None,
    metavar="[RUN]",
    help="Go on with a run that was killed or interrupted (the newest such run without RUN), "
    "with its paths and settings; the images it recorded are not scanned again.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this process; ray: Ray Data workers (pip install 'copyscan[distributed]'), "
    "which also read Parquet shards (columns path, bytes). Same results either way.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="--engine ray: scanner workers, one CPU each [default: every local or cluster CPU].",
)
@click.option(
    "--ray-address",
    envvar="RAY_ADDRESS",
    help="--engine ray: the address of an existing Ray cluster [default: $RAY_ADDRESS, "
    "else a local one is started].",
)
@click.option(
    "--parquet-out",
    type=click.Path(dir_okay=False),
    help="Also write the results to this Parquet file (needs pyarrow).",
)
@wait_option
@click.pass_obj
def scan(
    app: App,
    paths: tuple[str, ...],
    fmt: str,
    top_k: int | None,
    min_score: float | None,
    mode: str,
    jsonl_path: str | None,
    rescan: bool,
    resume: int | None,
    engine: str,
    workers: int | None,
    ray_address: str | None,
    parquet_out: str | None,
    wait: float,
) -> None:
    """Scan images, folders or list files against the catalog.

    Writes one record per image (also for no match and for errors), matches best first,
    and records the run in the database: every item by content hash, every match with its
    evidence. Content an earlier run scanned against the same catalog and settings is not
    decoded again (--rescan to force it). One run per database at a time.

    Exit status: 0 the run completed (whatever it found); 1 it could not run; 2 bad usage;
    3 another run holds the database; 130 / 143 stopped by SIGINT / SIGTERM (the run is
    recorded as interrupted: --resume goes on with it).
    """
    from detector.intake.sources import expand_sources
    from detector.scan.scanner import Scanner

    if resume is None and not paths:
        raise click.UsageError("name images, folders or list files to scan, or --resume [RUN]")
    if resume is not None and paths:
        raise click.UsageError("--resume takes the paths of the run it resumes: name none")
    if engine == "local" and (workers is not None or ray_address):
        raise click.UsageError("--workers and --ray-address go with --engine ray")
    if engine == "local" and any(p.lower().endswith(".parquet") for p in paths):
        raise click.UsageError("Parquet shards are read by --engine ray")
    started = time.perf_counter()
    counts: Counter[str] = Counter()
    with _errors_to_click(), _locked(app, "scan", wait), app.open_store() as store:
        killed = store.history.mark_killed()
        resumed = None
        if resume is not None:
            resumed = _run_to_resume(store, resume or None)
            paths, mode, top_k, min_score = _resumed_args(app, resumed.args)
        elif killed:
            app.say(f"note: run {killed[-1]} was killed before it finished; scan --resume goes on with it")
        settings = _scan_settings(app, top_k, min_score)
        scanner = Scanner(store, app.models, settings, mode=mode)
        done: frozenset[str] = frozenset()
        if resumed is not None:
            if resumed.state != scanner.state:
                raise click.ClickException(
                    f"the catalog or the settings changed since run {resumed.id} started; "
                    "its results would not be comparable: start a new scan instead"
                )
            done = frozenset(store.history.scanned_paths(resumed.id))
        if engine == "ray":
            from detector.distributed import crawl_items, require

            require("ray.data")  # before the run is recorded: no run left behind without Ray
            files: Sequence[Any] = crawl_items(paths, skip=done)
        else:
            files = [f for f in expand_sources(paths) if f not in done]
        if resumed is not None:
            run_id = resumed.id
            store.history.reopen(run_id)
        else:
            run_id = store.history.start(
                "scan",
                {
                    "paths": list(paths),
                    "mode": mode,
                    "top_k": settings.top_k,
                    "min_score": min_score,
                    "set": dict(app.overrides),
                    "images": len(files),
                },
                mode=mode,
                state=scanner.state,
            )
        writers: list[Any] = [_Writer(fmt, sys.stdout)]
        extra = open(jsonl_path, "a" if resumed else "w", encoding="utf-8") if jsonl_path else None
        if parquet_out is not None:
            from detector.distributed import ParquetResults

            writers.append(ParquetResults(parquet_out))
        previous = signal.signal(signal.SIGTERM, _raise_stopped)
        status = "running"
        try:
            if extra is not None:
                writers.append(_Writer("jsonl", extra))
            if engine == "ray":
                from detector.distributed import Engine, scan_distributed

                where = Engine(workers=workers, address=ray_address or None)
                results = scan_distributed(scanner, files, where, run_id=run_id, reuse=not rescan)
            else:
                results = scanner.scan(files, run_id=run_id, reuse=not rescan)
            with app.progress(len(files), "scanning") as bar:
                for result in results:
                    bar.update(1)
                    counts[result.outcome] += 1
                    counts["reused"] += result.reused_from is not None
                    for w in writers:
                        w.write(result)
            status = "finished"
        except (KeyboardInterrupt, _Stopped) as e:
            status = "interrupted"
            code = 143 if isinstance(e, _Stopped) else 130
        finally:
            signal.signal(signal.SIGTERM, previous)
            if extra is not None:
                extra.close()
            for w in writers[1:]:
                if hasattr(w, "close"):
                    w.close()
            if status != "running":  # any other failure leaves it running: the next scan marks it killed
                store.history.finish(run_id, status)
        elapsed = time.perf_counter() - started
        scanned = sum(counts[k] for k in ("copy", "near-duplicate", "no match", "error"))
        reused = f" ({counts['reused']} unchanged since an earlier run)" if counts["reused"] else ""
        line = (
            f"run {run_id}{' (resumed)' if resumed else ''}: {scanned} images{reused}, "
            f"{counts['copy']} copies, {counts['near-duplicate']} near-duplicates, "
            f"{counts['no match']} no match, {counts['error']} errors in {elapsed:.1f} s "
            f"({scanned / max(elapsed, 1e-9):.1f} images/s)"
        )
        if status == "interrupted":
            click.echo(f"{line}; interrupted: copyscan scan --resume {run_id} goes on", err=True)
            sys.exit(code)
    app.say(line)


def _run_to_resume(store: Any, run_id: int | None) -> Any:
    """The run ``--resume`` names, or the newest killed or interrupted one."""
    from detector.errors import NotFound

    if run_id is None:
        for run in store.history.runs():
            if run.command == "scan" and run.status in ("killed", "interrupted"):
                return run
        raise NotFound("no killed or interrupted scan run to resume")
    run = store.history.run(run_id)
    if run.command != "scan" or run.status not in ("killed", "interrupted"):
        raise click.ClickException(
            f"run {run_id} is {run.status}, not killed or interrupted: nothing to resume"
        )
    return run


def _resumed_args(app: App, args: dict[str, Any]) -> tuple[tuple[str, ...], str, int | None, float | None]:
    """The paths, mode, --top-k and --min-score a run was started with; its --set settings
    become this process's too (any given now are replaced)."""
    app.overrides = dict(args.get("set") or {})
    app.settings = app.settings.replace(**app.overrides)
    return (
        tuple(args.get("paths") or ()),
        str(args.get("mode") or "fast"),
        args.get("top_k"),
        args.get("min_score"),
    )


@cli.command()
@quiet_option
@click.argument("image", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), default="table", show_default=True)
@click.option("--top-k", type=click.IntRange(min=1), help="Most matches listed [default: 5].")
@click.option("--min-score", type=click.FloatRange(0, 1), help="Lowest score listed.")
@click.option("--mode", type=click.Choice(["fast", "thorough"]), default="fast", show_default=True)
@click.pass_obj
def check(app: App, image: str, fmt: str, top_k: int | None, min_score: float | None, mode: str) -> None:
    """Check one image against the catalog, moderator style.

    Exit status: 0 a copy or near-duplicate was found, 1 no match, 2 the image or the
    database could not be used (like grep).
    """
    from detector.scan.scanner import Scanner

    try:
        with app.open_store() as store:
            settings = _scan_settings(app, top_k, min_score)
            result = next(Scanner(store, app.models, settings, mode=mode).scan([image]))
    except CopyscanError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(EXIT_ERROR)
    _Writer(fmt, sys.stdout).write(result)
    if result.status == "error":
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_MATCH if result.flagged else EXIT_NO_MATCH)


@cli.command()
@quiet_option
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), default="table", show_default=True)
@click.pass_obj
def dedupe(app: App, paths: tuple[str, ...], fmt: str) -> None:
    """Find groups of duplicate images inside one collection (no catalog needed)."""
    from detector.intake.sources import expand_sources
    from detector.tasks.dedupe import find_duplicates

    files = expand_sources(paths)
    with _errors_to_click(), app.progress(len(files), "reading") as bar:
        result = find_duplicates(files, app.models, app.settings, progress=bar.update)
    for path, error in result.errors:
        click.echo(f"error: {path}: {error}", err=True)
    for n, group in enumerate(result.groups, 1):
        if fmt == "jsonl":
            click.echo(
                json.dumps(
                    {
                        "group": n,
                        "paths": list(group.paths),
                        "pairs": [
                            {
                                "a": p.a,
                                "b": p.b,
                                "hamming": p.hamming,
                                "cosine": p.cosine,
                                "score": p.score,
                                "verdict": p.verdict,
                            }
                            for p in group.pairs
                        ],
                    },
                    ensure_ascii=False,
                )
            )
        else:
            click.echo(f"group {n} ({len(group.paths)} images)")
            for path in group.paths:
                click.echo(f"    {path}")
    app.say(f"{result.images} images, {len(result.groups)} duplicate groups, {len(result.errors)} errors")


# --- history and reports ---------------------------------------------------------------------


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Newest runs shown.")
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl"]), default="table", show_default=True)
@click.pass_obj
def runs(app: App, limit: int, fmt: str) -> None:
    """Scan runs recorded in the database, newest first: status, times and counts."""
    with _errors_to_click(), app.open_store() as store:
        found = store.history.runs(limit)
    for r in found:
        if fmt == "jsonl":
            click.echo(json.dumps(dataclasses.asdict(r), ensure_ascii=False))
            continue
        counts = "-" if r.items is None else f"{r.items} images, {r.matched} flagged, {r.errors} errors"
        click.echo(
            f"{r.id:>5}  {r.status:<11} {r.started_at}  {r.finished_at or '-':<25}  "
            f"{r.mode or '-':<8} {counts}"
        )


@cli.command("report")
@click.argument("run", type=int, required=False)
@click.option(
    "--html", "html_dir", type=click.Path(file_okay=False), help="Write an HTML report folder here."
)
@click.option(
    "--csv", "csv_path", type=click.Path(dir_okay=False), help="Write the flagged pairs as CSV here."
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the report as JSON here.")
@click.option("--new", "new_only", is_flag=True, help="Only pairs that no earlier run flagged.")
@click.pass_obj
def report_command(
    app: App,
    run: int | None,
    html_dir: str | None,
    csv_path: str | None,
    json_path: str | None,
    new_only: bool,
) -> None:
    """Write the infringement report of a scan run (the newest without RUN).

    --html DIR: a self-contained folder (index.html and thumbnails) to open offline: for each
    catalog image its copies side by side, the matched region outlined, sortable and
    filterable. --csv and --json for machines. '-' writes CSV or JSON to stdout.
    """
    from detector.outputs import report as records

    if not (html_dir or csv_path or json_path):
        raise click.UsageError("name at least one of --html DIR, --csv FILE, --json FILE")
    with _errors_to_click(), app.open_store() as store:
        found = store.reports.load(run, new_only=new_only)
    if html_dir:
        from detector.outputs.html import write_html

        with _errors_to_click():
            index = write_html(found, Path(html_dir), app.settings)
        app.say(f"HTML report written to {index}")
    if csv_path:
        if csv_path == "-":
            records.report_csv(found, sys.stdout)
        else:
            with open(csv_path, "w", encoding="utf-8", newline="") as out:
                records.report_csv(found, out)
    if json_path:
        with click.open_file(json_path, "w", encoding="utf-8") as out:
            json.dump(records.report_json(found), out, ensure_ascii=False, indent=1)
            out.write("\n")
    new = sum(r.new for r in found.rows)
    app.say(
        f"run {found.run.id} ({found.run.status}): {len(found.rows)} flagged pairs"
        f"{' new since earlier runs' if new_only else f', {new} new since earlier runs'}"
    )


# --- serve -------------------------------------------------------------------------------------


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8700, show_default=True)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0.001),
    default=20,
    show_default=True,
    help="Largest request body accepted (413 above).",
)
@click.pass_obj
def serve(app: App, host: str, port: int, max_upload_mb: float) -> None:
    """Serve the HTTP API and the review page (FastAPI on uvicorn).

    POST /v1/check, POST /v1/catalog, DELETE /v1/catalog/ID, DELETE /v1/catalog?external_id=,
    GET /v1/health, /v1/stats, /v1/checks, POST /v1/checks/ID/decision, GET /review;
    the OpenAPI description is at /openapi.json. The model and the index load once.
    """
    import uvicorn

    from detector.server.service import Engine, create_app
    from detector.stage1.hashing import HASHER_ID
    from detector.stage2.embedding import embedder_id

    with _errors_to_click(), app.open_store(create=True):
        pass  # creates or upgrades the database and applies its stored settings
    with _errors_to_click():
        engine = Engine(Path(app.db), app.settings, app.models, HASHER_ID, embedder_id(app.settings))
        engine.scanner("fast")  # load the index now, not on the first request
        _ = app.models.embedder  # the model is built on first use: build it now
    app.say(f"copyscan serving {app.db} on http://{host}:{port} (review page: /review)")
    uvicorn.run(
        create_app(engine, int(max_upload_mb * 1_000_000)),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
    )


def main() -> None:
    cli(prog_name="copyscan")


# --- evaluate --------------------------------------------------------------------------------


@cli.command()
@quiet_option
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Catalog images to attack, one copy per attack family each.",
)
@click.option(
    "--held-out",
    type=click.IntRange(min=0),
    help="Other catalog images hidden from the search and attacked the same way, as "
    "distractors [default: as many as --sample when no --distractors are given, else 0].",
)
@click.option(
    "--distractors",
    "distractor_paths",
    multiple=True,
    type=click.Path(exists=True),
    help="Images that are not copies of the catalog (files, folders, list files); repeatable.",
)
@click.option("--families", help="Comma-separated attack families [default: all].")
@click.option("--mode", type=click.Choice(["fast", "thorough", "both"]), default="both", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample and the attacks.")
@click.option(
    "--keep",
    "keep_dir",
    type=click.Path(file_okay=False),
    help="Write the attacked copies into this folder and keep them.",
)
@click.option(
    "--calibrate",
    is_flag=True,
    help="Store thresholds in the database so scan's verdicts reach the precisions below.",
)
@click.option(
    "--precision",
    type=click.FloatRange(0.5, 1.0),
    default=0.99,
    show_default=True,
    help="Precision the 'copy' verdict is calibrated to.",
)
@click.option(
    "--near-precision",
    type=click.FloatRange(0.5, 1.0),
    default=0.95,
    show_default=True,
    help="Precision the 'near-duplicate' verdict is calibrated to.",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_obj
def evaluate(
    app: App,
    sample: int,
    held_out: int | None,
    distractor_paths: tuple[str, ...],
    families: str | None,
    mode: str,
    seed: int,
    keep_dir: str | None,
    calibrate: bool,
    precision: float,
    near_precision: float,
    fmt: str,
) -> None:
    """Attack catalog images, scan the copies mixed with distractors, and measure.

    Prints micro average precision, recall at 99 % and 95 % precision (overall and per
    attack family) and the share of images the CNN ran on. With --calibrate, stores the
    score thresholds that reach --precision and --near-precision; scan and check then use
    them (--set still wins).
    """
    import tempfile
    from dataclasses import asdict
    from pathlib import Path

    from detector.intake.sources import expand_sources
    from detector.tasks import evaluation as ev
    from detector.tasks.attacks import FAMILIES

    chosen = tuple(f.strip() for f in families.split(",")) if families else FAMILIES
    unknown = sorted(set(chosen) - set(FAMILIES))
    if unknown:
        raise click.BadParameter(
            f"unknown: {', '.join(unknown)}; known: {', '.join(FAMILIES)}", param_hint="--families"
        )
    if held_out is None:
        held_out = 0 if distractor_paths else sample
    modes = ("fast", "thorough") if mode == "both" else (mode,)
    with _errors_to_click(), app.open_store() as store, tempfile.TemporaryDirectory() as tmp:
        dest = Path(keep_dir) if keep_dir else Path(tmp)
        size = store.stats().images
        if size < 2:
            raise click.ClickException("the catalog needs at least 2 images to evaluate")
        if sample + held_out > size:
            raise click.ClickException(
                f"--sample {sample} plus --held-out {held_out} exceed the catalog's {size} images"
            )
        distractors = expand_sources(distractor_paths)
        with app.progress(sample + held_out, "attacking") as bar:
            queries = ev.build_queries(
                store,
                app.settings,
                dest,
                sample=sample,
                held_out=held_out,
                distractor_paths=distractors,
                families=chosen,
                seed=seed,
                progress=bar.update,
            )
        for skipped in queries.skipped:
            click.echo(f"skipped: {skipped}", err=True)
        with app.progress(len(queries.queries), "scanning") as bar:
            figures, predictions = ev.evaluate(
                store, app.models, app.settings, queries, modes=modes, progress=bar.update
            )
        stored = None
        if calibrate:
            last = figures[-1]  # thorough when both ran: its pairs include fast mode's
            stored = ev.calibrate(predictions[last.mode], max(last.copies, 1), precision, near_precision)
            if stored is None:
                raise click.ClickException(f"no threshold reaches {precision:.0%} precision; nothing stored")
            store.saved_settings.save(
                {
                    "copy_threshold": stored.copy_threshold,
                    "near_duplicate_threshold": stored.near_duplicate_threshold,
                }
            )
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "evaluations": [asdict(f) for f in figures],
                    "calibration": asdict(stored) if stored else None,
                },
                indent=2,
            )
        )
        return
    for f in figures:
        click.echo(
            f"mode {f.mode}: {f.copies} attacked copies, {f.distractors} distractors, "
            f"{f.errors} errors, {f.seconds:.1f} s scanning"
        )
        click.echo(f"  micro AP                {f.micro_ap:.3f}")
        click.echo(f"  recall at 99% precision {f.recall_at_99:.3f}  (score >= {_num(f.threshold_99)})")
        click.echo(f"  recall at 95% precision {f.recall_at_95:.3f}  (score >= {_num(f.threshold_95)})")
        click.echo(f"  reached stage 2         {f.candidate_recall:.3f} of copies")
        click.echo(
            f"  CNN ran on              {f.cnn_share_copies:.0%} of copies, "
            f"{f.cnn_share_distractors:.0%} of distractors"
        )
        click.echo(f"  {'family':<12} {'copies':>6} {'R@99%P':>7} {'R@95%P':>7} {'stage 2':>8}")
        for fam in f.families:
            click.echo(
                f"  {fam.family:<12} {fam.copies:>6} {fam.recall_at_99:>7.3f} "
                f"{fam.recall_at_95:>7.3f} {fam.candidate_recall:>8.3f}"
            )
    if stored is not None:
        click.echo(
            f"stored: copy_threshold={stored.copy_threshold:.4f} "
            f"({stored.copy_precision:.0%} precision, recall {stored.recall_copy:.3f}), "
            f"near_duplicate_threshold={stored.near_duplicate_threshold:.4f} "
            f"({stored.near_duplicate_precision:.0%} precision, recall {stored.recall_near_duplicate:.3f})"
        )


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
