"""Stage 3 in the other orientation: a mirrored crop that only the CNN finds (its probes are
too far off) is verified mirrored, reported as a copy with the mirror in its transform."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import detector
from detector.stage1.hashing import DIHEDRAL, dihedral_image, mirrored

PICTURES = ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg")


@pytest.mark.parametrize("turn", sorted(DIHEDRAL))
def test_mirrored_turn_shows_the_turned_image_mirrored(turn: str) -> None:
    a = np.arange(12).reshape(3, 4)
    assert np.array_equal(dihedral_image(a, mirrored(turn)), dihedral_image(a, turn)[:, ::-1])
    assert mirrored(mirrored(turn)) == turn


@pytest.fixture(scope="module")
def mirrored_crops(tmp_path_factory: pytest.TempPathFactory, catalog_dir: Path) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("mirrored")
    with detector.open_catalog(out / "c.db", create=True) as catalog:
        catalog.add([catalog_dir])
    queries = []
    for name in PICTURES:
        rgb = np.asarray(Image.open(catalog_dir / name).convert("RGB"))
        h, w = rgb.shape[:2]
        corner = rgb[int(h * 0.3) :, int(w * 0.35) :]  # the bottom right, 45 % of the picture
        queries.append(out / f"mirrored-{name}")
        Image.fromarray(np.fliplr(corner)).save(queries[-1], quality=90)
        Image.fromarray(corner).save(out / f"plain-{name}", quality=90)
    return out / "c.db", queries


def test_a_mirrored_off_centre_crop_is_a_copy_in_thorough_mode(mirrored_crops) -> None:
    db, queries = mirrored_crops
    with detector.open_catalog(db) as catalog:
        for query in queries:
            best = catalog.check(query, mode="thorough").matches[0]
            assert Path(best.catalog_path).name == query.name.removeprefix("mirrored-")
            assert best.verdict == "copy" and best.transform == "hflip" and best.inliers > 20
            assert best.agreement is not None and best.agreement > 0.9
            # the region is given as the file is: the plain crop's, mirrored
            plain = catalog.check(query.with_name(query.name.replace("mirrored-", "plain-")), mode="thorough")
            assert plain.matches[0].transform == "identity"
            assert _centre(best.query_region)[0] == pytest.approx(
                1 - _centre(plain.matches[0].query_region)[0], abs=0.1
            )
            assert _centre(best.query_region)[1] == pytest.approx(
                _centre(plain.matches[0].query_region)[1], abs=0.1
            )


def test_without_the_mirrored_match_the_same_crops_are_missed(mirrored_crops) -> None:
    db, queries = mirrored_crops
    with detector.open_catalog(db, settings={"mirror_cosine": 2}) as catalog:
        for query in queries:
            assert all(m.verdict == "none" for m in catalog.check(query, mode="thorough").matches)


def _centre(region) -> tuple[float, float]:
    return float(np.mean([x for x, _ in region])), float(np.mean([y for _, y in region]))


def test_a_mirrored_copy_of_a_mirror_symmetric_frame_is_not_taken_for_its_chance_fit(
    tmp_path: Path, catalog_dir: Path
) -> None:
    # a picture in a mirror-symmetric frame: mirrored, the frame still fits as it is (hundreds
    # of inliers) while the picture inside disagrees; the mirrored match is the copy
    astronaut = np.asarray(Image.open(catalog_dir / "astronaut.jpg").convert("RGB").resize((400, 400)))
    coffee = np.asarray(Image.open(catalog_dir / "coffee.jpg").convert("RGB").resize((240, 400)))
    framed = np.concatenate([astronaut[:, :80], coffee, np.fliplr(astronaut[:, :80])], axis=1)
    (tmp_path / "catalog").mkdir()
    Image.fromarray(framed).save(tmp_path / "catalog" / "framed.png")
    for name in ("chelsea.jpg", "rocket.jpg"):
        (tmp_path / "catalog" / name).write_bytes((catalog_dir / name).read_bytes())
    query = tmp_path / "query.jpg"
    Image.fromarray(np.fliplr(framed)[30:]).save(query, quality=92)
    with detector.open_catalog(tmp_path / "c.db", create=True) as catalog:
        catalog.add([tmp_path / "catalog"])
        best = catalog.check(query, mode="thorough").matches[0]
        assert Path(best.catalog_path).name == "framed.png"
        assert best.verdict == "copy" and best.transform == "hflip"
        assert best.agreement is not None and best.agreement > 0.9 and best.inliers > 300
    # the whole query's chance fit (its insets, the strips and the picture, are not the point;
    # nor is its mirrored probe, which stage 1 finds within the radius and stage 3 verifies)
    off = {"mirror_cosine": 2, "min_score": 0.0, "insets": 0, "dihedral": False}
    with detector.open_catalog(tmp_path / "c.db", settings=off) as catalog:
        chance = next(m for m in catalog.check(query, mode="thorough").matches if "framed" in m.catalog_path)
        assert chance.transform == "identity" and chance.inliers > 100  # the frame's fit, as it is
        assert chance.agreement is not None and chance.agreement < 0.6 and chance.verdict == "none"


def test_a_mirrored_crop_is_found_in_fast_mode_wherever_the_plain_crop_is(
    tmp_path: Path, catalog_dir: Path
) -> None:
    # fast mode runs the CNN only where stage 1 finds a candidate: the mirrored probe of a crop
    # (9-14 bits from the catalog's 80 % crop code) searches the full radius, as the plain
    # probe of the same crop does, so a crop is found mirrored wherever it is found as it is
    found = {"plain": [], "mirrored": []}
    with detector.open_catalog(tmp_path / "c.db", create=True) as catalog:
        catalog.add([catalog_dir])
        for name in PICTURES:
            rgb = np.asarray(Image.open(catalog_dir / name).convert("RGB"))
            h, w = rgb.shape[:2]
            for top, bottom, left, right in ((0.06, 0.84, 0.12, 0.9), (0.1, 0.9, 0.05, 0.85)):  # 61-64 %
                crop = rgb[int(h * top) : int(h * bottom), int(w * left) : int(w * right)]
                for kind, pixels in (("plain", crop), ("mirrored", np.fliplr(crop))):
                    query = tmp_path / f"{kind}-{name}"
                    Image.fromarray(np.ascontiguousarray(pixels)).save(query, quality=90)
                    best = next(iter(catalog.check(query, mode="fast").matches), None)
                    if best is not None and best.verdict != "none":
                        assert Path(best.catalog_path).name == name
                        turn, *trimmed = best.transform.split("+")
                        assert turn == ("hflip" if kind == "mirrored" else "identity"), best.transform
                        if not trimmed:  # the probes compared here: the crop's own, not its content box's
                            found[kind].append((name, top))
    assert len(found["plain"]) >= 3  # stage 1 finds about half of these crops (the 80 % crop code)
    assert found["mirrored"] == found["plain"]
