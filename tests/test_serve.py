"""``copyscan serve`` over real HTTP: the console script starts the server on a loopback port
and the tests talk to it with urllib and raw sockets, as a marketplace's web stack (or an
attacker) would. Two servers: ``server`` as deployed (tokens made at its first start, two
engine processes), ``open_server`` without authentication and with tight limits (short
timeouts, few connections, a tiny storage quota)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from detector.storage.locking import DatabaseLock

from .browser import Chromium, needs_chromium
from .conftest import ROOT

EXE = Path(sys.executable).parent / "copyscan"
EVIL = "http://evil.example"
APP = "https://app.example"  # the open server's CORS allow-list


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer to look at, not to follow


OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass
class Server:
    url: str
    db: Path
    process: subprocess.Popen
    log: Path
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        as_: str | None = "admin",
    ) -> tuple[int, Any, dict[str, str]]:
        """(status, parsed JSON or raw bytes, headers) of one request, with the bearer token of
        scope ``as_`` (None: no token)."""
        sent = dict(headers or {})
        if as_ in self.tokens:
            sent.setdefault("Authorization", f"Bearer {self.tokens[as_]}")
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=sent)
        try:
            with OPENER.open(request, timeout=60) as r:
                status, raw, got = r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            status, raw, got = e.code, e.read(), dict(e.headers)
        got = {k.lower(): v for k, v in got.items()}
        if got.get("content-type", "").startswith("application/json"):
            return status, json.loads(raw), got
        return status, raw, got

    def upload(
        self, path: str, file: Path, fields: dict[str, str] | None = None, as_: str | None = "admin"
    ) -> tuple[int, Any]:
        """POST a file as multipart field ``image`` with text fields."""
        body, ctype = multipart(file, fields)
        status, data, _ = self.call("POST", path, body, {"Content-Type": ctype}, as_)
        return status, data

    def raw(self, path: str, file: Path, as_: str | None = "check") -> tuple[int, Any]:
        status, data, _ = self.call("POST", path, file.read_bytes(), {"Content-Type": "image/jpeg"}, as_)
        return status, data

    def connect(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=30)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def multipart(file: Path, fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in (fields or {}).items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{file.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + file.read_bytes()
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _declared_only(server: Server, path: str, length: int) -> tuple[int, Any]:
    """Announce a body of ``length`` bytes and read the answer before sending any of it: the
    server must refuse from the header alone (sending the body first races the server closing
    the connection once it has answered)."""
    conn = http.client.HTTPConnection(*server.address, timeout=60)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "image/jpeg")
        conn.putheader("Content-Length", str(length))
        conn.putheader("Authorization", f"Bearer {server.tokens['check']}")
        conn.endheaders()
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(db: Path, *args: str) -> Server:
    log = db.with_suffix(".log")
    port = _free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(EXE), "--db", str(db), "serve", "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    s = Server(f"http://127.0.0.1:{port}", db, process, log)
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, s.log_text()
        try:
            if s.call("GET", "/v1/health", as_=None)[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.2)
    s.tokens = dict(re.findall(r"new (check|admin) token \(shown once[^)]*\): (\S+)", s.log_text()))
    return s


def _stop(s: Server) -> None:
    s.process.terminate()
    s.process.wait(timeout=30)


def _catalog(db: Path, catalog_dir: Path) -> None:
    subprocess.run(
        [str(EXE), "--db", str(db), "-q", "catalog", "add", str(catalog_dir), "--owner", "Demo"], check=True
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory, catalog_dir) -> Iterator[Server]:
    db = tmp_path_factory.mktemp("serve") / "s.db"
    _catalog(db, catalog_dir)
    s = _start(db, "--workers", "2", "--max-upload-mb", "2")
    assert set(s.tokens) == {"check", "admin"}, s.log_text()
    yield s
    _stop(s)


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, catalog_dir) -> Iterator[Server]:
    db = tmp_path_factory.mktemp("serve-open") / "o.db"
    _catalog(db, catalog_dir)
    s = _start(
        db,
        *("--no-auth", "--workers", "1", "--header-timeout", "1.5", "--body-timeout", "2"),
        *("--max-connections", "6", "--max-stored-mb", "0.03", "--max-note-chars", "50"),
        *("--cors-origin", APP),
    )
    yield s
    _stop(s)


def test_check_finds_a_copy_as_raw_body_and_as_multipart(server, crawl_dir):
    status, record = server.raw("/v1/check", crawl_dir / "coffee-crop.jpg")
    assert status == 200 and record["status"] == "ok" and record["check_id"] >= 1
    best = record["matches"][0]
    assert Path(best["catalog_path"]).name == "coffee.jpg" and best["verdict"] == "copy"
    assert best["owner"] == "Demo" and best["external_id"] is None
    assert best["inliers"] > 50 and len(best["query_region"]) >= 3
    status, record = server.upload(
        "/v1/check?top_k=1&min_score=0", crawl_dir / "chelsea-border.jpg", as_="check"
    )
    assert status == 200 and record["query"] == "chelsea-border.jpg" and len(record["matches"]) == 1
    status, record = server.raw("/v1/check?record=false", crawl_dir / "other-coins.jpg")
    assert status == 200 and record["matches"] == [] and "check_id" not in record


def test_add_check_and_remove_by_external_id(server, crawl_dir):
    horse = crawl_dir / "other-horse.jpg"
    assert server.raw("/v1/check", horse)[1]["matches"] == []
    status, added = server.upload("/v1/catalog", horse, {"owner": "Stable Ltd", "external_id": "listing-42"})
    assert status == 201 and added["status"] == "added"
    status, again = server.upload("/v1/catalog", horse)
    assert status == 201 and again == {**added, "status": "known"}
    for _ in range(2):  # each engine reloads its index
        best = server.raw("/v1/check", horse)[1]["matches"][0]
        assert (best["catalog_id"], best["external_id"], best["owner"]) == (
            added["catalog_id"],
            "listing-42",
            "Stable Ltd",
        )
    assert server.call("DELETE", "/v1/catalog?external_id=listing-42")[:2] == (200, {"removed": 1})
    assert server.raw("/v1/check", horse)[1]["matches"] == []
    assert server.call("DELETE", "/v1/catalog?external_id=listing-42")[0] == 404
    assert server.call("DELETE", "/v1/catalog/999999")[0] == 404


def test_a_catalog_change_from_the_command_line_reaches_every_engine(server, crawl_dir):
    gravel = crawl_dir / "other-gravel.jpg"
    subprocess.run([str(EXE), "--db", str(server.db), "-q", "catalog", "add", str(gravel)], check=True)
    with ThreadPoolExecutor(2) as pool:  # two at once: both engines answer
        found = list(pool.map(lambda _: server.raw("/v1/check?record=false", gravel)[1], range(4)))
    assert {Path(r["matches"][0]["catalog_path"]).name for r in found} == {"other-gravel.jpg"}
    path = found[0]["matches"][0]["catalog_path"]
    subprocess.run([str(EXE), "--db", str(server.db), "catalog", "remove", path], check=True)
    with ThreadPoolExecutor(2) as pool:
        found = list(pool.map(lambda _: server.raw("/v1/check?record=false", gravel)[1], range(4)))
    assert [r["matches"] for r in found] == [[]] * 4


def test_bad_input_gets_a_clear_4xx_and_no_stack_trace(server, crawl_dir, tmp_path):
    status, body = server.raw("/v1/check", crawl_dir / "broken-download.jpg")
    assert status == 422 and body["status"] == "error" and body["error"].startswith("CorruptImage")
    noise = tmp_path / "noise.jpg"
    noise.write_bytes(os.urandom(5000))
    assert server.raw("/v1/check", noise)[0] == 422
    assert server.raw("/v1/catalog", noise, as_="admin")[0] == 422
    flat = crawl_dir / "flat-grey.png"
    status, body = server.raw("/v1/check", flat)
    assert status == 422 and "UnhashableImage" in body["error"]
    assert server.call("POST", "/v1/check", b"")[:2] == (
        400,
        {"error": "empty body: send the image as the body or as multipart field 'image'"},
    )
    status, body = _declared_only(server, "/v1/check", 3_000_000)
    assert status == 413 and "over 2000000 bytes" in body["error"]
    assert server.call("POST", "/v1/check?mode=slow", b"x")[0] == 422
    status, body, _ = server.call("POST", "/v1/check?top_k=abc", b"x")
    assert status == 422 and "top_k" in body["error"]
    status, body, _ = server.call(
        "POST", "/v1/check", b"--x\r\nbroken", {"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert status == 400
    as_json = {"Content-Type": "application/json"}
    huge = "9" * 30
    for status, body, headers in [
        server.call("POST", "/v1/checks/1/decision", b"decision=confirmed", {"Content-Type": "text/plain"}),
        server.call("POST", "/v1/checks/1/decision", b'{"decision": "maybe"}', as_json),
        server.call("POST", "/v1/checks/99999/decision", b'{"decision": "dismissed"}', as_json),
        server.call("GET", "/v1/nothing-here"),
        # these were 500s: ids beyond SQLite's integers, JSON nested 100k deep
        server.call("DELETE", f"/v1/catalog/{huge}"),
        server.call("POST", f"/v1/checks/{huge}/decision", b'{"decision": "dismissed"}', as_json),
        server.call("GET", f"/review/thumbs/check/{huge}.jpg"),
        server.call("GET", "/v1/checks?limit=99999999999999999999999"),
        server.call("POST", "/v1/check?top_k=99999999999999999999999", b"x"),
        server.call("POST", "/v1/checks/1/decision", b"[" * 60_000, as_json),
        server.call("POST", "/v1/checks/1/decision", b"[" * 100_000, as_json),  # over the small-body limit
    ]:
        assert 400 <= status < 500 and set(body) == {"error"} and "Traceback" not in body["error"]
        assert headers["x-content-type-options"] == "nosniff"
    assert "Traceback" not in server.log_text()


def test_health_stats_openapi_and_concurrent_checks(server, crawl_dir):
    assert server.call("GET", "/v1/health", as_=None)[:2] == (200, {"status": "ok", "version": "0.1.0"})
    files = [
        crawl_dir / n for n in ("rocket-blur.jpg", "retina-jpeg.jpg", "other-cell.jpg", "astronaut-crop.jpg")
    ]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda f: server.raw("/v1/check", f), files * 3))
    assert [s for s, _ in answers] == [200] * 12
    assert [bool(r["matches"]) for _, r in answers] == [True, True, False, True] * 3
    status, stats, _ = server.call("GET", "/v1/stats")
    assert status == 200 and stats["catalog_images"] == 7 and stats["checks_served"] >= 12
    assert stats["engine_processes"] == 2 and len(set(stats["engine_pids"])) == 2
    parents = {_parent(pid) for pid in stats["engine_pids"]}  # one zygote forked them both
    assert len(parents) == 1 and parents != {server.process.pid}
    maps = Path(f"/proc/{parents.pop()}/maps").read_text()
    assert "libtorch" not in maps  # a fork of a process holding torch runs it 20-100x slower
    status, spec, _ = server.call("GET", "/openapi.json", as_=None)
    assert status == 200 and {"/v1/check", "/v1/catalog", "/v1/checks/{check_id}/decision"} <= set(
        spec["paths"]
    )
    assert "multipart/form-data" in spec["paths"]["/v1/check"]["post"]["requestBody"]["content"]


def _parent(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))


def test_every_route_needs_a_token_and_the_admin_routes_the_admin_token(server):
    _, spec, _ = server.call("GET", "/openapi.json", as_=None)
    open_routes = {("get", "/v1/health"), ("get", "/review/signin"), ("post", "/review/signin")}
    routes = [(m, p) for p, ops in spec["paths"].items() for m in ops]
    assert len(routes) >= 12
    for method, path in routes:
        url = path.replace("{catalog_id}", "1").replace("{check_id}", "1").replace("{kind}/{key}", "check/1")
        if (method, path) in open_routes:
            continue
        status, body, headers = server.call(method.upper(), url, b"x" if method == "post" else None, as_=None)
        if path == "/review":
            assert status == 303 and headers["location"] == "/review/signin"
        else:
            assert status == 401 and "Bearer" in headers["www-authenticate"], (method, path, body)
        wrong = {"Authorization": "Bearer " + "x" * 43}
        assert server.call(method.upper(), url, None, wrong, as_=None)[0] == 401
        status, body, _ = server.call(method.upper(), url, b"x" if method == "post" else None, as_="check")
        if path == "/v1/check":
            assert status == 422  # in: b"x" is no image
        else:
            assert status == 403 and body == {"error": "this needs the admin token"}, (method, path)


def test_cross_origin_requests_are_refused_whatever_their_body(server, crawl_dir):
    coffee = crawl_dir / "coffee-crop.jpg"
    form, form_type = multipart(coffee, {"owner": "Evil"})
    bodies = [
        (coffee.read_bytes(), "text/plain"),
        (form, form_type),
        (
            b"image=" + urllib.parse.quote_from_bytes(coffee.read_bytes()).encode(),
            "application/x-www-form-urlencoded",
        ),
    ]
    before = server.call("GET", "/v1/stats")[1]["catalog_images"]
    for body, ctype in bodies:
        for path in ("/v1/catalog", "/v1/check"):
            for as_ in (None, "admin"):  # a token does not make a foreign origin acceptable
                for origin in (EVIL, "null", f"http://localhost:{server.address[1] + 1}"):
                    status, answer, _ = server.call(
                        "POST", path, body, {"Origin": origin, "Content-Type": ctype}, as_=as_
                    )
                    assert (status, answer) == (403, {"error": "cross-origin request refused"})
            status, _, _ = server.call(
                "POST", path, body, {"Sec-Fetch-Site": "cross-site", "Content-Type": ctype}, as_=None
            )
            assert status == 403
    assert server.call("GET", "/v1/stats")[1]["catalog_images"] == before
    status, _, headers = server.call("GET", "/v1/stats", headers={"Origin": EVIL})
    assert status == 403 and "access-control-allow-origin" not in headers
    status, _, _ = server.call("POST", "/v1/check", coffee.read_bytes(), {"Origin": server.url}, as_="check")
    assert status == 200  # the server's own origin is fine


def test_a_foreign_host_name_gets_421(server):
    for method, path in [("DELETE", "/v1/catalog/1"), ("GET", "/v1/checks"), ("GET", "/review")]:
        for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example"):
            status, body, _ = server.call(method, path, headers={"Host": host})
            assert status == 421 and "Host" in body["error"]
    port = server.address[1]
    assert server.call("GET", "/v1/checks", headers={"Host": f"localhost:{port}"})[0] == 200
    for raw in [  # the Host the door checks must be the one the app sees
        f"GET /v1/checks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\n",
        f"GET /v1/checks HTTP/1.1\r\nHost: evil.example\r\nHost: 127.0.0.1:{port}\r\n",
        "\x16\x03\x01 not HTTP at all\r\n",
    ]:
        with server.connect() as sock:
            sock.sendall(f"{raw}Authorization: Bearer {server.tokens['admin']}\r\n\r\n".encode())
            answer = _read_answer(sock, 10)
        assert answer.startswith(b"HTTP/1.1 400") and b"nosniff" in answer and b'{"error": ' in answer
    assert server.call("GET", "/v1/stats")[1]["catalog_images"] >= 7  # nothing was removed


def _signin(server: Server, token: str) -> tuple[int, str | None]:
    """POST the sign-in form; (status, Set-Cookie) without following the redirect."""
    conn = http.client.HTTPConnection(*server.address, timeout=30)
    try:
        body = urllib.parse.urlencode({"token": token}).encode()
        conn.request("POST", "/review/signin", body, {"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Set-Cookie")
    finally:
        conn.close()


def test_the_review_session_cookie_needs_the_csrf_token_and_this_origin(server, crawl_dir):
    _, first = server.raw("/v1/check", crawl_dir / "retina-border.jpg")
    assert _signin(server, server.tokens["check"])[0] == 401  # the review page is the admin's
    assert _signin(server, "nonsense")[0] == 401
    status, set_cookie = _signin(server, server.tokens["admin"])
    assert status == 303 and set_cookie is not None
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= {p.strip() for p in set_cookie.split(";")}
    cookie = {"Cookie": set_cookie.split(";")[0]}
    status, page, _ = server.call("GET", "/review", headers=cookie, as_=None)
    assert status == 200
    csrf = re.search(rb'name="csrf-token" content="([^"]+)"', page).group(1).decode()
    decision = f"/v1/checks/{first['check_id']}/decision"
    body = json.dumps({"decision": "dismissed", "note": "licensed"}).encode()
    as_json = {**cookie, "Content-Type": "application/json"}
    for headers in [
        {**as_json, "Origin": server.url},  # no CSRF token
        {**as_json, "Origin": server.url, "X-CSRF-Token": "wrong"},
        {**as_json, "X-CSRF-Token": csrf},  # no Origin
        {**as_json, "Origin": EVIL, "X-CSRF-Token": csrf},
        {**as_json, "Origin": server.url, "X-CSRF-Token": csrf, "Sec-Fetch-Site": "same-site"},
    ]:
        assert server.call("POST", decision, body, headers, as_=None)[0] == 403
    same = {**as_json, "Origin": server.url, "X-CSRF-Token": csrf}
    status, decided, _ = server.call("POST", decision, body, same, as_=None)
    assert status == 200 and decided["decision"] == "dismissed" and decided["note"] == "licensed"
    assert server.call("POST", "/review/signout", b"{}", same, as_=None)[0] == 200
    assert server.call("POST", decision, body, same, as_=None)[0] == 401
    assert server.call("GET", "/review", headers=cookie, as_=None)[0] == 303


def test_tokens_are_stored_hashed_owner_only_and_rotate_in_the_running_server(server):
    stored = Path(f"{server.db}.tokens")
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert all(t not in stored.read_text() for t in server.tokens.values())
    listed = subprocess.run(
        [str(EXE), "--db", str(server.db), "token", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert "check" in listed and "admin" in listed and server.tokens["admin"] not in listed
    old = server.tokens["check"]
    out = subprocess.run(
        [str(EXE), "--db", str(server.db), "token", "rotate", "--scope", "check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    scope, new = out.split()
    assert scope == "check" and new != old and len(new) >= 40
    server.tokens["check"] = new
    status, _, _ = server.call("GET", "/v1/health", headers={"Authorization": f"Bearer {old}"}, as_=None)
    assert status == 401  # a wrong token is refused even where none is needed
    assert server.call("POST", "/v1/check", b"x", {"Authorization": f"Bearer {old}"}, as_=None)[0] == 401
    assert server.call("POST", "/v1/check", b"x", as_="check")[0] == 422  # the new one works
    os.chmod(stored, 0o644)
    try:
        failed = subprocess.run(
            [str(EXE), "--db", str(server.db), "token", "list"], capture_output=True, text=True
        )
        assert failed.returncode == 1 and "chmod 600" in failed.stderr
    finally:
        os.chmod(stored, 0o600)


def test_a_catalog_change_meeting_a_held_lock_fails_fast_and_checks_go_on(server, crawl_dir):
    horse = crawl_dir / "other-horse.jpg"
    with DatabaseLock(server.db, "test: a scan"):
        started = time.monotonic()
        status, body, headers = server.call("DELETE", "/v1/catalog/1")
        assert status == 503 and headers["retry-after"] == "5"
        assert body == {"error": "the catalog is being changed by another copyscan run; retry later"}
        status, body = server.upload("/v1/catalog", horse)
        assert status == 503 and "--wait" not in body["error"]
        with ThreadPoolExecutor(4) as pool:
            checks = list(pool.map(lambda f: server.raw("/v1/check", crawl_dir / f), ["coffee-crop.jpg"] * 4))
        assert [s for s, _ in checks] == [200] * 4
        assert time.monotonic() - started < 20  # it used to stall every check for 29 s
    assert server.call("GET", "/v1/stats")[1]["catalog_images"] >= 7


def test_an_engine_that_dies_is_replaced(server, crawl_dir):
    _, stats, _ = server.call("GET", "/v1/stats")
    victim = stats["engine_pids"][0]
    os.kill(victim, signal.SIGKILL)
    statuses = [server.raw("/v1/check", crawl_dir / "rocket-crop.jpg")[0] for _ in range(4)]
    assert statuses.count(200) >= 3 and set(statuses) <= {200, 503}
    _, stats, _ = server.call("GET", "/v1/stats")
    assert stats["engine_processes"] == 2 and victim not in stats["engine_pids"]


def test_no_auth_is_for_loopback_only_and_said_at_start(open_server, tmp_path):
    refused = subprocess.run(
        [str(EXE), "--db", str(tmp_path / "x.db"), "serve", "--no-auth", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "loopback" in refused.stderr
    assert "authentication is OFF" in open_server.log_text()
    assert open_server.call("GET", "/v1/checks", as_=None)[0] == 200
    # the door still stands: DNS rebinding and cross-origin requests are refused
    assert open_server.call("DELETE", "/v1/catalog/1", headers={"Host": "evil.example"}, as_=None)[0] == 421
    status, _, _ = open_server.call(
        "POST", "/v1/catalog", b"x", {"Origin": EVIL, "Content-Type": "text/plain"}
    )
    assert status == 403


def test_cors_is_only_for_the_allowed_origins(open_server):
    preflight = {"Origin": APP, "Access-Control-Request-Method": "POST"}
    status, _, headers = open_server.call("OPTIONS", "/v1/check", headers=preflight, as_=None)
    assert status == 204 and "POST" in headers["access-control-allow-methods"]
    assert "authorization" in headers["access-control-allow-headers"]
    assert headers["access-control-allow-origin"] == APP
    status, _, headers = open_server.call("GET", "/v1/stats", headers={"Origin": APP}, as_=None)
    assert status == 200 and headers["access-control-allow-origin"] == APP and headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in headers  # cookies never go cross-origin
    for origin in (EVIL, "https://app.example.evil.example", "http://app.example"):
        status, _, headers = open_server.call("OPTIONS", "/v1/check", headers={**preflight, "Origin": origin})
        assert status == 403 and "access-control-allow-origin" not in headers


def _read_answer(sock: socket.socket, limit_s: float) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(limit_s)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    return got


def _trickle(sock: socket.socket, every_s: float, limit_s: float) -> tuple[bytes, float]:
    """Send a byte every ``every_s`` seconds until the server answers (or ``limit_s`` passes):
    its answer and how long after the first byte it came."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        try:
            sock.sendall(b"x")
        except OSError:
            break
        time.sleep(every_s)
        sock.setblocking(False)
        try:
            if sock.recv(1, socket.MSG_PEEK):
                break
        except BlockingIOError:
            pass
        except ConnectionResetError:
            break
        finally:
            sock.setblocking(True)
    return _read_answer(sock, 10), time.monotonic() - started


