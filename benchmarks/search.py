"""Stage-1 candidate search at catalog scale: multi-index hashing beside its peers, one run.

    python benchmarks/search.py [--sizes 1000000,10000000] [--radii 8,14] [--seconds 2]

For each catalog size, random 64-bit codes with planted near-duplicates (every query's first
probe lies 0..16 bits from some catalog code), searched by Hamming radius with 1 and 16
probes per query (16: the scanner's 8 dihedral variants x whole image and content box), by:

- ours: :class:`detector.stage1.mih.MultiIndexHash` (default chunks; ``+copy``: ``copy_codes=True``);
- numpy brute force: ``np.flatnonzero(np.bitwise_count(codes ^ q) <= r)`` per probe;
- faiss ``IndexBinaryFlat.range_search`` and, as a second peer, faiss's own multi-index
  hashing ``IndexBinaryMultiHash`` (same number of tables, nflip = r // tables), one thread;

every method's hits checked equal to brute force's. Then the scanner's own stage 1,
``HammingIndex.probe_distances`` with 16 probes (2 unturned at pHash/dHash radius 14 and
sum 34, 14 turned at 8, the quarter turns without a dHash), by brute force and through the
hash tables. Throughputs are per core (one thread; other work on the machine shows as noise,
so compare the ratios). Memory: bytes per code from the arrays' nbytes, and the process's
peak RSS from ``resource.getrusage``.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from detector.stage1.hashing import Probe, Transform
from detector.stage1.index import HammingIndex
from detector.stage1.mih import MultiIndexHash

try:
    import faiss
except ImportError:  # the `bench` extra: pip install -e '.[bench]'
    faiss = None

PROBES = (1, 16)
TURNS = ("identity", "hflip", "vflip", "rot180", "rot90", "rot270", "transpose", "transverse")


def peak_rss_mb() -> float:
    """The process's peak resident set so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rate(run: Callable[[int], object], count: int, seconds: float) -> float:
    """Calls per second of ``run(i)`` for i = 0, 1, ... until ``count`` calls or ``seconds``
    have passed (at least two calls; the first, also run untimed beforehand, warms caches)."""
    run(0)
    done, start = 0, time.perf_counter()
    while done < count and (done < 2 or time.perf_counter() - start < seconds):
        run(done)
        done += 1
    return done / (time.perf_counter() - start)


