"""The work of ``copyscan serve`` that needs the model: checking an upload against the
catalog, and adding an upload to it. One :class:`CheckService` lives in each engine process
(:mod:`detector.server.engines`), which serves one request at a time; what needs no model
(history, decisions, removals, thumbnails) is the :class:`~detector.server.desk.Desk`'s.

The index is loaded once, before the engines are forked, and shared by them; each engine
builds its own model after the fork (see :mod:`detector.server.engines` for why) and
rebuilds its own index when the catalog's generation changes (an image added or removed over
HTTP or by the command line). Uploads go through the same safe loader as every
scan; uploaded bytes are stored under names made of their sha256 only, within the
:class:`~detector.server.limits.StorageQuota`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np

from detector.config import FAST, Settings, effective_settings
from detector.intake.inputs import Input, meta_text
from detector.intake.prepare import prepare_bytes
from detector.outputs.records import scan_record
from detector.records import NONE, ScanResult
from detector.scan.scanner import Scanner
from detector.server.errors import Busy, ClientError
from detector.server.limits import StorageQuota
from detector.stage1.hashing import HASHER_ID
from detector.stage2.embedding import Models, embedder_id
from detector.storage.checks import NewCheck
from detector.storage.locking import DatabaseLock, Locked
from detector.storage.store import Store
from detector.tasks.cataloging import ERROR, add_to_catalog

LOG = logging.getLogger("copyscan.serve")
CATALOG_BUSY = "the catalog is being changed by another copyscan run; retry later"
_QUOTA_LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class Upload:
    """One uploaded image: its bytes, the name the client gave it (or '') and what the
    client said of it (``url``, ``page_url``, ``uploader``, ``listing_id``: see
    :data:`CHECK_FIELDS`)."""

    data: bytes
    name: str
    meta: dict[str, str] = field(default_factory=dict)


# What a client may say of an upload to check: kept with the check, shown on the review page.
CHECK_FIELDS = ("url", "page_url", "uploader", "listing_id")


def open_store(
    db: str | Path, overrides: dict[str, Any] | None, base: dict[str, Any] | None
) -> tuple[Store, Settings]:
    """The database at ``db`` (made if missing) opened for serving, and the settings in force:
    those saved in it (calibrated thresholds) under the caller's ``overrides``; ``base``: the
    front end's own defaults."""
    plain = effective_settings({}, overrides, base).settings
    store = Store.open(db, hasher=HASHER_ID, embedder=embedder_id(plain), create=True, shared=True)
    return store, effective_settings(store.saved_settings.read(), overrides, base).settings


def uploads_folder(db: str | Path) -> Path:
    """Where the bytes of flagged checks are kept, for review."""
    return Path(f"{db}.uploads")


def images_folder(db: str | Path) -> Path:
    """Where catalog images added over HTTP are kept."""
    return Path(f"{db}.images")