def test_a_slow_body_is_cut_at_the_limit(open_server):
    with open_server.connect() as sock:
        sock.sendall(b"POST /v1/check HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n")
        answer, after = _trickle(sock, 0.25, 10)
    assert answer.startswith(b"HTTP/1.1 408") and b"within 2 s" in answer
    assert 1.5 < after < 5  # one byte every 2 s used to hold the connection for a minute


def test_slow_headers_are_cut_and_connections_capped(open_server):
    with open_server.connect() as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nX-Slow: ")
        answer, after = _trickle(sock, 0.25, 10)  # each byte would restart uvicorn's own timer
    assert answer.startswith(b"HTTP/1.1 408") and b"headers" in answer and after < 5
    held = [open_server.connect() for _ in range(6)]
    try:
        time.sleep(0.2)
        with open_server.connect() as extra:
            answer = _read_answer(extra, 10)
        assert answer.startswith(b"HTTP/1.1 503") and b"too many open connections" in answer
        assert b"retry-after: 5" in answer.lower()
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while open_server.call("GET", "/v1/health", as_=None)[0] != 200:  # the held ones are gone
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_client_that_goes_away_is_one_log_line(open_server):
    before = open_server.log_text().count("went away")
    for _ in range(20):
        with open_server.connect() as sock:
            sock.sendall(b"POST /v1/check HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50000\r\n\r\nxxxx")
            time.sleep(0.05)
    deadline = time.monotonic() + 10
    while open_server.log_text().count("went away") < before + 20:
        assert time.monotonic() < deadline, open_server.log_text()[-3000:]
        time.sleep(0.2)
    text = open_server.log_text()
    assert "Traceback" not in text and "ClientDisconnect" not in text
    assert len(text.splitlines()) < 200
    assert open_server.call("GET", "/v1/health", as_=None)[0] == 200


