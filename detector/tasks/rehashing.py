"""``catalog rehash``: new stage-1 codes for every catalog image, from its file, when the
hasher changed (a copyscan upgrade); descriptors, owners, ids and scan history are kept.

Each catalog file is read again and must still hold the content the catalog recorded (the
same sha256): codes of a changed file would describe another picture than the stored
descriptor. New codes are staged batch by batch, so a killed run goes on where it stopped,
and swapped in for the old ones in one transaction once every image has them; until then the
database keeps its old hasher and codes. Images whose file is gone or changed are reported;
``drop_missing`` removes them from the catalog so that the rest can switch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from detector.config import Settings
from detector.intake.workers import prepared_batches
from detector.stage1.hashing import to_sqlite
from detector.storage.store import Store

CHANGED = "the file no longer holds the content that was catalogued (sha256 differs)"


@dataclass(frozen=True)
class RehashResult:
    """``images`` in the catalog; ``rehashed`` in this run, ``staged_before`` by a killed one;
    ``failed``: (catalog id, path, why) of the images whose file is gone or changed;
    ``dropped`` of those removed; ``switched``: the catalog now uses this copyscan's hasher."""

    images: int
    rehashed: int
    staged_before: int
    failed: tuple[tuple[int, str, str], ...]
    dropped: int
    switched: bool


def rehash_catalog(
    store: Store,
    settings: Settings,
    drop_missing: bool = False,
    progress: Callable[[int], None] | None = None,
) -> RehashResult:
    """Recompute the codes of every catalog image of ``store`` (opened ``rehashing``) with
    this copyscan's hasher, and switch the catalog to it when every image has them.
    ``progress`` is called with the number of images read after each batch."""
    entries = list(store.catalog.list())
    if store.rehash.stored_hasher == store.hasher:
        return RehashResult(len(entries), 0, 0, (), 0, True)
    done = store.rehash.staged_ids()
    todo = [e for e in entries if e.id not in done]
    failed: list[tuple[int, str, str]] = []
    rehashed = 0
    pending = iter(todo)
    for batch in prepared_batches([e.path for e in todo], settings, catalog=True):
        rows = []
        for p in batch:
            entry = next(pending)
            if p.codes is None:
                failed.append((entry.id, entry.path, p.error or "unreadable"))
            elif p.sha256 != entry.sha256:
                failed.append((entry.id, entry.path, CHANGED))
            else:
                variants = tuple((name, to_sqlite(c.phash), to_sqlite(c.dhash)) for name, c in p.variants)
                rows.append((entry.id, to_sqlite(p.codes.phash), to_sqlite(p.codes.dhash), variants))
        store.rehash.stage(rows)
        rehashed += len(rows)
        if progress is not None:
            progress(len(batch))
    dropped = 0
    if failed and drop_missing:
        dropped = store.catalog.remove(ids=[cid for cid, _, _ in failed])
    switched = not failed or drop_missing
    if switched:
        store.rehash.apply()
    return RehashResult(len(entries), rehashed, len(done), tuple(failed), dropped, switched)
