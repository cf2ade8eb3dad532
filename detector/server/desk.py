"""What ``copyscan serve`` answers without the model, in the HTTP process itself: counts, the
check history, moderators' decisions, catalog removals and thumbnails. It never waits for an
engine, so the review page stays quick while every engine is busy checking."""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from PIL import Image

from detector import __version__
from detector.config import Settings
from detector.errors import ImageError
from detector.intake.loader import load_image
from detector.server.errors import Busy, ClientError
from detector.server.limits import StorageQuota
from detector.server.service import CATALOG_BUSY, open_store
from detector.storage.checks import CheckRecord
from detector.storage.locking import DatabaseLock, Locked
from detector.storage.store import Store

THUMB_SIDE = 320
_THUMB_CACHE = 256


class Desk:
    """The store and a thumbnail cache, used from the server's threads one call at a time.
    ``max_note_chars``: the longest note a decision may carry."""

    def __init__(
        self, db: Path, store: Store, settings: Settings, quota: StorageQuota | None, max_note_chars: int
    ) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.quota = quota
        self.max_note_chars = max_note_chars
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self._thumbs: OrderedDict[str, bytes] = OrderedDict()

    @classmethod
    def open(
        cls,
        db: str | Path,
        overrides: dict[str, Any] | None = None,
        base: dict[str, Any] | None = None,
        quota: StorageQuota | None = None,
        max_note_chars: int = 2000,
    ) -> Desk:
        store, settings = open_store(db, overrides, base)
        return cls(Path(db), store, settings, quota, max_note_chars)

    def remove(self, catalog_id: int | None = None, external_id: str | None = None) -> dict[str, Any]:
        """Remove catalog images by id or by external id; 404 when none matched, 503 at once
        when another run holds the database."""
        with self.lock:
            try:
                with DatabaseLock(self.db, "serve: catalog remove", wait=0):
                    removed = self.store.catalog.remove(
                        ids=[catalog_id] if catalog_id is not None else [],
                        external_ids=[external_id] if external_id is not None else [],
                    )
            except Locked as e:
                raise Busy(CATALOG_BUSY) from e
            if not removed:
                raise ClientError(404, "no such catalog image")
            return {"removed": removed}

    def stats(self, served: int, engines: list[int]) -> dict[str, Any]:
        """Counts for ``/v1/stats``; ``served``: checks the engines answered, ``engines``:
        their process ids."""
        with self.lock:
            s = self.store.stats()
            return {
                "catalog_images": s.images,
                "owners": s.owners,
                "catalog_generation": self.store.catalog.generation(),
                "checks": self.store.checks.counts(),
                "checks_served": served,
                "engine_processes": len(engines),
                "engine_pids": engines,
                "stored_upload_bytes": self.quota.used if self.quota else None,
                "stored_upload_quota": self.quota.limit if self.quota else None,
                "uptime_s": round(time.monotonic() - self.started, 1),
                "hasher": s.hasher,
                "embedder": s.embedder,
                "version": __version__,
            }

    def checks(self, limit: int, flagged_only: bool) -> list[CheckRecord]:
        with self.lock:
            return self.store.checks.recent(limit, flagged_only)

    def decide(self, check_id: int, decision: str, note: str | None) -> CheckRecord:
        if note is not None and len(note) > self.max_note_chars:
            raise ClientError(422, f"note over {self.max_note_chars} characters")
        with self.lock:
            try:
                return self.store.checks.decide(check_id, decision, note)
            except ValueError as e:
                raise ClientError(422, str(e)) from e

    def thumbnail(self, kind: str, key: int) -> bytes:
        """A JPEG thumbnail of a checked upload ('check'), of the catalog image a check matched
        best ('match', as recorded then, so it shows after the image left the catalog), or of a
        catalog image ('catalog')."""
        with self.lock:
            path: str | None
            if kind == "check":
                path = self.store.checks.get(key).upload_path
            elif kind == "match":
                matches = self.store.checks.get(key).result.get("matches") or [{}]
                found = matches[0].get("catalog_path") if isinstance(matches[0], dict) else None
                path = found if isinstance(found, str) else None
            else:
                entry = self.store.catalog.entries([key]).get(key)
                path = entry.path if entry else None
            if not path:
                raise ClientError(404, "no image kept for it")
            if path in self._thumbs:
                self._thumbs.move_to_end(path)
                return self._thumbs[path]
            try:
                rgb = load_image(path, self.settings).rgb
            except ImageError as e:
                raise ClientError(404, f"image not available: {type(e).__name__}") from e
            im = Image.fromarray(rgb)
            im.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            im.save(out, format="JPEG", quality=85)
            self._thumbs[path] = out.getvalue()
            if len(self._thumbs) > _THUMB_CACHE:
                self._thumbs.popitem(last=False)
            return self._thumbs[path]