def test_quotas_on_stored_uploads_and_notes(open_server, crawl_dir):
    status, first = open_server.raw("/v1/check", crawl_dir / "coffee-crop.jpg", as_=None)  # 20.6 kB: kept
    assert status == 200 and first["matches"][0]["verdict"] == "copy"
    status, second = open_server.raw("/v1/check", crawl_dir / "chelsea-border.jpg", as_=None)  # 22 kB: over
    assert status == 200 and second["matches"] and second["check_id"] > first["check_id"]
    _, history, _ = open_server.call("GET", "/v1/checks?all=true", as_=None)
    kept = {c["id"]: c["upload_path"] for c in history}
    assert kept[first["check_id"]] is not None and kept[second["check_id"]] is None
    status, body = open_server.upload("/v1/catalog", crawl_dir / "other-horse.jpg", as_=None)
    assert status == 507 and "quota" in body["error"]
    _, stats, _ = open_server.call("GET", "/v1/stats", as_=None)
    assert stats["stored_upload_bytes"] <= stats["stored_upload_quota"] == 30_000
    decision = f"/v1/checks/{first['check_id']}/decision"
    as_json = {"Content-Type": "application/json"}
    status, body, _ = open_server.call(
        "POST", decision, json.dumps({"decision": "confirmed", "note": "n" * 51}).encode(), as_json
    )
    assert status == 422 and "50 characters" in body["error"]
    status, _, _ = open_server.call(
        "POST", decision, json.dumps({"decision": "confirmed", "note": "n" * 50}).encode(), as_json
    )
    assert status == 200


