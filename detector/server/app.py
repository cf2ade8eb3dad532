"""``copyscan serve``: the engines behind an HTTP API (FastAPI, served by uvicorn) and a review
page for moderators, behind a door (:mod:`detector.server.guard`) and within limits
(:mod:`detector.server.limits`).

Checks and catalog additions go to the engine processes (:mod:`detector.server.engines`);
the rest is answered by the :class:`~detector.server.desk.Desk` in this process, so
``/v1/health`` and the review page answer even while every engine is busy.

Errors are JSON ``{"error": ...}`` with a 4xx status (503 with ``Retry-After`` to retry
later) and never a stack trace; every path and query number is range-checked, so no id
reaches SQLite too large for it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from detector import __version__
from detector.config import FAST, MODES
from detector.errors import CopyscanError, NotFound, SettingError
from detector.outputs.review_page import render_review, render_signin
from detector.server.desk import Desk
from detector.server.engines import EngineCount, EnginePool
from detector.server.errors import ClientError, ClientGone
from detector.server.guard import (
    SIGNIN_PATH,
    Door,
    DoorPolicy,
    Sessions,
    default_hosts,
    loopback,
    principal_of,
    session_cookie,
)
from detector.server.limits import BodyLimit, BodyLimits, StorageQuota, guarded_protocol
from detector.server.service import CHECK_FIELDS, Upload, images_folder, uploads_folder
from detector.server.tokens import ADMIN, Tokens

LOG = logging.getLogger("copyscan.serve")
MAX_ID = 2**63 - 1  # SQLite's largest integer: a bigger id is a 422, not an overflow
Id = Annotated[int, PathParam(ge=1, le=MAX_ID)]


@dataclass(frozen=True)
class ServeOptions:
    """How ``copyscan serve`` listens and what it bounds. Sizes in bytes, times in seconds.

    ``workers``: engine processes (0: one per CPU); ``auth``: tokens needed (False only on a
    loopback ``host``); ``allowed_hosts``: Host names answered beside :func:`default_hosts`
    (``*``: any); ``cors_origins``: other origins that may call with a bearer token."""

    host: str = "127.0.0.1"
    port: int = 8700
    workers: int = 0
    auth: bool = True
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    max_upload_bytes: int = 20_000_000
    max_stored_bytes: int = 2_000_000_000
    max_note_chars: int = 2000
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive: float = 5.0
    max_connections: int = 64

    def __post_init__(self) -> None:
        if not self.auth and not loopback(self.host):
            raise SettingError(
                f"running without authentication is allowed only on a loopback address, not {self.host}"
            )
        for name in ("max_upload_bytes", "max_note_chars", "max_connections"):
            if getattr(self, name) < 1:
                raise SettingError(f"{name} must be at least 1")
        for name in ("header_timeout", "body_timeout", "keep_alive"):
            if not getattr(self, name) > 0:
                raise SettingError(f"{name} must be above 0")
        if self.workers < 0 or self.max_stored_bytes < 0:
            raise SettingError("workers and max_stored_bytes cannot be negative")

    def policy(self) -> DoorPolicy:
        hosts = (
            None
            if "*" in self.allowed_hosts
            else default_hosts(self.host) | {h.lower() for h in self.allowed_hosts}
        )
        return DoorPolicy(self.auth, hosts, frozenset(o.rstrip("/").lower() for o in self.cors_origins))


class Serving:
    """One running server: its engines, its desk, its tokens and the app. :meth:`start`
    loads everything (forking the engines first, while this process has no other thread);
    :meth:`run` serves until interrupted; :meth:`close` ends the engines."""

    def __init__(self, options: ServeOptions, engines: EnginePool, desk: Desk, tokens: Tokens | None) -> None:
        self.options = options
        self.engines = engines
        self.desk = desk
        self.tokens = tokens
        self.app = create_app(desk, engines, options, tokens)

    @classmethod
    def start(
        cls,
        db: str | Path,
        overrides: dict[str, Any] | None,
        base: dict[str, Any] | None,
        options: ServeOptions,
        tokens: Tokens | None,
    ) -> Serving:
        quota = StorageQuota(options.max_stored_bytes, (uploads_folder(db), images_folder(db)))
        engines = EnginePool.start(db, overrides, base, EngineCount.choose(options.workers), quota)
        try:
            desk = Desk.open(db, overrides, base, quota, options.max_note_chars)
        except BaseException:
            engines.close()
            raise
        return cls(options, engines, desk, tokens)

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM (uvicorn's own handling), then end the engines."""
        import uvicorn

        o = self.options
        try:
            uvicorn.run(
                self.app,
                host=o.host,
                port=o.port,
                http=guarded_protocol(o.header_timeout, o.max_connections),
                timeout_keep_alive=max(1, round(o.keep_alive)),
                log_level="warning",
                access_log=False,
                server_header=False,
            )
        finally:
            self.close()

    def close(self) -> None:
        self.engines.close()
        self.desk.store.close()


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


