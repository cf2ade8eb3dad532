"""The server's door (ASGI middleware in front of everything): which Host names it answers,
which origins may call it, who is asking and what they may do, and the headers every answer
carries.

In the order a request meets them:

1. **Host allow-list** (421): DNS rebinding makes a foreign name resolve to 127.0.0.1, so a
   page on ``evil.example`` could otherwise talk to a server on the moderator's machine.
2. **Origin** (403): a request a browser sends from another origin (its ``Origin`` header, or
   ``Sec-Fetch-Site`` for unsafe methods without one) is refused, unless that origin is on
   the CORS allow-list (off by default), which then also gets CORS headers and preflights.
3. **Authentication** (401) and **scope** (403): ``Authorization: Bearer TOKEN``, or the
   review page's session cookie (HttpOnly, SameSite=Strict) made by signing in with the admin
   token. Only ``/v1/health``, ``/openapi.json`` and the sign-in page are open; ``POST
   /v1/check`` needs the check token; everything else the admin token (a route added later
   is closed until someone opens it here).
4. **CSRF** (403): a state change authenticated by the cookie also needs the session's CSRF
   token in ``X-CSRF-Token`` and an ``Origin`` of this very server. Bearer requests need
   neither: a browser never attaches a bearer token by itself.

Every answer gets ``nosniff``, a Content-Security-Policy (``default-src 'none'`` unless the
page set its own), ``Referrer-Policy: same-origin`` (``no-referrer`` would make the browser
send ``Origin: null`` with the sign-in form), ``Cross-Origin-Resource-Policy: same-origin``
and ``Cache-Control: no-store`` (unless set)."""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlsplit

from detector.server.errors import ClientError
from detector.server.limits import SMALL_BODY_BYTES, ASGIApp, Message, Receive, Scope, Send, answer
from detector.server.tokens import ADMIN, CHECK, Tokens, grants

SESSION_COOKIE = "copyscan_session"
CSRF_HEADER = "X-CSRF-Token"
SIGNIN_PATH = "/review/signin"
REVIEW_PATH = "/review"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 1000
# headers the door decides on: sent twice, the app behind it might read the other one
_SINGLE = ("host", "origin", "authorization", "cookie", "sec-fetch-site", CSRF_HEADER.lower())
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_OPEN = frozenset(
    {("GET", "/v1/health"), ("GET", "/openapi.json"), ("GET", SIGNIN_PATH), ("POST", SIGNIN_PATH)}
)
_CHECK = frozenset({("POST", "/v1/check")})
_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (
        b"content-security-policy",
        b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)


def needed_scope(method: str, path: str) -> str | None:
    """The scope a request needs: None (open), ``check`` or ``admin``."""
    key = ("GET" if method == "HEAD" else method, path)
    if key in _OPEN:
        return None
    return CHECK if key in _CHECK else ADMIN


@dataclass(frozen=True)
class Session:
    """A signed-in browser: its cookie value ``id``, the scope and the digest of the token it
    signed in with (a rotation of that token ends it), its CSRF token and when it ends
    (``time.monotonic()`` seconds)."""

    id: str
    scope: str
    token_digest: str
    csrf: str
    expires: float