@needs_chromium
def test_review_page_sign_in_and_decisions_in_a_browser(server, crawl_dir, tmp_path):
    _, first = server.raw("/v1/check", crawl_dir / "retina-border.jpg")
    _, second = server.upload("/v1/check", crawl_dir / "rocket-crop.jpg", as_="check")
    before = server.call("GET", "/v1/stats")[1]["catalog_images"]
    with Chromium() as browser:
        page = browser.page()
        page.goto(server.url + "/review")
        assert page.evaluate("location.pathname") == "/review/signin"  # sent to sign in
        page.evaluate(f"document.getElementById('token').value = {json.dumps(server.tokens['check'])}")
        page.evaluate("document.querySelector('form').submit()")
        assert page.wait_for("!!document.getElementById('problem')")
        page.evaluate(f"document.getElementById('token').value = {json.dumps(server.tokens['admin'])}")
        page.evaluate("document.querySelector('form').submit()")
        page.wait_for("location.pathname === '/review' && document.readyState === 'complete'")
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read the session
        cards = page.evaluate("[...document.querySelectorAll('.card')].map(c => +c.dataset.check)")
        assert {first["check_id"], second["check_id"]} <= set(cards)
        card = f".card[data-check='{second['check_id']}']"
        assert page.evaluate(f"document.querySelector(\"{card}\").querySelectorAll('polygon').length") >= 1
        page.wait_for(
            f'[...document.querySelectorAll("{card} img")].every(i => i.complete && i.naturalWidth > 0)'
        )
        page.evaluate(f'document.querySelector("{card} button[data-decision=confirmed]").click()')
        shown = page.wait_for(f'document.querySelector("{card}").dataset.decision')
        assert shown == "confirmed"
        assert page.evaluate(f'document.querySelector("{card} .decision").textContent').startswith(
            "confirmed at"
        )
        page.screenshot(ROOT / "test-artifacts" / "review.png")
        assert not [m for m in page.console() if "Content Security Policy" in m or "Refused" in m], (
            page.console()
        )
        # a foreign page posting a form to the server, as a moderator's browser would on a bad site
        attack = (
            "data:text/html,<form method=post enctype=text/plain "
            f"action='{server.url}/v1/catalog'><input name=a value=b></form>"
            "<script>document.forms[0].submit()</script>"
        )
        page.goto(attack)
        page.wait_for("location.href.endsWith('/v1/catalog') && document.readyState === 'complete'")
        assert "cross-origin request refused" in page.evaluate("document.body.textContent")
        page.evaluate(f"document.location = {json.dumps(server.url + '/review')}")
        page.wait_for("location.pathname === '/review' && !!document.querySelector('#signout')")
        page.evaluate("document.getElementById('signout').click()")
        page.wait_for("location.pathname === '/review/signin'")
    _, stored, _ = server.call("GET", "/v1/checks?limit=100")
    assert {c["id"]: c["decision"] for c in stored}[second["check_id"]] == "confirmed"
    assert server.call("GET", "/v1/stats")[1]["catalog_images"] == before
    assert (ROOT / "test-artifacts" / "review.png").stat().st_size > 20_000


