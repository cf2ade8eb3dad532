"""A crawl scanned in each mode beside a plain imagehash pass over the same files, whole processes.

    python benchmarks/crawl_vs_peer.py [--corpus /work/corpus] [--catalog 200] [--crawl 600] [--seed 0]
        [--work DIR] [--sets small,1mp] [--modes fast,thorough] [--repeat 1] [--set NAME=VALUE]...

From the real images of ``--corpus`` (built by ``benchmarks/corpus.py``; nothing is downloaded)
draws, with ``--seed``, a catalog of ``--catalog`` images and a crawl of ``--crawl`` images: a
sixth of them attacked copies of catalog images (``detector.tasks.attacks.attack``, families
crop, jpeg, caption, border and colour in turn), the rest other corpus images, not in the catalog
(non-copies, as most of a real crawl is). The crawl is written twice as JPEGs (quality 90):

- ``small``: each image's longest side drawn in 300..800 px (never enlarged);
- ``1mp``: each image resized to about 1,000,000 pixels, keeping its aspect.

The catalog is indexed once with ``copyscan catalog add`` (not timed). Then, per crawl set, each
a whole process timed for wall and CPU seconds (its own and its waited-for children's, so scan's
worker processes count):

1. ``copyscan scan CRAWL --mode M --format jsonl`` for each ``--modes`` entry, on a fresh copy of
   the indexed database (so no stored result is reused; exit status 0 or 4);
2. the peer: one ``python -c`` process that opens every file with Pillow and computes
   ``imagehash.phash`` and ``imagehash.dhash`` (the pass issue 24 compares with).

Each is the run with the least wall time of ``--repeat``, ours and the peer alternating, so a
load change on a shared machine hits both alike: read the ratio. Beside the speed, each mode's
copies found (the copy's best match is its catalog image, verdict copy or near-duplicate) and
non-copies flagged, so the speed is not bought with recall. The start-up alone (a scan of one
attacked copy, so fast mode loads the CNN too, and the peer on that one image) is measured once
per mode, so the rate after start-up can be read too. ``--work`` keeps the generated files and
the indexed database for the next run with the same corpus, sizes and seed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import imagehash
import numpy as np
from PIL import Image
from throughput import _cpu_seconds, _others_share, copyscan_argv, print_load

from detector.records import COPY, NEAR_DUPLICATE
from detector.tasks.attacks import attack

FAMILIES = ("crop", "jpeg", "caption", "border", "colour")
COPY_SHARE = 1 / 6
SETS = ("small", "1mp")
MODES = ("fast", "thorough")
SMALL_SIDES = (300, 800)  # the small set's longest side, drawn per image in this range (px)
ONE_MP = 1_000_000
JPEG_QUALITY = 90
# issue 24: fast mode's whole-process throughput at least this share of the imagehash pass's
FAST_TARGET = {"small": 0.5, "1mp": 0.7}
SET_LABEL = {"small": "JPEGs of at most 800 px", "1mp": "JPEGs of about 1 MP"}
MANIFEST_VERSION = 1

PEER = """\
import sys
from pathlib import Path

import imagehash
from PIL import Image

n = 0
for p in sorted(Path(sys.argv[1]).iterdir()):
    if p.suffix.lower() in (".jpg", ".jpeg", ".png"):
        with Image.open(p) as im:
            imagehash.phash(im)
            imagehash.dhash(im)
        n += 1
