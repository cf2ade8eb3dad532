"""``copyscan serve`` over real HTTP: the console script starts the server on a loopback port
and the tests talk to it with urllib, as a marketplace's web stack would."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .browser import dump_dom, needs_chromium, screenshot
from .conftest import ROOT
from .test_report_html import parse

EXE = Path(sys.executable).parent / "copyscan"


@dataclass
class Server:
    url: str
    db: Path
    process: subprocess.Popen

    def call(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        """(status, parsed JSON or raw bytes, headers) of one request."""
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                status, raw, got = r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            status, raw, got = e.code, e.read(), dict(e.headers)
        if got.get("content-type", "").startswith("application/json"):
            return status, json.loads(raw), got
        return status, raw, got

    def upload(self, path: str, file: Path, fields: dict[str, str] | None = None) -> tuple[int, Any]:
        """POST a file as multipart field ``image`` with text fields."""
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
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        status, data, _ = self.call(
            "POST", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        return status, data

    def raw(self, path: str, file: Path) -> tuple[int, Any]:
        status, data, _ = self.call("POST", path, file.read_bytes(), {"Content-Type": "image/jpeg"})
        return status, data


def _declared_only(server: Server, path: str, length: int) -> tuple[int, Any]:
    """Announce a body of ``length`` bytes and read the answer before sending any of it: the
    server must refuse from the header alone (sending the body first races the server closing
    the connection once it has answered)."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "image/jpeg")
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory, catalog_dir) -> Iterator[Server]:
    db = tmp_path_factory.mktemp("serve") / "s.db"
    subprocess.run(
        [str(EXE), "--db", str(db), "-q", "catalog", "add", str(catalog_dir), "--owner", "Demo"], check=True
    )
    port = _free_port()
    process = subprocess.Popen(
        [str(EXE), "--db", str(db), "serve", "--port", str(port), "--max-upload-mb", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    s = Server(f"http://127.0.0.1:{port}", db, process)
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        try:
            if s.call("GET", "/v1/health")[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.2)
    yield s
    process.terminate()
    process.wait(timeout=30)


def test_check_finds_a_copy_as_raw_body_and_as_multipart(server, crawl_dir):
    status, record = server.raw("/v1/check", crawl_dir / "coffee-crop.jpg")
    assert status == 200 and record["status"] == "ok" and record["check_id"] >= 1
    best = record["matches"][0]
    assert Path(best["catalog_path"]).name == "coffee.jpg" and best["verdict"] == "copy"
    assert best["owner"] == "Demo" and best["external_id"] is None
    assert best["inliers"] > 50 and len(best["query_region"]) >= 3
    status, record = server.upload("/v1/check?top_k=1&min_score=0", crawl_dir / "chelsea-border.jpg")
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
    best = server.raw("/v1/check", horse)[1]["matches"][0]  # the index was reloaded
    assert (best["catalog_id"], best["external_id"], best["owner"]) == (
        added["catalog_id"],
        "listing-42",
        "Stable Ltd",
    )
    assert server.call("DELETE", "/v1/catalog?external_id=listing-42")[:2] == (200, {"removed": 1})
    assert server.raw("/v1/check", horse)[1]["matches"] == []
    assert server.call("DELETE", "/v1/catalog?external_id=listing-42")[0] == 404
    assert server.call("DELETE", "/v1/catalog/999999")[0] == 404


def test_a_catalog_change_from_the_command_line_reaches_the_server(server, crawl_dir):
    gravel = crawl_dir / "other-gravel.jpg"
    subprocess.run([str(EXE), "--db", str(server.db), "-q", "catalog", "add", str(gravel)], check=True)
    best = server.raw("/v1/check", gravel)[1]["matches"][0]
    assert Path(best["catalog_path"]).name == "other-gravel.jpg"
    subprocess.run([str(EXE), "--db", str(server.db), "catalog", "remove", best["catalog_path"]], check=True)
    assert server.raw("/v1/check", gravel)[1]["matches"] == []


def test_bad_input_gets_a_clear_4xx_and_no_stack_trace(server, crawl_dir, tmp_path):
    status, body = server.raw("/v1/check", crawl_dir / "broken-download.jpg")
    assert status == 422 and body["status"] == "error" and body["error"].startswith("CorruptImage")
    noise = tmp_path / "noise.jpg"
    noise.write_bytes(os.urandom(5000))
    assert server.raw("/v1/check", noise)[0] == 422
    assert server.raw("/v1/catalog", noise)[0] == 422
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
    for status, body, _ in [
        server.call("POST", "/v1/checks/1/decision", b"decision=confirmed", {"Content-Type": "text/plain"}),
        server.call(
            "POST", "/v1/checks/1/decision", b'{"decision": "maybe"}', {"Content-Type": "application/json"}
        ),
        server.call(
            "POST",
            "/v1/checks/99999/decision",
            b'{"decision": "dismissed"}',
            {"Content-Type": "application/json"},
        ),
        server.call("GET", "/v1/nothing-here"),
    ]:
        assert 400 <= status < 500 and set(body) == {"error"} and "Traceback" not in body["error"]


def test_health_stats_openapi_and_concurrent_checks(server, crawl_dir):
    assert server.call("GET", "/v1/health")[:2] == (200, {"status": "ok", "version": "0.1.0"})
    files = [
        crawl_dir / n for n in ("rocket-blur.jpg", "retina-jpeg.jpg", "other-cell.jpg", "astronaut-crop.jpg")
    ]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda f: server.raw("/v1/check", f), files * 3))
    assert [s for s, _ in answers] == [200] * 12
    assert [bool(r["matches"]) for _, r in answers] == [True, True, False, True] * 3
    status, stats, _ = server.call("GET", "/v1/stats")
    assert status == 200 and stats["catalog_images"] == 7 and stats["checks_served"] >= 12
    status, spec, _ = server.call("GET", "/openapi.json")
    assert status == 200 and {"/v1/check", "/v1/catalog", "/v1/checks/{check_id}/decision"} <= set(
        spec["paths"]
    )
    assert "multipart/form-data" in spec["paths"]["/v1/check"]["post"]["requestBody"]["content"]


