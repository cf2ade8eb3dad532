"""Decode speed: the loader's small decode (``decode_side``) beside full decodes, from one run.

    python benchmarks/speed.py [--repeats 3] [--scale 1.0]

Generates JPEGs (quality 90) and PNGs from scikit-image's bundled samples (seeded crops,
colour shifts and a little noise, upscaled to the sizes below), holds their bytes in memory
and measures, in images per second on one core (OpenCV limited to one thread; Pillow and
imagehash are single-threaded):

1. decode + pHash + dHash: ``detector.intake.loader.decode`` + ``detector.stage1.hashing.image_codes``
   against ``PIL.Image.open`` + ``imagehash.phash`` + ``imagehash.dhash`` on the full decode;
2. the whole front of the pipeline, ``detector.intake.prepare.prepare_bytes`` (one decode, every
   stage-1 probe, the content box, the CNN input and stage 3's grey image), with the default
   settings against the same with ``decode_side=0`` (full decode).

Each row is the best of ``--repeats`` passes, ours and the peer alternating, so a load change
on a shared machine hits both alike: read the ratio. The CNN's own speed is measured by
``benchmarks/throughput.py``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import imagehash
import numpy as np
from PIL import Image
from throughput import (
    _cpu_seconds,
    _others_share,
    best_rates,
    hash_ours,
    hash_peer,
    load_sources,
    make_image,
    print_load,
)

from detector.config import Settings
from detector.intake.loader import decode
from detector.intake.prepare import prepare_bytes

SEED = 20_000


@dataclass(frozen=True)
class Batch:
    """``count`` generated images of ``width`` x ``height`` pixels in one format."""

    label: str
    width: int
    height: int
    fmt: str
    count: int


BATCHES = (
    Batch("1 MP JPEG, 1155x866 (4:3)", 1155, 866, "JPEG", 60),
    Batch("1 MP JPEG, 1000x1000", 1000, 1000, "JPEG", 60),
    Batch("12 MP JPEG, 4000x3000", 4000, 3000, "JPEG", 8),
    Batch("1 MP PNG, 1155x866", 1155, 866, "PNG", 20),
)


def encode(rgb: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, fmt, quality=90)
    return out.getvalue()


def make_blobs(batch: Batch, scale: float) -> list[bytes]:
    """The batch's images as encoded bytes: ``throughput.make_image``'s pictures resized to
    the batch's exact size."""
    sources = load_sources()
    count = max(2, round(batch.count * scale))
    blobs = []
    for i in range(count):
        img = make_image(sources, SEED + i, batch.width)
        img = cv2.resize(img, (batch.width, batch.height), interpolation=cv2.INTER_CUBIC)
        blobs.append(encode(img, batch.fmt))
    return blobs


def front(blobs: Sequence[bytes], settings: Settings) -> int:
    for n, data in enumerate(blobs):
        prepared = prepare_bytes(f"mem-{n}", data, "-", settings)
        if not prepared.ok:
            raise SystemExit(f"prepare_bytes failed on a generated image: {prepared.error}")
    return len(blobs)


@dataclass(frozen=True)
class Row:
    name: str
    ours: float
    peer: float
    peer_name: str


def measure(ours: Callable[[], int], peer: Callable[[], int], repeats: int) -> tuple[float, float]:
    ours()  # warm-up: first-call costs (imports, caches) are not per-image costs
    peer()
    return best_rates(ours, peer, repeats)


def measure_batch(label: str, blobs: Sequence[bytes], settings: Settings, repeats: int) -> list[Row]:
    """The two rows of one batch: decode + codes beside imagehash, the front beside itself on
    full decodes."""
    full = settings.replace(decode_side=0)
    ours, peer = measure(lambda: hash_ours(blobs, settings), lambda: hash_peer(blobs), repeats)
    rows = [Row(f"decode + pHash + dHash, {label}", ours, peer, "PIL.open + imagehash")]
    ours, peer = measure(lambda: front(blobs, settings), lambda: front(blobs, full), repeats)
    rows.append(Row(f"prepare_bytes front, {label}", ours, peer, "same, decode_side=0"))
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many alternating passes")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every batch's image count")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.scale <= 0:
        ap.error("need --repeats >= 1 and --scale > 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    cv2.setNumThreads(1)  # per-core figures: OpenCV's resizes would otherwise use every core
    started = time.perf_counter()
    cpu_start = _cpu_seconds()
    settings = Settings()
    print("copyscan decode speed benchmark")
    print(f"command   {shlex.join(sys.orig_argv)}")
    print(f"machine   {platform.platform()}, os.cpu_count()={os.cpu_count()}, OpenCV threads 1")
    print(f"versions  python {platform.python_version()}, Pillow {Image.__version__}, "
          f"imagehash {imagehash.__version__}, numpy {np.__version__}, OpenCV {cv2.__version__}")  # fmt: skip
    print(f"settings  decode_side={settings.decode_side} (peer rows of the front: decode_side=0)")
    share = _others_share()
    if share is not None:
        print(f"others    other processes use {100 * share:.0f}% of the CPUs (1 s sample before starting)")
    print(flush=True)
    rows: list[Row] = []
    for batch in BATCHES:
        t0 = time.perf_counter()
        blobs = make_blobs(batch, args.scale)
        size = sum(len(b) for b in blobs) / len(blobs) / 1e3
        shape = decode(blobs[0], settings).rgb.shape
        print(f"data      {len(blobs)} x {batch.label}, {size:.0f} kB avg, decoded at "
              f"{shape[1]}x{shape[0]}, made in {time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
        rows.extend(measure_batch(batch.label, blobs, settings, args.repeats))
    print()
    name_w = max(len(r.name) for r in rows)
    print(f"{'measurement':<{name_w}}  {'ours img/s':>10}  {'peer img/s':>10}  {'ours/peer':>9}  peer")
    print("-" * (name_w + 60))
    for r in rows:
        print(f"{r.name:<{name_w}}  {r.ours:10.1f}  {r.peer:10.1f}  {r.ours / r.peer:9.2f}  {r.peer_name}")
    print()
    print_load(cpu_start, started)


if __name__ == "__main__":
    main()