def flip_bits(codes: np.ndarray, bits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each code with ``bits[i]`` distinct random bits flipped."""
    out = codes.copy()
    for i, k in enumerate(bits):
        for b in rng.permutation(64)[:k]:
            out[i] ^= np.uint64(1) << np.uint64(b)
    return out


def synthetic(n: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n,) random pHash-like codes, (n,) dHash-like codes and (queries, 16) probes: probe 0
    of each query 0..16 bits from a random catalog code (a copy), the others random (the
    turned variants of a query, which rarely match)."""
    rng = np.random.default_rng(seed)
    phash = rng.integers(0, 2**64, n, dtype=np.uint64)
    dhash = rng.integers(0, 2**64, n, dtype=np.uint64)
    probes = rng.integers(0, 2**64, (queries, 16), dtype=np.uint64)
    source = rng.integers(0, n, queries)
    probes[:, 0] = flip_bits(phash[source], rng.integers(0, 17, queries), rng)
    return phash, dhash, probes


def scanner_probes(phash: np.ndarray, dhash: np.ndarray, queries: int, seed: int) -> list[list[Probe]]:
    """Query images as the scanner probes them: identity and identity+trim (near a catalog
    image on both codes), then the turned probes (random; quarter turns have no dHash)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(queries):
        row = int(rng.integers(0, len(phash)))
        near_p = flip_bits(phash[row : row + 1], rng.integers(0, 12, 1), rng)[0]
        near_d = flip_bits(dhash[row : row + 1], rng.integers(0, 12, 1), rng)[0]
        probes = [
            Probe(Transform.parse("identity"), int(near_p), int(near_d)),
            Probe(Transform.parse("identity+trim"), int(near_p), int(near_d)),
        ]
        for suffix in ("", "+trim"):
            for name in TURNS[1:]:
                code = rng.integers(0, 2**64, 2, dtype=np.uint64)
                dh = None if name in ("rot90", "rot270", "transpose", "transverse") else int(code[1])
                probes.append(Probe(Transform.parse(name + suffix), int(code[0]), dh))
        out.append(probes)
    return out


def brute(codes: np.ndarray, probes: np.ndarray, radius: int) -> list[np.ndarray]:
    """numpy brute force: the rows within ``radius`` of each probe."""
    return [np.flatnonzero(np.bitwise_count(codes ^ p) <= radius) for p in probes]


def split(lims: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    return [np.sort(labels[lims[i] : lims[i + 1]]).astype(np.int64) for i in range(len(lims) - 1)]


Searcher = Callable[[np.ndarray, int], list[np.ndarray]]


def mih_searcher(index: MultiIndexHash) -> Searcher:
    def search(probes: np.ndarray, radius: int) -> list[np.ndarray]:
        return split(*index.range_search(probes, radius)[::2])

    return search


def faiss_searcher(index: object, tables: int = 0) -> Searcher:
    """faiss range search at an inclusive radius (faiss keeps distances < radius); for a
    multi-hash index, the bit flips that make it exact at that radius."""

    def search(probes: np.ndarray, radius: int) -> list[np.ndarray]:
        if tables:
            index.nflip = radius // tables  # type: ignore[attr-defined]
        lims, _, labels = index.range_search(probes.view(np.uint8).reshape(-1, 8), radius + 1)  # type: ignore[attr-defined]
        return split(lims, labels)

    return search


def measure(
    searchers: dict[str, Searcher], queries: np.ndarray, radius: int, seconds: float
) -> tuple[dict[str, float], float, bool]:
    """Queries per second of each searcher over (q, p) probes (one query: p probes), the mean
    hits per query, and whether every searcher found exactly what brute force found."""
    rates: dict[str, float] = {}
    found: dict[str, list[list[np.ndarray]]] = {}
    for name, search in searchers.items():
        out = found[name] = []
        rates[name] = rate(lambda i, s=search, o=out: o.append(s(queries[i], radius)), len(queries), seconds)
    reference = found["numpy"]
    exact = all(
        all(
            a.tolist() == b.tolist()
            for x, y in zip(runs, reference, strict=False)
            for a, b in zip(x, y, strict=True)
        )
        for runs in found.values()
    )
    return rates, float(np.mean([sum(len(h) for h in r) for r in reference])), exact


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}" if x >= 10 else f"{x:.1f}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.1f}x"


def bench_size(n: int, radii: Sequence[int], queries: int, seconds: float, seed: int) -> None:
    t0 = time.perf_counter()
    phash, dhash, probes = synthetic(n, queries, seed)
    print(f"\n## {n:,} codes (generated in {time.perf_counter() - t0:.1f} s)")
    rss0 = peak_rss_mb()

    t0 = time.perf_counter()
    ours = MultiIndexHash(phash)
    build = time.perf_counter() - t0
    rss1 = peak_rss_mb()
    t0 = time.perf_counter()
    ours_copy = MultiIndexHash(phash, copy_codes=True)
    build_copy = time.perf_counter() - t0
    brute_probe = 1 / rate(
        lambda i: np.flatnonzero(np.bitwise_count(phash ^ probes[i % queries, 0]) <= 8), 20, 1
    )
    print(f"chunks {ours.chunk_bits}; peak RSS {rss0:,.0f} MiB with the codes, {rss1:,.0f} after the build")
    rows = [
        ("ours (MIH)", build, ours.nbytes - phash.nbytes),
        ("ours (MIH+copy)", build_copy, ours_copy.nbytes - phash.nbytes),
    ]
    flat = multi = None
    if faiss is not None:
        faiss.omp_set_num_threads(1)
        as_bytes = phash.view(np.uint8).reshape(n, 8)
        t0 = time.perf_counter()
        flat = faiss.IndexBinaryFlat(64)
        flat.add(as_bytes)
        rows.append(("faiss IndexBinaryFlat", time.perf_counter() - t0, 0))
        t0 = time.perf_counter()
        multi = faiss.IndexBinaryMultiHash(64, len(ours.chunk_bits), min(ours.chunk_bits))
        multi.add(as_bytes)
        rows.append(("faiss IndexBinaryMultiHash", time.perf_counter() - t0, None))
    print(f"peak RSS after all builds {peak_rss_mb():,.0f} MiB")
    print("\n| index | build s | = brute-force probes | bytes/code beyond the 8-byte code |")
    print("|---|---:|---:|---:|")
    for name, secs, extra in rows:
        size = "(not exposed)" if extra is None else f"{extra / max(n, 1):.1f}"
        print(f"| {name} | {secs:.2f} | {secs / brute_probe:,.0f} | {size} |")

    searchers: dict[str, Searcher] = {
        "ours": mih_searcher(ours),
        "ours+copy": mih_searcher(ours_copy),
        "numpy": lambda p, r: brute(phash, p, r),
    }
    if flat is not None and multi is not None:
        searchers["faiss flat"] = faiss_searcher(flat)
        searchers["faiss MIH"] = faiss_searcher(multi, len(ours.chunk_bits))
    print(
        "\n| radius | probes/query | hits/query | ours q/s | ours+copy q/s | numpy q/s | faiss flat q/s "
        "| faiss MIH q/s | ours/numpy | ours/faiss flat | ours/faiss MIH | exact |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for radius in radii:
        for per_query in PROBES:
            rates, hits, exact = measure(searchers, probes[:, :per_query], radius, seconds)
            ours_rate = rates["ours"]
            cells = [str(radius), str(per_query), f"{hits:.1f}"]
            cells += [
                fmt_rate(rates.get(k)) for k in ("ours", "ours+copy", "numpy", "faiss flat", "faiss MIH")
            ]
            cells += [fmt_ratio(ours_rate, rates.get(k)) for k in ("numpy", "faiss flat", "faiss MIH")]
            print("| " + " | ".join([*cells, "yes" if exact else "NO"]) + " |")
            if radius <= 8 and per_query == 1 and n >= 10_000_000:
                verdict = "met" if ours_rate >= 2000 else "NOT met"
                print(f"\ntarget >= 2,000 queries/s/core at {n:,} codes, radius {radius}: {verdict}\n")
    del searchers, ours_copy, flat, multi

    # The scanner's stage 1: HammingIndex over pHash + dHash, 16 probes, its radius rules.
    scan_queries = scanner_probes(phash, dhash, queries, seed + 1)
    ids = np.arange(n, dtype=np.int64) // 3  # three codes per catalog image
    dense = HammingIndex(ids, phash, dhash, mih=False)
    t0 = time.perf_counter()
    tables = HammingIndex(ids, phash, dhash, mih=True)
    build = time.perf_counter() - t0
    found: dict[str, list[object]] = {"dense": [], "tables": []}

    def scan(i: int, index: HammingIndex, key: str) -> None:
        p = scan_queries[i % queries]
        d = index.probe_distances(p, 14, 14, 8, 34)
        found[key].append(index.within(d, p, 50))

    r_dense = rate(lambda i: scan(i, dense, "dense"), queries, seconds)
    r_tables = rate(lambda i: scan(i, tables, "tables"), queries, seconds)
    same = all(a == b for a, b in zip(found["dense"][1:], found["tables"][1:], strict=False))
    per_code = (tables.nbytes - dense.nbytes) / n
    print(
        f"\nscanner stage 1 (HammingIndex.probe_distances + within, 16 probes, radius 14/14 sum 34, "
        f"turned 8): brute force {fmt_rate(r_dense)} queries/s, hash tables {fmt_rate(r_tables)} "
        f"queries/s ({fmt_ratio(r_tables, r_dense)}; same candidates: {'yes' if same else 'NO'}); "
        f"tables built in {build:.2f} s, {per_code:.1f} bytes per code beyond the 24 of ids + codes"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000000,10000000", help="catalog sizes, comma-separated")
    parser.add_argument("--radii", default="8,14", help="Hamming radii, comma-separated")
    parser.add_argument("--queries", type=int, default=300, help="distinct queries per measurement")
    parser.add_argument("--seconds", type=float, default=2.0, help="time limit per measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"# candidate search: python {platform.python_version()}, numpy {np.__version__}, ", end="")
    print(
        "faiss not installed (pip install -e '.[bench]')" if faiss is None else f"faiss {faiss.__version__}"
    )
    print("throughput per core (one thread); ratios are ours / peer from the same run")
    for n in (int(s) for s in args.sizes.split(",")):
        bench_size(n, [int(r) for r in args.radii.split(",")], args.queries, args.seconds, args.seed)
    print(f"\npeak RSS of the whole run: {peak_rss_mb():,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
