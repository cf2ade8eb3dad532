"""Accuracy benchmark: copyscan beside plain imagehash pHash and a CNN alone, from one run on
one query set, on two sets: attacked copies of varied pictures, and look-alikes.

    python benchmarks/corpus.py /tmp/corpus                 # once: real images from packages
    python benchmarks/lookalike_corpus.py /tmp/lookalikes   # once: families sharing a template
    python benchmarks/accuracy.py /tmp/corpus [--lookalikes /tmp/lookalikes] [--seed 0]
        [--catalog 1000] [--sample 100] [--held-out 100] [--families all|tune|held]
        [--work DIR] [--dump DIR] [--set NAME=VALUE]...

**The attack set.** The first ``--catalog`` corpus images are indexed into a fresh database.
``copyscan evaluate``'s protocol then attacks ``--sample`` of them once per attack family (the
copies) and ``--held-out`` others the same way (distractors, hidden from the search), and
measures pair-level micro AP and recall at 99 % / 95 % precision, overall and per family.

**The look-alike set** (``--lookalikes``, built by benchmarks/lookalike_corpus.py): families
of different pictures that share a template (cards of one deck, flags of one layout, icons of
one set, a sprite's poses, tiles, pieces, web pages of one template). Each family is split by
the seed: half its members join the catalog, the other half are distractors. Every catalog
member is attacked once (a family of the attack suite drawn by the seed): the copies; every
distractor is attacked the same way, so "looks attacked" is no clue. A distractor flagged
``copy`` or ``near-duplicate`` at the default verdict is a false alarm: the rights holder's
false accusation. ``--families tune`` keeps two families in three (those chosen while tuning),
``held`` the third (never looked at while choosing constants), ``all`` both.

For both sets the script prints, per mode, recall at 99 % and 95 % precision, the precision and
recall of the default ``copy`` verdict and the share of distractors flagged; the peers see
exactly the same query files and the same visible catalog:
- ``imagehash pHash``: ``imagehash.phash`` of every image; each query's prediction is the
  catalog image at the smallest Hamming distance, scored ``1 - distance / 64``;
- ``CNN alone``: the same EfficientNet-Lite0 GeM descriptor copyscan uses, on the whole
  image (no content box, no stage 1, no stage 3); the prediction is the nearest catalog
  descriptor, scored by cosine.

``--work DIR`` keeps the database and the query files there and uses them again when the
arguments match (only the scan runs again: fast for trying settings); ``--dump DIR`` writes
each mode's scan records as JSON Lines (every candidate, ``--min-score 0``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from detector.config import Settings, parse_setting
from detector.intake.workers import prepared_batches
from detector.outputs.records import json_text, scan_record
from detector.records import ScanResult
from detector.scan.scanner import Scanner
from detector.stage1.hashing import HASHER_ID
from detector.stage2.embedding import Models, embedder_id, resize_for_cnn
from detector.storage.store import Store
from detector.tasks.attacks import FAMILIES, attack
from detector.tasks.cataloging import add_to_catalog
from detector.tasks.evaluation import (
    QUERY_QUALITY,
    EvalQuery,
    Evaluation,
    QuerySet,
    build_queries,
    measure,
    micro_average_precision,
    recall_at_precision,
)

MODES = ("fast", "thorough")


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
    for family in sorted(set(fams)):
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


# the families a look-alike query's attack is drawn from: those there were when the set was
# first measured, so that its queries stay the same (FAMILIES has grown since)
_LOOKALIKE_ATTACKS = FAMILIES[: FAMILIES.index("combo") + 1]


def _lookalike_split(
    manifest: dict, root: Path, seed: int, which: str
) -> tuple[list[str], list[tuple[str, str]]]:
    """The look-alike families' catalog members (paths) and distractors ((path, family kind)):
    each family's members shuffled by the seed, the first half catalogued. ``which``: all
    families, the two in three used while tuning, or the held-out third."""
    catalog: list[str] = []
    distractors: list[tuple[str, str]] = []
    for n, family in enumerate(sorted(manifest["families"], key=lambda f: (f["kind"], f["id"]))):
        held = n % 3 == 2
        if (which == "tune" and held) or (which == "held" and not held):
            continue
        members = [str(root / m["file"]) for m in family["members"]]
        rng = np.random.default_rng([seed, zlib.crc32(family["id"].encode())])
        order = rng.permutation(len(members))
        half = len(members) // 2
        catalog.extend(members[i] for i in order[:half])
        distractors.extend((members[i], family["kind"]) for i in order[half:])
    return catalog, distractors


def _lookalike_queries(
    store: Store, catalog: Sequence[str], distractors: Sequence[tuple[str, str]], dest: Path, seed: int
) -> QuerySet:
    """An attacked copy of every catalog member (the truth: its catalog id) and of every
    distractor, each by one attack family drawn by the seed, as JPEG files in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    ids = {e.path: e.id for e in store.catalog.list()}  # catalogued under absolute paths
    queries = []
    jobs = [(p, ids.get(os.path.abspath(p)), "") for p in catalog]
    jobs += [(p, None, kind) for p, kind in distractors]
    for n, (path, truth, _) in enumerate(jobs):
        rng = np.random.default_rng([seed, 7, n])
        family = _LOOKALIKE_ATTACKS[int(rng.integers(len(_LOOKALIKE_ATTACKS)))]
        attacked = attack(_rgb(path), family, rng)
        out = dest / f"{'copy' if truth is not None else 'alike'}-{n:05d}-{family}.jpg"
        Image.fromarray(attacked.rgb).save(out, quality=QUERY_QUALITY)
        queries.append(EvalQuery(str(out), truth, family, attacked.name))
    return QuerySet(tuple(queries), frozenset(), ())


