"""``copyscan scan``, ``check`` and ``dedupe``."""

from __future__ import annotations

import csv
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import IO, Any

import click

from cli.app import (
    CLI_DEFAULTS,
    EXIT_ERROR,
    EXIT_MATCH,
    EXIT_NO_MATCH,
    App,
    errors_to_click,
    exit_3_when_locked,
    quiet_option,
    wait_option,
)
from detector.errors import CopyscanError


class _Writer:
    """Writes scan results in one format to one stream."""

    def __init__(self, fmt: str, out: IO[str], owned: bool = False) -> None:
        from detector.outputs import records as report

        self.fmt = fmt
        self.out = out
        self.owned = owned  # closed with the writer
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

    def close(self) -> None:
        if self.owned:
            self.out.close()


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
    from detector.runs import ScanRequest, ScanRun

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
    with errors_to_click(), app.open_store() as store:
        cluster = None
        if engine == "ray":
            from detector.distributed import RayCluster, require

            require("ray.data")  # before the run is recorded: no run left behind without Ray
            cluster = RayCluster(workers=workers, address=ray_address or None)
        with exit_3_when_locked():
            if resume is not None:
                run = ScanRun.resume(store, resume or None, base=CLI_DEFAULTS, engine=cluster, wait=wait)
            else:
                request = ScanRequest(tuple(paths), mode, top_k, min_score, rescan, app.overrides)
                run = ScanRun.start(store, request, base=CLI_DEFAULTS, engine=cluster, wait=wait)
        for note in run.notes:
            app.say(f"warning: {note}")
        if run.killed and not run.resumed:
            app.say(
                f"note: run {run.killed[-1]} was killed before it finished; scan --resume goes on with it"
            )
        writers: list[Any] = [_Writer(fmt, sys.stdout)]
        extra = open(jsonl_path, "a" if run.resumed else "w", encoding="utf-8") if jsonl_path else None
        if parquet_out is not None:
            from detector.distributed import ParquetResults

            writers.append(ParquetResults(parquet_out))
        if extra is not None:
            writers.append(_Writer("jsonl", extra, owned=True))
        previous = signal.signal(signal.SIGTERM, _raise_stopped)
        code = 0
        try:
            with run, app.progress(len(run.files), "scanning") as bar:
                for result in run.results():
                    bar.update(1)
                    counts[result.outcome] += 1
                    counts["reused"] += result.reused_from is not None
                    for w in writers:
                        w.write(result)
        except (KeyboardInterrupt, _Stopped) as e:
            code = 143 if isinstance(e, _Stopped) else 130
        finally:
            signal.signal(signal.SIGTERM, previous)
            for w in writers[1:]:
                w.close()
        elapsed = time.perf_counter() - started
        scanned = sum(counts[k] for k in ("copy", "near-duplicate", "no match", "error"))
        reused = f" ({counts['reused']} unchanged since an earlier run)" if counts["reused"] else ""
        line = (
            f"run {run.id}{' (resumed)' if run.resumed else ''}: {scanned} images{reused}, "
            f"{counts['copy']} copies, {counts['near-duplicate']} near-duplicates, "
            f"{counts['no match']} no match, {counts['error']} errors in {elapsed:.1f} s "
            f"({scanned / max(elapsed, 1e-9):.1f} images/s)"
        )
        if code:
            click.echo(f"{line}; interrupted: copyscan scan --resume {run.id} goes on", err=True)
            sys.exit(code)
    app.say(line)


@click.command()
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
            scanner = Scanner(store, app.models, app.settings, mode=mode).reporting(top_k, min_score)
            result = next(scanner.scan([image]))
    except CopyscanError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(EXIT_ERROR)
    _Writer(fmt, sys.stdout).write(result)
    if result.status == "error":
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_MATCH if result.flagged else EXIT_NO_MATCH)


@click.command()
@quiet_option
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), default="table", show_default=True)
@click.pass_obj
def dedupe(app: App, paths: tuple[str, ...], fmt: str) -> None:
    """Find groups of duplicate images inside one collection (no catalog needed)."""
    from detector.intake.sources import expand_sources
    from detector.tasks.dedupe import find_duplicates

    files = expand_sources(paths)
    with errors_to_click(), app.progress(len(files), "reading") as bar:
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
