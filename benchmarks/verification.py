"""Stage-3 cost per pair: copyscan's ORB + affine RANSAC beside OpenCV's classic SIFT +
homography RANSAC, on the same pairs in one run.

    python benchmarks/verification.py /tmp/corpus [--pairs 200] [--seed 0]

Pairs are built from corpus images (see benchmarks/corpus.py): each sampled image against an
attacked copy of itself (one random attack family each, from copyscan's attack suite) and
against another corpus image. Timed on one thread, per pair:
- ``keypoints``: finding keypoints and descriptors in the query (the catalog side is cached
  by a scanner, so a pair costs the query's once and the match below per candidate);
- ``match + RANSAC``: matching descriptors, the ratio test and the model fit;
- ``dense agreement``: for a pair above the floor, the catalog image brought onto the query
  and compared cell by cell (:mod:`detector.stage3.agreement`), counted over every pair.
Also printed: the agreement of copies and of unrelated pairs above the floor, and how well
the inlier count separates copies from other pictures (the share of copies and of unrelated
pairs above the score's floor, ``Settings().inliers_floor`` inliers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from detector.config import Settings
from detector.intake.loader import load_image
from detector.stage3.agreement import compare
from detector.stage3.keypoints import Features, features, verify, verify_grey
from detector.tasks.attacks import FAMILIES, attack

FLOOR = Settings().inliers_floor  # the score gains nothing at or below it
T = TypeVar("T")
Sift = tuple[np.ndarray, np.ndarray | None]


def _sift_features(grey: np.ndarray) -> Sift:
    sift = cv2.SIFT.create(nfeatures=1000)
    keypoints, descriptors = sift.detectAndCompute(grey, None)
    return np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2), descriptors


def _sift_verify(q: Sift, c: Sift) -> int:
    if q[1] is None or c[1] is None or len(q[0]) < 4 or len(c[0]) < 4:
        return 0
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(q[1], c[1], k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.75 * p[1].distance]
    if len(good) < 4:
        return 0
    src = q[0][[m.queryIdx for m in good]]
    dst = c[0][[m.trainIdx for m in good]]
    _, mask = cv2.findHomography(src, dst, cv2.RANSAC, 6.0)
    return 0 if mask is None else int(mask.sum())


def _time(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("corpus", type=Path, help="folder written by benchmarks/corpus.py")
    parser.add_argument("--pairs", type=int, default=200, help="sampled images (as many unrelated)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    settings = Settings()
    manifest = json.loads((args.corpus / "manifest.json").read_text())
    paths = [str(args.corpus / item["file"]) for item in manifest["images"]]
    rng = np.random.default_rng(args.seed)
    chosen = rng.choice(len(paths), size=min(args.pairs, len(paths)), replace=False)
    greys = {int(i): verify_grey(load_image(paths[int(i)], settings).rgb, settings) for i in chosen}
    ours: dict[str, list[float]] = {"keypoints": [], "match": [], "agree": []}
    agreements: dict[str, list[float]] = {"copy": [], "other": []}
    peer: dict[str, list[float]] = {"keypoints": [], "match": []}
    inliers: dict[tuple[str, str], list[int]] = {
        (who, kind): [] for who in ("ours", "peer") for kind in ("copy", "other")
    }
    orb_cache: dict[int, Features] = {}
    sift_cache: dict[int, Sift] = {}
    keys = list(greys)
    for n, i in enumerate(keys):
        rgb = load_image(paths[i], settings).rgb
        family = FAMILIES[n % len(FAMILIES)]
        copy = verify_grey(attack(rgb, family, rng).rgb, settings)
        other = keys[(n + 1) % len(keys)]
        for j in (i, other):
            orb_cache.setdefault(j, features(greys[j], settings))
            sift_cache.setdefault(j, _sift_features(greys[j]))
        q_orb, t = _time(features, copy, settings)
        ours["keypoints"].append(t)
        q_sift, t = _time(_sift_features, copy)
        peer["keypoints"].append(t)
        for kind, j in (("copy", i), ("other", other)):
            v, t = _time(verify, q_orb, orb_cache[j], settings)
            ours["match"].append(t)
            inliers["ours", kind].append(v.inliers)
            if v.inliers > FLOOR and v.src is not None and v.dst is not None:
                found, t = _time(compare, copy, greys[j], v.src, v.dst, settings)
                if found.agreement is not None:
                    agreements[kind].append(found.agreement)
            else:
                t = 0.0
            ours["agree"].append(t)
            found, t = _time(_sift_verify, q_sift, sift_cache[j])
            peer["match"].append(t)
            inliers["peer", kind].append(found)
    print(f"{len(keys)} copy pairs and {len(keys)} unrelated pairs from {args.corpus}; one thread")
    print(f"{'':34}{'ours (ORB + affine)':>22}{'peer (SIFT + homography)':>27}")
    for label, key in (("keypoints of the query, ms", "keypoints"), ("match + RANSAC per pair, ms", "match")):
        print(f"{label:34}{1000 * np.mean(ours[key]):>22.2f}{1000 * np.mean(peer[key]):>27.2f}")
    print(f"{'dense agreement per pair, ms':34}{1000 * np.mean(ours['agree']):>22.2f}{'-':>27}")
    per_pair_ours = 1000 * (np.mean(ours["keypoints"]) + np.mean(ours["match"]) + np.mean(ours["agree"]))
    per_pair_peer = 1000 * (np.mean(peer["keypoints"]) + np.mean(peer["match"]))
    print(f"{'one new pair (all of the above), ms':34}{per_pair_ours:>22.2f}{per_pair_peer:>27.2f}")
    for kind in ("copy", "other"):
        o = np.array(inliers["ours", kind])
        p = np.array(inliers["peer", kind])
        label = f"{kind} pairs with > {FLOOR} inliers"
        print(f"{label:34}{np.mean(o > FLOOR):>22.3f}{np.mean(p > FLOOR):>27.3f}")
        print(f"{kind + ' pairs, median inliers':34}{np.median(o):>22.0f}{np.median(p):>27.0f}")
        found = np.array(agreements[kind])
        if found.size:
            quantiles = ", ".join(f"{q:.2f}" for q in np.quantile(found, [0.01, 0.1, 0.5]))
            print(f"{kind + ' pairs, agreement 1/10/50 %':34}{quantiles:>22}{'-':>27}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
