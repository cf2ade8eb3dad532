"""The copyscan command line: the root group, its options and the commands of each module.
Commands parse, call one library function and print; no engine logic lives in ``cli/``."""

from __future__ import annotations

import click

from cli.app import App, parse_settings
from cli.catalog import catalog
from cli.database import datasette_metadata
from cli.evaluate import evaluate
from cli.history import report_command, runs
from cli.scan import check, dedupe, scan
from cli.serve import serve, token
from cli.settings import settings
from detector import __version__


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
    CNN-embedding cosine; stage 3 checks the best of them with keypoints and RANSAC. Each
    pair gets a score in [0, 1] and a verdict.
    """
    ctx.obj = App(db=db, quiet=quiet, overrides=parse_settings(set_))


for command in (
    settings,
    catalog,
    scan,
    check,
    dedupe,
    runs,
    report_command,
    serve,
    token,
    evaluate,
    datasette_metadata,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="copyscan")
