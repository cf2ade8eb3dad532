"""The pieces of the server's door on their own: token files and given tokens, origin and
Host comparison, the scope each route needs (the server itself is tested over a socket in
test_serve.py)."""

from __future__ import annotations

import os
import stat

import pytest

from detector.server.guard import default_hosts, loopback, needed_scope, same_origin
from detector.server.tokens import ADMIN, CHECK, TokenError, Tokens, TokenStore, given_tokens


def test_tokens_are_made_once_kept_as_hashes_and_rotated(tmp_path):
    db = tmp_path / "x.db"
    tokens, new = Tokens.open(db, {})
    assert set(new) == {CHECK, ADMIN} and all(len(t) >= 40 for t in new.values())
    stored = TokenStore(db).path
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert not any(t in stored.read_text() for t in new.values())
    assert tokens.identify(new[CHECK])[0] == CHECK and tokens.identify(new[ADMIN])[0] == ADMIN
    assert tokens.identify("x" * 43) is None and tokens.identify("") is None
    assert Tokens.open(db, {})[1] == {}  # shown once: a second start makes none
    (rotated,) = TokenStore(db).rotate((ADMIN,)).values()
    assert tokens.identify(new[ADMIN]) is None and tokens.identify(rotated)[0] == ADMIN  # seen at once
    assert tokens.identify(new[CHECK])[0] == CHECK


def test_given_tokens_win_and_are_checked(tmp_path):
    file = tmp_path / "tokens"
    file.write_text("# mounted secret\ncheck=" + "c" * 30 + "\nadmin = " + "a" * 30 + "\n")
    os.chmod(file, 0o600)
    env = {"COPYSCAN_ADMIN_TOKEN": "e" * 30}
    given = given_tokens(env, file)
    assert given[CHECK][0] == "c" * 30 and given[ADMIN] == ("e" * 30, "$COPYSCAN_ADMIN_TOKEN")
    tokens, new = Tokens.open(tmp_path / "x.db", env, file)
    assert new == {} and not TokenStore(tmp_path / "x.db").path.exists()
    assert tokens.identify("e" * 30)[0] == ADMIN and tokens.identify("a" * 30) is None
    assert [i.source for i in tokens.info()] == [f"token file {file}", "$COPYSCAN_ADMIN_TOKEN"]
    with pytest.raises(TokenError, match="shorter"):
        given_tokens({"COPYSCAN_CHECK_TOKEN": "short"})
    os.chmod(file, 0o640)
    with pytest.raises(TokenError, match="chmod 600"):
        given_tokens({}, file)
    os.chmod(file, 0o600)
    file.write_text("root=" + "r" * 30)
    with pytest.raises(TokenError, match="check=TOKEN"):
        given_tokens({}, file)


def test_same_origin_compares_name_and_port_not_scheme():
    assert same_origin("http://127.0.0.1:8700", "127.0.0.1:8700")
    assert same_origin("https://copyscan.example", "copyscan.example")  # behind a TLS proxy
    assert same_origin("https://copyscan.example", "copyscan.example:443")
    assert not same_origin("http://copyscan.example", "copyscan.example:8700")
    assert not same_origin("http://localhost:8700", "127.0.0.1:8700")
    assert not same_origin("null", "127.0.0.1:8700")
    assert not same_origin("http://127.0.0.1:99999999", "127.0.0.1:8700")
    assert not same_origin("file://", "127.0.0.1:8700")


def test_routes_are_closed_unless_opened_and_loopback_is_loopback():
    assert needed_scope("GET", "/v1/health") is None and needed_scope("HEAD", "/v1/health") is None
    assert needed_scope("POST", "/v1/check") == CHECK
    assert needed_scope("GET", "/v1/check") == ADMIN  # only the POST is the checker's
    assert needed_scope("GET", "/some/new/route") == ADMIN
    assert loopback("127.0.0.1") and loopback("::1") and loopback("localhost") and loopback("127.8.0.1")
    assert not loopback("0.0.0.0") and not loopback("192.168.1.2") and not loopback("example.com")
    assert default_hosts("0.0.0.0") == {"localhost", "127.0.0.1", "::1"}
    assert "10.0.0.5" in default_hosts("10.0.0.5")
