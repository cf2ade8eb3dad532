"""``copyscan catalog``: add, list, count, remove and rehash catalog images."""

from __future__ import annotations

import sys
import time
from collections import Counter

import click

from cli.app import EXIT_PARTIAL, App, errors_to_click, locked, quiet_option, wait_option
from cli.listing import Column, listing, output_options


@click.group()
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
    Unusable images are reported on stderr; the run goes on. Exit status: 0 every image was
    used; 4 some could not be (they are listed); 1 a named path does not exist or the
    database cannot be used; 3 another run holds the database.
    """
    from detector.intake.sources import check_roots, expand_sources
    from detector.tasks.cataloging import add_to_catalog

    started = time.perf_counter()
    counts: Counter[str] = Counter()
    with errors_to_click():
        check_roots(paths)
    with errors_to_click(), app.open_store(create=True) as store, locked(app, "catalog add", wait):
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
    if counts["error"]:
        sys.exit(EXIT_PARTIAL)


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
    with errors_to_click(), app.open_store(rehashing=True) as store, locked(app, "catalog rehash", wait):
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


_LIST_COLUMNS = (
    Column("id", width=6, right=True),
    Column("owner", width=16),
    Column("size", width=11, right=True),
    Column("phash", width=16),
    Column("path"),
    Column("width", table=False),
    Column("height", table=False),
    Column("sha256", table=False),
    Column("dhash", table=False),
    Column("added_at", table=False),
)


@catalog.command("list")
@click.option("--owner", help="Only this owner's images.")
@output_options
@click.pass_obj
def catalog_list(app: App, owner: str | None, fmt: str, output: str) -> None:
    """List catalog images: id, owner, size, pHash, path (and dHash, SHA-256 and when each
    was added, in csv, jsonl and json); codes as 16 hex digits."""
    with errors_to_click(), listing(fmt, output, _LIST_COLUMNS, stream=True) as out:
        with app.open_store(readonly=True) as store:
            for e in store.catalog.list(owner=owner):
                out.write(
                    {
                        "id": e.id,
                        "path": e.path,
                        "owner": e.owner,
                        "width": e.width,
                        "height": e.height,
                        "size": f"{e.width}x{e.height}",
                        "sha256": e.sha256,
                        "phash": f"{e.phash:016x}",
                        "dhash": f"{e.dhash:016x}",
                        "added_at": e.added_at,
                    }
                )


_STATS_COLUMNS = (
    Column("database"),
    Column("file_bytes", text=lambda n: f"{n / 1e6:.1f} MB"),
    Column("schema_version"),
    Column("images"),
    Column("runs"),
    Column("hasher"),
    Column("embedder"),
    Column("owners", text=lambda owners: ", ".join(f"{o or '(none)'}: {n}" for o, n in owners.items())),
)


@catalog.command("stats")
@output_options
@click.pass_obj
def catalog_stats(app: App, fmt: str, output: str) -> None:
    """Counts of the catalog: images, owners, runs, database size and identities (json: one
    object; a table shows a field a row)."""
    with errors_to_click(), listing(fmt, output, _STATS_COLUMNS, one=True, vertical=True) as out:
        with app.open_store(readonly=True) as store:
            s = store.stats()
        out.write(
            {
                "database": app.db,
                "file_bytes": s.file_bytes,
                "schema_version": s.schema_version,
                "images": s.images,
                "runs": s.runs,
                "hasher": s.hasher,
                "embedder": s.embedder,
                "owners": s.owners,
            }
        )


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
    too_big = [str(i) for i in ids if i >= 2**63]
    if too_big:
        raise click.BadParameter(f"no catalog id is that large: {', '.join(too_big)}", param_hint="TARGETS")
    with errors_to_click(), app.open_store() as store, locked(app, "catalog remove", 0):
        n = store.catalog.remove(ids=ids, paths=paths, owner=owner)
    click.echo(f"removed {n}")
