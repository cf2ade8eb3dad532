"""What every command shares: the group's options (``App``), option bundles, progress bars
and status lines on stderr, and the mapping of library errors to exit statuses. The command
line parses, calls one library function and prints: no engine logic lives here."""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import click

from detector.config import EffectiveSettings, Settings, effective_settings, parse_setting, settings_table
from detector.errors import CopyscanError, SettingError

EXIT_OK = 0
EXIT_FAILED = 1  # it could not run, or stopped on a failure (the run stays resumable)
EXIT_USAGE = 2
EXIT_LOCKED = 3  # another copyscan run holds the database
EXIT_PARTIAL = 4  # it completed, but some inputs could not be used
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
EXIT_MATCH = 0  # check, like grep: a copy or near-duplicate was found
EXIT_NO_MATCH = 1
EXIT_ERROR = 2  # check: the image or the database could not be used, or check failed

# The exit-status contract, as the README states it (a test holds the two together).
EXIT_STATUSES: dict[str, tuple[tuple[int, str], ...]] = {
    "scan, catalog add, dedupe": (
        (EXIT_OK, "the work completed and every input was used"),
        (
            EXIT_FAILED,
            "it could not run or stopped on a failure: no database, a missing input path, "
            "an unwritable output, a full disk (a scan run is then interrupted: --resume goes on)",
        ),
        (EXIT_USAGE, "bad usage, a setting out of range"),
        (EXIT_LOCKED, "another run holds the database (--wait SECONDS to wait for it)"),
        (EXIT_PARTIAL, "the work completed but some inputs could not be used (the summary says how many)"),
        (EXIT_SIGINT, "stopped by SIGINT (a scan run is recorded as interrupted)"),
        (EXIT_SIGTERM, "stopped by SIGTERM (likewise)"),
    ),
    "check": (
        (EXIT_MATCH, "a copy or near-duplicate was found"),
        (EXIT_NO_MATCH, "no match"),
        (EXIT_ERROR, "the image or the database could not be used, or the check failed"),
    ),
    "every other command": (
        (EXIT_OK, "done"),
        (EXIT_FAILED, "it could not be done (the line on stderr says why)"),
        (EXIT_USAGE, "bad usage"),
        (EXIT_LOCKED, "catalog remove and rehash: another run holds the database"),
    ),
}
# Where the command line's defaults differ from the library's: a copyscan process decodes in
# worker processes (the library does not start processes unless asked, since Python re-imports
# the caller's main module in each worker).
CLI_DEFAULTS: dict[str, Any] = {"jobs": 0}
PROGRESS_SMOOTHING = 0.1  # tqdm's moving-average factor for the rate and the ETA (0: the overall mean)


@dataclass
class App:
    """What the group options give every command."""

    db: str
    quiet: bool
    overrides: dict[str, Any]  # --set NAME=VALUE, which beat settings stored in the database
    settings: Settings = field(default_factory=Settings)
    effective: EffectiveSettings | None = None
    _models: Any = field(default=None, repr=False)
    _bars: int = field(default=0, repr=False)  # progress bars on the screen now

    def __post_init__(self) -> None:
        self.settings = effective_settings({}, self.overrides, CLI_DEFAULTS).settings

    def open_store(self, create: bool = False, rehashing: bool = False, readonly: bool = False) -> Any:
        """Open the database; settings it stores (calibrated thresholds) become this run's
        defaults, under any --set. ``rehashing``: a database of another hasher is accepted;
        ``readonly``: for commands that only read (a database on read-only storage works)."""
        from detector.stage1.hashing import HASHER_ID
        from detector.stage2.embedding import embedder_id
        from detector.storage.store import Store

        store = Store.open(
            self.db,
            hasher=HASHER_ID,
            embedder=embedder_id(self.settings),
            create=create,
            rehashing=rehashing,
            readonly=readonly,
        )
        self.effective = effective_settings(store.saved_settings.read(), self.overrides, CLI_DEFAULTS)
        for note in self.effective.ignored:
            self.say(f"warning: {note}")
        self.settings = self.effective.settings
        return store

    @property
    def models(self) -> Any:
        if self._models is None:
            from detector.stage2.embedding import Models

            self._models = Models(self.settings, loading=self.loading_model)
        return self._models

    @contextmanager
    def progress(self, length: int, label: str) -> Iterator[Any]:
        """A tqdm progress bar on stderr (``.update(n)``) with the rate and an ETA from a
        moving average, shown only when stderr is a terminal and not --quiet (else silent)."""
        from tqdm import tqdm

        shown = not self.quiet and sys.stderr.isatty()
        bar = tqdm(
            total=length,
            desc=label,
            unit=" images",
            file=sys.stderr,
            disable=not shown,
            leave=False,
            dynamic_ncols=True,
            # Results come in batches, the first after the model loads: rates averaged over
            # about the last ten refreshes (half a second apart) give an ETA that holds still.
            smoothing=PROGRESS_SMOOTHING,
            mininterval=0.5,
        )
        self._bars += int(shown)
        try:
            yield bar
        finally:
            self._bars -= int(shown)
            bar.close()

    def say(self, message: str) -> None:
        """A status line on stderr, unless --quiet (above a progress bar, which stays)."""
        if self.quiet:
            return
        if self._bars:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
        else:
            click.echo(message, err=True)

    @contextmanager
    def loading_model(self, what: str) -> Iterator[None]:
        """Status lines around the CNN model's load (the hook of ``Models.loading``)."""
        self.say(f"loading the CNN model ({what})...")
        started = time.perf_counter()
        yield
        self.say(f"model loaded in {time.perf_counter() - started:.1f} s")


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set NAME=VALUE`` pairs as typed values, each within its range."""
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
            Settings().replace(**{**CLI_DEFAULTS, **changes})
        except ValueError as e:  # SettingError is one too
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


def run_id_type() -> click.IntRange:
    """A run or catalog id: a whole number SQLite can hold."""
    return click.IntRange(min=1, max=2**63 - 1)


@contextmanager
def locked(app: App, command: str, wait: float) -> Iterator[None]:
    """Hold the database's writer lock; another run holding it exits with status 3."""
    from detector.storage.locking import DatabaseLock

    with exit_3_when_locked(), DatabaseLock(app.db, command, wait):
        yield


@contextmanager
def exit_3_when_locked() -> Iterator[None]:
    """Another run holding the database: its holder on stderr, exit status 3."""
    from detector.storage.locking import Locked

    try:
        yield
    except Locked as e:
        click.echo(f"Error: {e}, or pass --wait SECONDS", err=True)
        sys.exit(EXIT_LOCKED)


@contextmanager
def errors_to_click() -> Iterator[None]:
    """Domain errors become one clear line and exit status 1, never a traceback (a bad
    setting is bad usage: status 2)."""
    try:
        yield
    except SettingError as e:
        raise click.UsageError(str(e)) from e
    except CopyscanError as e:
        raise click.ClickException(str(e)) from e
    except sqlite3.Error as e:
        raise click.ClickException(f"the database failed: {e}") from e
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        raise click.ClickException(f"cannot use{where}: {e.strerror or e}") from e