def _scan(
    store: Store, models: Models, settings: Settings, query_set: QuerySet, dump: Path | None, name: str
) -> list[Evaluation]:
    """Both modes over the query set (each batch decoded once), measured; with ``dump``, each
    mode's records written there."""
    everything = settings.replace(min_score=0.0, top_k=max(settings.top_k, 5))
    scanners = {m: Scanner(store, models, everything, mode=m, exclude=query_set.held_out) for m in MODES}
    results: dict[str, list[ScanResult]] = {m: [] for m in MODES}
    seconds = dict.fromkeys(MODES, 0.0)
    for prepared in prepared_batches([q.path for q in query_set.queries], settings):
        for m, scanner in scanners.items():
            t0 = time.perf_counter()
            results[m].extend(scanner.scan_prepared(prepared))
            seconds[m] += time.perf_counter() - t0
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
        for m in MODES:
            with open(dump / f"{name}-{m}.jsonl", "w", encoding="utf-8") as out:
                for q, r in zip(query_set.queries, results[m], strict=True):
                    record = {**scan_record(r), "truth": q.catalog_id, "family": q.family}
                    out.write(json_text(record) + "\n")
    figures = [measure(m, query_set.queries, results[m], seconds[m])[0] for m in MODES]
    wide = [
        _wide_pages(query_set.queries, results[m], e.threshold_99)
        for m, e in zip(MODES, figures, strict=True)
    ]
    return figures, wide


def _wide_pages(
    queries: Sequence[EvalQuery], results: Sequence[ScanResult], threshold: float | None
) -> float | None:
    """Recall, at the mode's 99 % threshold, of the page copies that show the picture at 25 %
    of the page width or more (issue 20's fast-mode target); None without such copies."""
    hits = []
    for q, r in zip(queries, results, strict=True):
        share = re.search(r"\((\d+)% of the width\)", q.attack)
        if q.family != "page" or q.catalog_id is None or share is None or int(share.group(1)) < 25:
            continue
        scores = [m.score for m in r.matches if m.catalog_id == q.catalog_id]
        hits.append(threshold is not None and bool(scores) and max(scores) >= threshold)
    return sum(hits) / len(hits) if hits else None


