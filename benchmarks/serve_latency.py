"""Check latency of ``copyscan serve`` against a 100 k-image catalog, under 1, 4 and 16
concurrent clients on loopback, for each number of engine processes, beside the same check as
a ``copyscan check`` process per image.

    python benchmarks/serve_latency.py [--catalog 100000] [--requests 300] [--clients 1,4,16]
                                       [--workers 1,N] [--seconds 180]

The catalog holds the 7 demo images (real) and ``--catalog`` synthetic entries (random codes
for the image and its three variants, random unit descriptors): stage 1 searches all of their
codes, exactly as it would real ones. The queries are the 60 demo crawl files (copies,
unrelated pictures and two unusable files) sent as raw bodies, in turn, with the check token
(the server is started with tokens given in the environment, as a deployment would). For each
``--workers`` value (engine processes; default 1 and one per CPU) a server is started, warmed
up, and loaded at each ``--clients`` level with ``--requests`` checks (bounded by
``--seconds``). The table is printed in Markdown, ready for the README.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from detector.config import Settings
from detector.stage1.hashing import HASHER_ID, to_sqlite
from detector.stage2.embedding import EMBEDDING_DIM, embedder_id, to_blob
from detector.storage.catalog import NewCatalogImage
from detector.storage.store import Store

ROOT = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).parent / "copyscan"


def _synthetic(db: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with Store.open(db, hasher=HASHER_ID, embedder=embedder_id(Settings())) as store:
        for start in range(0, n, 5000):
            k = min(5000, n - start)
            codes = rng.integers(0, 2**63, size=(k, 8), dtype=np.int64)
            vecs = rng.standard_normal((k, EMBEDDING_DIM)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            store.catalog.add(
                [
                    NewCatalogImage(
                        path=f"/synthetic/{start + i}.jpg",
                        owner="Synthetic",
                        sha256=f"synthetic-{seed}-{start + i}",
                        width=640,
                        height=480,
                        phash=to_sqlite(int(codes[i, 0])),
                        dhash=to_sqlite(int(codes[i, 1])),
                        embedding=to_blob(vecs[i]),
                        variants=tuple(
                            (name, to_sqlite(int(codes[i, 2 + 2 * j])), to_sqlite(int(codes[i, 3 + 2 * j])))
                            for j, name in enumerate(("trim", "centre80", "centre65"))
                        ),
                    )
                    for i in range(k)
                ]
            )


def _post(url: str, body: bytes, token: str) -> tuple[int, float]:
    start = time.perf_counter()
    headers = {"Content-Type": "image/jpeg", "Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        e.read()
        status = e.code
    return status, time.perf_counter() - start


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _load(url: str, token: str, queries: list[bytes], clients: int, requests: int, seconds: float) -> str:
    """One row of the table: ``requests`` checks sent by ``clients`` threads at once."""
    deadline = time.perf_counter() + seconds
    results: list[tuple[int, float]] = []

    def client(i: int) -> None:
        if time.perf_counter() < deadline:
            results.append(_post(url, queries[i % len(queries)], token))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(requests)))
    wall = time.perf_counter() - t0
    times = [t for _, t in results]
    refused = sum(1 for status, _ in results if status not in (200, 422))
    if refused:  # 422: the two unusable files; anything else would make the row meaningless
        print(f"warning: {refused} checks at {clients} clients answered neither 200 nor 422")
    return (
        f"| {clients} | {len(results)} | {_ms(times, 0.5):,.1f} ms | {_ms(times, 0.99):,.1f} ms "
        f"| {len(results) / wall:.1f} |"
    )


def _serve(db: Path, workers: int, clients: int, env: dict[str, str]) -> tuple[subprocess.Popen, str, float]:
    """Start a server with ``workers`` engine processes; (process, url, seconds to come up)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    command = [str(EXE), "--db", str(db), "-q", "serve", "--port", str(port), "--workers", str(workers)]
    server = subprocess.Popen([*command, "--max-connections", str(max(64, 4 * clients))], env=env)
    while True:
        try:
            urllib.request.urlopen(url + "/v1/health", timeout=2).read()
            return server, url, time.perf_counter() - t0
        except OSError:
            if server.poll() is not None or time.perf_counter() - t0 > 600:
                server.terminate()
                raise SystemExit("the server did not come up") from None
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--catalog", type=int, default=100_000, help="synthetic catalog images")
    parser.add_argument("--requests", type=int, default=300, help="checks sent at each load level")
    parser.add_argument("--clients", default="1,4,16", help="clients sending at once, one level each")
    parser.add_argument("--workers", default="", help="engine processes, one server each (default 1,CPUs)")
    parser.add_argument("--seconds", type=float, default=180, help="stop a load level after this long")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    workers = [int(w) for w in (args.workers or f"1,{cpus}").split(",")]
    levels = [int(c) for c in args.clients.split(",")]
    work = Path(tempfile.mkdtemp(prefix="copyscan-serve-"))
    db = work / "serve.db"
    subprocess.run(
        [str(EXE), "--db", str(db), "-q", "catalog", "add", str(ROOT / "fixtures/catalog")], check=True
    )
    t0 = time.perf_counter()
    _synthetic(db, args.catalog)
    print(
        f"catalog: 7 real + {args.catalog:,} synthetic images ({4 * (args.catalog + 7):,} codes), "
        f"stored in {time.perf_counter() - t0:.1f} s; {cpus} CPUs"
    )
    token = secrets.token_urlsafe(32)
    env = {**os.environ, "COPYSCAN_CHECK_TOKEN": token, "COPYSCAN_ADMIN_TOKEN": secrets.token_urlsafe(32)}
    queries = [p.read_bytes() for p in sorted((ROOT / "fixtures/crawl").iterdir())]
    rows = []
    for count in dict.fromkeys(workers):
        server, url, up = _serve(db, count, max(levels), env)
        try:
            print(f"{count} engine processes: up (model and index loaded) in {up:.1f} s")
            check = url + "/v1/check?record=false"
            for body in queries[:10] * count:  # warm-up: each engine's first checks fill its caches
                _post(check, body, token)
            for clients in levels:
                rows.append(
                    f"| {count} " + _load(check, token, queries, clients, args.requests, args.seconds)
                )
                print(rows[-1], flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    cold = []
    for body_path in sorted((ROOT / "fixtures/crawl").iterdir())[:5]:
        t0 = time.perf_counter()
        subprocess.run(
            [str(EXE), "--db", str(db), "check", str(body_path)], capture_output=True, env=os.environ
        )
        cold.append(time.perf_counter() - t0)
    print("\n| engine processes | clients | checks | p50 | p99 | checks/s |\n|---|---|---|---|---|---|")
    print("\n".join(rows))
    peer = 1000 * statistics.median(cold)
    print(f"| peer: `copyscan check`, a process per image | 1 | 5 | {peer:,.0f} ms | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
