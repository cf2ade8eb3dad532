"""End-to-end throughput of copyscan beside a peer measured in the same run, as a ratio.

    python benchmarks/throughput.py [--images N] [--size PX] [--workdir DIR]

Builds N "catalog" JPEGs (~PX x PX, quality 90) and N "crawl" JPEGs (half attacked copies of
catalog images, half unrelated) from scikit-image's bundled sample images and seeded numpy
transforms, then measures, in images per second:

1. decode + pHash + dHash of in-memory JPEG bytes: ``detector.intake.loader.decode`` +
   ``detector.stage1.hashing.image_codes`` against PIL.Image.open + imagehash.phash + imagehash.dhash;
2. CNN embedding at 224x224, batch 32: ``detector.stage2.embedding.Embedder.embed`` against
   torchvision's efficientnet_b0 (random weights; the speed does not depend on them);
3. ``copyscan catalog add`` as a subprocess, and
4. ``copyscan scan`` (fast and thorough) as subprocesses, both against an in-process
   imagehash hash-only pass (open + phash + dhash) over the same files.

Everything printed is printed here; output of the library (if any) is captured and reported.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import cv2
import imagehash
import numpy as np
import skimage.data
import torch
import torchvision
from PIL import Image, ImageEnhance

from detector.config import Settings
from detector.intake.loader import decode
from detector.stage1.hashing import image_codes
from detector.stage2.embedding import Embedder, resize_for_cnn

SOURCES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "horse",
    "brick",
    "grass",
    "gravel",
    "cell",
)
CATALOG_SEED = 1_000
UNRELATED_SEED = 5_000_000
ORDER_SEED = 7
CNN_BATCH = 32
CNN_SIZE = 224
T = TypeVar("T")


# --- data ----------------------------------------------------------------------------------------


def load_sources() -> list[np.ndarray]:
    """The bundled sample images as (h, w, 3) uint8 RGB."""
    out = []
    for name in SOURCES:
        a = getattr(skimage.data, name)()
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        out.append(np.ascontiguousarray(a[..., :3].astype(np.uint8)))
    return out


def make_image(sources: Sequence[np.ndarray], seed: int, size: int) -> np.ndarray:
    """A distinct ~size x size RGB image: a seeded random crop of one sample image, rescaled,
    colour-shifted, maybe flipped, with a little noise."""
    rng = np.random.default_rng(seed)
    src = sources[int(rng.integers(len(sources)))]
    h, w = src.shape[:2]
    ch, cw = int(h * rng.uniform(0.35, 0.9)), int(w * rng.uniform(0.35, 0.9))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = src[y : y + ch, x : x + cw]
    out_w = size
    out_h = max(16, round(size * rng.uniform(0.8, 1.25)))
    img = cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    gain = rng.uniform(0.75, 1.25, size=3).astype(np.float32)
    offset = rng.uniform(-25, 25, size=3).astype(np.float32)
    img = img * gain + offset + rng.normal(0.0, 3.0, size=img.shape).astype(np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))


def attack(catalog_jpeg: Path, seed: int) -> Image.Image:
    """A copy as found in a crawl: brightness change, downscaled 50% (re-encoded at q30 on save)."""
    rng = np.random.default_rng(seed)
    with Image.open(catalog_jpeg) as im:
        im = im.convert("RGB")
    im = ImageEnhance.Brightness(im).enhance(float(rng.choice([0.8, 1.2])))
    return im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR)


@dataclass
class Dataset:
    catalog: list[Path]
    crawl: list[Path]
    truth: dict[str, str | None]  # crawl path -> catalog path it copies, or None


def build_dataset(root: Path, n: int, size: int) -> Dataset:
    sources = load_sources()
    cat_dir, crawl_dir = root / "catalog", root / "crawl"
    for d in (cat_dir, crawl_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    catalog = []
    for i in range(n):
        p = cat_dir / f"cat-{i:05d}.jpg"
        Image.fromarray(make_image(sources, CATALOG_SEED + i, size), "RGB").save(p, quality=90)
        catalog.append(p)
    n_copies = n // 2
    slots = np.random.default_rng(ORDER_SEED).permutation(n)  # copies and unrelated interleaved
    crawl: list[Path] = [Path()] * n
    truth: dict[str, str | None] = {}
    for k in range(n):
        p = crawl_dir / f"crawl-{int(slots[k]):05d}.jpg"
        if k < n_copies:
            source = catalog[(k * n) // n_copies]
            attack(source, CATALOG_SEED + k).save(p, quality=30)
            truth[str(p)] = str(source)
        else:
            img = make_image(sources, UNRELATED_SEED + k, size)
            Image.fromarray(img, "RGB").save(p, quality=90)
            truth[str(p)] = None
        crawl[int(slots[k])] = p
    return Dataset(catalog=catalog, crawl=crawl, truth=truth)


# --- measuring -----------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    ours: float  # images/s
    peer: float  # images/s
    peer_name: str


@dataclass
class Captured:
    """Python-level stdout/stderr writes and warnings raised inside measured library calls."""

    text: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        out, err = io.StringIO(), io.StringIO()
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            warnings.simplefilter("always")
            yield
        for s in (out.getvalue(), err.getvalue()):
            if s:
                self.text.append(s)
        self.warnings.extend(f"{w.category.__name__}: {w.message}" for w in caught)

    def call(self, fn: Callable[[], T]) -> T:
        with self.guard():
            return fn()


def rate(fn: Callable[[], int]) -> float:
    """Images/s of one run of ``fn`` (which returns how many images it did)."""
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


def best_rates(ours: Callable[[], int], peer: Callable[[], int], repeats: int) -> tuple[float, float]:
    """Best images/s of ``ours`` and of ``peer`` (each returns how many images it did), over
    ``repeats`` alternating passes, so a load change on a shared machine hits both alike."""
    best = [0.0, 0.0]
    for _ in range(repeats):
        for i, fn in enumerate((ours, peer)):
            best[i] = max(best[i], rate(fn))
    return best[0], best[1]


def hash_ours(blobs: Sequence[bytes], settings: Settings) -> int:
    for data in blobs:
        image_codes(decode(data, settings).rgb)
    return len(blobs)


def hash_peer(blobs: Sequence[bytes]) -> int:
    for data in blobs:
        with Image.open(io.BytesIO(data)) as im:
            imagehash.phash(im)
            imagehash.dhash(im)
    return len(blobs)


def hash_files_peer(paths: Sequence[Path]) -> int:
    for p in paths:
        with Image.open(p) as im:
            imagehash.phash(im)
            imagehash.dhash(im)
    return len(paths)


def embed_ours(embedder: Embedder, images: Sequence[np.ndarray]) -> int:
    for start in range(0, len(images), CNN_BATCH):
        embedder.embed(images[start : start + CNN_BATCH])
    return len(images)


_IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def embed_peer(model: torch.nn.Module, images: Sequence[np.ndarray]) -> int:
    """uint8 -> normalised float tensor -> efficientnet_b0 forward, batch by batch."""
    with torch.inference_mode():
        for start in range(0, len(images), CNN_BATCH):
            # NHWC numpy permuted to NCHW is already channels_last in memory, as ours runs; say so.
            x = torch.from_numpy(np.stack(images[start : start + CNN_BATCH])).permute(0, 3, 1, 2)
            x = x.contiguous(memory_format=torch.channels_last)
            x = (x.float().div_(255.0) - _IMAGENET_MEAN) / _IMAGENET_STD
            model(x)
    return len(images)


@dataclass
class Run:
    seconds: float
    stdout: str
    stderr: str
    argv: list[str]


def copyscan_argv() -> list[str]:
    exe = Path(sys.executable).parent / "copyscan"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("copyscan")
    return [found] if found else [sys.executable, "-c", "from cli.main import main; main()"]


def run_cli(args: Sequence[str], stdout_path: Path | None = None, ok: Sequence[int] = (0,)) -> Run:
    argv = [*copyscan_argv(), *args]
    t0 = time.perf_counter()
    if stdout_path is None:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        out = proc.stdout
    else:
        with open(stdout_path, "w", encoding="utf-8") as f:
            proc = subprocess.run(argv, stdout=f, stderr=subprocess.PIPE, text=True, check=False)
        out = ""
    seconds = time.perf_counter() - t0
    if proc.returncode not in ok:
        raise SystemExit(f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stderr}")
    return Run(seconds=seconds, stdout=out, stderr=proc.stderr, argv=argv)


def scan_quality(jsonl: Path, truth: dict[str, str | None]) -> str:
    """How many attacked copies were flagged with the right catalog image, and how many
    unrelated images were flagged at all: a check that the scan did real work."""
    hit = copies = false_flags = unrelated = errors = 0
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        expected = truth.get(rec["query"])
        errors += rec["status"] == "error"
        top = rec["matches"][0]["catalog_path"] if rec["matches"] else None
        if expected is None:
            unrelated += 1
            false_flags += top is not None
        else:
            copies += 1
            hit += top == expected
    return (
        f"copies found {hit}/{copies}, unrelated flagged {false_flags}/{unrelated}"
        f" (same source photos, other crops), errors {errors}"
    )


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300, help="catalog images, and as many crawl images")
    ap.add_argument("--size", type=int, default=1000, help="image side in pixels (~size x size)")
    ap.add_argument(
        "--workdir",
        type=Path,
        help="write images (DIR/catalog, DIR/crawl, replaced) and databases here and keep them "
        "(default: a temp dir, removed)",
    )
    ap.add_argument("--repeats", type=int, default=2, help="in-process rows: best of this many passes")
    args = ap.parse_args(argv)
    if args.images < 2 or args.size < 64 or args.repeats < 1:
        ap.error("need --images >= 2, --size >= 64, --repeats >= 1")
    return args


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _others_share(seconds: float = 1.0) -> float | None:
    """The share of the machine's CPU that other processes use, sampled over ``seconds``."""
    a = _cpu_seconds()
    time.sleep(seconds)
    b = _cpu_seconds()
    if a is None or b is None:
        return None
    return max(0.0, (b[0] - a[0]) - (b[1] - a[1])) / (seconds * (os.cpu_count() or 1))


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds used by every process on the machine, by this process and its waited-for
    children) so far; None where /proc/stat is missing."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy.
    busy = sum(fields[:3]) + sum(fields[5:8])
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system