def _peers(store: Store, models: Models, settings: Settings, query_set: QuerySet) -> tuple[dict, dict]:
    """imagehash pHash and the CNN alone on the same queries and visible catalog."""
    visible = [e for e in store.catalog.list() if e.id not in query_set.held_out]
    qs = query_set.queries
    cat_ids = np.array([e.id for e in visible])
    cat_codes = np.array(
        [int(str(imagehash.phash(Image.open(e.path))), 16) for e in visible], dtype=np.uint64
    )
    q_codes = np.array([int(str(imagehash.phash(Image.open(q.path))), 16) for q in qs], dtype=np.uint64)
    dist = np.bitwise_count(q_codes[:, None] ^ cat_codes[None, :])
    nearest = dist.argmin(axis=1)
    phash = _peer_figures(qs, cat_ids[nearest], 1.0 - dist[np.arange(len(qs)), nearest] / 64.0)
    size = settings.image_size
    cat_vecs = np.concatenate(
        [
            models.embed([resize_for_cnn(_rgb(e.path), size) for e in visible[i : i + 64]])
            for i in range(0, len(visible), 64)
        ]
    )
    q_vecs = np.concatenate(
        [
            models.embed([resize_for_cnn(_rgb(q.path), size) for q in qs[i : i + 64]])
            for i in range(0, len(qs), 64)
        ]
    )
    sims = q_vecs @ cat_vecs.T
    nearest = sims.argmax(axis=1)
    cnn = _peer_figures(qs, cat_ids[nearest], sims[np.arange(len(qs)), nearest])
    return phash, cnn


