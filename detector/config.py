"""All tunable settings in one declarative table: name, default, help text and allowed range
live together and feed the engine's defaults, the range checks and the command line's
``--help``. Every value a result depends on is here, and so in the scan-state fingerprint
(:func:`detector.scan.state.scan_state`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detector.errors import SettingError

FAST = "fast"  # the CNN runs only on queries that have stage-1 candidates
THOROUGH = "thorough"  # the CNN runs on every query; nearest descriptors join the candidates
MODES = (FAST, THOROUGH)
# settings that change no result, only how the work is shared out: left out of a scan's state
# fingerprint, and a resumed run may set them again
RUNTIME = ("batch_size", "jobs", "verify_threads", "cnn_threads")

DEFAULT = "default"
STORED = "stored"  # saved in the database (evaluate --calibrate)
SET = "set"  # given by the caller (--set, an argument)


def _setting(default: Any, help: str, ranged: tuple[float, float] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "range": ranged})


@dataclass(frozen=True)
class Settings:
    """Engine settings. Build with ``Settings()`` or ``Settings().replace(top_k=3)``; a value of
    the wrong kind or outside its range raises :class:`~detector.errors.SettingError`."""

    # loading
    max_pixels: int = _setting(
        64_000_000, "refuse images declaring more pixels (decompression-bomb limit)", ranged=(1, 10**12)
    )
    max_file_bytes: int = _setting(
        100_000_000, "refuse files larger than this many bytes", ranged=(1, 10**12)
    )
    min_side: int = _setting(
        5, "refuse images whose shorter side is below this many pixels (unhashable)", ranged=(1, 65_535)
    )
    flat_std: float = _setting(
        2.0,
        "refuse images whose grey levels vary less than this std (flat, unhashable)",
        ranged=(0, 128),
    )
    max_aspect: float = _setting(
        25.0,
        "refuse images whose longer side is more than this many times the shorter (strips: no "
        "stage can compare them, and thin banners are not pictures a copy is made of)",
        ranged=(1, 10_000),
    )
    decode_side: int = _setting(
        448,
        "decode at the smallest scale whose longer side is still at least this many pixels "
        "(JPEG: 1/2, 1/4 or 1/8 in the DCT domain; other formats: a whole-factor box reduce); "
        "0 decodes at full size",
        ranged=(0, 65_535),
    )
    # stage 1
    radius_phash: int = _setting(
        14, "pHash Hamming radius (bits of 64) for a stage-1 candidate", ranged=(0, 64)
    )
    radius_dhash: int = _setting(
        14, "dHash Hamming radius (bits of 64) for a stage-1 candidate", ranged=(0, 64)
    )
    radius_variant: int = _setting(
        8,
        "Hamming radius for the upside-down and quarter-turned probes of a query (bits of 64); "
        "the query as it is and mirrored left to right search radius_phash and radius_dhash",
        ranged=(0, 64),
    )
    radius_sum: int = _setting(
        34,
        "most pHash + dHash Hamming bits, together, for a stage-1 candidate of the query as it is "
        "or mirrored left to right",
        ranged=(0, 128),
    )
    max_candidates: int = _setting(
        50, "most stage-1 candidates handed to stage 2 per query", ranged=(1, 100_000)
    )
    dihedral: bool = _setting(True, "also search each query's flips and quarter turns")
    trim: bool = _setting(
        True, "cut borders, caption bands and screenshot frames off before hashing and embedding"
    )
    insets: int = _setting(
        24,
        "most pictures inside a query (a web page's, a collage's) searched as queries of their own; 0: none",
        ranged=(0, 32),
    )
    # stage 2
    image_size: int = _setting(224, "CNN input side in pixels", ranged=(32, 1024))
    gem_p: float = _setting(3.0, "GeM pooling exponent for the embedding", ranged=(0.5, 16))
    batch_size: int = _setting(32, "images per CNN batch", ranged=(1, 4096))
    jobs: int = _setting(
        1,
        "worker processes that decode and hash while the main process searches and embeds "
        "(0: one per CPU, the command line's default; 1: none, the library's default, since "
        "workers re-import the calling script, which then needs an if __name__ == '__main__' guard); "
        "jobs under two batches always decode in the main process",
        ranged=(0, 1024),
    )
    cnn_threads: int = _setting(
        0,
        "torch's threads while the CNN runs during a scan (set back after each batch); 0: the "
        "CPUs the jobs workers leave free, at least one",
        ranged=(0, 1024),
    )
    cnn_bf16: bool = _setting(
        True,
        "run the CNN in bfloat16 on processors that compute it natively (AVX512-BF16, AMX); "
        "float32 elsewhere and on GPUs",
    )
    neighbours: int = _setting(
        10, "thorough mode: embedding nearest neighbours added as candidates", ranged=(0, 10_000)
    )
    # stage 3
    verify: bool = _setting(True, "check the best candidates with ORB keypoints and RANSAC (stage 3)")
    verify_threads: int = _setting(
        0,
        "stage 3: threads that check a batch's queries side by side (OpenCV works outside "
        "Python's lock; the evidence is the same with any number); 0: one per CPU",
        ranged=(0, 256),
    )
    verify_top: int = _setting(
        3, "stage 3: how many of a query's best candidates are checked", ranged=(0, 1000)
    )
    verify_floor: float = _setting(
        0.2, "stage 3: candidates scoring below this before it are not checked", ranged=(0, 1)
    )
    inliers_floor: int = _setting(
        8, "stage 3: RANSAC inliers at or below which a pair gains nothing", ranged=(0, 100_000)
    )
    inliers_full: int = _setting(
        30, "stage 3: RANSAC inliers at which a pair gains the full stage-3 score", ranged=(1, 100_000)
    )
    geo_weight: float = _setting(0.7, "weight of stage 3 in the score when it ran", ranged=(0, 1))
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
        ranged=(-1, 2),
    )
    mirror_cosine: float = _setting(
        0.6,
        "stage 3: a candidate at this cosine or above that ORB does not confirm in the way its "
        "probe matched, or whose fit disagrees, is also matched mirrored (a mirrored crop found "
        "by the CNN, which barely sees a mirror); above 1: never",
        ranged=(-1, 2),
    )
    sift_top: int = _setting(
        1,
        "stage 3: how many of the checked candidates SIFT also checks (the best first)",
        ranged=(0, 1000),
    )
    sift_floor: int = _setting(
        4, "stage 3: SIFT inliers at or below which a pair gains nothing from them", ranged=(0, 100_000)
    )
    sift_full: int = _setting(
        50, "stage 3: SIFT inliers at which a pair gains the full stage-3 score", ranged=(1, 100_000)
    )
    blur_match: bool = _setting(
        True,
        "thorough mode: a blurred or thumbnail-sized query is also compared with its best "
        "candidates shrunk 2 and 3 times and enlarged back (the better cosine counts)",
    )
    blur_detail: float = _setting(
        2.0,
        "fine detail (mean grey change when halved and enlarged back) under which a query counts as blurred",
        ranged=(0, 255),
    )
    unconfirmed_cap: float = _setting(
        0.35,
        "highest score of a pair found by the embedding alone (outside every stage-1 radius) "
        "that stage 3 did not confirm, and of a pair where ORB and SIFT both found no inlier: "
        "look-alikes are not copies without other evidence",
        ranged=(0, 1),
    )
    inset_coverage: float = _setting(
        0.5,
        "a picture found inside a query (an inset) counts only where stage 3 confirms it and "
        "the aligned overlap covers at least this share of the catalog image (a picture shown "
        "in a page shows most of itself; a flag's canton or a card's corner is a look-alike); "
        "else it scores at most unconfirmed_cap",
        ranged=(0, 1),
    )
    smooth_distinct: float = _setting(
        0.1,
        "thorough mode: a pair too smooth for stage 3 to judge scores at most unconfirmed_cap "
        "unless its cosine stands this far above the query's best with another catalog image "
        "or reaches smooth_cosine",
        ranged=(-2, 2),
    )
    smooth_cosine: float = _setting(
        0.8,
        "thorough mode: cosine at which a pair too smooth to judge need not stand out (smooth_distinct)",
        ranged=(-1, 2),
    )
    verify_side: int = _setting(
        512, "stage 3: keypoints are found on images no longer than this many pixels", ranged=(64, 8192)
    )
    verify_min_side: int = _setting(
        320,
        "stage 3: images whose longer side is under this are enlarged to it first (ORB finds few "
        "points in thumbnails)",
        ranged=(32, 8192),
    )
    orb_features: int = _setting(1000, "stage 3: most ORB keypoints per image", ranged=(10, 100_000))
    sift_features: int = _setting(
        500,
        "stage 3: most SIFT keypoints per image (1,000 cost a third more for the same recall)",
        ranged=(10, 100_000),
    )
    min_keypoints: int = _setting(
        60,
        "stage 3: fewer keypoints than this on either image (smooth or tiny): stage 3 abstains",
        ranged=(3, 100_000),
    )
    orb_ratio: float = _setting(
        0.8, "stage 3: Lowe's ratio test on ORB's Hamming distances", ranged=(0.01, 1)
    )
    sift_ratio: float = _setting(0.75, "stage 3: Lowe's ratio test on SIFT's L2 distances", ranged=(0.01, 1))
    ransac_px: float = _setting(
        6.0, "stage 3: RANSAC inlier threshold in pixels at verify_side", ranged=(0.1, 1000)
    )
    ransac_iters: int = _setting(2000, "stage 3: most RANSAC iterations per pair", ranged=(1, 1_000_000))
    ransac_confidence: float = _setting(0.995, "stage 3: RANSAC confidence", ranged=(0.5, 0.999999))
    max_scale: float = _setting(
        8.0, "stage 3: a copy's affine map scales each axis by at most this, up or down", ranged=(1, 1000)
    )
    max_stretch: float = _setting(
        3.0, "stage 3: and one axis at most this many times more than the other", ranged=(1, 1000)
    )
    agree: bool = _setting(
        True,
        "stage 3: after the fit, compare the aligned images cell by cell (a look-alike agrees on "
        "its template only)",
    )
    agree_cell: int = _setting(16, "stage 3: side of a compared cell, pixels at verify_side", ranged=(4, 256))
    agree_sigma: float = _setting(
        1.5, "stage 3: Gaussian smoothing (pixels) of both images before cells are compared", ranged=(0.1, 20)
    )
    agree_flat: float = _setting(
        6.0, "stage 3: a cell whose grey levels vary less than this std has no texture", ranged=(0, 128)
    )
    agree_ncc: float = _setting(
        0.5, "stage 3: normalised correlation at which a textured cell agrees", ranged=(-1, 1)
    )
    agree_min_cells: int = _setting(
        8,
        "stage 3: fewer textured cells in the overlap than this: agreement is not judged",
        ranged=(1, 100_000),
    )
    agree_added: float = _setting(
        0.5,
        "stage 3: weight of a cell textured in the query only (added content: an overlay's, or a "
        "look-alike's own) against a cell compared on both sides",
        ranged=(0, 1),
    )
    agree_power: float = _setting(
        2.0,
        "the score of a pair whose overlap was compared is multiplied by its agreement to this "
        "power (0: the agreement only caps, through agree_floor)",
        ranged=(0, 8),
    )
    agree_floor: float = _setting(
        0.6,
        "a pair whose overlap agrees on less than this share of its textured cells scores at most "
        "unconfirmed_cap: whatever its inliers, it is a look-alike",
        ranged=(0, 1),
    )
    outranked_agreement: float = _setting(
        0.03,
        "a match scores at most unconfirmed_cap where a better-scoring one that stage 3 aligned "
        "covers the same part of the query (their query regions' bounding boxes overlap by half "
        "their union), agrees on 98 % of its overlap and on at least this much more than it: a "
        "part of a query copies one catalog picture, and the others of its template it resembles "
        "(a deck's other cards, a set's other tiles) are look-alikes; catalog duplicates agree "
        "alike and both stay "
        "(above 1: never)",
        ranged=(0, 2),
    )
    region_points: int = _setting(16, "stage 3: most corners of a matched-region polygon", ranged=(3, 1000))
    blur_factors: tuple[int, ...] = _setting(
        (2, 3),
        "thorough mode: a blurred query meets its candidates shrunk by these factors and enlarged "
        "back (comma-separated)",
        ranged=(2, 16),
    )
    rivals: int = _setting(
        16,
        "thorough mode: a candidate's rival is the best of the query's this many nearest catalog "
        "images that are not its twins",
        ranged=(1, 10_000),
    )
    # scoring
    cnn_weight: float = _setting(
        0.7, "weight of the CNN cosine in the score (the rest is stage 1)", ranged=(0, 1)
    )
    cosine_floor: float = _setting(0.5, "cosine mapped to a CNN score of 0", ranged=(-1, 0.99))
    hamming_ceiling: int = _setting(32, "Hamming distance mapped to a stage-1 score of 0", ranged=(1, 64))
    distinct_weight: float = _setting(
        0.5,
        "thorough mode: weight, added to the score, of how far a candidate's cosine stands above "
        "the query's best cosine with any other catalog image (a copy stands out; a look-alike "
        "is one of many)",
        ranged=(0, 1),
    )
    twin_cosine: float = _setting(
        0.9,
        "catalog images at least this close to a candidate are its twins: not its rivals",
        ranged=(-1, 2),
    )
    copy_threshold: float = _setting(
        0.87, "score at or above which the verdict is 'copy' (above 1: never)", ranged=(0, 2)
    )
    near_duplicate_threshold: float = _setting(
        0.85,
        "score at or above which the verdict is 'near-duplicate' (above 1: never)",
        ranged=(0, 2),
    )
    dedupe_score: float = _setting(
        0.80,
        "dedupe: the score, from stages 1 and 2 alone, at or above which two members of one "
        "collection are duplicates ('copy' from copy_threshold up, else 'near-duplicate'); no "
        "stage 3 runs there, so the scan's near-duplicate line, set for three stages, does not apply",
        ranged=(0, 2),
    )
    # output
    top_k: int = _setting(5, "most matches reported per query image", ranged=(1, 1_000_000))
    min_score: float | None = _setting(
        None, "lowest score reported (default: the near-duplicate threshold)", ranged=(0, 1)
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check(f, getattr(self, f.name))
        for low, high in (("inliers_floor", "inliers_full"), ("sift_floor", "sift_full")):
            if getattr(self, low) >= getattr(self, high):
                raise SettingError(
                    f"{low} ({getattr(self, low)}) must be below {high} ({getattr(self, high)})"
                )

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed; unknown names raise ``TypeError``."""
        return dataclasses.replace(self, **changes)

    @property
    def reported_min_score(self) -> float:
        """The score below which a match is not reported."""
        return self.near_duplicate_threshold if self.min_score is None else self.min_score


