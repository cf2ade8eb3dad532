"""Bounds on what one client can make the server hold: body size and body time per request
(:class:`BodyLimit`), header time and open connections per server (:func:`guarded_protocol`),
and the bytes of uploads kept on disk (:class:`StorageQuota`).

Measured before these existed: a client sending one byte every 2 s held its connection for a
minute, 19,800 stalled uploads were held at once, and every client that went away wrote a
traceback (96 MB of log). Now a slow body is cut at its deadline with a 408, stalled headers
are dropped at theirs, connections over the cap get a 503 at once, and a client that goes
away is one log line."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detector.server.errors import RETRY_AFTER_S, BodyRefused, BodyTooLarge, BodyTooSlow, ClientGone

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOG = logging.getLogger("copyscan.serve")
SMALL_BODY_BYTES = 64_000  # a body that is not an image upload: a decision, a sign-in form
_LOG_EVERY_S = 10.0  # refused connections are logged at most this often


@dataclass(frozen=True)
class BodyLimits:
    """How much of a request body is read, and for how long: ``upload_bytes`` on the
    ``upload_paths`` (images), ``small_bytes`` elsewhere; the whole body within ``seconds``
    of the request's headers."""

    upload_bytes: int
    seconds: float
    upload_paths: frozenset[str] = frozenset({"/v1/check", "/v1/catalog"})
    small_bytes: int = SMALL_BODY_BYTES


class BodyLimit:
    """ASGI middleware: a body over its limit gets 413 before more of it is read (by its
    Content-Length, or as it streams in); a body still arriving at the deadline gets 408; a
    client that goes away while sending is logged on one line. The app sees these as
    :class:`BodyTooLarge`, :class:`BodyTooSlow` and :class:`ClientGone` raised from
    ``receive``; what the app does not answer is answered here."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = (
            self.limits.upload_bytes if scope["path"] in self.limits.upload_paths else self.limits.small_bytes
        )
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await answer(send, BodyTooLarge(limit))
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.seconds
        seen = 0
        complete = False
        started = False

        async def bounded() -> Message:
            nonlocal seen, complete
            if complete:  # after the body only a disconnect can come: nothing to bound
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                LOG.info(
                    "%s: body not received within %g s (%d bytes came): cut",
                    _who(scope),
                    self.limits.seconds,
                    seen,
                )
                raise BodyTooSlow(self.limits.seconds) from None
            if message["type"] == "http.disconnect":
                LOG.info("%s: the client went away after %d bytes of its body", _who(scope), seen)
                raise ClientGone("the client went away")
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
            complete = not message.get("more_body", False)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded, watched)
        except BodyRefused as e:
            if not started:
                await answer(send, e)
        except ClientGone:
            pass  # logged where it was seen; nobody is left to answer


async def answer(send: Send, error: Any) -> None:
    """Send the JSON answer of a :class:`~detector.server.errors.ClientError` straight from
    ASGI middleware (where there is no framework to do it)."""
    body = json.dumps({"error": str(error), **error.extra}).encode()
    headers = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _who(scope: Scope) -> str:
    client = scope.get("client") or ("?", 0)
    return f"{client[0]}:{client[1]} {scope.get('method', '')} {scope.get('path', '')}"


def _canned(status: int, reason: str, message: str, retry: bool) -> bytes:
    """A whole HTTP/1.1 answer written by the connection itself, before any request was read."""
    body = json.dumps({"error": message}).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "x-content-type-options: nosniff",
        "connection: close",
    ]
    if retry:
        head.append(f"retry-after: {RETRY_AFTER_S}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def guarded_protocol(header_timeout: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol (h11) with two more bounds: a request's headers must be
    complete within ``header_timeout`` seconds of the connection opening or of the previous
    answer (uvicorn's own keep-alive timer restarts on every byte, so headers sent a byte at a
    time would hold it forever); and beyond ``max_connections`` open connections a new one is
    answered 503 and closed at once."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    overloaded = _canned(503, "Service Unavailable", "too many open connections; retry later", True)
    malformed = _canned(400, "Bad Request", "malformed HTTP request", False)
    too_slow = _canned(
        408, "Request Timeout", f"request headers not received within {header_timeout:g} s", False
    )
    last_logged = [0.0]

    class GuardedH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _armed_for: object = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
            super().connection_made(transport)  # type: ignore[arg-type]
            if len(self.connections) > max_connections:
                now = time.monotonic()
                if now - last_logged[0] > _LOG_EVERY_S:
                    last_logged[0] = now
                    LOG.warning(
                        "%d connections open (the cap is %d): refusing new ones",
                        len(self.connections) - 1,
                        max_connections,
                    )
                self.transport.write(overloaded)
                self.transport.close()
                return
            self._arm()

        def send_400_response(self, msg: str) -> None:
            """uvicorn's answer to bytes that are not HTTP, as JSON with nosniff like all others."""
            self.transport.write(malformed)
            self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._armed_for = self.cycle
            self._timer = self.loop.call_later(header_timeout, self._expired)

        def _expired(self) -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self.cycle is self._armed_for and not self.transport.is_closing():
                client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
                LOG.info("%s: request headers not received within %g s: closed", client, header_timeout)
                self.transport.write(too_slow)
                self.transport.close()

    return GuardedH11Protocol


class StorageQuota:
    """The bytes of uploads the server may keep on disk (flagged checks' uploads and catalog
    images added over HTTP), shared by every engine process forked after it was made."""

    def __init__(self, limit: int, folders: tuple[Path, ...]) -> None:
        self.limit = int(limit)
        used = sum(_size(folder) for folder in folders)
        self._used = multiprocessing.get_context("fork").Value("q", used)

    @property
    def used(self) -> int:
        return int(self._used.value)

    def reserve(self, n: int) -> bool:
        """Take ``n`` bytes of the quota; False (nothing taken) if that would go over it."""
        with self._used.get_lock():
            if self._used.value + n > self.limit:
                return False
            self._used.value += n
            return True

    def release(self, n: int) -> None:
        """Give back bytes taken but not written."""
        with self._used.get_lock():
            self._used.value = max(0, self._used.value - n)


def _size(folder: Path) -> int:
    try:
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    except OSError:  # no such folder yet
        return 0
