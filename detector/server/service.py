"""``copyscan serve``: the engine behind an HTTP API (FastAPI, served by uvicorn) and a review
page for moderators.

One process holds the model and the index, loaded once; the index is rebuilt when the
catalog's generation changes (an image added or removed over HTTP or by the command line).
Engine work runs one request at a time in a worker thread (the CPU is the limit, not the
event loop), so a slow check never blocks ``/v1/health``.

Safety: request bodies are capped before they are read (413), uploads go through the same
safe loader as every scan, errors are JSON ``{"error": ...}`` with a 4xx status and never a
stack trace; uploaded bytes are stored under names made of their sha256 only.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from detector import __version__
from detector.config import FAST, MODES, Settings, effective_settings
from detector.errors import CopyscanError, ImageError, NotFound
from detector.intake.loader import load_image
from detector.intake.prepare import prepare_bytes
from detector.outputs.records import scan_record
from detector.outputs.review_page import render_review
from detector.records import NONE, ScanResult
from detector.scan.scanner import Scanner
from detector.stage1.hashing import HASHER_ID
from detector.stage2.embedding import Models, embedder_id
from detector.storage.checks import CheckRecord, NewCheck
from detector.storage.locking import DatabaseLock, Locked
from detector.storage.store import Store
from detector.tasks.cataloging import ERROR, add_to_catalog

MAX_UPLOAD_BYTES = 20_000_000  # default request body cap
THUMB_SIDE = 320
_THUMB_CACHE = 256
_LOCK_WAIT_S = 30.0  # how long a catalog change waits for a scan holding the database

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ClientError(Exception):
    """A request the client must change: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra or {}


@dataclass(frozen=True)
class Upload:
    """One uploaded image: its bytes and the name the client gave it (or '')."""

    data: bytes
    name: str


class CheckService:
    """The store, the model and one scanner per mode, used by one request at a time. Build
    with :meth:`open`: the settings in force are those saved in the database (calibrated
    thresholds) under the caller's ``overrides``."""

    def __init__(self, db: Path, store: Store, settings: Settings, models: Models) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.models = models
        self.lock = threading.Lock()
        self.uploads = Path(f"{db}.uploads")
        self.images = Path(f"{db}.images")
        self._scanners: dict[str, Scanner] = {}
        self._thumbs: OrderedDict[str, bytes] = OrderedDict()
        self.started = time.monotonic()
        self.served = 0

    @classmethod
    def open(
        cls,
        db: str | Path,
        overrides: dict[str, Any] | None = None,
        base: dict[str, Any] | None = None,
        models: Models | None = None,
    ) -> CheckService:
        """Open (or create) the database at ``db`` for serving; ``base``: the front end's own
        defaults; ``models``: a loaded model to share (else one is built)."""
        plain = effective_settings({}, overrides, base).settings
        store = Store.open(db, hasher=HASHER_ID, embedder=embedder_id(plain), create=True, shared=True)
        settings = effective_settings(store.saved_settings.read(), overrides, base).settings
        return cls(Path(db), store, settings, models or Models(settings))

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
        match with its ``external_id``), plus ``check_id`` when it was recorded for review."""
        with self.lock:
            digest = sha256(upload.data).hexdigest()
            prepared = prepare_bytes(upload.name, upload.data, digest, self.settings)
            scanner = self.scanner(mode).reporting(changes.get("top_k"), changes.get("min_score"))
            (result,) = scanner.scan_prepared([prepared])
            self.served += 1
            record_json = self._record(result)
            if result.status == "error":
                raise ClientError(422, result.error or "unusable image", record_json)
            if record:
                kept = self._keep(self.uploads, digest, upload.data)[0] if result.flagged else None
                best = result.matches[0].verdict if result.matches else NONE
                record_json["check_id"] = self.store.checks.record(
                    NewCheck(digest, upload.name or None, kept, result.status, None, best, record_json)
                )
            return record_json

    def add(self, upload: Upload, owner: str | None, external_id: str | None) -> dict[str, Any]:
        """Add one upload to the catalog (kept under ``DB.images/``)."""
        with self.lock:
            digest = sha256(upload.data).hexdigest()
            path, written = self._keep(self.images, digest, upload.data)
            try:
                with DatabaseLock(self.db, "serve: catalog add", wait=_LOCK_WAIT_S):
                    (added,) = add_to_catalog(
                        self.store, self.models, [path], self.settings, owner, external_id
                    )
            except Locked as e:
                raise ClientError(503, str(e)) from e
            if added.status == ERROR:
                if written:  # unusable bytes are not kept
                    Path(path).unlink(missing_ok=True)
                raise ClientError(422, added.error or "unusable image")
            return {"catalog_id": added.catalog_id, "status": added.status, "sha256": digest}

    def remove(self, catalog_id: int | None = None, external_id: str | None = None) -> dict[str, Any]:
        """Remove catalog images by id or by external id; 404 when none matched."""
        with self.lock:
            try:
                with DatabaseLock(self.db, "serve: catalog remove", wait=_LOCK_WAIT_S):
                    removed = self.store.catalog.remove(
                        ids=[catalog_id] if catalog_id is not None else [],
                        external_ids=[external_id] if external_id is not None else [],
                    )
            except Locked as e:
                raise ClientError(503, str(e)) from e
            if not removed:
                raise ClientError(404, "no such catalog image")
            return {"removed": removed}

    def stats(self) -> dict[str, Any]:
        with self.lock:
            s = self.store.stats()
            counts = self.store.checks.counts()
            return {
                "catalog_images": s.images,
                "owners": s.owners,
                "catalog_generation": self.store.catalog.generation(),
                "checks": counts,
                "checks_served": self.served,
                "uptime_s": round(time.monotonic() - self.started, 1),
                "hasher": s.hasher,
                "embedder": s.embedder,
                "version": __version__,
            }

    def checks(self, limit: int, flagged_only: bool) -> list[CheckRecord]:
        with self.lock:
            return self.store.checks.recent(limit, flagged_only)

    def decide(self, check_id: int, decision: str, note: str | None) -> CheckRecord:
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

    def _record(self, result: ScanResult) -> dict[str, Any]:
        record = scan_record(result)
        external = self.store.catalog.external_ids([m.catalog_id for m in result.matches])
        for m in record["matches"]:
            m["external_id"] = external.get(m["catalog_id"])
        return record

    @staticmethod
    def _keep(folder: Path, digest: str, data: bytes) -> tuple[str, bool]:
        """Store bytes as ``folder/<sha256>`` (written once, atomically); returns the path and
        whether this call wrote it."""
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / digest
        written = not target.exists()
        if written:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        return str(target.resolve()), written


class BodyLimit:
    """ASGI middleware: a request whose body is over ``limit`` bytes gets 413 before more of
    it is read (by its Content-Length, or as it streams in)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(send, self.limit)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _BodyTooLarge:
            if not started:
                await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = JSONResponse({"error": f"request body over {limit} bytes"}, status_code=413).body
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "owner": {"type": "string"},
                        "external_id": {"type": "string"},
                    },
                    "required": ["image"],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