def _check(f: dataclasses.Field[Any], value: Any) -> None:
    """Raise :class:`SettingError` unless ``value`` is of the kind of ``f``'s default and within
    its range (every element, for a tuple)."""
    default = f.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SettingError(f"{f.name} must be true or false, not {value!r}")
        return
    if isinstance(default, tuple):
        if not isinstance(value, tuple) or not value:
            raise SettingError(f"{f.name} must be a non-empty list of numbers, not {value!r}")
        for v in value:
            _check_number(f, v)
        return
    if value is None and default is None:
        return
    _check_number(f, value)


def _check_number(f: dataclasses.Field[Any], value: Any) -> None:
    default = f.default
    whole = isinstance(default, int) or (isinstance(default, tuple) and isinstance(default[0], int))
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (whole and not isinstance(value, int))
    ):
        raise SettingError(f"{f.name} must be {'a whole number' if whole else 'a number'}, not {value!r}")
    if not math.isfinite(value):
        raise SettingError(f"{f.name} must be a finite number, not {value!r}")
    ranged = f.metadata.get("range")
    if ranged is not None and not ranged[0] <= value <= ranged[1]:
        raise SettingError(f"{f.name} must be within [{ranged[0]:g}, {ranged[1]:g}], not {value!r}")


def parse_setting(name: str, raw: str) -> Any:
    """A setting's value from text, typed like its default (not yet range-checked: building
    :class:`Settings` does that). Raises ``KeyError`` for an unknown name and ``ValueError``
    for text that is not a value of the right kind."""
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    default = defaults[name]
    text = raw.strip()
    if isinstance(default, bool):
        value = text.lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, not {raw!r}")
    if isinstance(default, tuple):
        kind = type(default[0])
        try:
            return tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError as e:
            raise ValueError(f"expected comma-separated numbers, not {raw!r}") from e
    if default is None:
        return None if text.lower() in ("", "none") else float(text)
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError as e:
            raise ValueError(f"expected a whole number, not {raw!r}") from e
    try:
        return float(text)
    except ValueError as e:
        raise ValueError(f"expected a number, not {raw!r}") from e


