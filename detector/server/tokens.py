"""The tokens that open ``copyscan serve``: one per scope, ``check`` (send images to be
checked) and ``admin`` (everything: catalog changes, check history, decisions, the review
page; checks too).

As Jupyter's server does, the tokens are made at the first start and shown once; unlike it,
only their sha256 is kept, in ``<db>.tokens`` beside the database, readable by its owner
alone (a token is 256 random bits, so a plain hash cannot be reversed and needs no slow
KDF). A lost token is replaced by rotating it. A deployment may give its own instead, in
``$COPYSCAN_CHECK_TOKEN`` / ``$COPYSCAN_ADMIN_TOKEN`` or in a file of ``scope=token`` lines
(a mounted secret), which win over the stored ones. A running server sees a rotation at its
next request: the stored file is read again when it changes."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from detector.errors import CopyscanError
from detector.storage.sql import utc_now

CHECK = "check"
ADMIN = "admin"
SCOPES = (CHECK, ADMIN)
ENV_VARS = {CHECK: "COPYSCAN_CHECK_TOKEN", ADMIN: "COPYSCAN_ADMIN_TOKEN"}
MIN_TOKEN_CHARS = 24  # a given token shorter than this is refused: it could be guessed


class TokenError(CopyscanError):
    """A token file or a given token cannot be used (wrong permissions, malformed, too short)."""


def grants(held: str, needed: str) -> bool:
    """Whether a token of scope ``held`` may do what needs scope ``needed`` (admin does all)."""
    return held == ADMIN or held == needed


def digest(token: str) -> str:
    """The hex sha256 a token is kept and compared as."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    """Where one scope's token comes from (``source``: the stored file, an environment
    variable or a token file) and when a stored one was made."""

    scope: str
    source: str
    created: str | None


class TokenStore:
    """``<db>.tokens``: ``{"check": {"sha256": ..., "created": ...}, "admin": {...}}``, mode 0600."""

    def __init__(self, db: str | Path) -> None:
        self.path = Path(f"{db}.tokens")

    def read(self) -> dict[str, dict[str, str]]:
        """The stored entries by scope ({} when there is no file)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        _owner_only(self.path, st)
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise TokenError(f"{self.path} is not a token file: {e}") from e
        if not isinstance(data, dict):
            raise TokenError(f"{self.path} is not a token file")
        return {
            s: e
            for s, e in data.items()
            if s in SCOPES and isinstance(e, dict) and isinstance(e.get("sha256"), str)
        }

    def create_missing(self, scopes: tuple[str, ...] = SCOPES) -> dict[str, str]:
        """Make a token for each of ``scopes`` that has none stored; returns the new tokens
        (the only time they exist in clear), {} if every one was there."""
        entries = self.read()
        return self._replace(entries, [s for s in scopes if s not in entries])

    def rotate(self, scopes: tuple[str, ...] = SCOPES) -> dict[str, str]:
        """Replace the tokens of ``scopes`` with new ones; returns them. Sessions signed in
        with an old one end at their next request."""
        return self._replace(self.read(), list(scopes))

    def _replace(self, entries: dict[str, dict[str, str]], scopes: list[str]) -> dict[str, str]:
        fresh = {s: secrets.token_urlsafe(32) for s in scopes}
        if not fresh:
            return {}
        for s, token in fresh.items():
            entries[s] = {"sha256": digest(token), "created": utc_now()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}-")  # mode 0600
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f, indent=1)
        os.replace(tmp, self.path)
        return fresh


def given_tokens(
    environ: Mapping[str, str], token_file: str | Path | None = None
) -> dict[str, tuple[str, str]]:
    """Tokens a deployment gives, by scope: (token, where it came from). The environment wins
    over the file."""
    found: dict[str, tuple[str, str]] = {}
    if token_file is not None:
        path = Path(token_file)
        try:
            _owner_only(path, path.stat())
            lines = path.read_text().splitlines()
        except OSError as e:
            raise TokenError(f"cannot read token file {path}: {e}") from e
        for n, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            scope, sep, token = text.partition("=")
            if not sep or scope.strip() not in SCOPES:
                raise TokenError(f"{path}:{n}: expected check=TOKEN or admin=TOKEN")
            found[scope.strip()] = (token.strip(), f"token file {path}")
    for scope, var in ENV_VARS.items():
        if environ.get(var):
            found[scope] = (environ[var].strip(), f"${var}")
    for scope, (token, where) in found.items():
        if len(token) < MIN_TOKEN_CHARS:
            raise TokenError(f"the {scope} token from {where} is shorter than {MIN_TOKEN_CHARS} characters")
    return found


class Tokens:
    """The tokens a running server accepts: the given ones, else the stored ones (read again
    whenever ``<db>.tokens`` changes, so a rotation needs no restart)."""

    def __init__(self, store: TokenStore, given: dict[str, tuple[str, str]]) -> None:
        self.store = store
        self._given = {s: digest(t) for s, (t, _) in given.items()}
        self._where = {s: w for s, (_, w) in given.items()}
        self._stamp: tuple[int, int, int] | None = None
        self._stored: dict[str, dict[str, str]] = {}

    @classmethod
    def open(
        cls, db: str | Path, environ: Mapping[str, str], token_file: str | Path | None = None
    ) -> tuple[Tokens, dict[str, str]]:
        """The tokens of the server of ``db``, and the tokens made now for scopes that had
        none (to be shown once)."""
        given = given_tokens(environ, token_file)
        store = TokenStore(db)
        new = store.create_missing(tuple(s for s in SCOPES if s not in given))
        return cls(store, given), new

    def info(self) -> list[TokenInfo]:
        """Where each scope's token comes from (raises :class:`TokenError` for a stored file
        that cannot be used)."""
        stored = self.store.read()
        return [
            TokenInfo(s, self._where[s], None)
            if s in self._given
            else TokenInfo(s, str(self.store.path), stored.get(s, {}).get("created"))
            for s in SCOPES
        ]

    def identify(self, token: str) -> tuple[str, str] | None:
        """(scope, digest) of a presented token, or None. Every scope's digest is compared,
        in constant time, so the answer's timing says nothing about which one was close."""
        presented = digest(token)
        found = None
        for scope in (ADMIN, CHECK):  # one token given for both scopes is the admin's
            if hmac.compare_digest(presented, self.digest_of(scope)) and found is None:
                found = (scope, presented)
        return found

    def digest_of(self, scope: str) -> str:
        """The digest ``scope``'s token has now ('' when it has none)."""
        if scope in self._given:
            return self._given[scope]
        return self._current().get(scope, {}).get("sha256", "")

    def _current(self) -> dict[str, dict[str, str]]:
        try:
            st = self.store.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        if stamp != self._stamp:
            try:
                self._stored = self.store.read()
            except TokenError:
                self._stored = {}  # a broken or exposed file opens nothing
            self._stamp = stamp
        return self._stored


def _owner_only(path: Path, st: os.stat_result) -> None:
    """Refuse a file others may read or write (as ssh does with keys)."""
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(
            f"{path} may be read or written by others (mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it"
        )
