"""Accuracy benchmark: copyscan beside plain imagehash pHash and a CNN alone, from one run on
one query set.

    python benchmarks/corpus.py /tmp/corpus            # once: real images from packages
    python benchmarks/accuracy.py /tmp/corpus [--catalog 1000] [--sample 100] [--held-out 100]

The first ``--catalog`` corpus images are indexed into a fresh database. ``copyscan
evaluate``'s protocol then attacks ``--sample`` of them once per attack family (the copies)
and ``--held-out`` others the same way (distractors, hidden from the search), and measures
pair-level micro AP and recall at 99 % / 95 % precision, overall and per family.

The peers see exactly the same query files and the same visible catalog:
- ``imagehash pHash``: ``imagehash.phash`` of every image; each query's prediction is the
  catalog image at the smallest Hamming distance, scored ``1 - distance / 64``;
- ``CNN alone``: the same EfficientNet-Lite0 GeM descriptor copyscan uses, on the whole
  image (no content box, no stage 1, no stage 3); the prediction is the nearest catalog
  descriptor, scored by cosine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from detector.config import Settings, parse_setting
from detector.stage1.hashing import HASHER_ID
from detector.stage2.embedding import Models, embedder_id, resize_for_cnn
from detector.storage.store import Store
from detector.tasks.attacks import FAMILIES
from detector.tasks.cataloging import add_to_catalog
from detector.tasks.evaluation import (
    EvalQuery,
    Evaluation,
    build_queries,
    evaluate,
    micro_average_precision,
    recall_at_precision,
)


def _peer_figures(
    queries: Sequence[EvalQuery], best_ids: np.ndarray, best_scores: np.ndarray
) -> dict[str, float]:
    """The evaluation's figures for a peer that predicts one catalog image per query."""
    truth = np.array([-1 if q.catalog_id is None else q.catalog_id for q in queries])
    correct = best_ids == truth
    positives = int((truth >= 0).sum())
    r99, t99 = recall_at_precision(best_scores, correct, positives, 0.99)
    r95, _ = recall_at_precision(best_scores, correct, positives, 0.95)
    out = {"micro_ap": micro_average_precision(best_scores, correct, positives), "r99": r99, "r95": r95}
    fams = np.array([q.family for q in queries])
    for family in FAMILIES:
        sel = (fams == family) & (truth >= 0)
        if sel.any():
            ok = correct[sel] & (best_scores[sel] >= (t99 if t99 is not None else np.inf))
            out[family] = float(ok.mean())
    return out


def _ours(e: Evaluation) -> dict[str, float]:
    out = {"micro_ap": e.micro_ap, "r99": e.recall_at_99, "r95": e.recall_at_95}
    out.update({f.family: f.recall_at_99 for f in e.families})
    return out


def _rgb(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("corpus", type=Path, help="folder written by benchmarks/corpus.py")
    parser.add_argument("--catalog", type=int, default=1000, help="corpus images indexed")
    parser.add_argument("--sample", type=int, default=100, help="catalog images attacked (copies)")
    parser.add_argument("--held-out", type=int, default=100, help="catalog images hidden (distractors)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="keep the database and queries here")
    parser.add_argument("--set", dest="changes", action="append", default=[], metavar="NAME=VALUE",
                        help="change an engine setting, as copyscan --set")  # fmt: skip
    args = parser.parse_args(argv)

    files = sorted(str(p) for p in args.corpus.glob("*.jpg"))[: args.catalog]
    if len(files) < args.sample + args.held_out:
        parser.error(f"{args.corpus} has {len(files)} images; build it with benchmarks/corpus.py")
    changes = {name: parse_setting(name, raw) for name, _, raw in (c.partition("=") for c in args.changes)}
    settings = Settings().replace(**changes)
    models = Models(settings)
    work = args.work or Path(tempfile.mkdtemp(prefix="copyscan-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "accuracy.db"
    db.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with Store.open(db, hasher=HASHER_ID, embedder=embedder_id(settings)) as store:
        added = sum(r.status == "added" for r in add_to_catalog(store, models, files, settings))
        t_add = time.perf_counter() - t0
        queries = build_queries(
            store, settings, work / "queries", sample=args.sample, held_out=args.held_out, seed=args.seed
        )
        figures, _ = evaluate(store, models, settings, queries, modes=("fast", "thorough"))
        visible = [e for e in store.catalog.list() if e.id not in queries.held_out]
    qs = queries.queries
    print(f"catalog {added} images ({t_add:.0f} s to index), {len(visible)} visible; "
          f"{sum(q.catalog_id is not None for q in qs)} attacked copies, "
          f"{sum(q.catalog_id is None for q in qs)} attacked distractors, seed {args.seed}")  # fmt: skip

    # Peer 1: imagehash pHash, nearest catalog code.
    cat_ids = np.array([e.id for e in visible])
    cat_codes = np.array(
        [int(str(imagehash.phash(Image.open(e.path))), 16) for e in visible], dtype=np.uint64
    )
    q_codes = np.array([int(str(imagehash.phash(Image.open(q.path))), 16) for q in qs], dtype=np.uint64)
    dist = np.bitwise_count(q_codes[:, None] ^ cat_codes[None, :])
    nearest = dist.argmin(axis=1)
    phash = _peer_figures(qs, cat_ids[nearest], 1.0 - dist[np.arange(len(qs)), nearest] / 64.0)

    # Peer 2: the CNN alone on whole images, nearest descriptor.
    size = settings.image_size
    cat_vecs = models.embed([resize_for_cnn(_rgb(e.path), size) for e in visible])
    q_vecs = np.concatenate(
        [
            models.embed([resize_for_cnn(_rgb(q.path), size) for q in qs[i : i + 64]])
            for i in range(0, len(qs), 64)
        ]
    )
    sims = q_vecs @ cat_vecs.T
    nearest = sims.argmax(axis=1)
    cnn = _peer_figures(qs, cat_ids[nearest], sims[np.arange(len(qs)), nearest])

    fast, thorough = (_ours(e) for e in figures)
    rows = [("micro AP", "micro_ap"), ("recall @ 99% precision", "r99"), ("recall @ 95% precision", "r95")]
    rows += [(f"  {f} @ 99%", f) for f in FAMILIES]
    print(f"{'':26} {'ours fast':>10} {'ours thorough':>14} {'imagehash pHash':>16} {'CNN alone':>10}")
    for label, key in rows:
        print(f"{label:26} {fast[key]:>10.3f} {thorough[key]:>14.3f} {phash[key]:>16.3f} {cnn[key]:>10.3f}")
    for e in figures:
        print(f"{e.mode}: 99% precision at score >= {e.threshold_99}, 95% at >= {e.threshold_95}")
        print(f"{e.mode}: CNN ran on {e.cnn_share_copies:.0%} of copies and {e.cnn_share_distractors:.0%} "
              f"of distractors; stage 2 reached by {e.candidate_recall:.1%} of copies; "
              f"{(e.copies + e.distractors) / e.seconds:.1f} queries/s scanning")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
