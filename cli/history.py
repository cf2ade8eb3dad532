"""``copyscan runs`` and ``copyscan report``: the scan history and its infringement reports."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from cli.app import App, errors_to_click, run_id_type
from cli.listing import Column, listing, output_file, output_options
from detector.outputs.records import json_text

_RUN_COLUMNS = (
    Column("id", right=True),
    Column("status"),
    Column("started_at", "STARTED"),
    Column("finished_at", "FINISHED"),
    Column("mode"),
    Column("items", "IMAGES", right=True),
    Column("matched", "FLAGGED", right=True),
    Column("errors", right=True),
    Column("command", table=False),
    Column("state", table=False),
    Column("args", table=False),
)


@click.command()
@click.option("--limit", type=run_id_type(), default=20, show_default=True, help="Newest runs shown.")
@output_options
@click.pass_obj
def runs(app: App, limit: int, fmt: str, output: str) -> None:
    """Scan runs recorded in the database, newest first: status, times and counts (and the
    run's arguments, in csv, jsonl and json); counts are empty until a run finished."""
    with errors_to_click(), listing(fmt, output, _RUN_COLUMNS) as out:
        with app.open_store(readonly=True) as store:
            found = store.history.runs(limit)
        for r in found:
            out.write(dataclasses.asdict(r))


@click.command("report")
@click.argument("run", type=run_id_type(), required=False)
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
    with errors_to_click(), app.open_store(readonly=True) as store:
        found = store.reports.load(run, new_only=new_only)
    with errors_to_click():  # an unwritable folder or file: one line, status 1
        if html_dir:
            from detector.outputs.html import write_html

            index = write_html(found, Path(html_dir), app.settings)
            app.say(f"HTML report written to {index}")
        if csv_path:
            with output_file(csv_path) as out:
                records.report_csv(found, out)
        if json_path:
            with output_file(json_path) as out:
                out.write(json_text(records.report_json(found), indent=1) + "\n")
    new = sum(r.new for r in found.rows)
    app.say(
        f"run {found.run.id} ({found.run.status}): {len(found.rows)} flagged pairs"
        f"{' new since earlier runs' if new_only else f', {new} new since earlier runs'}"
    )
