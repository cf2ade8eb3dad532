"""``dedupe``: duplicate groups inside one collection, with the first two of ``scan``'s three
stages (stage-1 pairs by Hamming radius, CNN rerank of those pairs only; no geometric check)
and union-find to group.
Unusable and flat images are reported as errors and never join a group."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from detector.config import Settings
from detector.intake.prepare import Prepared
from detector.intake.workers import prepared_batches
from detector.records import COPY, NEAR_DUPLICATE
from detector.scoring import score
from detector.stage1.hashing import IDENTITY, Probe
from detector.stage1.index import HammingIndex
from detector.stage2.embedding import Models


@dataclass(frozen=True)
class DuplicatePair:
    """Two members of one collection judged duplicates, by path."""

    a: str
    b: str
    hamming: int
    cosine: float
    score: float
    verdict: str


@dataclass(frozen=True)
class DuplicateGroup:
    """Paths that are copies of one another, in input order, with the pairs that joined them."""

    paths: tuple[str, ...]
    pairs: tuple[DuplicatePair, ...]


@dataclass(frozen=True)
class DedupeResult:
    """Groups of two or more, largest first; ``errors`` holds ``(path, message)``."""

    groups: tuple[DuplicateGroup, ...]
    errors: tuple[tuple[str, str], ...]
    images: int


def find_duplicates(
    paths: Sequence[str],
    models: Models,
    settings: Settings,
    progress: Callable[[int], None] | None = None,
) -> DedupeResult:
    """Group the images of ``paths`` that are copies or near-duplicates of each other.
    ``progress`` is called with the number of paths read after each batch."""
    prepared: list[Prepared] = []
    # images compared whole with each other: the pictures inside them are not searched
    for batch in prepared_batches(paths, settings.replace(insets=0)):
        prepared.extend(batch)
        if progress is not None:
            progress(len(batch))
    good = [p for p in prepared if p.codes is not None]
    errors = tuple((p.path, p.error or "") for p in prepared if p.codes is None)
    index = HammingIndex(
        np.arange(len(good), dtype=np.int64),
        np.array([p.codes.phash for p in good if p.codes], dtype=np.uint64),
        np.array([p.codes.dhash for p in good if p.codes], dtype=np.uint64),
    )
    # Stage 1: each unordered pair within the radius, once.
    pairs: set[tuple[int, int]] = set()
    for i, p in enumerate(good):
        if p.codes is None:
            continue
        probe = [Probe(IDENTITY, p.codes.phash, p.codes.dhash)]
        r_p, r_d, r_s = settings.radius_phash, settings.radius_dhash, settings.radius_sum
        for c in index.search_probes(probe, r_p, r_d, len(good), radius_sum=r_s):
            if c.catalog_id != i:
                pairs.add((min(i, c.catalog_id), max(i, c.catalog_id)))
    # Stage 2 on the images that are in some pair only.
    involved = sorted({i for pair in pairs for i in pair})
    vecs = dict(zip(involved, models.embed(good[i].cnn_input for i in involved), strict=True))
    parent = list(range(len(good)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    kept: list[tuple[int, int, DuplicatePair]] = []
    for i, j in sorted(pairs):
        ci, cj = good[i].codes, good[j].codes
        if ci is None or cj is None:
            continue
        ham = min((ci.phash ^ cj.phash).bit_count(), (ci.dhash ^ cj.dhash).bit_count())
        cos = float(np.dot(vecs[i], vecs[j]))
        s = round(score(ham, cos, settings), 4)
        if s < settings.dedupe_score:
            continue
        v = COPY if s >= settings.copy_threshold else NEAR_DUPLICATE
        kept.append((i, j, DuplicatePair(good[i].path, good[j].path, ham, round(cos, 4), s, v)))
        parent[find(i)] = find(j)
    members: dict[int, list[int]] = {}
    for i in range(len(good)):
        members.setdefault(find(i), []).append(i)
    groups = []
    for root, idx in members.items():
        if len(idx) < 2:
            continue
        groups.append(
            DuplicateGroup(
                paths=tuple(good[i].path for i in idx),
                pairs=tuple(pair for a, _, pair in kept if find(a) == root),
            )
        )
    groups.sort(key=lambda g: (-len(g.paths), g.paths[0]))
    return DedupeResult(groups=tuple(groups), errors=errors, images=len(prepared))