def _print(
    title: str,
    figures: list[Evaluation],
    phash: dict,
    cnn: dict,
    families: Sequence[str],
    wide: Sequence[float | None] = (None, None),
) -> None:
    fast, thorough = (_ours(e) for e in figures)
    if wide[0] is not None:
        fast["page-wide"], thorough["page-wide"] = wide
    print(f"\n{title}")
    print(f"{'':28} {'ours fast':>10} {'ours thorough':>14} {'imagehash pHash':>16} {'CNN alone':>10}")
    rows = [("micro AP", "micro_ap"), ("recall @ 99% precision", "r99"), ("recall @ 95% precision", "r95")]
    rows += [(f"  {f} @ 99%", f) for f in families]
    if wide[0] is not None:
        rows.append(("  page, >= 25% width @ 99%", "page-wide"))
    for label, key in rows:
        cells = [d.get(key) for d in (fast, thorough, phash, cnn)]
        shown = [("-" if v is None else f"{v:.3f}") for v in cells]
        print(f"{label:28} {shown[0]:>10} {shown[1]:>14} {shown[2]:>16} {shown[3]:>10}")
    for e in figures:
        precision = "-" if e.copy_precision is None else f"{e.copy_precision:.3f}"
        print(
            f"{e.mode}: 99% precision at score >= {e.threshold_99}, 95% at >= {e.threshold_95}; "
            f"default 'copy' verdict: precision {precision}, recall {e.copy_recall:.3f}; "
            f"{e.flagged_distractors:.2%} of {e.distractors} distractors flagged (copy or near-duplicate)"
        )
        print(
            f"{e.mode}: CNN ran on {e.cnn_share_copies:.0%} of copies and {e.cnn_share_distractors:.0%} "
            f"of distractors; stage 2 reached by {e.candidate_recall:.1%} of copies; "
            f"{(e.copies + e.distractors) / max(e.seconds, 1e-9):.1f} queries/s scanning"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("corpus", type=Path, help="folder written by benchmarks/corpus.py")
    parser.add_argument("--lookalikes", type=Path, help="folder written by benchmarks/lookalike_corpus.py")
    parser.add_argument("--families", choices=("all", "tune", "held"), default="all")
    parser.add_argument("--catalog", type=int, default=1000, help="corpus images indexed")
    parser.add_argument("--sample", type=int, default=100, help="catalog images attacked (copies)")
    parser.add_argument("--held-out", type=int, default=100, help="catalog images hidden (distractors)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="keep (and reuse) the database and queries here")
    parser.add_argument("--dump", type=Path, help="write each mode's scan records here")
    parser.add_argument("--no-peers", action="store_true", help="skip the peers (quicker)")
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
    params = {k: str(v) for k, v in vars(args).items() if k not in ("work", "dump", "changes", "no_peers")}
    params["hasher"] = HASHER_ID
    reuse = (work / "params.json").exists() and json.loads((work / "params.json").read_text()) == params
    if not reuse:
        for stale in ("accuracy.db", "queries", "lookalike-queries", "params.json"):
            target = work / stale
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    look = None
    if args.lookalikes:
        manifest = json.loads((args.lookalikes / "manifest.json").read_text())
        look = _lookalike_split(manifest, args.lookalikes, args.seed, args.families)
    t0 = time.perf_counter()
    with Store.open(work / "accuracy.db", hasher=HASHER_ID, embedder=embedder_id(settings)) as store:
        if reuse:
            sets = json.loads((work / "queries.json").read_text())
            queries = _from_json(sets["attacks"])
            alike = _from_json(sets["lookalikes"]) if sets.get("lookalikes") else None
            missing = [f for f in FAMILIES if f not in {q.family for q in queries.queries}]
            if missing:  # families added since the queries were drawn: the same images, attacked
                copied = {
                    int(Path(q.path).name.split("-")[1]): q.catalog_id
                    for q in queries.queries
                    if q.catalog_id
                }
                ids = [cid for _, cid in sorted(copied.items())] + sorted(queries.held_out)
                more = build_queries(
                    store, settings, work / "queries", sample=len(copied), held_out=len(queries.held_out),
                    families=missing, seed=args.seed, chosen_ids=ids,
                )  # fmt: skip
                queries = QuerySet(queries.queries + more.queries, queries.held_out, queries.skipped)
                (work / "queries.json").write_text(
                    json.dumps(
                        {"attacks": _to_json(queries), "lookalikes": _to_json(alike) if alike else None}
                    )
                )
        else:
            list(add_to_catalog(store, models, files, settings))
            queries = build_queries(  # drawn from the corpus images only, as without look-alikes
                store, settings, work / "queries", sample=args.sample, held_out=args.held_out, seed=args.seed
            )
            alike = None
            if look is not None:
                list(add_to_catalog(store, models, look[0], settings))
                alike = _lookalike_queries(store, look[0], look[1], work / "lookalike-queries", args.seed)
            (work / "queries.json").write_text(
                json.dumps({"attacks": _to_json(queries), "lookalikes": _to_json(alike) if alike else None})
            )
            (work / "params.json").write_text(json.dumps(params))
        t_prep = time.perf_counter() - t0
        sets_run = [("attack set", queries, "attacks")] + (
            [("look-alike set", alike, "lookalikes")] if alike else []
        )
        reused = ", reused" if reuse else ""
        print(f"catalog {store.stats().images} images ({t_prep:.0f} s to index and attack{reused}); "
              f"seed {args.seed}, look-alike families: {args.families if alike else 'none'}")  # fmt: skip
        for title, query_set, name in sets_run:
            qs = query_set.queries
            figures, wide = _scan(store, models, settings, query_set, args.dump, name)
            phash, cnn = ({}, {}) if args.no_peers else _peers(store, models, settings, query_set)
            families = sorted({q.family for q in qs if q.catalog_id is not None})
            copies, others = sum(q.catalog_id is not None for q in qs), sum(q.catalog_id is None for q in qs)
            _print(
                f"{title}: {copies} attacked copies, {others} attacked distractors",
                figures,
                phash,
                cnn,
                families,
                wide,
            )
    return 0


def _to_json(query_set: QuerySet) -> dict:
    return {
        "queries": [[q.path, q.catalog_id, q.family, q.attack] for q in query_set.queries],
        "held_out": sorted(query_set.held_out),
    }


def _from_json(data: dict) -> QuerySet:
    queries = tuple(EvalQuery(p, cid, family, name) for p, cid, family, name in data["queries"])
    return QuerySet(queries, frozenset(data["held_out"]), ())


if __name__ == "__main__":
    sys.exit(main())