MAX_CHECK_FIELD_CHARS = 2000


async def _upload(request: Request) -> tuple[Upload, dict[str, str]]:
    """The image of a request (multipart field ``image``, or the raw body) and the other
    multipart text fields."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _multipart(request)
    data = await request.body()
    if not data:
        raise ClientError(400, "empty body: send the image as the body or as multipart field 'image'")
    return Upload(data, ""), {}


def _said_of_upload(request: Request, fields: dict[str, str]) -> dict[str, str]:
    """What the client said of an upload to check (:data:`CHECK_FIELDS`), from the query
    string or the multipart text fields (these win), each at most
    :data:`MAX_CHECK_FIELD_CHARS` characters."""
    said = {}
    for name in CHECK_FIELDS:
        value = fields.get(name, request.query_params.get(name))
        if value is None or value == "":
            continue
        if len(value) > MAX_CHECK_FIELD_CHARS:
            raise ClientError(422, f"{name} over {MAX_CHECK_FIELD_CHARS} characters")
        said[name] = value
    return said


async def _form(request: Request) -> FormData:
    """The request's form (multipart or urlencoded), read here rather than by FastAPI, which
    would turn the body limits' 408 and 413 into a 400."""
    try:
        return await request.form(max_files=1, max_fields=10)
    except CopyscanError:  # the body limits' own refusals, and a client gone
        raise
    except Exception as e:  # malformed multipart: the parser's own exceptions
        raise ClientError(400, f"malformed form body: {e}") from e


async def _multipart(request: Request) -> tuple[Upload, dict[str, str]]:
    form = await _form(request)
    image = form.get("image")
    if image is None or isinstance(image, str):
        raise ClientError(400, "multipart body has no file field 'image'")
    data = await image.read()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return Upload(data, os.path.basename(image.filename or "")), fields


async def _json_object(request: Request) -> dict[str, Any]:
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise ClientError(415, "send the body as application/json")
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
        raise ClientError(400, "the body is not JSON (or is nested too deep)") from e
    if not isinstance(body, dict):
        raise ClientError(422, "expected a JSON object")
    return body


