"""``copyscan scan``, ``check`` and ``dedupe``."""

from __future__ import annotations

import csv
import dataclasses
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import IO, Any

import click
from click.core import ParameterSource

from cli.app import (
    CLI_DEFAULTS,
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_MATCH,
    EXIT_NO_MATCH,
    EXIT_PARTIAL,
    App,
    errors_to_click,
    exit_3_when_locked,
    quiet_option,
    wait_option,
)
from cli.listing import Column, Listing, check_output, listing, open_output, output_options
from detector.config import RUNTIME
from detector.errors import CopyscanError


class _Writer:
    """Writes scan results in one of the listing formats to one stream, each result as soon as
    it comes: JSON Lines and JSON records of the command-line contract, the report module's
    CSV rows, or a table of one row per match (one for an image without match or an error)."""

    def __init__(
        self, fmt: str, out: IO[str], owned: bool = False, one: bool = False, queries: int = 0
    ) -> None:
        from detector.outputs import records as report

        self.fmt = fmt
        self.out = out
        self.owned = owned  # closed with the writer
        self.run_id: int | None = None  # the run's id, for CSV rows
        self.report = report
        self.csv = csv.writer(out) if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(report.CSV_COLUMNS)
        columns = _scan_table(queries)
        self.listing = None if self.csv else Listing(fmt, out, columns, one=one, stream=not one)

    def write(self, result: Any) -> None:
        if self.csv is not None:
            self.csv.writerows(self.report.csv_rows(result, self.run_id))
        elif self.listing is not None and self.listing.flat:
            for row in _table_rows(result):
                self.listing.write(row)
        elif self.listing is not None:
            self.listing.write(self.report.scan_record(result))
        self.out.flush()

    def close(self) -> None:
        try:
            if self.listing is not None:
                self.listing.close()
        finally:
            if self.owned:
                self.out.close()


def _scan_table(query_width: int) -> tuple[Column, ...]:
    """The table of scan and check: one row per match; ``query_width``: the query column's
    width (a table written as results come cannot wait for the widest)."""
    return (
        Column("verdict", width=len("near-duplicate")),
        Column("score", width=5, right=True, text="{:.3f}".format),
        Column("cosine", width=6, right=True, text="{:.3f}".format),
        Column("hamming", "HAM", width=3, right=True),
        Column("query", width=query_width),
        Column("catalog"),
    )


def _table_rows(r: Any) -> list[dict[str, Any]]:
    """Table rows of one result: a match each (its verdict, scores, the query and '#id path
    [owner]' of the catalog image), or one row saying 'no match' or 'error' (and why)."""
    if r.status == "error":
        return [{"verdict": "error", "query": r.query, "catalog": r.error or ""}]
    if not r.matches:
        return [{"verdict": "no match", "query": r.query}]
    return [
        {
            "verdict": m.verdict,
            "score": m.score,
            "cosine": m.cosine,
            "hamming": m.hamming,
            "query": r.query,
            "catalog": f"#{m.catalog_id} {m.catalog_path}" + (f" [{m.owner}]" if m.owner else ""),
        }
        for m in r.matches
    ]


def _query_width(files: Sequence[Any]) -> int:
    """The query column's width for a run's files: the longest path, within reason."""
    return min(max((len(f) for f in files if isinstance(f, str)), default=0), 80)


def _scan_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            output_options,
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


class _Stopped(BaseException):
    """SIGTERM during a scan: the run is recorded as interrupted, then the process exits."""