def print_load(cpu_start: tuple[float, float] | None, started: float) -> None:
    """The run's last lines: the CPU other processes used since ``cpu_start`` (from
    :func:`_cpu_seconds`; flagged when it skews the figures) and the run's wall time since
    ``started`` (``time.perf_counter()``)."""
    cpu_end = _cpu_seconds()
    wall = time.perf_counter() - started
    if cpu_start is not None and cpu_end is not None:
        others = max(0.0, (cpu_end[0] - cpu_start[0]) - (cpu_end[1] - cpu_start[1]))
        share = others / (wall * (os.cpu_count() or 1))
        flag = "  <- figures skewed by other processes" if share > 0.1 else ""
        print(
            f"other processes used {others:.1f} CPU-s during the {wall:.0f} s run "
            f"({100 * share:.0f}% of the machine){flag}"
        )
    print(f"total benchmark time {wall:.1f} s")


def fmt_rate(x: float) -> str:
    return f"{x:10.1f}"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    n, settings, captured = args.images, Settings(), Captured()
    started = time.perf_counter()
    cpu_start = _cpu_seconds()
    own_tmp = args.workdir is None
    root = Path(tempfile.mkdtemp(prefix="copyscan-bench-")) if own_tmp else args.workdir
    root.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    notes: list[str] = []
    try:
        print("copyscan throughput benchmark")
        print(f"command   {shlex.join(sys.orig_argv)}")
        print(
            f"machine   {platform.platform()}, {platform.processor() or platform.machine()}, "
            f"os.cpu_count()={os.cpu_count()}, torch.get_num_threads()={torch.get_num_threads()}"
        )
        print(
            f"versions  python {platform.python_version()}, torch {torch.__version__}, "
            f"torchvision {torchvision.__version__}, numpy {np.__version__}, "
            f"imagehash {imagehash.__version__}, Pillow {Image.__version__}"
        )
        print(f"load avg  {_load()} (1/5/15 min) at start")
        share = _others_share()
        if share is not None:
            print(
                f"others    other processes use {100 * share:.0f}% of the CPUs (1 s sample before starting)"
            )
        if share is not None and share > 0.1:
            print(
                "WARNING   other processes compete for the cores; torch's OpenMP threads then wait on "
                "descheduled peers and the CNN figures drop sharply"
            )
        print(f"workdir   {root}{' (removed at the end)' if own_tmp else ''}")

        t0 = time.perf_counter()
        data = build_dataset(root, n, args.size)
        cat_bytes = sum(p.stat().st_size for p in data.catalog)
        with Image.open(data.catalog[0]) as im0:
            mp = im0.width * im0.height / 1e6
        print(
            f"data      {n} catalog JPEGs (q90, ~{mp:.2f} MP, {cat_bytes / n / 1e3:.0f} kB avg) + {n} crawl "
            f"JPEGs ({n // 2} attacked copies q30/50%/brightness, {n - n // 2} unrelated), "
            f"made in {time.perf_counter() - t0:.1f} s"
        )
        print(flush=True)

        # 1. decode + pHash + dHash on in-memory bytes, single process.
        blobs = [p.read_bytes() for p in data.catalog]
        warm = blobs[: min(3, n)]
        captured.call(lambda: hash_ours(warm, settings))
        hash_peer(warm)
        ours, peer = best_rates(
            lambda: captured.call(lambda: hash_ours(blobs, settings)), lambda: hash_peer(blobs), args.repeats
        )
        rows.append(Row("decode + pHash + dHash (catalog JPEGs)", ours, peer, "PIL.open + imagehash"))

        # 2. CNN embedding, 224x224 uint8, batch 32.
        small = captured.call(lambda: [resize_for_cnn(decode(b, settings).rgb, CNN_SIZE) for b in blobs])
        embedder = captured.call(lambda: Embedder(settings))
        captured.call(lambda: embedder.embed(small[:CNN_BATCH]))  # warm-up
        b0 = torchvision.models.efficientnet_b0(weights=None).eval()
        embed_peer(b0, small[:CNN_BATCH])  # warm-up
        ours, peer = best_rates(
            lambda: captured.call(lambda: embed_ours(embedder, small)),
            lambda: embed_peer(b0, small),
            args.repeats,
        )
        rows.append(Row("CNN embed 224px, batch 32", ours, peer, "torchvision effnet_b0 fp32"))
        notes.append(
            "CNN row: ours = EfficientNet-Lite0 features + GeM + L2 incl. preprocessing, "
            f"{'bfloat16 autocast (native on this CPU)' if embedder.bf16 else 'float32'}; peer = "
            "torchvision efficientnet_b0(weights=None), RANDOM weights (timing only), eval, "
            "inference_mode, incl. uint8->float normalisation; both take channels_last input."
        )

        # Peer for the end-to-end rows: imagehash hash-only pass over the same files.
        hash_files_peer(data.catalog[: min(3, n)])
        peer_catalog = max(rate(lambda: hash_files_peer(data.catalog)) for _ in range(args.repeats))
        peer_crawl = max(rate(lambda: hash_files_peer(data.crawl)) for _ in range(args.repeats))

        # 3. catalog add, end to end.
        one_db = root / "one.db"
        one_db.unlink(missing_ok=True)
        one = run_cli(["--db", str(one_db), "--quiet", "catalog", "add", str(data.catalog[0])])
        db = root / "catalog.db"
        db.unlink(missing_ok=True)
        add = run_cli(["--db", str(db), "--quiet", "catalog", "add", str(root / "catalog")])
        if f"added {n}," not in add.stdout:
            notes.append(f"WARNING catalog add said: {add.stdout.strip()!r}")
        rows.append(Row("copyscan catalog add (subprocess)", n / add.seconds, peer_catalog, "imagehash pass"))
        net = add.seconds - one.seconds
        notes.append(
            f"catalog add: {add.seconds:.2f} s wall for {n} images; process start + model load "
            f"(`catalog add` of 1 image) {one.seconds:.2f} s; without it "
            f"{(n - 1) / net if net > 0 else float('nan'):.1f} images/s."
        )

        # 4. scan, fast and thorough, end to end.
        runs = [one, add]
        for mode in ("fast", "thorough"):
            out = root / f"scan-{mode}.jsonl"
            scan = run_cli(
                [
                    "--db",
                    str(db),
                    "--quiet",
                    "scan",
                    str(root / "crawl"),
                    "--mode",
                    mode,
                    "--format",
                    "jsonl",
                ],
                stdout_path=out,
            )
            rows.append(
                Row(
                    f"copyscan scan --mode {mode} (subprocess)",
                    n / scan.seconds,
                    peer_crawl,
                    "imagehash pass",
                )
            )
            notes.append(f"scan {mode}: {scan.seconds:.2f} s wall; {scan_quality(out, data.truth)}.")
            runs.append(scan)
        for r in runs:
            if r.stderr.strip():
                notes.append(f"stderr of {shlex.join(r.argv[1:])}: {r.stderr.strip()[:300]!r}")
        notes.append(
            "end-to-end rows: ours = images / wall time of the whole subprocess (start, model load, "
            "database included); peer = in-process open + imagehash.phash + imagehash.dhash loop "
            f"over the same files (catalog {peer_catalog:.1f}/s, crawl {peer_crawl:.1f}/s)."
        )
        notes.append(f"commands: {shlex.join(add.argv)}  |  {shlex.join(scan.argv)} > FILE (and --mode fast)")
        if captured.text or captured.warnings:
            notes.append(f"captured from library calls: {captured.text!r} {captured.warnings!r}")
        else:
            notes.append("library calls printed nothing and raised no warnings.")

        name_w = max(len(r.name) for r in rows)
        peer_w = max(len(r.peer_name) for r in rows)
        print(f"{'measurement':<{name_w}}  {'ours img/s':>10}  {'peer img/s':>10}  {'ours/peer':>9}  peer")
        print("-" * (name_w + peer_w + 39))
        for r in rows:
            print(
                f"{r.name:<{name_w}}  {fmt_rate(r.ours)}  {fmt_rate(r.peer)}  "
                f"{r.ours / r.peer:9.2f}  {r.peer_name}"
            )
        print()
        for note in notes:
            print(f"* {note}")
        print()
        print_load(cpu_start, started)
    finally:
        if own_tmp:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