def create_app(desk: Desk, engines: EnginePool, options: ServeOptions, tokens: Tokens | None) -> Any:
    """The ASGI application: the routes, within the body limits, behind the door."""
    sessions = Sessions(tokens) if tokens is not None else None
    app = FastAPI(
        title="copyscan",
        version=__version__,
        description="Check images against a catalog of originals; add and remove catalog "
        "images; review flagged checks. Send `Authorization: Bearer TOKEN`: the check token "
        "for POST /v1/check, the admin token for everything else. Errors are JSON "
        '{"error": "..."} with a 4xx status (503 with Retry-After: retry later).',
        docs_url=None,  # the interactive docs load scripts from a CDN: /openapi.json instead
        redoc_url=None,
    )

    @app.exception_handler(ClientError)
    async def client_error(_request: Request, e: ClientError) -> JSONResponse:
        return JSONResponse({"error": str(e), **e.extra}, status_code=e.status, headers=e.headers)

    @app.exception_handler(ClientGone)
    async def gone(_request: Request, _e: ClientGone) -> Response:
        return Response(status_code=400)  # never sent: there is nobody to send it to

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

    @app.get("/v1/health", summary="Liveness (open: no token needed)")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/v1/stats", summary="Catalog, checks, decisions, engines and storage counts")
    async def stats() -> dict[str, Any]:
        return await run_in_threadpool(desk.stats, engines.served, engines.pids)

    @app.post(
        "/v1/check",
        summary="Check an image against the catalog (check or admin token)",
        description="The image as the raw body or as multipart field `image`. The answer is "
        "the JSON record `scan --format jsonl` writes (query, status, error, matches best first "
        "with catalog_id, catalog_path, owner, external_id, hamming, cosine, score, verdict, "
        "transform, inliers, query_region, catalog_region) plus `check_id` when it was recorded "
        "for review. An unusable image is a 422 with the same record and its error. Say where "
        "the upload comes from with `url`, `page_url`, `uploader` and `listing_id` (query "
        "parameters or multipart text fields, 2,000 characters at most): they are kept with "
        "the check, returned in its record's `meta` and shown on the review page.",
        openapi_extra=_IMAGE_BODY,
    )
    async def check(
        request: Request,
        mode: str = FAST,
        top_k: Annotated[int | None, Query(ge=1, le=1000)] = None,
        min_score: Annotated[float | None, Query(ge=0, le=1)] = None,
        record: bool = True,
    ) -> dict[str, Any]:
        if mode not in MODES:
            raise ClientError(422, f"mode must be one of {', '.join(MODES)}")
        changes = {k: v for k, v in (("top_k", top_k), ("min_score", min_score)) if v is not None}
        upload, fields = await _upload(request)
        upload = replace(upload, meta=_said_of_upload(request, fields))
        return await engines.check(upload, mode, changes, record)

    @app.post(
        "/v1/catalog",
        status_code=201,
        summary="Add an image to the catalog",
        description="Multipart field `image` with optional fields `owner` and `external_id`, "
        "or the raw body with them as query parameters. Content already in the catalog answers "
        "`status: known` with its id. 503 when another copyscan run is changing the catalog.",
        openapi_extra=_IMAGE_BODY,
    )
    async def add(
        request: Request,
        owner: Annotated[str | None, Query(max_length=500)] = None,
        external_id: Annotated[str | None, Query(max_length=500)] = None,
    ) -> dict[str, Any]:
        upload, fields = await _upload(request)
        owner = fields.get("owner", owner) or None
        external_id = fields.get("external_id", external_id) or None
        if max(len(owner or ""), len(external_id or "")) > 500:
            raise ClientError(422, "owner and external_id are at most 500 characters")
        return await engines.add(upload, owner, external_id)

    @app.delete("/v1/catalog/{catalog_id}", summary="Remove a catalog image by id")
    async def remove(catalog_id: Id) -> dict[str, Any]:
        return await run_in_threadpool(desk.remove, catalog_id, None)

    @app.delete("/v1/catalog", summary="Remove catalog images by external id")
    async def remove_external(external_id: Annotated[str, Query(max_length=500)]) -> dict[str, Any]:
        return await run_in_threadpool(desk.remove, None, external_id)

    @app.get("/v1/checks", summary="Recent checks, newest first (flagged ones by default)")
    async def checks(
        limit: Annotated[int, Query(ge=1, le=1000)] = 50, all: bool = False
    ) -> list[dict[str, Any]]:
        found = await run_in_threadpool(desk.checks, limit, not all)
        return [c.__dict__ for c in found]

    @app.post(
        "/v1/checks/{check_id}/decision",
        summary="Store a moderator's decision on a check",
        description='JSON body {"decision": "confirmed" | "dismissed", "note": "..."}; the note '
        "is at most --max-note-chars characters.",
    )
    async def decide(check_id: Id, request: Request) -> dict[str, Any]:
        body = await _json_object(request)
        if not isinstance(body.get("decision"), str):
            raise ClientError(422, 'expected {"decision": "confirmed" | "dismissed"}')
        note = body.get("note")
        found = await run_in_threadpool(
            desk.decide, check_id, body["decision"], note if isinstance(note, str) else None
        )
        return found.__dict__

    @app.get("/review", response_class=HTMLResponse, summary="The moderators' review page")
    async def review(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> Response:
        session = principal_of(request.scope).session
        found = await run_in_threadpool(desk.checks, limit, True)
        page, csp = render_review(found, session.csrf if session else "", session is not None)
        return HTMLResponse(page, headers={"Content-Security-Policy": csp})

    @app.get(SIGNIN_PATH, response_class=HTMLResponse, summary="Sign in to the review page")
    async def signin_page() -> Response:
        if tokens is None:
            return RedirectResponse("/review", status_code=303)
        page, csp = render_signin()
        return HTMLResponse(page, headers={"Content-Security-Policy": csp})

    @app.post(SIGNIN_PATH, summary="Sign in with the admin token (form field `token`)")
    async def signin(request: Request) -> Response:
        if tokens is None or sessions is None:
            return RedirectResponse("/review", status_code=303)
        token = (await _form(request)).get("token")
        found = tokens.identify(token) if isinstance(token, str) else None
        if found is None or found[0] != ADMIN:
            page, csp = render_signin("That is not the admin token.")
            return HTMLResponse(page, status_code=401, headers={"Content-Security-Policy": csp})
        session = sessions.start(*found)
        response = RedirectResponse("/review", status_code=303)
        response.headers["Set-Cookie"] = session_cookie(session, request.url.scheme == "https")
        return response

    @app.post("/review/signout", summary="End the review page's session")
    async def signout(request: Request) -> Response:
        session = principal_of(request.scope).session
        if session is not None and sessions is not None:
            sessions.end(session.id)
        response = JSONResponse({"signed_out": session is not None})
        response.headers["Set-Cookie"] = session_cookie(None, request.url.scheme == "https")
        return response

    @app.get("/review/thumbs/{kind}/{key}.jpg", summary="Thumbnail of a checked upload or a catalog image")
    async def thumb(kind: str, key: Id) -> Response:
        if kind not in ("check", "match", "catalog"):
            raise ClientError(404, "no such thumbnail")
        data = await run_in_threadpool(desk.thumbnail, kind, key)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    limited = BodyLimit(app, BodyLimits(options.max_upload_bytes, options.body_timeout))
    return Door(limited, options.policy(), tokens, sessions)