class Sessions:
    """The review page's sessions, in memory: a restart signs everyone out, which is the
    safe way round. The oldest go when there are more than ``limit``."""

    def __init__(self, tokens: Tokens, seconds: float = SESSION_SECONDS, limit: int = MAX_SESSIONS) -> None:
        self.tokens = tokens
        self.seconds = seconds
        self.limit = limit
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def start(self, scope: str, token_digest: str) -> Session:
        session = Session(
            secrets.token_urlsafe(32),
            scope,
            token_digest,
            secrets.token_urlsafe(32),
            time.monotonic() + self.seconds,
        )
        self._by_id[session.id] = session
        while len(self._by_id) > self.limit:
            self._by_id.popitem(last=False)
        return session

    def find(self, session_id: str) -> Session | None:
        """The live session of a cookie value; None once it expired or its token was rotated."""
        found = self._by_id.get(session_id)
        if found is None:
            return None
        current = self.tokens.digest_of(found.scope)
        if time.monotonic() > found.expires or not hmac.compare_digest(found.token_digest, current):
            self.end(session_id)
            return None
        return found

    def end(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: its scope, and its session when it came with the cookie."""

    scope: str
    session: Session | None = None


@dataclass(frozen=True)
class DoorPolicy:
    """``auth``: tokens needed (off only on a loopback address); ``allowed_hosts``: Host names
    answered (None: any); ``cors_origins``: other origins allowed to call with a bearer token."""

    auth: bool
    allowed_hosts: frozenset[str] | None
    cors_origins: frozenset[str] = frozenset()


def principal_of(scope: Scope) -> Principal:
    """The principal the door let in (a route behind the door always has one)."""
    found = scope.get("state", {}).get("copyscan_principal")
    if not isinstance(found, Principal):
        raise ClientError(401, "not signed in")
    return found


class Door:
    """The ASGI middleware described in the module docstring."""

    def __init__(
        self, app: ASGIApp, policy: DoorPolicy, tokens: Tokens | None, sessions: Sessions | None
    ) -> None:
        if policy.auth and (tokens is None or sessions is None):
            raise ValueError("authentication needs tokens and sessions")
        self.app = app
        self.policy = policy
        self.tokens = tokens
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers") or []]
        headers = dict(raw)
        method = scope["method"]
        origin = headers.get("origin")
        allowed_origin = origin if origin and self._cors(origin, headers.get("host", "")) else None
        extra = (
            [(b"access-control-allow-origin", allowed_origin.encode()), (b"vary", b"Origin")]
            if allowed_origin
            else []
        )

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                added = [(k, v) for k, v in (*_HEADERS, *extra) if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        names = [k for k, _ in raw]
        twice = next((n for n in _SINGLE if names.count(n) > 1), None)
        refusal = (
            _refuse(400, f"more than one {twice} header")
            if twice
            else self._refusal(scope, method, headers, allowed_origin)
        )
        if isinstance(refusal, ClientError):
            if _large_unread_body(headers):
                refusal.headers["Connection"] = "close"
            await answer(secured, refusal)
            return
        if refusal == "preflight":
            await _preflight(secured)
            return
        if refusal == "signin":
            await _redirect(secured, SIGNIN_PATH)
            return
        await self.app(scope, receive, secured)

    def _refusal(
        self, scope: Scope, method: str, headers: dict[str, str], allowed_origin: str | None
    ) -> ClientError | str | None:
        host = headers.get("host", "")
        if not self._host_allowed(host):
            return _refuse(
                421, "this server does not answer to that Host name (see copyscan serve --allowed-host)"
            )
        origin = headers.get("origin")
        same = origin is not None and same_origin(origin, host)
        if origin is not None and not same and allowed_origin is None:
            return _refuse(403, "cross-origin request refused")
        if allowed_origin and method == "OPTIONS" and "access-control-request-method" in headers:
            return "preflight"
        site = headers.get("sec-fetch-site", "")
        if origin is None and method not in _SAFE_METHODS and site in ("cross-site", "same-site"):
            return _refuse(403, "cross-site request refused")
        needed = needed_scope(method, scope["path"])
        principal = self._principal(headers)
        if isinstance(principal, ClientError):
            return principal
        if principal is not None:
            scope.setdefault("state", {})["copyscan_principal"] = principal
        if needed is None:
            return None
        if principal is None:
            if method == "GET" and scope["path"] == REVIEW_PATH:
                return "signin"
            return _refuse(
                401,
                "authentication needed: send Authorization: Bearer TOKEN",
                {"WWW-Authenticate": 'Bearer realm="copyscan"'},
            )
        if not grants(principal.scope, needed):
            return _refuse(403, f"this needs the {needed} token")
        if principal.session is not None and method not in _SAFE_METHODS:
            sent = headers.get(CSRF_HEADER.lower(), "")
            if not same or site not in ("", "same-origin"):
                return _refuse(403, "a signed-in browser may change things only from this server's own pages")
            if not hmac.compare_digest(sent.encode(), principal.session.csrf.encode()):
                return _refuse(403, f"missing or wrong {CSRF_HEADER}")
        return None

    def _principal(self, headers: dict[str, str]) -> Principal | ClientError | None:
        if not self.policy.auth or self.tokens is None or self.sessions is None:  # see __init__
            return Principal(ADMIN)
        authorization = headers.get("authorization")
        if authorization is not None:
            kind, _, token = authorization.partition(" ")
            found = self.tokens.identify(token.strip()) if kind.lower() == "bearer" else None
            if found is None:
                return _refuse(
                    401,
                    "wrong token: send Authorization: Bearer TOKEN",
                    {"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
            return Principal(found[0])
        session_id = cookie(headers.get("cookie", ""), SESSION_COOKIE)
        session = self.sessions.find(session_id) if session_id else None
        return Principal(session.scope, session) if session else None

    def _host_allowed(self, host: str) -> bool:
        if self.policy.allowed_hosts is None:
            return True
        name = urlsplit(f"//{host}").hostname if host else None
        return name is not None and name.rstrip(".") in self.policy.allowed_hosts

    def _cors(self, origin: str, host: str) -> bool:
        return not same_origin(origin, host) and origin.rstrip("/").lower() in self.policy.cors_origins


def same_origin(origin: str, host: str) -> bool:
    """Whether an ``Origin`` header names this server as reached through ``host`` (its Host
    header): same name and port, the port missing on either side being the default of the
    origin's scheme. The scheme itself is not compared: behind a TLS proxy the server sees
    plain HTTP for what the browser calls https."""
    try:
        o = urlsplit(origin)
        h = urlsplit(f"//{host}")
        if o.scheme not in ("http", "https") or not o.hostname or not h.hostname:
            return False
        default = 443 if o.scheme == "https" else 80
        return o.hostname == h.hostname and (o.port or default) == (h.port or default)
    except ValueError:  # a port that is not a number
        return False


def cookie(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a Cookie header (no parsing library: they choke on
    cookies other sites set)."""
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


def session_cookie(session: Session | None, secure: bool) -> str:
    """The Set-Cookie value that keeps ``session`` (or, with None, ends it)."""
    value, age = (session.id, SESSION_SECONDS) if session else ("", 0)
    flags = "; Secure" if secure else ""
    return f"{SESSION_COOKIE}={value}; Path=/; Max-Age={age}; HttpOnly; SameSite=Strict{flags}"


def _refuse(status: int, message: str, headers: dict[str, str] | None = None) -> ClientError:
    return ClientError(status, message, headers=headers)


def _large_unread_body(headers: dict[str, str]) -> bool:
    """Whether a refused request's body is worth closing the connection for rather than
    letting the server read and drop it: a small one is read, so that the client (which
    may still be sending it) gets the answer rather than a reset connection."""
    length = headers.get("content-length", "0")
    return (
        "chunked" in headers.get("transfer-encoding", "")
        or not length.isdigit()
        or int(length) > SMALL_BODY_BYTES
    )


async def _preflight(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 204,
            "headers": [
                (b"access-control-allow-methods", b"GET, POST, DELETE"),
                (b"access-control-allow-headers", b"authorization, content-type"),
                (b"access-control-max-age", b"600"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def _redirect(send: Send, location: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [(b"location", location.encode()), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})


def loopback(host: str) -> bool:
    """Whether listening on ``host`` reaches this machine only."""
    import ipaddress

    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_hosts(bound: str) -> frozenset[str]:
    """The Host names answered without --allowed-host: the bound address (unless it is a
    wildcard), localhost and the loopback addresses."""
    names = {"localhost", "127.0.0.1", "::1"}
    if bound not in ("0.0.0.0", "::", ""):
        names.add(bound.strip("[]").lower())
    return frozenset(names)
