"""Staged codes of ``catalog rehash``: a new hasher's codes for every catalog image, staged
batch by batch and swapped in for the old ones in one transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from detector.errors import StoreError

if TYPE_CHECKING:
    from detector.storage.store import Store

StagedCodes = tuple[int, int, int, tuple[tuple[str, int, int], ...]]  # catalog id, phash, dhash, variants


class RehashTable:
    """The staged codes of one :class:`~detector.storage.store.Store` (``store.rehash``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.conn

    @property
    def stored_hasher(self) -> str:
        """The hasher the catalog's codes were made with (other than the store's hasher only
        in a store opened ``rehashing``)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'hasher'").fetchone()
        return str(row[0]) if row else self.store.hasher

    def staged_ids(self) -> set[int]:
        """Catalog ids whose new codes are staged already (a killed rehash goes on from here)."""
        rows = self.conn.execute("SELECT catalog_id FROM rehash_codes WHERE hasher = ?", (self.store.hasher,))
        return {int(r[0]) for r in rows}

    def stage(self, rows: Sequence[StagedCodes]) -> None:
        """Stage new codes, ``(catalog_id, phash, dhash, variants)`` signed as stored, in one
        transaction; the catalog is untouched until :meth:`apply`."""
        with self.store.write():
            self.conn.executemany(
                "INSERT OR REPLACE INTO rehash_codes (catalog_id, hasher, phash, dhash, variants)"
                " VALUES (?, ?, ?, ?, ?)",
                [(cid, self.store.hasher, p, d, json.dumps(v)) for cid, p, d, v in rows],
            )

    def apply(self) -> int:
        """Replace every catalog image's codes by its staged ones and record this hasher, in
        one transaction. Refused while a catalog image has none staged. Returns the images."""
        hasher = self.store.hasher
        with self.store.write():
            missing = self.conn.execute(
                "SELECT count(*) FROM catalog WHERE id NOT IN"
                " (SELECT catalog_id FROM rehash_codes WHERE hasher = ?)",
                (hasher,),
            ).fetchone()[0]
            if missing:
                raise StoreError(f"{missing} catalog images have no new codes yet: the hasher stays")
            staged = self.conn.execute(
                "SELECT catalog_id, phash, dhash, variants FROM rehash_codes WHERE hasher = ?"
                " AND catalog_id IN (SELECT id FROM catalog)",
                (hasher,),
            ).fetchall()
            self.conn.executemany(
                "UPDATE catalog SET phash = ?, dhash = ? WHERE id = ?",
                [(p, d, cid) for cid, p, d, _ in staged],
            )
            self.conn.execute("DELETE FROM codes")
            self.conn.executemany(
                "INSERT INTO codes (catalog_id, variant, phash, dhash) VALUES (?, ?, ?, ?)",
                [(cid, *v) for cid, _, _, vs in staged for v in json.loads(vs)],
            )
            self.conn.execute("DELETE FROM rehash_codes")
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'hasher'", (hasher,))
            self.store.catalog.bump_generation()
        return len(staged)