@needs_chromium
def test_review_page_shows_flagged_checks_and_stores_decisions(server, crawl_dir):
    _, first = server.raw("/v1/check", crawl_dir / "retina-border.jpg")
    _, second = server.upload("/v1/check", crawl_dir / "rocket-crop.jpg")
    status, decided, _ = server.call(
        "POST",
        f"/v1/checks/{first['check_id']}/decision",
        json.dumps({"decision": "dismissed", "note": "licensed"}).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 200 and decided["decision"] == "dismissed" and decided["note"] == "licensed"
    status, _, headers = server.call("GET", "/review")
    assert status == 200 and "script-src 'sha256-" in headers["content-security-policy"]
    dom = parse(dump_dom(server.url + "/review"))
    cards = {int(c.attrs["data-check"] or 0): c for c in dom.find_all(cls="card")}
    assert {first["check_id"], second["check_id"]} <= set(cards)
    assert cards[first["check_id"]].attrs["data-decision"] == "dismissed"
    assert cards[second["check_id"]].attrs["data-decision"] == ""
    assert "rocket-crop.jpg" in cards[second["check_id"]].text()
    assert cards[second["check_id"]].find_all("polygon"), "the matched region is outlined"
    png = screenshot(server.url + "/review", ROOT / "test-artifacts" / "review.png")
    assert png.stat().st_size > 20_000
    status, thumb, _ = server.call("GET", f"/review/thumbs/match/{second['check_id']}.jpg")
    assert status == 200 and thumb[:2] == b"\xff\xd8"
    assert server.call("GET", "/review/thumbs/elsewhere/1.jpg")[0] == 404