def _raise_stopped(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


@click.command()
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
    type=click.IntRange(min=0, max=2**63 - 1),
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
@click.pass_context
def scan(
    ctx: click.Context,
    paths: tuple[str, ...],
    fmt: str,
    output: str,
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
    decoded again (--rescan to force it). One run per database at a time. Paths are made
    absolute; every option is stored with the run, and --resume goes on with them (writing
    again what a broken pipe or a full disk kept from the outputs).

    Exit status: 0 every image scanned; 4 the run completed but some images could not be
    used (the summary says how many); 1 it could not run or stopped on a failure (a missing
    input, an unwritable output, a full disk: the run is interrupted and --resume goes on);
    2 bad usage; 3 another run holds the database; 130 / 143 stopped by SIGINT / SIGTERM.
    """
    from detector.runs import ScanRequest, ScanRun

    app: App = ctx.obj
    if resume is None and not paths:
        raise click.UsageError("name images, folders or list files to scan, or --resume [RUN]")
    runtime = {k: v for k, v in app.overrides.items() if k in RUNTIME}  # a resume may set them again
    if resume is not None:
        flags = {p.name: p.opts[0] for p in ctx.command.params}
        given = [flags[n] for n in _RUN_OPTIONS if _given(ctx, n)]
        if paths or given:
            dropped = ", ".join([*(["PATHS"] if paths else []), *given])
            raise click.UsageError(f"--resume goes on with the run's own paths and options: drop {dropped}")
    if engine == "local" and (workers is not None or ray_address):
        raise click.UsageError("--workers and --ray-address go with --engine ray")
    started = time.perf_counter()
    counts: Counter[str] = Counter()
    with errors_to_click(), app.open_store() as store:
        options = {
            "format": fmt,
            "output": None if output == "-" else os.path.abspath(output),
            "jsonl": None if jsonl_path is None else os.path.abspath(jsonl_path),
            "parquet_out": None if parquet_out is None else os.path.abspath(parquet_out),
            "engine": engine,
            "workers": workers,
            "ray_address": ray_address or None,
        }
        if resume is not None:
            stored = store.history.run(resume).args if resume else _newest_resumable(store)
            changed = sorted(
                k
                for k, v in app.overrides.items()
                if k not in RUNTIME and (stored.get("set") or {}).get(k) != v
            )
            if changed:
                raise click.UsageError(
                    f"--resume goes on with the run's own settings: drop --set {', '.join(changed)}"
                )
            chosen = {n: options[n] for n in _WHERE if ctx.get_parameter_source(n) != ParameterSource.DEFAULT}
            options = {**options, **stored, **chosen}
        cluster = _cluster(options)
        outputs = _Outputs(options)  # checked before the run is recorded: a bad path costs no run
        with exit_3_when_locked():
            if resume is not None:
                run = ScanRun.resume(
                    store, resume or None, base=CLI_DEFAULTS, engine=cluster, wait=wait, runtime=runtime
                )
            else:
                request = ScanRequest(tuple(paths), mode, top_k, min_score, rescan, app.overrides, options)
                run = ScanRun.start(store, request, base=CLI_DEFAULTS, engine=cluster, wait=wait)
        run.scanner.models.loading = app.loading_model  # a status line while the CNN loads
        for note in run.notes:
            app.say(f"warning: {note}")
        if run.killed and not run.resumed:
            app.say(
                f"note: run {run.killed[-1]} was killed before it finished; scan --resume goes on with it"
            )
        previous = signal.signal(signal.SIGTERM, _raise_stopped)
        code, failure = 0, ""
        try:
            with run, app.progress(len(run.files), "scanning") as bar:
                outputs.queries(run.files)
                outputs.open(run)
                for result in run.results():
                    bar.update(1)
                    counts[result.outcome] += 1
                    counts["reused"] += result.reused_from is not None
                    outputs.write(result)
        except (KeyboardInterrupt, _Stopped) as e:
            code = 143 if isinstance(e, _Stopped) else 130
        except OSError as e:  # an output that broke: a closed pipe, a full disk, a lost folder
            code, failure = EXIT_FAILED, f"cannot write the output: {e.strerror or e}"
            if isinstance(e, BrokenPipeError):
                _quiet_stdout()
        finally:
            signal.signal(signal.SIGTERM, previous)
            outputs.close()
        elapsed = time.perf_counter() - started
        scanned = sum(counts[k] for k in ("copy", "near-duplicate", "no match", "error"))
        reused = f" ({counts['reused']} unchanged since an earlier run)" if counts["reused"] else ""
        line = (
            f"run {run.id}{' (resumed)' if run.resumed else ''}: {scanned} images{reused}, "
            f"{counts['copy']} copies, {counts['near-duplicate']} near-duplicates, "
            f"{counts['no match']} no match, {counts['error']} unusable in {elapsed:.1f} s "
            f"({scanned / max(elapsed, 1e-9):.1f} images/s)"
        )
        if code:
            why = f"; {failure}" if failure else ""
            click.echo(f"{line}; interrupted{why}: copyscan scan --resume {run.id} goes on", err=True)
            sys.exit(code)
        unusable = store.history.run(run.id).errors or 0  # the whole run's, resumed parts included
    if unusable:
        click.echo(f"{line}; {unusable} images of the run could not be used (exit status 4)", err=True)
        sys.exit(EXIT_PARTIAL)
    app.say(line)


# Options a run keeps: --resume takes them from the run, not from the command line. Where it
# runs (--engine, --workers, --ray-address) changes no result: a resume may choose again.
_RUN_OPTIONS = ("fmt", "output", "top_k", "min_score", "mode", "jsonl_path", "rescan", "parquet_out")
_WHERE = ("engine", "workers", "ray_address")


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE


def _newest_resumable(store: Any) -> dict[str, Any]:
    """The options of the run ``--resume`` will pick: the newest killed or interrupted scan,
    or one still marked running (its process died; the resume marks it killed first)."""
    for run in store.history.runs():
        if run.command == "scan" and run.status in ("killed", "interrupted", "running"):
            return dict(run.args)
    return {}


def _cluster(options: dict[str, Any]) -> Any:
    """Where the run scans: None for this process, or the Ray cluster its options name."""
    if options.get("engine") != "ray":
        return None
    from detector.distributed import RayCluster, require

    require("ray.data")  # before the run is recorded: no run left behind without Ray
    return RayCluster(workers=options.get("workers"), address=options.get("ray_address"))


class _Outputs:
    """Where a run's records go: the run's format to stdout or to its -o file, and the files it
    names. Files are checked before the run starts and opened (emptied) once it has: a run
    refused at its start leaves the last run's files as they were. A resumed run writes each
    file again from every result it recorded, and stdout gets the results that never reached it."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.files: list[Any] = []
        self.fmt = str(options.get("format") or "table")
        self.stdout: _Writer | None = None
        for path in (options.get("output"), options.get("jsonl"), options.get("parquet_out")):
            check_output(path)
        if options.get("parquet_out"):
            try:
                import pyarrow.parquet  # noqa: F401  (ParquetResults needs it)
            except ImportError as e:
                need = "--parquet-out needs pyarrow: pip install 'copyscan[parquet]'"
                raise click.ClickException(need) from e

    def queries(self, files: Sequence[Any]) -> None:
        """The run has started and its files are known: every output is opened, the writer in
        the run's format first (a table's query column as wide as their paths)."""
        main = open_output(self.options.get("output"))
        writer = _Writer(self.fmt, main, owned=main is not sys.stdout, queries=_query_width(files))
        if main is sys.stdout:
            self.stdout = writer
        else:
            self.files.append(writer)
        jsonl = self.options.get("jsonl")
        if jsonl:
            self.files.append(_Writer("jsonl", open_output(jsonl), owned=True))
        parquet = self.options.get("parquet_out")
        if parquet:
            from detector.outputs.parquet import ParquetResults

            try:
                self.files.append(ParquetResults(parquet))
            except OSError as e:
                raise click.ClickException(f"cannot write {parquet}: {e.strerror or e}") from e

    def open(self, run: Any) -> None:
        for w in (self.stdout, *self.files):
            if isinstance(w, _Writer):
                w.run_id = run.id
        if run.resumed:
            for result in run.recorded() if self.files else ():
                for w in self.files:
                    w.write(result)
            for result in run.backlog() if self.stdout else ():
                self.stdout.write(result)

    def write(self, result: Any) -> None:
        if self.stdout is not None:
            self.stdout.write(result)
        for w in self.files:
            w.write(result)

    def close(self) -> None:
        for w in [self.stdout, *self.files] if self.stdout else self.files:
            try:
                w.close()
            except OSError:
                pass  # already reported by the write that failed


def _quiet_stdout() -> None:
    """After a broken pipe: nothing more goes to stdout (not even Python's last flush)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


@click.command()
@quiet_option
@click.argument("image", type=click.Path())
@output_options
@click.option("--top-k", type=click.IntRange(min=1), help="Most matches listed [default: 5].")
@click.option("--min-score", type=click.FloatRange(0, 1), help="Lowest score listed.")
@click.option("--mode", type=click.Choice(["fast", "thorough"]), default="fast", show_default=True)
@click.pass_obj
def check(
    app: App, image: str, fmt: str, output: str, top_k: int | None, min_score: float | None, mode: str
) -> None:
    """Check one image against the catalog, moderator style.

    Writes the image's record as scan does (json: the one object). Exit status: 0 a copy or
    near-duplicate was found, 1 no match, 2 the image, the database or the output could not
    be used (like grep).
    """
    from detector.scan.scanner import Scanner

    try:
        out = open_output(output)
        with app.open_store(readonly=True) as store:
            scanner = Scanner(store, app.models, app.settings, mode=mode).reporting(top_k, min_score)
            result = next(scanner.scan([image]))
        writer = _Writer(fmt, out, owned=out is not sys.stdout, one=True)
        writer.write(result)
        writer.close()
    except click.ClickException as e:
        click.echo(f"Error: {e.message}", err=True)
        sys.exit(EXIT_ERROR)
    except CopyscanError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(EXIT_ERROR)
    except Exception as e:  # a fault, never read as "no match" (status 1)
        click.echo(f"Error: the check failed: {type(e).__name__}: {e}", err=True)
        sys.exit(EXIT_ERROR)
    if result.status == "error":
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_MATCH if result.flagged else EXIT_NO_MATCH)


_DEDUPE_COLUMNS = (
    Column("group", right=True),
    Column("images", right=True),
    Column("score", right=True, text="{:.3f}".format),
    Column("path"),
)


@click.command()
@quiet_option
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@output_options
@click.pass_obj
def dedupe(app: App, paths: tuple[str, ...], fmt: str, output: str) -> None:
    """Find groups of duplicate images inside one collection (no catalog needed): stage-1
    pairs by Hamming distance, reranked by CNN cosine.

    jsonl and json: a record per group (its paths and the pairs that joined them); table and
    csv: a row per image (its group, the group's size and its best score in the group).
    """
    from detector.intake.sources import check_roots, expand_sources
    from detector.tasks.dedupe import find_duplicates

    with errors_to_click():
        check_roots(paths)
    files = expand_sources(paths)
    with errors_to_click(), listing(fmt, output, _DEDUPE_COLUMNS) as out:
        with app.progress(len(files), "reading") as bar:
            result = find_duplicates(files, app.models, app.settings, progress=bar.update)
        for path, error in result.errors:
            click.echo(f"error: {path}: {error}", err=True)
        for n, group in enumerate(result.groups, 1):
            if out.flat:
                for path in group.paths:
                    best = max((p.score for p in group.pairs if path in (p.a, p.b)), default=None)
                    out.write({"group": n, "images": len(group.paths), "score": best, "path": path})
            else:
                out.write(
                    {
                        "group": n,
                        "paths": list(group.paths),
                        "pairs": [dataclasses.asdict(p) for p in group.pairs],
                    }
                )
    app.say(f"{result.images} images, {len(result.groups)} duplicate groups, {len(result.errors)} errors")
    if result.errors:
        sys.exit(EXIT_PARTIAL)