print(n)
"""


@dataclass(frozen=True)
class Timing:
    """One whole process: wall seconds, CPU seconds (user + system, with its waited-for
    children) and how many images it handled."""

    wall: float
    cpu: float
    images: int

    @property
    def rate(self) -> float:
        return self.images / self.wall


@dataclass(frozen=True)
class Found:
    """What one scan's JSON Lines say: copies found with their catalog image (verdict copy or
    near-duplicate), non-copies flagged at all, and images that could not be used."""

    copies: int
    copies_of: int
    flagged: int
    non_copies: int
    errors: int


# --- data ----------------------------------------------------------------------------------------


def corpus_files(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def resized(rgb: np.ndarray, scale: float) -> np.ndarray:
    if abs(scale - 1.0) < 1e-3:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def for_set(rgb: np.ndarray, name: str, small_side: int) -> np.ndarray:
    """The crawl image as the set ``name`` holds it: ``small`` longest side ``small_side`` px at
    most (never enlarged), ``1mp`` about ONE_MP pixels."""
    h, w = rgb.shape[:2]
    if name == "small":
        return resized(rgb, min(1.0, small_side / max(h, w)))
    return resized(rgb, (ONE_MP / (h * w)) ** 0.5)


def save_jpeg(rgb: np.ndarray, path: Path) -> None:
    Image.fromarray(rgb, "RGB").save(path, quality=JPEG_QUALITY)


def build(work: Path, args: argparse.Namespace) -> dict[str, str | None]:
    """The catalog folder, the indexed database and the crawl sets of ``args.sets`` under
    ``work``, reusing what an earlier run with the same parameters left there (``manifest.json``
    says what is complete); returns crawl file name -> its catalog file name, None for a
    non-copy."""
    params = {
        "version": MANIFEST_VERSION,
        "corpus": str(args.corpus.resolve()),
        "catalog": args.catalog,
        "crawl": args.crawl,
        "seed": args.seed,
    }
    manifest_path = work / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if manifest.get("params") != params:
        stale_parts = (
            "catalog",
            *(f"catalog.db{x}" for x in ("", "-wal", "-shm")),
            *(f"crawl-{s}" for s in SETS),
        )
        for stale in stale_parts:
            p = work / stale
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        manifest = {"params": params, "done": []}

    def done(part: str) -> None:
        manifest["done"].append(part)
        manifest_path.write_text(json.dumps(manifest, indent=1))

    files = corpus_files(args.corpus)
    n_copies = round(args.crawl * COPY_SHARE)
    n_others = args.crawl - n_copies
    if len(files) < args.catalog + n_others:
        raise SystemExit(
            f"{args.corpus} has {len(files)} images; --catalog {args.catalog} and --crawl {args.crawl} "
            f"need {args.catalog + n_others} (build more with benchmarks/corpus.py)"
        )
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(files))
    catalog = [files[i] for i in order[: args.catalog]]
    others = [files[i] for i in order[args.catalog : args.catalog + n_others]]
    slots = rng.permutation(args.crawl)  # file-name order mixes copies among non-copies
    small_sides = rng.integers(SMALL_SIDES[0], SMALL_SIDES[1] + 1, size=args.crawl)
    names = [f"crawl-{int(s):05d}.jpg" for s in slots]
    truth: dict[str, str | None] = {
        name: (catalog[k % len(catalog)].name if k < n_copies else None) for k, name in enumerate(names)
    }

    cat_dir = work / "catalog"
    if "catalog" not in manifest["done"]:
        cat_dir.mkdir(parents=True, exist_ok=True)
        for p in catalog:
            shutil.copyfile(p, cat_dir / p.name)
        done("catalog")
    if "catalog.db" not in manifest["done"]:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [*copyscan_argv(), "--db", str(work / "catalog.db"), "catalog", "add", str(cat_dir), "-q"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode not in (0, 4):
            raise SystemExit(f"copyscan catalog add exited {proc.returncode}:\n{proc.stderr}")
        print(
            f"indexed   {args.catalog} catalog images in {time.perf_counter() - t0:.1f} s (not timed below)"
        )
        done("catalog.db")

    todo = [s for s in args.sets if f"crawl-{s}" not in manifest["done"]]
    if todo:
        t0 = time.perf_counter()
        for s in todo:
            (work / f"crawl-{s}").mkdir(parents=True, exist_ok=True)
        for k, name in enumerate(names):
            if k < n_copies:
                # one Generator per copy, so a copy does not change with --crawl or the sets built
                copy_rng = np.random.default_rng([args.seed, k])
                rgb = attack(read_rgb(catalog[k % len(catalog)]), FAMILIES[k % len(FAMILIES)], copy_rng).rgb
            else:
                rgb = read_rgb(others[k - n_copies])
            for s in todo:
                save_jpeg(for_set(rgb, s, int(small_sides[k])), work / f"crawl-{s}" / name)
        for s in todo:
            done(f"crawl-{s}")
        print(f"made      crawl sets {', '.join(todo)} in {time.perf_counter() - t0:.1f} s")
    return truth


# --- measuring -----------------------------------------------------------------------------------


def timed(argv: Sequence[str], ok: Sequence[int] = (0,)) -> tuple[float, float, str]:
    """Run ``argv`` to the end: (wall s, CPU s of it and its waited-for children, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in ok:
        raise SystemExit(f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def fresh_db(work: Path, label: str) -> Path:
    """A copy of the indexed catalog database for one run (with its WAL, if one was left)."""
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    db = runs / f"{label}.db"
    for suffix in ("", "-wal", "-shm"):
        src, dst = Path(f"{work / 'catalog.db'}{suffix}"), Path(f"{db}{suffix}")
        dst.unlink(missing_ok=True)
        if src.exists():
            shutil.copyfile(src, dst)
    return db


def drop_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


SETTINGS: list[str] = []  # --set NAME=VALUE options for every scan (parse_args fills it)


def scan(work: Path, folder: Path, mode: str, label: str) -> tuple[Timing, Path]:
    """One whole ``copyscan scan`` process on a fresh database; (timing, its JSON Lines file)."""
    db = fresh_db(work, label)
    out = work / "runs" / f"{label}.jsonl"
    argv = [*copyscan_argv(), "--db", str(db), *SETTINGS, "-q", "scan", str(folder), "--mode", mode]
    wall, cpu, _ = timed([*argv, "--format", "jsonl", "-o", str(out)], ok=(0, 4))
    drop_db(db)
    images = sum(1 for line in out.read_text(encoding="utf-8").splitlines() if line.strip())
    return Timing(wall, cpu, images), out


def peer(folder: Path) -> Timing:
    """One whole process: Pillow open + imagehash pHash + dHash of every file in ``folder``."""
    wall, cpu, out = timed([sys.executable, "-c", PEER, str(folder)])
    return Timing(wall, cpu, int(out.strip()))


def found(jsonl: Path, truth: dict[str, str | None]) -> Found:
    copies = copies_of = flagged = non_copies = errors = 0
    flags = (COPY, NEAR_DUPLICATE)
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        expected = truth.get(Path(rec["query"]).name)
        errors += rec["status"] == "error"
        hits = [m for m in rec["matches"] if m["verdict"] in flags]
        if expected is None:
            non_copies += 1
            flagged += bool(hits)
        else:
            copies_of += 1
            top = rec["matches"][:1]  # matches come best first
            copies += any(m in hits and Path(m["catalog_path"]).name == expected for m in top)
    return Found(copies, copies_of, flagged, non_copies, errors)


# --- printing ------------------------------------------------------------------------------------


def set_summary(folder: Path) -> str:
    files = sorted(folder.iterdir())
    sizes = []
    for p in files:
        with Image.open(p) as im:
            sizes.append(im.size)
    mp = [w * h / 1e6 for w, h in sizes]
    longest = [max(s) for s in sizes]
    kb = sum(p.stat().st_size for p in files) / len(files) / 1e3
    return (
        f"{len(files)} JPEGs, longest side {min(longest)}..{max(longest)} px, "
        f"{min(mp):.2f}..{max(mp):.2f} MP ({np.mean(mp):.2f} avg), {kb:.0f} kB avg"
    )


def steady_rate(run: Timing, startup: Timing) -> float | None:
    """Images/s of ``run`` past its start-up (the one-image process's wall time); None where the
    difference is lost in the noise (a tiny crawl on a busy machine)."""
    rest = run.wall - startup.wall
    return (run.images - 1) / rest if rest > 0.05 * run.wall else None


def fmt_steady(rate: float | None) -> str:
    return "n/a (within start-up noise)" if rate is None else f"{rate:.1f}"


def print_table(
    name: str,
    ours: dict[str, tuple[Timing, Found]],
    peer_t: Timing,
    startup: dict[str, Timing],
    peer_startup: Timing,
) -> None:
    print("| measurement | wall s | CPU s | images/s | ours / peer | ours / peer, per CPU s "
          "| copies found | non-copies flagged | errors |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    peer_cpu_rate = peer_t.images / peer_t.cpu
    for mode, (t, f) in ours.items():
        print(
            f"| copyscan scan --mode {mode} | {t.wall:.2f} | {t.cpu:.2f} | {t.rate:.1f} "
            f"| {t.rate / peer_t.rate:.2f} | {t.images / t.cpu / peer_cpu_rate:.2f} "
            f"| {f.copies}/{f.copies_of} | {f.flagged}/{f.non_copies} | {f.errors} |"
        )
    print(f"| peer: PIL open + imagehash pHash + dHash | {peer_t.wall:.2f} | {peer_t.cpu:.2f} "
          f"| {peer_t.rate:.1f} | 1.00 | 1.00 | | | |")  # fmt: skip
    print()
    peer_steady = steady_rate(peer_t, peer_startup)
    after = []
    for mode, (t, _) in ours.items():
        steady = steady_rate(t, startup[mode])
        ratio = "" if steady is None or peer_steady is None else f" ({steady / peer_steady:.2f}x)"
        after.append(f"{mode} {fmt_steady(steady)}{ratio}")
    print(f"after start-up (wall less the one-image process's): {', '.join(after)}, "
          f"peer {fmt_steady(peer_steady)} images/s")  # fmt: skip
    if "fast" in ours:
        ratio = ours["fast"][0].rate / peer_t.rate
        target = FAST_TARGET[name]
        verdict = "met" if ratio >= target else "not met"
        print(f"issue 24 target: fast >= {target:.2f}x the peer's images/s on {SET_LABEL[name]}: "
              f"{ratio:.2f}x, {verdict}")  # fmt: skip
    if "thorough" in ours:
        print("issue 24 target: thorough >= 2x its present images/s (compare with the row above)")
    print()


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--corpus", type=Path, default=Path("/work/corpus"), help="folder written by benchmarks/corpus.py"
    )
    ap.add_argument("--catalog", type=int, default=200, help="catalog images drawn from the corpus")
    ap.add_argument("--crawl", type=int, default=600, help="crawl images, a sixth of them attacked copies")
    ap.add_argument("--seed", type=int, default=0, help="draws the catalog, the crawl and the attacks")
    ap.add_argument(
        "--work",
        type=Path,
        help="keep the generated files and the indexed database here and reuse them next time "
        "(default: a temporary folder, removed)",
    )
    ap.add_argument("--sets", default=",".join(SETS), help=f"crawl sets, comma-separated: {', '.join(SETS)}")
    ap.add_argument(
        "--modes", default=",".join(MODES), help=f"scan modes, comma-separated: {', '.join(MODES)}"
    )
    ap.add_argument("--repeat", type=int, default=1, help="best (least wall time) of this many runs each")
    ap.add_argument("--set", dest="changes", action="append", default=[], metavar="NAME=VALUE",
                    help="an engine setting for every scan, as copyscan --set (e.g. insets=0)")  # fmt: skip
    args = ap.parse_args(argv)
    SETTINGS[:] = [a for change in args.changes for a in ("--set", change)]
    args.sets = [s for s in args.sets.split(",") if s]
    args.modes = [m for m in args.modes.split(",") if m]
    if not args.sets or any(s not in SETS for s in args.sets):
        ap.error(f"--sets takes some of {', '.join(SETS)}")
    if not args.modes or any(m not in MODES for m in args.modes):
        ap.error(f"--modes takes some of {', '.join(MODES)}")
    if args.catalog < 1 or args.crawl < 2 or args.repeat < 1:
        ap.error("need --catalog >= 1, --crawl >= 2, --repeat >= 1")
    if not args.corpus.is_dir():
        ap.error(f"{args.corpus} is not a folder; build it with benchmarks/corpus.py")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    cpu_start = _cpu_seconds()
    keep = args.work is not None
    work = args.work or Path(tempfile.mkdtemp(prefix="copyscan-cvp-"))
    work.mkdir(parents=True, exist_ok=True)
    print("copyscan crawl-vs-peer benchmark")
    print(f"command   {shlex.join(sys.orig_argv)}")
    print(f"machine   {platform.platform()}, os.cpu_count()={os.cpu_count()}")
    print(f"versions  copyscan {importlib.metadata.version('copyscan')}, "
          f"python {platform.python_version()}, Pillow {Image.__version__}, "
          f"imagehash {imagehash.__version__}, numpy {np.__version__}")  # fmt: skip
    share = _others_share()
    if share is not None:
        print(f"others    other processes use {100 * share:.0f}% of the CPUs (1 s sample before starting)")
    try:
        truth = build(work, args)
        n_copies = sum(v is not None for v in truth.values())
        print(f"data      corpus {args.corpus}, seed {args.seed}: catalog {args.catalog}, crawl {args.crawl} "
              f"({n_copies} attacked copies: {', '.join(FAMILIES)}; {args.crawl - n_copies} non-copies); "
              f"work {work}")  # fmt: skip
        for s in args.sets:
            print(f"{s:<9} {set_summary(work / f'crawl-{s}')}")
        print(flush=True)

        # start-up: one image scanned, and hashed by the peer; an attacked copy, so that fast mode
        # loads the CNN too, as it does on any crawl with a few candidates
        one = work / "one"
        shutil.rmtree(one, ignore_errors=True)
        one.mkdir()
        first = next(n for n, v in sorted(truth.items()) if v is not None)
        shutil.copyfile(work / f"crawl-{args.sets[0]}" / first, one / first)
        startup = {m: scan(work, one, m, f"one-{m}")[0] for m in args.modes}
        peer_startup = peer(one)
        print("### start-up: one whole process on one image (an attacked copy)")
        print()
        print("| process | wall s | CPU s |")
        print("|---|---:|---:|")
        for m, t in startup.items():
            print(f"| copyscan scan --mode {m} | {t.wall:.2f} | {t.cpu:.2f} |")
        print(
            f"| peer: PIL open + imagehash pHash + dHash | {peer_startup.wall:.2f} | {peer_startup.cpu:.2f} |"
        )
        print(flush=True)

        for s in args.sets:
            folder = work / f"crawl-{s}"
            ours: dict[str, tuple[Timing, Found]] = {}
            peers: list[Timing] = []
            for _ in range(args.repeat):
                for m in args.modes:
                    t, out = scan(work, folder, m, f"{s}-{m}")
                    if m not in ours or t.wall < ours[m][0].wall:
                        ours[m] = (t, found(out, truth))
                peers.append(peer(folder))
            peer_t = min(peers, key=lambda t: t.wall)
            print(f"### {s}: {args.crawl} crawl {SET_LABEL[s]} against {args.catalog} catalog images"
                  f"{f', best of {args.repeat}' if args.repeat > 1 else ''}")  # fmt: skip
            print()
            print_table(s, ours, peer_t, startup, peer_startup)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)

    print_load(cpu_start, started)


if __name__ == "__main__":
    main()
