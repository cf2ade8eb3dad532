"""Check latency of ``copyscan serve`` against a 100 k-image catalog, under a concurrent load
generator on loopback, beside the same check as a ``copyscan check`` process per image.

    python benchmarks/serve_latency.py [--catalog 100000] [--requests 300] [--concurrency 4]

The catalog holds the 7 demo images (real) and ``--catalog`` synthetic entries (random codes
for the image and its three variants, random unit descriptors): stage 1 searches all of their
codes, exactly as it would real ones. The queries are the 60 demo crawl files (copies,
unrelated pictures and two unusable files) sent as raw bodies, in turn. The load is bounded by
``--requests`` and ``--seconds``.
"""

from __future__ import annotations

import argparse
import os
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


def _post(url: str, body: bytes) -> tuple[int, float]:
    start = time.perf_counter()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "image/jpeg"})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        e.read()
        status = e.code
    return status, time.perf_counter() - start


def _percentiles(values: list[float]) -> str:
    ms = sorted(1000 * v for v in values)
    p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    return f"p50 {p(0.5):7.1f} ms   p90 {p(0.9):7.1f} ms   p99 {p(0.99):7.1f} ms   max {ms[-1]:7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--catalog", type=int, default=100_000, help="synthetic catalog images")
    parser.add_argument("--requests", type=int, default=300, help="checks sent under load")
    parser.add_argument("--concurrency", type=int, default=4, help="clients sending at once")
    parser.add_argument("--seconds", type=float, default=180, help="stop the load after this long")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="copyscan-serve-"))
    db = work / "serve.db"
    subprocess.run(
        [str(EXE), "--db", str(db), "-q", "catalog", "add", str(ROOT / "fixtures/catalog")], check=True
    )
    t0 = time.perf_counter()
    _synthetic(db, args.catalog)
    print(
        f"catalog: 7 real + {args.catalog:,} synthetic images ({4 * (args.catalog + 7):,} codes), "
        f"stored in {time.perf_counter() - t0:.1f} s"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    server = subprocess.Popen([str(EXE), "--db", str(db), "-q", "serve", "--port", str(port)])
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/v1/health", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - t0 > 300:
                    raise SystemExit("the server did not come up") from None
                time.sleep(0.2)
        print(f"server up (model and index loaded) in {time.perf_counter() - t0:.1f} s")
        queries = [p.read_bytes() for p in sorted((ROOT / "fixtures/crawl").iterdir())]
        for body in queries[:10]:  # warm-up: first uses build the stage-1 tables and caches
            _post(url + "/v1/check?record=false", body)
        alone = [_post(url + "/v1/check?record=false", queries[i % len(queries)])[1] for i in range(60)]
        print(f"one client      {len(alone)} checks   {_percentiles(alone)}")
        deadline = time.perf_counter() + args.seconds
        results: list[tuple[int, float]] = []

        def client(i: int) -> None:
            if time.perf_counter() < deadline:
                results.append(_post(url + "/v1/check?record=false", queries[i % len(queries)]))

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(client, range(args.requests)))
        wall = time.perf_counter() - t0
        ok = [t for status, t in results if status == 200]
        spread = _percentiles([t for _, t in results])
        print(
            f"{args.concurrency} clients       {len(results)} checks   {spread}"
            f"   {len(results) / wall:.1f} checks/s; {len(ok)} answered 200, "
            f"{len(results) - len(ok)} 422 (the unusable files)"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    cold = []
    for body_path in sorted((ROOT / "fixtures/crawl").iterdir())[:5]:
        t0 = time.perf_counter()
        subprocess.run(
            [str(EXE), "--db", str(db), "check", str(body_path)], capture_output=True, env=os.environ
        )
        cold.append(time.perf_counter() - t0)
    print(
        f"peer: copyscan check, a process per image, 5 checks   p50 {1000 * statistics.median(cold):.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