async def _upload(request: Request) -> tuple[Upload, dict[str, str]]:
    """The image of a request (multipart field ``image``, or the raw body) and the other
    multipart text fields."""
    ctype = request.headers.get("content-type", "")
    try:
        if ctype.startswith("multipart/form-data"):
            return await _multipart(request)
        data = await request.body()
    except _BodyTooLarge as e:
        raise ClientError(413, "request body over the upload limit") from e
    if not data:
        raise ClientError(400, "empty body: send the image as the body or as multipart field 'image'")
    return Upload(data, ""), {}


async def _multipart(request: Request) -> tuple[Upload, dict[str, str]]:
    try:
        form = await request.form(max_files=1, max_fields=10)
    except _BodyTooLarge:
        raise
    except Exception as e:  # malformed multipart: the parser's own exceptions
        raise ClientError(400, f"malformed multipart body: {e}") from e
    image = form.get("image")
    if image is None or isinstance(image, str):
        raise ClientError(400, "multipart body has no file field 'image'")
    data = await image.read()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return Upload(data, os.path.basename(image.filename or "")), fields


def create_app(engine: CheckService, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> Any:
    """The ASGI application serving ``engine``."""
    app = FastAPI(
        title="copyscan",
        version=__version__,
        description="Check images against a catalog of originals; add and remove catalog "
        'images; review flagged checks. Errors are JSON {"error": "..."} with a 4xx status.',
        docs_url=None,  # the interactive docs load scripts from a CDN: /openapi.json instead
        redoc_url=None,
    )

    @app.exception_handler(ClientError)
    async def client_error(_request: Request, e: ClientError) -> JSONResponse:
        return JSONResponse({"error": str(e), **e.extra}, status_code=e.status)

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, e: NotFound) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=404)

    @app.exception_handler(CopyscanError)
    async def engine_error(_request: Request, e: CopyscanError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=409)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, e: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}" for err in e.errors()
        )
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, _e: Exception) -> JSONResponse:
        return JSONResponse({"error": "internal error: see the server log"}, status_code=500)

    @app.get("/v1/health", summary="Liveness and catalog size")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/v1/stats", summary="Catalog, checks and decisions counts")
    async def stats() -> dict[str, Any]:
        return await run_in_threadpool(engine.stats)

    @app.post(
        "/v1/check",
        summary="Check an image against the catalog",
        description="The image as the raw body or as multipart field `image`. The answer is "
        "the JSON record `scan --format jsonl` writes (query, status, error, matches best first "
        "with catalog_id, catalog_path, owner, external_id, hamming, cosine, score, verdict, "
        "transform, inliers, query_region, catalog_region) plus `check_id` when it was recorded "
        "for review. An unusable image is a 422 with the same record and its error.",
        openapi_extra=_IMAGE_BODY,
    )
    async def check(
        request: Request,
        mode: str = FAST,
        top_k: int | None = None,
        min_score: float | None = None,
        record: bool = True,
    ) -> dict[str, Any]:
        if mode not in MODES:
            raise ClientError(422, f"mode must be one of {', '.join(MODES)}")
        changes: dict[str, Any] = {}
        if top_k is not None:
            if top_k < 1:
                raise ClientError(422, "top_k must be at least 1")
            changes["top_k"] = top_k
        if min_score is not None:
            if not 0 <= min_score <= 1:
                raise ClientError(422, "min_score must be within [0, 1]")
            changes["min_score"] = min_score
        upload, _ = await _upload(request)
        return await run_in_threadpool(engine.check, upload, mode, changes, record)

    @app.post(
        "/v1/catalog",
        status_code=201,
        summary="Add an image to the catalog",
        description="Multipart field `image` with optional fields `owner` and `external_id`, "
        "or the raw body with them as query parameters. Content already in the catalog answers "
        "`status: known` with its id.",
        openapi_extra=_IMAGE_BODY,
    )
    async def add(
        request: Request, owner: str | None = None, external_id: str | None = None
    ) -> dict[str, Any]:
        upload, fields = await _upload(request)
        owner = fields.get("owner", owner) or None
        external_id = fields.get("external_id", external_id) or None
        return await run_in_threadpool(engine.add, upload, owner, external_id)

    @app.delete("/v1/catalog/{catalog_id}", summary="Remove a catalog image by id")
    async def remove(catalog_id: int) -> dict[str, Any]:
        return await run_in_threadpool(engine.remove, catalog_id, None)

    @app.delete("/v1/catalog", summary="Remove catalog images by external id")
    async def remove_external(external_id: str) -> dict[str, Any]:
        return await run_in_threadpool(engine.remove, None, external_id)

    @app.get("/v1/checks", summary="Recent checks, newest first (flagged ones by default)")
    async def checks(limit: int = 50, all: bool = False) -> list[dict[str, Any]]:
        found = await run_in_threadpool(engine.checks, max(1, min(limit, 1000)), not all)
        return [c.__dict__ for c in found]

    @app.post(
        "/v1/checks/{check_id}/decision",
        summary="Store a moderator's decision on a check",
        description='JSON body {"decision": "confirmed" | "dismissed", "note": "..."}.',
    )
    async def decide(check_id: int, request: Request) -> dict[str, Any]:
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise ClientError(415, "send the decision as application/json")
        try:
            body = await request.json()
        except ValueError as e:
            raise ClientError(400, "the body is not JSON") from e
        if not isinstance(body, dict) or not isinstance(body.get("decision"), str):
            raise ClientError(422, 'expected {"decision": "confirmed" | "dismissed"}')
        note = body.get("note")
        found = await run_in_threadpool(
            engine.decide, check_id, body["decision"], note if isinstance(note, str) else None
        )
        return found.__dict__

    @app.get("/review", response_class=HTMLResponse, summary="The moderators' review page")
    async def review(limit: int = 50) -> Response:
        found = await run_in_threadpool(engine.checks, max(1, min(limit, 500)), True)
        page, csp = render_review(found)
        return HTMLResponse(
            page, headers={"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff"}
        )

    @app.get("/review/thumbs/{kind}/{key}.jpg", summary="Thumbnail of a checked upload or a catalog image")
    async def thumb(kind: str, key: int) -> Response:
        if kind not in ("check", "match", "catalog"):
            raise ClientError(404, "no such thumbnail")
        data = await run_in_threadpool(engine.thumbnail, kind, key)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=300"})

    return BodyLimit(app, max_upload_bytes)