def test_check_takes_the_uploader_listing_and_urls_and_the_review_page_shows_them(server, crawl_dir):
    fields = {"uploader": "seller-42", "listing_id": "L-9001", "page_url": "https://shop.example/l/9001"}
    query = "?url=" + urllib.parse.quote("https://cdn.shop.example/9001.jpg", safe="")
    status, record = server.upload("/v1/check" + query, crawl_dir / "chelsea-border.jpg", fields, as_="check")
    assert status == 200 and record["matches"][0]["verdict"] == "copy"
    said = {**fields, "url": "https://cdn.shop.example/9001.jpg"}
    assert record["meta"] == said
    status, checks, _ = server.call("GET", "/v1/checks?limit=50")
    stored = next(c for c in checks if c["id"] == record["check_id"])
    assert stored["meta"] == said
    status, set_cookie = _signin(server, server.tokens["admin"])
    page = server.call("GET", "/review", headers={"Cookie": set_cookie.split(";")[0]}, as_=None)[1].decode()
    card = page[page.index(f'data-check="{record["check_id"]}"') :][:4000]
    assert "seller-42" in card and "L-9001" in card
    assert 'href="https://shop.example/l/9001"' in card and 'rel="noopener noreferrer nofollow"' in card
    # too long a field is the client's error, and nothing is stored for it
    long = {"uploader": "x" * 2001}
    status, body = server.upload("/v1/check", crawl_dir / "chelsea-border.jpg", long, as_="check")
    assert status == 422 and "uploader" in body["error"]
    after = server.call("GET", "/v1/checks?limit=50&all=true")[1]
    assert record["check_id"] == max(c["id"] for c in after)
