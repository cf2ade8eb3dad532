"""The catalog table: catalog images with their codes (own and variants) and descriptors, and
the generation number that changes with every add or remove."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from detector.errors import DamagedDatabase
from detector.stage1.hashing import from_sqlite
from detector.storage.sql import from_db, in_chunks, to_db, utc_now

if TYPE_CHECKING:
    from detector.storage.store import Store

_LOAD_ROWS = 65_536  # catalog codes fetched from SQLite at a time
DESCRIPTOR_BYTES = 2560  # a stored descriptor: 1,280 float16 (detector.stage2.embedding.to_blob)


@dataclass(frozen=True)
class CatalogEntry:
    """One catalog image as stored. Codes are unsigned 64-bit ints."""

    id: int
    path: str
    owner: str | None
    sha256: str
    width: int
    height: int
    phash: int
    dhash: int
    added_at: str


@dataclass(frozen=True)
class NewCatalogImage:
    """What :meth:`CatalogTable.add` needs to insert one catalog image."""

    path: str
    owner: str | None
    sha256: str
    width: int
    height: int
    phash: int  # signed int64, see hashing.to_sqlite
    dhash: int
    embedding: bytes
    variants: tuple[tuple[str, int, int], ...] = ()  # (name, phash, dhash) extra codes, signed
    external_id: str | None = None  # the caller's own id for it (added over HTTP)


class CatalogTable:
    """The catalog of one :class:`~detector.storage.store.Store` (``store.catalog``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.conn

    def known(self, digests: Iterable[str]) -> dict[str, int]:
        """Catalog ids of the given content hashes that are already stored."""
        found: dict[str, int] = {}
        for part, marks in in_chunks(digests):
            for sha, cid in self.conn.execute(
                f"SELECT sha256, id FROM catalog WHERE sha256 IN ({marks})", part
            ):
                found[sha] = int(cid)
        return found

    def add(self, images: Sequence[NewCatalogImage]) -> list[int]:
        """Insert catalog images in one transaction; returns their ids in order. Content
        already present (by sha256) keeps its first entry and returns that id."""
        now = utc_now()
        ids: list[int] = []
        added = False
        with self.store.write():
            for im in images:
                cur = self.conn.execute(
                    "INSERT INTO catalog (sha256, path, owner, width, height, phash, dhash,"
                    " embedding, added_at, external_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(sha256) DO NOTHING",
                    (
                        im.sha256,
                        to_db(im.path),
                        to_db(im.owner),
                        im.width,
                        im.height,
                        im.phash,
                        im.dhash,
                        im.embedding,
                        now,
                        im.external_id,
                    ),
                )
                if cur.rowcount == 1 and cur.lastrowid is not None:
                    ids.append(int(cur.lastrowid))
                    self.conn.executemany(
                        "INSERT INTO codes (catalog_id, variant, phash, dhash) VALUES (?, ?, ?, ?)",
                        [(cur.lastrowid, *v) for v in im.variants],
                    )
                    added = True
                else:
                    row = self.conn.execute(
                        "SELECT id FROM catalog WHERE sha256 = ?", (im.sha256,)
                    ).fetchone()
                    ids.append(int(row[0]))
            if added:
                self.bump_generation()
        return ids

    def bump_generation(self) -> None:
        """Inside a write transaction: the catalog changed (scan results are no longer reusable)."""
        self.conn.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'catalog_generation'"
        )

    def generation(self) -> int:
        """A number that changes whenever catalog images are added or removed: scan results
        are reused only against the same generation."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'catalog_generation'").fetchone()
        return int(row[0]) if row else 0

    def codes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every catalog code in bulk, each image's own and its variants: ids (n,) int64 (an
        id once per code), phash (n,) uint64, dhash (n,) uint64, in id order (an image's own
        code first). Read in chunks (a million images' codes never exist as Python tuples all
        at once) and sorted here, not by SQLite; the catalog's own codes come from a covering
        index, so its descriptors are not read."""
        parts = []
        for sql in ("SELECT id, phash, dhash FROM catalog", "SELECT catalog_id, phash, dhash FROM codes"):
            cursor = self.conn.execute(sql)
            while rows := cursor.fetchmany(_LOAD_ROWS):
                try:
                    parts.append(np.array(rows, dtype=np.int64))
                except (ValueError, TypeError, OverflowError) as e:
                    raise DamagedDatabase(
                        f"{self.store.path} is damaged: a stored code is not a number ({e})"
                    ) from e
        arr = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)
        arr = arr[np.argsort(arr[:, 0], kind="stable")]
        return arr[:, 0].copy(), arr[:, 1].view(np.uint64).copy(), arr[:, 2].view(np.uint64).copy()

    def embedding_blobs(self, ids: Sequence[int]) -> dict[int, bytes]:
        """Stored descriptors of the given catalog ids."""
        out: dict[int, bytes] = {}
        for part, marks in in_chunks(int(i) for i in ids):
            for cid, blob in self.conn.execute(
                f"SELECT id, embedding FROM catalog WHERE id IN ({marks})", part
            ):
                out[int(cid)] = self._descriptor(cid, blob)
        return out

    def all_embedding_blobs(self) -> tuple[np.ndarray, list[bytes]]:
        """Every stored descriptor: ids (n,) int64 and their blobs, in id order."""
        rows = self.conn.execute("SELECT id, embedding FROM catalog ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64), [self._descriptor(r[0], r[1]) for r in rows]

    def _descriptor(self, catalog_id: object, blob: object) -> bytes:
        if not isinstance(blob, bytes) or len(blob) != DESCRIPTOR_BYTES:
            raise DamagedDatabase(
                f"{self.store.path} is damaged: catalog image {catalog_id}'s descriptor is not "
                f"{DESCRIPTOR_BYTES} bytes"
            )
        return blob

    def entries(self, ids: Sequence[int]) -> dict[int, CatalogEntry]:
        """Catalog entries by id (missing ids are left out)."""
        out: dict[int, CatalogEntry] = {}
        for part, marks in in_chunks(int(i) for i in ids):
            for entry in self._entries(f"WHERE id IN ({marks})", part):
                out[entry.id] = entry
        return out

    def list(self, owner: str | None = None) -> Iterator[CatalogEntry]:
        """Catalog entries in id order, optionally of one owner."""
        if owner is None:
            yield from self._entries("ORDER BY id", [])
        else:
            yield from self._entries("WHERE owner = ? ORDER BY id", [to_db(owner)])

    def count(self) -> int:
        """How many images the catalog holds."""
        return int(self.conn.execute("SELECT count(*) FROM catalog").fetchone()[0])

    def owners(self) -> dict[str, int]:
        """Images per owner ('' for none), most first."""
        return {
            (from_db(o) or ""): int(n)
            for o, n in self.conn.execute(
                "SELECT owner, count(*) FROM catalog GROUP BY owner ORDER BY count(*) DESC, owner"
            )
        }

    def _entries(self, where: str, params: Sequence[Any]) -> Iterator[CatalogEntry]:
        sql = "SELECT id, path, owner, sha256, width, height, phash, dhash, added_at FROM catalog " + where
        for row in self.conn.execute(sql, list(params)):
            yield _entry(self.store.path, row)

    def remove(
        self,
        ids: Sequence[int] = (),
        paths: Sequence[str] = (),
        owner: str | None = None,
        external_ids: Sequence[str] = (),
    ) -> int:
        """Delete catalog entries by id, by stored path, by owner or by external id; returns
        how many went. Past matches keep the catalog path they recorded."""
        removed = 0
        with self.store.write():
            for cid in ids:
                removed += self.conn.execute("DELETE FROM catalog WHERE id = ?", (int(cid),)).rowcount
            for path in paths:
                removed += self.conn.execute("DELETE FROM catalog WHERE path = ?", (to_db(path),)).rowcount
            if owner is not None:
                removed += self.conn.execute("DELETE FROM catalog WHERE owner = ?", (to_db(owner),)).rowcount
            for ext in external_ids:
                removed += self.conn.execute("DELETE FROM catalog WHERE external_id = ?", (ext,)).rowcount
            if removed:
                self.bump_generation()
        return removed

    def external_ids(self, ids: Sequence[int]) -> dict[int, str]:
        """External ids of the given catalog ids (those that have one)."""
        out: dict[int, str] = {}
        for part, marks in in_chunks(int(i) for i in ids):
            for cid, ext in self.conn.execute(
                f"SELECT id, external_id FROM catalog WHERE external_id IS NOT NULL AND id IN ({marks})",
                part,
            ):
                out[int(cid)] = ext
        return out


def _entry(db: object, row: Sequence[Any]) -> CatalogEntry:
    try:
        return CatalogEntry(
            id=int(row[0]),
            path=from_db(row[1]) or "",
            owner=from_db(row[2]),
            sha256=row[3],
            width=int(row[4]),
            height=int(row[5]),
            phash=from_sqlite(int(row[6])),
            dhash=from_sqlite(int(row[7])),
            added_at=row[8],
        )
    except (ValueError, TypeError) as e:
        raise DamagedDatabase(
            f"{db} is damaged: catalog row {row[0]!r} holds a value of the wrong kind"
        ) from e
