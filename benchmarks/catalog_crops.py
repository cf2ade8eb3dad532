"""Stage 1 with and without off-centre catalog crops: what more codes per catalog image would
find, what they would cost. Nothing of the engine changes; the extra codes are computed here.

    python benchmarks/catalog_crops.py WORK [--fraction 0.8] [--radius 12] [--sum 30]

``WORK``: a folder ``benchmarks/accuracy.py --work`` filled (its catalog database and its
queries). Each catalog image's codes are computed from its file as the catalog stores them
(its own, its content box, its centre crops) plus those of 8 off-centre windows of its content
box, ``--fraction`` of each side: the 4 corners and the 4 edge centres. Every query of both
sets is prepared as a scan prepares it (insets off: their own probes are not the point) and
searched:

- ``today``: the stored codes, the scan's radii;
- ``+ off-centre``: the same, and the off-centre codes within ``--radius`` bits on either code
  and ``--sum`` on both (a tighter radius than the stored codes': 8 more codes per image bring
  more chance hits).

Printed per set: stage 1's recall (the copy's catalog image is a candidate) for every family
and over all copies, the share of distractors with a candidate (each costs fast mode a CNN
pass), and the codes per catalog image with the stage-1 bytes they take (20 bytes per code
held, 33 more for the multi-index tables a large catalog builds).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

import numpy as np

from detector.config import Settings
from detector.intake.framing import content_box
from detector.intake.loader import decode
from detector.intake.prepare import CENTRE_CROPS, prepare_bytes
from detector.stage1.hashing import Codes, image_codes
from detector.stage1.index import HammingIndex

WINDOWS = {  # where each off-centre window sits: (share of the free height, of the free width)
    "top-left": (0.0, 0.0),
    "top": (0.0, 0.5),
    "top-right": (0.0, 1.0),
    "left": (0.5, 0.0),
    "right": (0.5, 1.0),
    "bottom-left": (1.0, 0.0),
    "bottom": (1.0, 0.5),
    "bottom-right": (1.0, 1.0),
}
BYTES_PER_CODE = 20 + 33  # ids and both codes; the multi-index tables


def catalog_codes(path: Path, settings: Settings, fraction: float) -> tuple[list[Codes], list[Codes]]:
    """The codes a catalog image is stored with, and those of its off-centre windows."""
    rgb = decode(path.read_bytes(), settings).rgb
    stored = [image_codes(rgb)]
    box = content_box(rgb)
    if box is not None:
        rgb = box.cut(rgb)
        stored.append(image_codes(rgb))
    stored += [_window(rgb, f, 0.5, 0.5) for f in CENTRE_CROPS]
    return stored, [_window(rgb, fraction, down, right) for down, right in WINDOWS.values()]


def _window(rgb: np.ndarray, fraction: float, down: float, right: float) -> Codes:
    """The codes of a window ``fraction`` of each side, ``down`` and ``right`` of the free room."""
    h, w = rgb.shape[:2]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = int((h - ch) * down), int((w - cw) * right)
    return image_codes(np.ascontiguousarray(rgb[top : top + ch, left : left + cw]))


def index_of(codes: dict[int, list[Codes]]) -> HammingIndex:
    ids = [cid for cid, cs in codes.items() for _ in cs]
    return HammingIndex(
        np.array(ids, dtype=np.int64),
        np.array([c.phash for cs in codes.values() for c in cs], dtype=np.uint64),
        np.array([c.dhash for cs in codes.values() for c in cs], dtype=np.uint64),
        mih=False,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="a benchmarks/accuracy.py --work folder")
    parser.add_argument("--fraction", type=float, default=0.8, help="side share of each off-centre window")
    parser.add_argument("--radius", type=int, default=12, help="Hamming radius for the off-centre codes")
    parser.add_argument("--sum", type=int, default=30, help="pHash + dHash bits for the off-centre codes")
    args = parser.parse_args(argv)
    settings = Settings().replace(insets=0)
    sets = json.loads((args.work / "queries.json").read_text())
    hidden = set(sets["attacks"]["held_out"]) | set((sets.get("lookalikes") or {}).get("held_out", []))
    with sqlite3.connect(args.work / "accuracy.db") as db:
        rows = db.execute("SELECT id, path FROM catalog").fetchall()
    stored: dict[int, list[Codes]] = {}
    extra: dict[int, list[Codes]] = {}
    for cid, path in rows:
        if cid not in hidden:
            stored[cid], extra[cid] = catalog_codes(Path(path), settings, args.fraction)
    today, more = index_of(stored), index_of(extra)
    s = settings
    per_image = len(today) / len(stored)
    more_per_image = per_image + len(WINDOWS)
    print(f"catalog: {len(stored)} images; codes per image {per_image:.2f} today, {more_per_image:.2f} "
          f"with the off-centre windows; stage-1 bytes per image {per_image * BYTES_PER_CODE:.0f} and "
          f"{more_per_image * BYTES_PER_CODE:.0f}")  # fmt: skip
    for name in ("attacks", "lookalikes"):
        if not sets.get(name):
            continue
        found: dict[str, list[tuple[bool, bool]]] = {}
        chance = [0, 0]
        distractors = 0
        for path, truth, family, *_ in sets[name]["queries"]:
            probes = prepare_bytes(path, Path(path).read_bytes(), "-", s).probes
            radii = (s.radius_phash, s.radius_dhash, s.max_candidates, s.radius_variant, s.radius_sum)
            near = {c.catalog_id for c in today.search_probes(probes, *radii)}
            tight = (args.radius, args.radius, s.max_candidates, s.radius_variant, args.sum)
            off = {c.catalog_id for c in more.search_probes(probes, *tight)}
            if truth is None or truth in hidden:
                distractors += 1
                chance[0] += bool(near)
                chance[1] += bool(near | off)
            else:
                found.setdefault(family, []).append((truth in near, truth in near | off))
        print(f"\n{name}: stage-1 recall, today -> with the off-centre windows")
        for family, hits in sorted(found.items()):
            a, b = (sum(h[k] for h in hits) / len(hits) for k in (0, 1))
            print(f"  {family:14s} {a:.3f} -> {b:.3f}")
        every = [h for hits in found.values() for h in hits]
        print(f"  {'all copies':14s} {sum(h[0] for h in every) / len(every):.3f} -> "
              f"{sum(h[1] for h in every) / len(every):.3f}")  # fmt: skip
        print(f"  distractors with a candidate: {chance[0] / distractors:.1%} -> "
              f"{chance[1] / distractors:.1%} of {distractors}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
