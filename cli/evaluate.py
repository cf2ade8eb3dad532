"""``copyscan evaluate``: attack the catalog, measure, calibrate."""

from __future__ import annotations

import json

import click

from cli.app import App, errors_to_click, locked, number, quiet_option


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
    with (
        errors_to_click(),
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
        click.echo(f"  recall at 99% precision {f.recall_at_99:.3f}  (score >= {number(f.threshold_99)})")
        click.echo(f"  recall at 95% precision {f.recall_at_95:.3f}  (score >= {number(f.threshold_95)})")
        click.echo(f"  reached stage 2         {f.candidate_recall:.3f} of copies")
        click.echo(
            f"  CNN ran on              {f.cnn_share_copies:.0%} of copies, "
            f"{f.cnn_share_distractors:.0%} of distractors"
        )
        precision = "-" if f.copy_precision is None else f"{f.copy_precision:.3f}"
        click.echo(
            f"  default verdict         'copy' precision {precision}, recall {f.copy_recall:.3f}; "
            f"{f.flagged_distractors:.1%} of distractors flagged"
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
