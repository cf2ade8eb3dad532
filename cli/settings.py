"""``copyscan settings``: each engine setting in effect and where its value came from."""

from __future__ import annotations

import os

import click

from cli.app import CLI_DEFAULTS, App, errors_to_click
from cli.listing import Column, listing, output_options
from detector.config import STORED, effective_settings, settings_table

_COLUMNS = (
    Column("name"),
    Column("value", text=lambda v: ",".join(map(str, v)) if isinstance(v, list) else str(v)),
    Column("source"),
    Column("help"),
    Column("note", table=False),
)


@click.command()
@output_options
@click.pass_obj
def settings(app: App, fmt: str, output: str) -> None:
    """List the engine settings in effect and where each value comes from: 'default',
    'stored' (saved in the database by `evaluate --calibrate`) or 'set' (--set NAME=VALUE,
    which wins). The database (--db) is read when it exists, never changed.

    A stored calibration that was unreliable (too few pairs to show its precision) is said on
    stderr, and in the 'note' field of csv, jsonl and json.
    """
    with errors_to_click(), listing(fmt, output, _COLUMNS) as out:
        notes: tuple[str, ...] = ()
        if os.path.exists(app.db):
            with app.open_store(readonly=True) as store:
                notes = store.saved_settings.notes()
            effective = app.effective
        else:
            app.say(f"note: no database at {app.db}: no stored settings")
            effective = None
        if effective is None:
            effective = effective_settings({}, app.overrides, CLI_DEFAULTS)
        stored = [n for n, source in effective.sources.items() if source == STORED]
        notes = notes if stored else ()  # about stored values that --set replaced: moot
        for warning in notes:  # whatever --quiet says, as evaluate --calibrate said it
            click.echo(f"warning: {', '.join(stored)}: unreliable calibration: {warning}", err=True)
        note = "; ".join(f"unreliable calibration: {n}" for n in notes) or None
        for name, _, help_text in settings_table():
            value = getattr(effective.settings, name)
            out.write(
                {
                    "name": name,
                    "value": list(value) if isinstance(value, tuple) else value,
                    "source": effective.sources[name],
                    "help": help_text,
                    "note": note if name in stored else None,
                }
            )
