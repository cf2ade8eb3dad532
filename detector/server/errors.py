"""What the server answers with when a request cannot be served: each error carries its HTTP
status, and the app turns it into JSON ``{"error": ...}`` (never a stack trace)."""

from __future__ import annotations

from typing import Any

from detector.errors import CopyscanError

RETRY_AFTER_S = 5  # what a 503 asks the client to wait before it retries


class ClientError(CopyscanError):
    """A request the client must change or retry: ``status`` is the HTTP status to answer
    with, ``extra`` more JSON fields, ``headers`` more response headers."""

    def __init__(
        self,
        status: int,
        message: str,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra or {}
        self.headers = headers or {}


class Busy(ClientError):
    """Retry later (503 with ``Retry-After``): the catalog is being changed by another run,
    or no check engine is free to take the request."""

    def __init__(self, message: str) -> None:
        super().__init__(503, message, headers={"Retry-After": str(RETRY_AFTER_S)})


class BodyRefused(ClientError):
    """The request body was refused as it arrived; the connection is closed after the answer
    (the rest of the body is never read)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message, headers={"Connection": "close"})


class BodyTooLarge(BodyRefused):
    """The body is over the limit of its endpoint (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class BodyTooSlow(BodyRefused):
    """The body did not arrive within the body timeout (408)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"request body not received within {seconds:g} s")


class ClientGone(CopyscanError):
    """The client closed the connection before its request was read: there is nobody to
    answer, and one log line says so."""


class EngineError(CopyscanError):
    """The check engines could not be started."""
