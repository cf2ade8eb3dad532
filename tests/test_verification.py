"""Stage 3: keypoints and RANSAC tell a copy (cropped, turned, shrunk) from a look-alike."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from detector.config import Settings
from detector.scoring import score
from detector.stage1.hashing import dihedral_image
from detector.stage3.keypoints import features, plausible, sift_features, verify, verify_grey

from .conftest import textured

S = Settings()


def _features(rgb: np.ndarray):
    return features(verify_grey(rgb, S), S)


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()


def _rotated_crop(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), 12, 1.0)
    out = cv2.warpAffine(rgb, turn, (w, h), borderValue=(255, 255, 255))
    return np.ascontiguousarray(out[60 : h - 90, 40 : w - 100])


def test_a_rotated_crop_keeps_many_inliers(astronaut):
    v = verify(_features(_rotated_crop(astronaut)), _features(astronaut), S)
    assert v.inliers >= 50 and v.matches >= v.inliers


def test_a_mirror_matches_once_turned_back(astronaut):
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    straight = verify(_features(dihedral_image(mirrored, "hflip")), _features(astronaut), S)
    as_is = verify(_features(mirrored), _features(astronaut), S)
    assert straight.inliers >= 100 and straight.inliers > 5 * as_is.inliers


@pytest.mark.parametrize("other", ["coffee", "chelsea", "rocket"])
def test_unrelated_pictures_keep_few_inliers(astronaut, other):
    assert verify(_features(getattr(skimage.data, other)()), _features(astronaut), S).inliers <= 6


def _skimage_rgb(name: str) -> np.ndarray:
    x = getattr(skimage.data, name)()
    x = np.stack([x] * 3, axis=-1) if x.ndim == 2 else x[..., :3]
    return np.ascontiguousarray(x)


@pytest.mark.parametrize(
    ("a", "b"),
    [("text", "cell"), ("page", "cell"), ("gravel", "cell"), ("moon", "coins")],
)
def test_textures_do_not_squash_onto_a_few_points(a, b):
    # Before matches were one per catalog keypoint and the map had to be plausible, these
    # unrelated pairs kept 85, 75, 69 and 20 inliers: a few blobs of the cell image took
    # the matches of dozens of query keypoints and RANSAC fitted a map that collapsed onto them.
    v = verify(_features(_skimage_rgb(a)), _features(_skimage_rgb(b)), S)
    assert v.keypoints >= S.min_keypoints and v.inliers <= 6


def test_a_crop_of_a_texture_still_verifies():
    gravel = _skimage_rgb("gravel")
    h, w = gravel.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), -8, 1.0)
    crop = cv2.warpAffine(gravel, turn, (w, h))[h // 8 : h - h // 6, w // 10 : w - w // 5]
    v = verify(_features(np.ascontiguousarray(crop)), _features(gravel), S)
    assert v.keypoints >= S.min_keypoints and v.inliers >= 40


def _affine(angle: float = 0.0, sx: float = 1.0, sy: float = 1.0, mirror: bool = False) -> np.ndarray:
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    linear = np.array([[c, -s], [s, c]]) @ np.diag([-sx if mirror else sx, sy])
    return np.hstack([linear, [[12.0], [-7.0]]])


@pytest.mark.parametrize(
    ("model", "ok"),
    [
        (_affine(), True),
        (_affine(25, 2.5, 2.5), True),  # a crop, enlarged and turned
        (_affine(-4, 0.3, 0.4), True),  # pasted into a bigger frame, stretched a little
        (_affine(90, 1.0, 1.0), True),  # a quarter turn the probes did not undo
        (_affine(10, 1.0, 2.9), True),
        (_affine(mirror=True), False),  # the query was turned as its probe matched already
        (_affine(0, 1.0, 3.5), False),  # stretched more than any copy is
        (_affine(0, 10.0, 10.0), False),
        (_affine(0, 0.1, 0.1), False),
        (_affine(30, 1.0, 0.001), False),  # everything squashed onto a line
        (np.array([[np.nan, 0, 0], [0, 1, 0]]), False),
    ],
)
def test_only_maps_a_copy_can_show_are_plausible(model, ok):
    assert plausible(model, S) is ok


def _sift(rgb: np.ndarray):
    return sift_features(verify_grey(rgb, S), S)


def test_sift_also_verifies_a_rotated_crop_and_leaves_strangers_near_zero(astronaut):
    copy = verify(_sift(_rotated_crop(astronaut)), _sift(astronaut), S)
    assert copy.inliers >= 50 and copy.query_region is not None
    assert copy.keypoints >= 60 and _sift(astronaut).descriptors.shape[1] == 128
    for other in ("coffee", "chelsea", "rocket"):
        assert verify(_sift(getattr(skimage.data, other)()), _sift(astronaut), S).inliers <= 8


@pytest.mark.parametrize(("side", "blur"), [(48, 0.8), (64, 1.5), (80, 1.5)])
def test_sift_confirms_blurred_thumbnails_that_orb_leaves_at_chance(astronaut, settings, side, blur):
    small = cv2.resize(astronaut, (side, side), interpolation=cv2.INTER_AREA)
    thumb = cv2.GaussianBlur(small, (0, 0), blur)
    orb = verify(_features(thumb), _features(astronaut), S).inliers
    sift = verify(_sift(thumb), _sift(astronaut), S).inliers
    assert orb <= settings.inliers_floor < 12  # chance level for ORB
    assert sift > settings.sift_floor  # beyond chance for SIFT
    assert score(8, 0.6, settings, orb, sift) > score(8, 0.6, settings, orb)


def test_a_thumbnail_is_enlarged_and_still_verifies(astronaut):
    thumb = cv2.resize(astronaut, (96, 96), interpolation=cv2.INTER_AREA)
    grey = verify_grey(thumb, S)
    assert max(grey.shape) == 320
    assert max(verify_grey(astronaut, S).shape) == S.verify_side
    assert verify(features(grey, S), _features(astronaut), S).inliers >= 15


def test_featureless_images_give_zero_not_an_error():
    flat = np.full((200, 300, 3), 128, np.uint8)
    v = verify(_features(flat), _features(textured(3, (300, 200))), S)
    assert (v.matches, v.inliers, v.keypoints, v.query_region) == (0, 0, 0, None)
    assert not v.keypoints >= S.min_keypoints


def test_the_matched_region_outlines_where_the_copy_came_from(astronaut):
    """A copy of the right half: in the catalog image the region lies in the right half, in
    the copy it covers most of the picture."""
    w = astronaut.shape[1]
    right = np.ascontiguousarray(astronaut[:, w // 2 :])
    v = verify(_features(right), _features(astronaut), S)
    assert v.inliers >= 50
    assert v.catalog_region is not None and v.query_region is not None
    assert 3 <= len(v.catalog_region) <= 16
    xs = [x for x, _ in v.catalog_region]
    assert min(xs) >= 0.45 and max(xs) >= 0.9
    qx = [x for x, _ in v.query_region]
    qy = [y for _, y in v.query_region]
    assert min(qx) <= 0.1 and max(qx) >= 0.9 and min(qy) <= 0.1 and max(qy) >= 0.9


def test_score_with_stage_3_rises_with_inliers_and_stays_in_range(settings):
    without = score(4, 0.9, settings)
    assert score(4, 0.9, settings, None) == without
    values = [score(4, 0.9, settings, n) for n in range(0, 120, 5)]
    assert values == sorted(values) and all(0.0 <= v <= 1.0 for v in values)
    assert values[0] == pytest.approx((1 - settings.geo_weight) * without)
    assert score(0, 1.0, settings, settings.inliers_full) == pytest.approx(1.0)


def test_smooth_pictures_are_inconclusive_and_keep_their_stage_1_2_score(tmp_path, make_image):
    from click.testing import CliRunner

    from cli.main import cli

    smooth = textured(5, (160, 120))
    v = verify(_features(smooth), _features(smooth), S)
    assert not v.keypoints >= S.min_keypoints and v.keypoints < 60
    assert (
        verify(_features(skimage.data.astronaut()), _features(skimage.data.astronaut()), S).keypoints
        >= S.min_keypoints
    )
    make_image("c/one.jpg", seed=5)
    db = str(tmp_path / "s.db")
    CliRunner().invoke(cli, ["--db", db, "catalog", "add", str(tmp_path / "c")], catch_exceptions=False)
    out = CliRunner().invoke(cli, ["--db", db, "check", str(tmp_path / "c" / "one.jpg"), "--format", "jsonl"])
    import json

    (match,) = json.loads(out.stdout)["matches"]
    assert match["inliers"] is None and match["score"] == 1.0  # identical file, stage 3 abstained