def settings_table() -> list[tuple[str, Any, str]]:
    """``(name, default, help)`` for every setting, in declaration order."""
    return [(f.name, f.default, f.metadata["help"]) for f in dataclasses.fields(Settings)]


def setting_range(name: str) -> tuple[float, float] | None:
    """The allowed ``(low, high)`` of a setting, or None for a flag."""
    found: tuple[float, float] | None = Settings.__dataclass_fields__[name].metadata.get("range")
    return found


@dataclass(frozen=True)
class EffectiveSettings:
    """The settings in force and where each value came from: ``sources`` maps every name to
    ``'default'``, ``'stored'`` (saved in the database) or ``'set'`` (given by the caller);
    ``ignored`` explains each saved value that could not be used (it is left at its default)."""

    settings: Settings
    sources: dict[str, str]
    ignored: tuple[str, ...] = ()


def effective_settings(
    saved: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> EffectiveSettings:
    """The settings a command runs with: the defaults, then ``base`` (a front end's own
    defaults, such as the command line's worker count), then the values ``saved`` in the
    database (name -> text, as ``store.saved_settings.read()`` gives them), then
    ``overrides`` (what the caller set), which win. A saved value that is unknown, unreadable
    or out of range is ignored and explained; an override out of range raises
    :class:`SettingError`."""
    overrides = dict(overrides or {})
    values: dict[str, Any] = dict(base or {})
    sources = {name: DEFAULT for name, _, _ in settings_table()}
    ignored: list[str] = []
    for name, raw in saved.items():
        if name in overrides:
            continue
        try:
            value = parse_setting(name, raw)
            Settings().replace(**{name: value})
        except KeyError:
            ignored.append(f"ignoring stored setting {name}={raw!r}: no such setting")
            continue
        except (ValueError, SettingError) as e:
            ignored.append(f"ignoring stored setting {name}={raw!r}: {e}")
            continue
        values[name] = value
        sources[name] = STORED
    for name in overrides:
        sources[name] = SET
    try:
        settings = Settings().replace(**{**values, **overrides})
    except SettingError:
        if not any(sources[n] == STORED for n in values):
            raise
        # a saved value conflicts with another one: the saved values give way, with a word
        kept = {n: v for n, v in values.items() if sources.get(n) != STORED}
        settings = Settings().replace(**{**kept, **overrides})
        for n in values:
            if sources.get(n) == STORED:
                ignored.append(f"ignoring stored setting {n}: it conflicts with the other settings")
                sources[n] = DEFAULT
    return EffectiveSettings(settings, sources, tuple(ignored))
