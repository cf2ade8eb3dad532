"""Thorough mode's extra evidence for degraded copies: a blurred or thumbnail-sized query
meets its candidates degraded alike (the better cosine counts), and stage 3 also asks SIFT
where ORB's inliers fall short; fast mode does neither."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from detector.config import FAST, THOROUGH, Settings
from detector.intake.catalog_images import CatalogImages
from detector.scan.scanner import Scanner
from detector.scoring import score
from detector.stage1.hashing import HASHER_ID
from detector.stage2.embedding import degraded, embedder_id, fine_detail, resize_for_cnn
from detector.stage3.verification import Evidence, VerificationStage
from detector.storage.store import Store
from detector.tasks.cataloging import add_to_catalog


def test_fine_detail_tells_a_blurred_or_enlarged_image_from_a_sharp_one():
    sharp = resize_for_cnn(skimage.data.astronaut(), 224)
    assert fine_detail(sharp) > 4.0
    assert fine_detail(cv2.GaussianBlur(sharp, (0, 0), 2.0)) < 2.0
    enlarged = cv2.resize(cv2.resize(sharp, (60, 60), interpolation=cv2.INTER_AREA), (224, 224))
    assert fine_detail(enlarged) < 2.0
    third = degraded(sharp, 3)
    assert third.shape == sharp.shape and fine_detail(third) < fine_detail(sharp) / 2


def test_sift_evidence_counts_where_it_says_more_and_confirms_a_pair(settings):
    assert score(10, 0.6, settings, 12, 30) > score(10, 0.6, settings, 12) == score(10, 0.6, settings, 12, 2)
    assert score(10, 0.6, settings, 60, 5) == score(10, 0.6, settings, 60)  # ORB's full evidence stands
    assert Evidence(3, sift_inliers=settings.sift_floor + 1).confirms(settings)
    assert not Evidence(3, sift_inliers=settings.sift_floor).confirms(settings)
    assert Evidence(settings.inliers_floor + 1).confirms(settings) and not Evidence(None).confirms(settings)


@pytest.fixture(scope="module")
def thumbs(tmp_path_factory, models) -> tuple[Store, Path, Path]:
    """A catalog of the shipped fixtures; a blurred 64 px thumbnail of one of them (enlarged
    back, as sites show it) and a sharp re-encode of another."""
    root = tmp_path_factory.mktemp("thorough")
    catalog = sorted((Path(__file__).parent.parent / "fixtures" / "catalog").iterdir())
    store = Store.open(root / "t.db", hasher=HASHER_ID, embedder=embedder_id(models.settings), create=True)
    list(add_to_catalog(store, models, [str(p) for p in catalog], models.settings))
    rgb = np.asarray(Image.open(catalog[0]).convert("RGB"))
    h, w = rgb.shape[:2]
    small = cv2.GaussianBlur(cv2.resize(rgb, (64, 64 * h // w), interpolation=cv2.INTER_AREA), (0, 0), 0.8)
    blurred = root / "thumb.jpg"
    Image.fromarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)).save(blurred, quality=85)
    sharp = root / "sharp.jpg"
    Image.open(catalog[1]).convert("RGB").save(sharp, quality=60)
    return store, blurred, sharp


def _top(store: Store, models, settings: Settings, mode: str, path: Path):
    scanner = Scanner(store, models, settings.replace(min_score=0.0), mode=mode)
    (result,) = scanner.scan([str(path)])
    return result.matches[0]


def test_a_blurred_thumbnail_meets_its_original_degraded_alike(thumbs, models):
    store, blurred, sharp = thumbs
    s = models.settings
    fast = _top(store, models, s, FAST, blurred)
    thorough = _top(store, models, s, THOROUGH, blurred)
    plain = _top(store, models, s.replace(blur_match=False, sift=False), THOROUGH, blurred)
    assert fast.catalog_path == thorough.catalog_path == plain.catalog_path
    assert thorough.cosine > plain.cosine == fast.cosine  # the degraded catalog image is closer
    assert thorough.score > plain.score
    # a sharp query is compared as it is
    assert _top(store, models, s, THOROUGH, sharp).cosine == _top(store, models, s, FAST, sharp).cosine


def test_catalog_sift_is_computed_once_per_factor_and_empty_for_a_lost_file(thumbs, models, tmp_path):
    store, _, _ = thumbs
    s = models.settings
    stage = VerificationStage(s, THOROUGH, CatalogImages(s))
    entry = next(iter(store.catalog.list()))
    first = [stage.catalog_keypoints(entry.id, entry.path, sift=True, factor=f) for f in (1, 2, 3)]
    assert all(f is not None and f.descriptors.shape[1] == 128 for f in first)
    assert len(first[2].points) < len(first[0].points)  # a blurred image holds fewer keypoints
    again = [stage.catalog_keypoints(entry.id, entry.path, sift=True, factor=f) for f in (1, 3)]
    assert again[0] is first[0] and again[1] is first[2]
    gone = str(tmp_path / "gone.jpg")
    assert stage.catalog_keypoints(10_000, gone, sift=True) is None
    assert stage.catalog_keypoints(10_000, gone) is None


def test_distinctness_adds_to_the_score_within_bounds(settings):
    plain = score(10, 0.6, settings, 20)
    assert score(10, 0.6, settings, 20, distinct=0.2) == pytest.approx(plain + settings.distinct_weight * 0.2)
    assert score(10, 0.6, settings, 20, distinct=-0.2) < plain
    assert score(0, 1.0, settings, 60, distinct=0.5) == 1.0
    assert score(40, 0.2, settings, 0, distinct=-0.5) == 0.0


def _catalog(root: Path, models, images: list[Path]) -> Store:
    root.mkdir()
    store = Store.open(root / "c.db", hasher=HASHER_ID, embedder=embedder_id(models.settings), create=True)
    list(add_to_catalog(store, models, [str(p) for p in images], models.settings))
    return store


def test_a_copy_that_stands_out_scores_higher_and_a_twin_does_not_hide_it(thumbs, models, tmp_path):
    """The copy's cosine stands far above the rest of the catalog, which lifts its score; the
    same picture catalogued twice (a smaller file of it) is not counted as its rival."""
    _, blurred, _ = thumbs
    images = sorted((Path(__file__).parent.parent / "fixtures" / "catalog").iterdir())
    s = models.settings
    single = _catalog(tmp_path / "single", models, images)
    top = _top(single, models, s, THOROUGH, blurred)
    flat = _top(single, models, s.replace(distinct_weight=0.0), THOROUGH, blurred)
    assert top.catalog_path == flat.catalog_path == str(images[0])
    assert top.score > flat.score + 0.05

    twin = tmp_path / "twin.jpg"
    original = Image.open(images[0]).convert("RGB")
    half = (original.width // 2, original.height // 2)
    original.resize(half, Image.Resampling.LANCZOS).save(twin, quality=90)
    twins = _catalog(tmp_path / "twins", models, [*images, twin])
    scanner = Scanner(twins, models, s.replace(min_score=0.0), mode=THOROUGH)
    (result,) = scanner.scan([str(blurred)])
    by_path = {m.catalog_path: m for m in result.matches}
    pair = (by_path[str(images[0])], by_path[str(twin)])
    assert max(m.score for m in pair) >= top.score - 0.03  # not lowered by the twin (SIFT checks the best)
    assert all(m.score > s.unconfirmed_cap for m in pair)  # neither capped as a look-alike
    blind = Scanner(twins, models, s.replace(min_score=0.0, twin_cosine=1.01), mode=THOROUGH)
    (unaware,) = blind.scan([str(blurred)])
    hidden = {m.catalog_path: m.score for m in unaware.matches}
    for m in pair:  # each copy would hide the other
        assert hidden[m.catalog_path] < m.score - 0.05, m.catalog_path


def test_a_colour_inverted_copy_is_confirmed_by_its_inverted_keypoints(thumbs, models, tmp_path):
    """Inverting colours leaves ORB and SIFT no more than chance matches with the original,
    so without the inverted pass the pair is capped as a look-alike; thorough mode matches
    the query's inverted grey image too and finds the copy."""
    store, _, _ = thumbs
    s = models.settings
    catalog = sorted((Path(__file__).parent.parent / "fixtures" / "catalog").iterdir())
    inverted = tmp_path / "inverted.jpg"
    Image.fromarray(255 - np.asarray(Image.open(catalog[1]).convert("RGB"))).save(inverted, quality=90)
    found = _top(store, models, s, THOROUGH, inverted)
    assert Path(found.catalog_path).name == catalog[1].name
    assert found.inliers > s.inliers_floor and found.verdict == "copy"
    unaware = Scanner(store, models, s.replace(min_score=0.0, inverted_cosine=1.01), mode=THOROUGH)
    (blind,) = unaware.scan([str(inverted)])
    same = [m for m in blind.matches if m.catalog_path == found.catalog_path]
    assert not same or (same[0].inliers <= s.inliers_floor and same[0].score <= s.unconfirmed_cap)
