"""All tunable settings in one declarative table: name, default and help text live together
and feed both the engine's defaults and the command line's ``--help``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    """Engine settings. Build with ``Settings()`` or ``Settings().replace(top_k=3)``."""

    # loading
    max_pixels: int = _setting(64_000_000, "refuse images declaring more pixels (decompression-bomb limit)")
    max_file_bytes: int = _setting(100_000_000, "refuse files larger than this many bytes")
    min_side: int = _setting(5, "refuse images whose shorter side is below this many pixels (unhashable)")
    flat_std: float = _setting(
        2.0, "refuse images whose grey levels vary less than this std (flat, unhashable)"
    )
    decode_side: int = _setting(
        448,
        "decode at the smallest scale whose longer side is still at least this many pixels "
        "(JPEG: 1/2, 1/4 or 1/8 in the DCT domain; other formats: a whole-factor box reduce); "
        "0 decodes at full size",
    )
    # stage 1
    radius_phash: int = _setting(14, "pHash Hamming radius (bits of 64) for a stage-1 candidate")
    radius_dhash: int = _setting(14, "dHash Hamming radius (bits of 64) for a stage-1 candidate")
    radius_variant: int = _setting(
        8, "Hamming radius for the flipped and quarter-turned probes of a query (bits of 64)"
    )
    radius_sum: int = _setting(
        34, "most pHash + dHash Hamming bits, together, for a stage-1 candidate of an unturned probe"
    )
    max_candidates: int = _setting(50, "most stage-1 candidates handed to stage 2 per query")
    dihedral: bool = _setting(True, "also search each query's flips and quarter turns")
    trim: bool = _setting(
        True, "cut borders, caption bands and screenshot frames off before hashing and embedding"
    )
    # stage 2
    image_size: int = _setting(224, "CNN input side in pixels")
    gem_p: float = _setting(3.0, "GeM pooling exponent for the embedding")
    batch_size: int = _setting(32, "images per CNN batch")
    jobs: int = _setting(
        1,
        "worker processes that decode and hash while the main process searches and embeds "
        "(0: one per CPU, the command line's default; 1: none, the library's default, since "
        "workers re-import the calling script, which then needs an if __name__ == '__main__' guard); "
        "jobs under two batches always decode in the main process",
    )
    cnn_bf16: bool = _setting(
        True,
        "run the CNN in bfloat16 on processors that compute it natively (AVX512-BF16, AMX); "
        "float32 elsewhere and on GPUs",
    )
    neighbours: int = _setting(10, "thorough mode: embedding nearest neighbours added as candidates")
    # stage 3
    verify: bool = _setting(True, "check the best candidates with ORB keypoints and RANSAC (stage 3)")
    verify_top: int = _setting(3, "stage 3: how many of a query's best candidates are checked")
    verify_floor: float = _setting(0.2, "stage 3: candidates scoring below this before it are not checked")
    inliers_floor: int = _setting(8, "stage 3: RANSAC inliers at or below which a pair gains nothing")
    inliers_full: int = _setting(30, "stage 3: RANSAC inliers at which a pair gains the full stage-3 score")
    geo_weight: float = _setting(0.45, "weight of stage 3 in the score when it ran")
    sift: bool = _setting(
        True,
        "thorough mode: where ORB leaves a pair short of inliers_full, stage 3 also counts SIFT "
        "inliers (far fewer chance inliers on texture; 25 to 75 ms more per query, most of it "
        "the catalog side)",
    )
    inverted_cosine: float = _setting(
        0.8,
        "thorough mode: a candidate at this cosine or above that ORB does not confirm is also "
        "matched with the query's grey image inverted (colour-inverted copies); above 1: never",
    )
    sift_top: int = _setting(
        1, "stage 3: how many of the checked candidates SIFT also checks (the best first)"
    )
    sift_floor: int = _setting(4, "stage 3: SIFT inliers at or below which a pair gains nothing from them")
    sift_full: int = _setting(50, "stage 3: SIFT inliers at which a pair gains the full stage-3 score")
    blur_match: bool = _setting(
        True,
        "thorough mode: a blurred or thumbnail-sized query is also compared with its best "
        "candidates shrunk 2 and 3 times and enlarged back (the better cosine counts)",
    )
    blur_detail: float = _setting(
        2.0,
        "fine detail (mean grey change when halved and enlarged back) under which a query counts as blurred",
    )
    unconfirmed_cap: float = _setting(
        0.35,
        "highest score of a pair found by the embedding alone (outside every stage-1 radius) "
        "that stage 3 did not confirm, and of a pair where ORB and SIFT both found no inlier: "
        "look-alikes are not copies without other evidence",
    )
    smooth_distinct: float = _setting(
        0.1,
        "thorough mode: a pair too smooth for stage 3 to judge scores at most unconfirmed_cap "
        "unless its cosine stands this far above the query's best with another catalog image "
        "or reaches smooth_cosine",
    )
    smooth_cosine: float = _setting(
        0.8, "thorough mode: cosine at which a pair too smooth to judge need not stand out (smooth_distinct)"
    )
    # scoring
    cnn_weight: float = _setting(0.7, "weight of the CNN cosine in the score (the rest is stage 1)")
    cosine_floor: float = _setting(0.5, "cosine mapped to a CNN score of 0")
    hamming_ceiling: int = _setting(32, "Hamming distance mapped to a stage-1 score of 0")
    distinct_weight: float = _setting(
        0.5,
        "thorough mode: weight, added to the score, of how far a candidate's cosine stands above "
        "the query's best cosine with any other catalog image (a copy stands out; a look-alike "
        "is one of many)",
    )
    twin_cosine: float = _setting(
        0.9, "catalog images at least this close to a candidate are its twins: not its rivals"
    )
    copy_threshold: float = _setting(0.51, "score at or above which the verdict is 'copy'")
    near_duplicate_threshold: float = _setting(
        0.38, "score at or above which the verdict is 'near-duplicate'"
    )
    # output
    top_k: int = _setting(5, "most matches reported per query image")
    min_score: float | None = _setting(None, "lowest score reported (default: the near-duplicate threshold)")

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed; unknown names raise ``TypeError``."""
        return dataclasses.replace(self, **changes)

    @property
    def reported_min_score(self) -> float:
        """The score below which a match is not reported."""
        return self.near_duplicate_threshold if self.min_score is None else self.min_score


def parse_setting(name: str, raw: str) -> Any:
    """A setting's value from text, typed like its default. Raises ``KeyError`` for an
    unknown name and ``ValueError`` for a value of the wrong kind."""
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    default = defaults[name]
    if isinstance(default, bool):
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, not {raw!r}")
    if default is None:
        return None if raw.strip().lower() in ("", "none") else float(raw)
    kind: Any = type(default)
    return kind(raw)


def settings_table() -> list[tuple[str, Any, str]]:
    """``(name, default, help)`` for every setting, in declaration order."""
    return [(f.name, f.default, f.metadata["help"]) for f in dataclasses.fields(Settings)]
