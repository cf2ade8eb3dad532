"""``copyscan evaluate``: attack the catalog, measure, calibrate."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import click

from cli.app import App, errors_to_click, locked, quiet_option
from cli.listing import Column, listing, output_options


@click.command()
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
@output_options
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
    output: str,
) -> None:
    """Attack catalog images, scan the copies mixed with distractors, and measure.

    Lists, per mode, a row for all attack families ('all') and one per family: micro
    average precision, recall at 99 % and 95 % precision, the share of copies whose catalog
    image reached stage 2, the share of images the CNN ran on, and the default 'copy'
    verdict's precision and recall (table: the main figures; csv and jsonl: every figure;
    json: one document with the calibration). With --calibrate, stores the score thresholds
    that reach --precision and --near-precision; scan and check then use them (--set still
    wins, `copyscan settings` shows them). A calibration on too few pairs is stored with a
    warning, shown on stderr here and by `copyscan settings`.
    """
    import tempfile
    from dataclasses import asdict
    from pathlib import Path

    from detector.intake.sources import expand_sources
    from detector.tasks import evaluation as ev
    from detector.tasks.attacks import FAMILIES
    from detector.tasks.pages import find_browser

    chosen = tuple(f.strip() for f in families.split(",")) if families else FAMILIES
    unknown = sorted(set(chosen) - set(FAMILIES))
    if unknown:
        raise click.BadParameter(
            f"unknown: {', '.join(unknown)}; known: {', '.join(FAMILIES)}", param_hint="--families"
        )
    if "page" in chosen and find_browser() is None:
        if families:
            raise click.BadParameter(
                "the page family renders web pages in headless Chromium, and none was found: install "
                "it (Debian: apt-get install chromium) or set COPYSCAN_CHROMIUM",
                param_hint="--families",
            )
        chosen = tuple(f for f in chosen if f != "page")
        click.echo("note: no headless Chromium found; the page family is left out", err=True)
    if held_out is None:
        held_out = 0 if distractor_paths else sample
    modes = ("fast", "thorough") if mode == "both" else (mode,)
    with (
        errors_to_click(),
        listing(fmt, output, _COLUMNS, one=fmt == "json") as out,
        app.open_store(readonly=not calibrate) as store,
        tempfile.TemporaryDirectory() as tmp,
    ):
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
            with locked(app, "evaluate --calibrate", 0):
                store.saved_settings.save(
                    {
                        "copy_threshold": stored.copy_threshold,
                        "near_duplicate_threshold": stored.near_duplicate_threshold,
                    },
                    notes=stored.warnings,
                )
        if fmt == "json":
            out.write(
                {
                    "evaluations": [asdict(f) for f in figures],
                    "calibration": asdict(stored) if stored else None,
                }
            )
        else:
            for row in _rows(figures):
                out.write(row)
    if stored is not None:
        app.say(
            f"stored: copy_threshold={stored.copy_threshold:.4f} "
            f"({stored.copy_precision:.0%} precision, recall {stored.recall_copy:.3f}), "
            f"near_duplicate_threshold={stored.near_duplicate_threshold:.4f} "
            f"({stored.near_duplicate_precision:.0%} precision, recall {stored.recall_near_duplicate:.3f})"
        )
        for warning in stored.warnings:  # shown whatever --quiet says: the stored verdicts depend on it
            click.echo(f"warning: unreliable calibration: {warning}", err=True)


def _figure(x: float) -> str:
    return f"{x:.3f}"


def _share(x: float) -> str:
    return f"{x:.0%}"


# A row per mode and attack family ('all': the mode's overall figures, which the families lack).
_COLUMNS = (
    Column("mode"),
    Column("family"),
    Column("copies", right=True),
    Column("distractors", right=True),
    Column("errors", table=False),
    Column("micro_ap", "AP", right=True, text=_figure),
    Column("recall_at_99", "R@99%P", right=True, text=_figure),
    Column("threshold_99", table=False),
    Column("recall_at_95", "R@95%P", right=True, text=_figure),
    Column("threshold_95", table=False),
    Column("candidate_recall", "STAGE2", right=True, text=_figure),
    Column("cnn_share_copies", "CNN_COPIES", right=True, text=_share),
    Column("cnn_share_distractors", "CNN_OTHERS", right=True, text=_share),
    Column("copy_precision", "COPY_P", right=True, text=_figure),
    Column("copy_recall", "COPY_R", right=True, text=_figure),
    Column("flagged_distractors", "FLAGGED", right=True, text="{:.1%}".format),
    Column("seconds", table=False),
)


def _rows(figures: list[Any]) -> Iterator[dict[str, Any]]:
    """The rows of :data:`_COLUMNS`: a mode's overall figures, then each family's."""
    from dataclasses import asdict

    empty = dict.fromkeys(c.key for c in _COLUMNS)
    for f in figures:
        overall = asdict(f)
        del overall["families"]
        yield {**empty, **overall, "family": "all"}
        for fam in f.families:
            yield {**empty, "mode": f.mode, **asdict(fam)}
