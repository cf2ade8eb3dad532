"""The pictures inside a query (its insets, :mod:`detector.intake.insets`) go through the
chain as queries of their own; here their matches become the query's: each match's regions
and overlap are put in the query's frame, and a catalog image found both in the whole query
and in an inset keeps its better match."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from detector.config import Settings
from detector.intake.prepare import Inset
from detector.records import Match, Region


def in_query(m: Match, inset: Inset) -> Match:
    """An inset's match as the query's: its regions as fractions of the query (the inset's
    own outline where stage 3 drew none: that is what was compared) and its query coverage
    as a share of the whole query."""
    region = _outside(m.query_region, inset) if m.query_region else _outline(inset)
    return dataclasses.replace(
        m,
        query_region=region,
        query_coverage=None if m.query_coverage is None else round(m.query_coverage * inset.area, 4),
        disagreement=tuple(_outside(r, inset) for r in m.disagreement),
    )


def merged(own: Sequence[Match], found: Sequence[Match], settings: Settings) -> tuple[Match, ...]:
    """The query's matches with those found in its insets (already :func:`in_query`): per
    catalog image the best scored (the whole query's on a tie), best first, at most ``top_k``."""
    best: dict[int | None, Match] = {}
    for m in (*own, *found):
        kept = best.get(m.catalog_id)
        if kept is None or m.score > kept.score:
            best[m.catalog_id] = m
    out = sorted(best.values(), key=lambda m: (-m.score, m.catalog_id if m.catalog_id is not None else -1))
    return tuple(out[: settings.top_k])


def _outside(region: Region, inset: Inset) -> Region:
    return tuple(tuple(round(v, 4) for v in inset.outside(x, y)) for x, y in region)  # type: ignore[misc]


def _outline(inset: Inset) -> Region:
    corners = (
        (inset.left, inset.top),
        (inset.right, inset.top),
        (inset.right, inset.bottom),
        (inset.left, inset.bottom),
    )
    return tuple((round(x, 4), round(y, 4)) for x, y in corners)
