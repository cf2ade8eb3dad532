"""``copyscan datasette-metadata``: the database described for Datasette."""

from __future__ import annotations

from pathlib import Path

import click

from cli.app import App
from cli.listing import output_file
from detector.outputs.records import json_text


@click.command("datasette-metadata")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), default="-", show_default=True, help="Write it here."
)
@click.pass_obj
def datasette_metadata(app: App, output: str) -> None:
    """Print Datasette's metadata for the database (--db): every table, view and column
    described. Browse the database with: datasette copyscan.db -m metadata.json"""
    from detector.storage.datasette import datasette_metadata as describe

    with output_file(output) as out:
        out.write(json_text(describe(Path(app.db).stem), indent=2) + "\n")
