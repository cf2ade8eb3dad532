"""A crawl scanned against a catalog of a million images, end to end, beside the peer.

    python benchmarks/crawl_scale.py [--catalog 1000000] [--real 200] [--crawl 1000] [--workdir DIR]

Builds ``--real`` catalog JPEGs and a crawl of ``--crawl`` JPEGs (``--copies`` of them attacked
copies of catalog images, the rest unrelated) from scikit-image's samples as
``benchmarks/throughput.py`` does, indexes the real catalog with ``copyscan catalog add``, then
pads the database with synthetic catalog images up to ``--catalog`` (random 64-bit codes, three
per image as real ones have, and a stored descriptor each) and measures, as whole processes:

1. ``copyscan catalog add`` of the real catalog, with the default worker processes and with
   ``--set jobs=1``, beside an imagehash pass (open + phash + dhash) over the same files;
2. ``copyscan scan --mode fast`` of the crawl against the padded catalog, both ways, beside the
   imagehash pass over the crawl; and the start-up alone (a one-image scan: loading the
   codes and the model), so the steady rate can be read too;
3. stage 1's memory: the bytes the Hamming index holds per catalog image once its
   multi-index tables are built, the peak of Python allocations while the codes load from
   SQLite, and the scan process's peak resident set.

Synthetic codes are uniformly random, so they give chance hits at the rate random codes do
(real catalogs cluster more); ``--workdir`` keeps the padded database for the next run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from throughput import (
    CATALOG_SEED,
    UNRELATED_SEED,
    _others_share,
    attack,
    copyscan_argv,
    hash_files_peer,
    load_sources,
    make_image,
    scan_quality,
)

from detector.stage1.hashing import HASHER_ID
from detector.stage1.index import HammingIndex
from detector.stage2.embedding import EMBEDDING_DIM, embedder_id, to_blob
from detector.storage.catalog import NewCatalogImage
from detector.storage.store import Store

PAD_SEED = 77
PAD_CHUNK = 20_000


def build_files(root: Path, real: int, crawl: int, copies: float, size: int) -> dict[str, str | None]:
    """The catalog and crawl JPEGs under ``root``; returns crawl path -> catalog path or None.
    Catalog images are cut from half of the sample photos and unrelated crawl images from
    the other half: unrelated means another photo, as in a real crawl."""
    every = load_sources()
    sources, others = every[::2], every[1::2]
    cat_dir, crawl_dir = root / "catalog", root / "crawl"
    cat_dir.mkdir(parents=True, exist_ok=True)
    crawl_dir.mkdir(parents=True, exist_ok=True)
    catalog = []
    for i in range(real):
        p = cat_dir / f"cat-{i:05d}.jpg"
        if not p.exists():
            Image.fromarray(make_image(sources, CATALOG_SEED + i, size), "RGB").save(p, quality=90)
        catalog.append(p)
    n_copies = round(crawl * copies)
    order = np.random.default_rng(PAD_SEED).permutation(crawl)
    truth: dict[str, str | None] = {}
    for k in range(crawl):
        p = crawl_dir / f"crawl-{int(order[k]):05d}.jpg"
        source = catalog[k % real] if k < n_copies else None
        if not p.exists():
            if source is not None:
                attack(source, CATALOG_SEED + k).save(p, quality=30)
            else:
                Image.fromarray(make_image(others, UNRELATED_SEED + k, size), "RGB").save(p, quality=90)
        truth[str(p)] = None if source is None else str(source)
    return truth


def pad_catalog(db: Path, total: int) -> float:
    """Synthetic catalog images up to ``total``, in transactions of PAD_CHUNK; seconds taken."""
    store = Store.open(db, hasher=HASHER_ID, embedder=embedder_id_default(), create=False)
    have = store.stats().images
    rng = np.random.default_rng(PAD_SEED)
    vecs = rng.normal(size=(256, EMBEDDING_DIM)).astype(np.float32)
    blobs = [to_blob(v / np.linalg.norm(v)) for v in vecs]
    t0 = time.perf_counter()
    for start in range(have, total, PAD_CHUNK):
        n = min(PAD_CHUNK, total - start)
        codes = rng.integers(0, 2**63, size=(n, 6), dtype=np.int64) * 2 + rng.integers(0, 2, size=(n, 6))
        signed = codes.astype(np.uint64).view(np.int64)
        rows = [
            NewCatalogImage(
                path=f"/synthetic/{start + i:08d}.jpg",
                owner="synthetic",
                sha256=f"synthetic-{start + i:012d}",
                width=1000,
                height=750,
                phash=int(c[0]),
                dhash=int(c[1]),
                embedding=blobs[(start + i) % len(blobs)],
                variants=(("centre80", int(c[2]), int(c[3])), ("centre65", int(c[4]), int(c[5]))),
            )
            for i, c in enumerate(signed)
        ]
        store.catalog.add(rows)
    store.close()
    return time.perf_counter() - t0


def embedder_id_default() -> str:
    from detector.config import Settings

    return embedder_id(Settings())


def run(args: Sequence[str], stdout: Path | None = None) -> tuple[float, int, str]:
    """A copyscan subprocess: (wall seconds, peak resident set in bytes, stderr)."""
    argv = [*copyscan_argv(), *args]
    out = open(stdout, "w", encoding="utf-8") if stdout else subprocess.DEVNULL
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if stdout:
        out.close()  # type: ignore[union-attr]
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{shlex.join(argv)} exited {proc.returncode}:\n{err}")
    return seconds, usage.ru_maxrss * 1024, err


def stage1_memory(db: Path) -> tuple[int, int, int, float]:
    """(catalog images, index bytes with tables, peak Python allocation while loading, load s)."""
    store = Store.open(db, hasher=HASHER_ID, embedder=embedder_id_default(), create=False)
    tracemalloc.start()
    t0 = time.perf_counter()
    ids, phash, dhash = store.catalog.codes()
    index = HammingIndex(ids, phash, dhash, mih=True)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    images = len(np.unique(index.ids))
    store.close()
    return images, index.nbytes, peak, seconds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--catalog", type=int, default=1_000_000, help="catalog images in all, real and synthetic"
    )
    ap.add_argument(
        "--real", type=int, default=200, help="real catalog images (JPEGs, indexed by catalog add)"
    )
    ap.add_argument("--crawl", type=int, default=1000, help="crawl images scanned")
    ap.add_argument("--copies", type=float, default=0.1, help="share of the crawl that copies the catalog")
    ap.add_argument("--size", type=int, default=1000, help="image side in pixels (~size x size)")
    ap.add_argument("--workdir", type=Path, help="keep images and the padded database here for the next run")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="copyscan-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    print("copyscan crawl-scale benchmark")
    print(f"command   {shlex.join(sys.orig_argv)}")
    print(f"machine   {platform.platform()}, os.cpu_count()={os.cpu_count()}")
    share = _others_share()
    if share is not None:
        print(f"others    other processes use {100 * share:.0f}% of the CPUs (1 s sample before starting)")
    t0 = time.perf_counter()
    truth = build_files(root, args.real, args.crawl, args.copies, args.size)
    catalog_dir, crawl_dir = root / "catalog", root / "crawl"
    print(
        f"data      {args.real} catalog JPEGs, {args.crawl} crawl JPEGs ({args.copies:.0%} attacked copies), "
        f"~{args.size} px, made or found in {time.perf_counter() - t0:.1f} s; workdir {root}"
    )

    rows: list[tuple[str, float, float, str]] = []
    notes: list[str] = []
    peer_catalog = args.real / _seconds(lambda: hash_files_peer(sorted(catalog_dir.iterdir())))
    peer_crawl = args.crawl / _seconds(lambda: hash_files_peer(sorted(crawl_dir.iterdir())))

    for jobs in ("0", "1"):
        add_db = root / f"add-jobs{jobs}.db"
        add_db.unlink(missing_ok=True)
        s, _, _ = run(
            ["--db", str(add_db), "--quiet", "--set", f"jobs={jobs}", "catalog", "add", str(catalog_dir)]
        )
        label = "default workers" if jobs == "0" else "jobs=1"
        rows.append(
            (f"catalog add, {args.real} images ({label})", args.real / s, peer_catalog, "imagehash pass")
        )

    db = root / f"catalog-{args.catalog}.db"
    if not db.exists():
        part = db.with_suffix(".partial")
        part.unlink(missing_ok=True)
        (root / "add-jobs0.db").rename(part)
        seconds = pad_catalog(part, args.catalog)
        part.rename(db)
        notes.append(f"padded the catalog to {args.catalog:,} images in {seconds:.0f} s")
    images, held, peak, load_s = stage1_memory(db)
    notes.append(
        f"stage 1 in memory: {held / images:.1f} bytes per catalog image ({held / 2**20:.0f} MiB for "
        f"{images:,} images: ids, codes and multi-index tables); loading the codes and building "
        f"the tables took {load_s:.1f} s with a peak of {peak / images:.0f} bytes of allocations per image"
    )

    one = next(iter(sorted(crawl_dir.iterdir())))
    start_s, _, _ = run(["--db", str(db), "--quiet", "scan", str(one), "--mode", "fast", "--format", "jsonl"])
    for jobs in ("0", "1"):
        out = root / f"scan-jobs{jobs}.jsonl"
        s, rss, err = run(
            [
                "--db",
                str(db),
                "--set",
                f"jobs={jobs}",
                "scan",
                "--rescan",
                str(crawl_dir),
                "--mode",
                "fast",
                "--format",
                "jsonl",
            ],
            stdout=out,
        )
        label = "default workers" if jobs == "0" else "jobs=1"
        rows.append(
            (f"scan --mode fast vs {images:,} images ({label})", args.crawl / s, peer_crawl, "imagehash pass")
        )
        steady = (args.crawl - 1) / (s - start_s) if s > start_s else float("nan")
        rows.append((f"  same, after start-up ({label})", steady, peer_crawl, "imagehash pass"))
        summary = err.strip().splitlines()[-1] if err.strip() else ""
        notes.append(
            f"scan ({label}): {s:.1f} s wall, peak RSS {rss / 2**20:.0f} MiB "
            f"({rss / images:.0f} bytes per catalog image, the model and interpreter included); "
            f"{scan_quality(out, truth).replace(' (same source photos, other crops)', '')}; {summary}"
        )
    notes.append(f"start-up (a one-image scan: process, codes loaded, tables built, model): {start_s:.1f} s")

    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'measurement':<{width}}  {'ours img/s':>10}  {'peer img/s':>10}  {'ours/peer':>9}  peer")
    print("-" * (width + 50))
    for name, ours, peer, peer_name in rows:
        print(f"{name:<{width}}  {ours:10.1f}  {peer:10.1f}  {ours / peer:9.2f}  {peer_name}")
    print()
    for note in notes:
        print(f"* {note}")


def _seconds(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