class CheckService:
    """The store, the model and one scanner per mode, used by one call at a time. Build with
    :meth:`open`; a forked process calls :meth:`reopen` before its first request."""

    def __init__(
        self, db: Path, store: Store, settings: Settings, models: Models, quota: StorageQuota | None = None
    ) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.models = models
        self.quota = quota
        self.uploads = uploads_folder(db)
        self.images = images_folder(db)
        self._scanners: dict[str, Scanner] = {}
        self._quota_logged = 0.0

    @classmethod
    def open(
        cls,
        db: str | Path,
        overrides: dict[str, Any] | None = None,
        base: dict[str, Any] | None = None,
        models: Models | None = None,
        quota: StorageQuota | None = None,
    ) -> CheckService:
        """Open (or create) the database at ``db`` for serving (see :func:`open_store`);
        ``models``: a loaded model to share (else one is built on first use); ``quota``:
        the bytes of uploads it may keep (None: no limit)."""
        store, settings = open_store(db, overrides, base)
        return cls(Path(db), store, settings, models or Models(settings), quota)

    def load_index(self) -> None:
        """Load the fast scanner's index and build its hash tables now, as the first check
        would. Done before the engines are forked, so that they share one copy of it; it
        never imports torch (see :mod:`detector.server.engines`)."""
        self.scanner(FAST).loaded.index.warm()

    def load_model(self) -> None:
        """Build the model and run it once, as the first check would (in each engine)."""
        self.models.embed([np.zeros((self.settings.image_size,) * 2 + (3,), dtype=np.uint8)])

    def reopen(self) -> None:
        """A connection of this process's own, the loaded scanners pointed at it: a SQLite
        connection must never be used across a fork. The old one is left alone (closing it
        here could act on the parent's file locks); the forking parent closed its own."""
        self.store = Store.open(
            self.db, hasher=self.store.hasher, embedder=self.store.embedder, create=False, shared=True
        )
        self._scanners = {mode: s.rebound(self.store) for mode, s in self._scanners.items()}

    def scanner(self, mode: str) -> Scanner:
        """The scanner of ``mode``, rebuilt when the catalog changed since it was loaded."""
        generation = self.store.catalog.generation()
        found = self._scanners.get(mode)
        if found is None or found.generation != generation:
            found = Scanner(self.store, self.models, self.settings, mode=mode)
            self._scanners[mode] = found
        return found

    def check(self, upload: Upload, mode: str, changes: dict[str, Any], record: bool) -> dict[str, Any]:
        """Check one upload against the catalog: its JSON record (as ``scan`` writes it, each
        match with its ``external_id``), plus ``check_id`` when it was recorded for review.
        A flagged upload's bytes are kept while the quota lasts (the check is answered and
        recorded either way)."""
        digest = sha256(upload.data).hexdigest()
        prepared = prepare_bytes(upload.name, upload.data, digest, self.settings)
        meta = meta_text(upload.meta)
        if meta is not None:
            prepared = replace(prepared, source=Input(upload.name, meta=meta))
        scanner = self.scanner(mode).reporting(changes.get("top_k"), changes.get("min_score"))
        (result,) = scanner.scan_prepared([prepared])
        record_json = self._record(result)
        if result.status == "error":
            raise ClientError(422, result.error or "unusable image", record_json)
        if record:
            kept = self._keep(self.uploads, digest, upload.data)[0] if result.flagged else None
            best = result.matches[0].verdict if result.matches else NONE
            record_json["check_id"] = self.store.checks.record(
                NewCheck(
                    digest, upload.name or None, kept, result.status, None, best, record_json, result.meta
                )
            )
        return record_json

    def add(self, upload: Upload, owner: str | None, external_id: str | None) -> dict[str, Any]:
        """Add one upload to the catalog (kept under ``DB.images/``). Another run holding the
        database is answered at once (503), never waited for: the engine would stand idle."""
        digest = sha256(upload.data).hexdigest()
        path, written = self._keep(self.images, digest, upload.data)
        if path is None:
            raise ClientError(507, "the server's storage quota for uploads is used up (see --max-stored-mb)")
        try:
            with DatabaseLock(self.db, "serve: catalog add", wait=0):
                (added,) = add_to_catalog(self.store, self.models, [path], self.settings, owner, external_id)
        except Locked as e:
            raise Busy(CATALOG_BUSY) from e
        if added.status == ERROR:
            if written:  # unusable bytes are not kept
                self._drop(Path(path))
            raise ClientError(422, added.error or "unusable image")
        return {"catalog_id": added.catalog_id, "status": added.status, "sha256": digest}

    def _record(self, result: ScanResult) -> dict[str, Any]:
        record = scan_record(result)
        external = self.store.catalog.external_ids(
            [m.catalog_id for m in result.matches if m.catalog_id is not None]
        )
        for m in record["matches"]:
            m["external_id"] = external.get(m["catalog_id"])
        return record

    def _keep(self, folder: Path, digest: str, data: bytes) -> tuple[str | None, bool]:
        """Store bytes as ``folder/<sha256>`` (written once, atomically); returns the path
        (None when the quota is used up) and whether this call wrote it."""
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / digest
        if target.exists():
            return str(target.resolve()), False
        if self.quota is not None and not self.quota.reserve(len(data)):
            now = time.monotonic()
            if now - self._quota_logged > _QUOTA_LOG_EVERY_S:
                self._quota_logged = now
                LOG.warning("storage quota of %d bytes used up: uploads are no longer kept", self.quota.limit)
            return None, False
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
        return str(target.resolve()), True

    def _drop(self, path: Path) -> None:
        size = path.stat().st_size if path.exists() else 0
        path.unlink(missing_ok=True)
        if self.quota is not None:
            self.quota.release(size)
