"""``catalog add``: index images into the catalog, in batches, one transaction per batch, so
a killed run keeps every finished batch and a rerun skips what is stored (by content hash)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from detector.config import Settings
from detector.intake.prepare import Prepared
from detector.intake.workers import prepared_batches
from detector.stage1.hashing import to_sqlite
from detector.stage2.embedding import Models, to_blob
from detector.storage.catalog import NewCatalogImage
from detector.storage.store import Store

ADDED = "added"
KNOWN = "known"
ERROR = "error"


@dataclass(frozen=True)
class AddResult:
    """The outcome for one path: ``status`` is 'added', 'known' (same content already in
    the catalog) or 'error'."""

    path: str
    status: str
    catalog_id: int | None = None
    error: str | None = None


def add_to_catalog(
    store: Store,
    models: Models,
    paths: Sequence[str],
    settings: Settings,
    owner: str | None = None,
    external_id: str | None = None,
) -> Iterator[AddResult]:
    """Index ``paths`` into the catalog; yields one :class:`AddResult` per path, in order.
    ``owner`` and ``external_id`` (the caller's own id) are stored with every new image."""
    # Content is looked up per batch so a killed-and-rerun job skips finished work: when the
    # batch is read (before decoding), and again before it is stored, since the batches read
    # ahead were looked up before the ones ahead of them were stored.
    for prepared in prepared_batches(paths, settings, known=store.catalog.known, catalog=True):
        known = store.catalog.known([p.sha256 for p in prepared if p.sha256])
        prepared = [_skip(p) if p.ok and p.sha256 in known else p for p in prepared]
        fresh = [p for p in prepared if p.ok]
        # The same content twice in one batch is embedded once.
        first: dict[str, Prepared] = {}
        for p in fresh:
            first.setdefault(p.sha256 or "", p)
        vecs = models.embed(p.cnn_input for p in first.values())
        rows = [
            NewCatalogImage(
                path=os.path.abspath(p.path),  # reports must find it from any working folder
                owner=owner,
                sha256=p.sha256 or "",
                width=p.width,
                height=p.height,
                phash=to_sqlite(p.codes.phash),
                dhash=to_sqlite(p.codes.dhash),
                embedding=to_blob(vec),
                variants=tuple((name, to_sqlite(c.phash), to_sqlite(c.dhash)) for name, c in p.variants),
                external_id=external_id,
            )
            for p, vec in zip(first.values(), vecs, strict=True)
            if p.codes is not None
        ]
        ids = dict(zip((r.sha256 for r in rows), store.catalog.add(rows), strict=True))
        seen: set[str] = set()
        for p in prepared:
            if p.error is not None:
                yield AddResult(p.path, ERROR, error=p.error)
            elif p.skipped:
                yield AddResult(p.path, KNOWN, catalog_id=known[p.sha256 or ""])
            else:
                sha = p.sha256 or ""
                yield AddResult(p.path, KNOWN if sha in seen else ADDED, catalog_id=ids[sha])
                seen.add(sha)


def _skip(p: Prepared) -> Prepared:
    """A prepared image whose content turned out to be stored already."""
    return Prepared(path=p.path, sha256=p.sha256, skipped=True)
