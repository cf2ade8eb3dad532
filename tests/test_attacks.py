"""The seeded attack suite: output contract, determinism and each family's own promise."""

from __future__ import annotations

import dataclasses
import io
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from detector.tasks import attacks
from detector.tasks.attacks import FAMILIES, GEOMETRIC, PHOTOMETRIC, Attacked, attack

SIZES = [(64, 80), (900, 600), (97, 300), (300, 97)]  # (h, w): small, large, wide, tall
# every family but the one that renders pages in Chromium (a second each: tests/test_pages.py)
LOCAL = tuple(f for f in FAMILIES if f != "page")


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour texture with two solid shapes: (h, w, 3) uint8, levels kept in [20, 235]
    so clipping noise or colour maps barely moves the mean."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(30, 225, (max(2, h // 12), max(2, w // 12), 3)).astype(np.float32)
    img = np.clip(cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC), 20, 235).astype(np.uint8)
    cv2.circle(img, (w // 3, h // 2), min(h, w) // 5, (200, 40, 60), -1)
    cv2.rectangle(img, (w // 2, h // 4), (w * 3 // 4, h * 3 // 4), (30, 160, 220), -1)
    return img


@pytest.fixture(scope="module")
def img() -> np.ndarray:
    return texture(240, 320, seed=1)


def run(family: str, image: np.ndarray, seed: int) -> Attacked:
    return attack(image, family, np.random.default_rng(seed))


def find(family: str, image: np.ndarray, pattern: str, seeds: range = range(200)) -> list[Attacked]:
    """The attacks among ``seeds`` whose name matches ``pattern``; fails if there are none."""
    hits = [a for a in (run(family, image, s) for s in seeds) if re.search(pattern, a.name)]
    assert hits, f"no {family} attack named like {pattern!r} in {len(seeds)} seeds"
    return hits


def ints(name: str, key: str) -> list[int]:
    """The integers of ``key=(a, b, ...)`` or ``key=a`` in an attack name."""
    m = re.search(rf"{key}=\(?([-\d, ]+)\)?", name)
    assert m, f"{key} missing from {name!r}"
    return [int(v) for v in m.group(1).split(",")]


def sharpness(rgb: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


# ---------------------------------------------------------------------------- contract


def test_family_lists() -> None:
    assert len(FAMILIES) == 18 and len(set(FAMILIES)) == 18
    assert set(GEOMETRIC) | set(PHOTOMETRIC) == set(FAMILIES) - {"combo", "mirror-crop", "collage", "page"}
    assert FAMILIES[:16] == (
        "crop", "flip", "rotation", "border", "caption", "overlay", "screenshot",
        "perspective", "aspect", "colour", "blur", "noise", "jpeg", "downscale", "combo",
        "mirror-crop",
    )  # fmt: skip  # appended, never inserted: a seed's earlier draws stay what they were
    assert not set(GEOMETRIC) & set(PHOTOMETRIC)
    for family in FAMILIES:
        assert callable(getattr(attacks, family.replace("-", "_")))


@pytest.mark.parametrize("family", LOCAL)
def test_contract(family: str, img: np.ndarray) -> None:
    before = img.copy()
    for seed in range(8):
        a = run(family, img, seed)
        assert a.family == family
        assert a.rgb.dtype == np.uint8 and a.rgb.ndim == 3 and a.rgb.shape[2] == 3
        assert a.rgb.flags.c_contiguous
        assert min(a.rgb.shape[:2]) >= attacks.MIN_SIDE
        assert a.rgb.shape != img.shape or not np.array_equal(a.rgb, img), a.name
        assert not np.shares_memory(a.rgb, img)
        if family != "combo":
            assert a.name.split()[0] == family
    np.testing.assert_array_equal(img, before)  # the input is never written


@pytest.mark.parametrize("family", LOCAL)
def test_public_function_is_what_attack_dispatches_to(family: str, img: np.ndarray) -> None:
    direct = getattr(attacks, family.replace("-", "_"))(img, np.random.default_rng(5))
    via = run(family, img, 5)
    assert direct.name == via.name
    np.testing.assert_array_equal(direct.rgb, via.rgb)


@pytest.mark.parametrize("family", LOCAL)
def test_deterministic(family: str, img: np.ndarray) -> None:
    a, b = run(family, img, 42), run(family, img, 42)
    assert a.name == b.name
    np.testing.assert_array_equal(a.rgb, b.rgb)
    outs = [run(family, img, s) for s in range(10)]
    if family == "flip":  # two outcomes only
        assert {o.name for o in [*outs, *(run(family, img, s) for s in range(10, 30))]} == {
            "flip horizontal", "flip vertical",
        }  # fmt: skip
        return
    assert len({o.name for o in outs}) >= 8
    distinct = {o.rgb.tobytes() for o in outs}
    assert len(distinct) >= 8


@pytest.mark.parametrize("family", LOCAL)
def test_fifty_seeds_on_every_shape(family: str) -> None:
    for h, w in SIZES:
        image = texture(h, w, seed=h + w)
        for seed in range(50):
            a = run(family, image, seed)
            assert a.rgb.dtype == np.uint8 and a.rgb.ndim == 3 and a.rgb.shape[2] == 3, a.name
            assert min(a.rgb.shape[:2]) >= attacks.MIN_SIDE, (h, w, a.name, a.rgb.shape)
            assert a.rgb.flags.c_contiguous


def test_unknown_family(img: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown attack family 'sharpen'"):
        attack(img, "sharpen", np.random.default_rng(0))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((64, 64), np.uint8), np.zeros((64, 64, 4), np.uint8), np.zeros((64, 64, 3), np.float32),
     np.zeros((20, 64, 3), np.uint8)],
    ids=["grey", "rgba", "float", "tiny"],
)  # fmt: skip
def test_bad_input(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        attack(bad, "crop", np.random.default_rng(0))


def test_attacked_is_frozen(img: np.ndarray) -> None:
    a = run("flip", img, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.name = "other"  # type: ignore[misc]


# ---------------------------------------------------------------------------- geometric


def test_crop_is_a_sub_array(img: np.ndarray) -> None:
    h, w = img.shape[:2]
    where = set()
    for seed in range(40):
        a = run("crop", img, seed)
        x0, y0, x1, y1 = ints(a.name, "box")
        assert 0.6 - 1 / h <= (y1 - y0) / h <= 0.9 + 1 / h and 0.6 - 1 / w <= (x1 - x0) / w <= 0.9 + 1 / w
        np.testing.assert_array_equal(a.rgb, img[y0:y1, x0:x1])
        where.add(a.name.split()[2])
        if "off-centre" not in a.name:
            assert abs((x0 + x1) - w) <= 1 and abs((y0 + y1) - h) <= 1
    assert where == {"centre", "off-centre"}


def test_mirror_crop_is_a_mirrored_sub_array_keeping_a_third_or_more(img: np.ndarray) -> None:
    for seed in range(20):
        a = run("mirror-crop", img, seed)
        x0, y0, x1, y1 = map(int, re.search(r"box=\((\d+), (\d+), (\d+), (\d+)\)", a.name).groups())
        np.testing.assert_array_equal(a.rgb, np.fliplr(img[y0:y1, x0:x1]))
        assert 0.35 <= (x1 - x0) * (y1 - y0) / (img.shape[0] * img.shape[1]) <= 0.73


def test_flip_mirrors(img: np.ndarray) -> None:
    for seed in range(20):
        a = run("flip", img, seed)
        expected = np.fliplr(img) if a.name == "flip horizontal" else np.flipud(img)
        np.testing.assert_array_equal(a.rgb, expected)


def test_quarter_turn_is_rot90(img: np.ndarray) -> None:
    ks = set()
    for a in find("rotation", img, r"quarter"):
        (k,) = ints(a.name, "k")
        np.testing.assert_array_equal(a.rgb, np.rot90(img, k))
        ks.add(k)
    assert ks == {1, 2, 3}


def test_small_rotation_crops_or_expands(img: np.ndarray) -> None:
    h, w = img.shape[:2]
    for a in find("rotation", img, r"cropped"):
        assert a.rgb.shape[0] < h and a.rgb.shape[1] < w
        # the largest inner rectangle of a <= 15 degree turn keeps most of the picture
        assert a.rgb.shape[0] * a.rgb.shape[1] > 0.4 * h * w
    for a in find("rotation", img, r"expanded"):
        assert a.rgb.shape[0] > h and a.rgb.shape[1] > w


def test_border_keeps_the_input_exactly(img: np.ndarray) -> None:
    h, w = img.shape[:2]
    modes = set()
    for seed in range(60):
        a = run("border", img, seed)
        (t,), (b,), (lf,), (r,) = (ints(a.name, k) for k in "tblr")
        assert a.rgb.shape == (h + t + b, w + lf + r, 3)
        assert a.rgb.shape[0] * a.rgb.shape[1] > h * w
        np.testing.assert_array_equal(a.rgb[t : t + h, lf : lf + w], img)
        mode = a.name.split()[1]
        modes.add(mode)
        if mode == "uniform":
            assert t == b == lf == r >= round(0.05 * min(h, w))
            fill = a.rgb[0, 0]
            assert (a.rgb[:t] == fill).all() and (a.rgb[:, :lf] == fill).all()
        elif mode == "letterbox":
            assert (t == b > 0 and lf == r == 0) or (lf == r > 0 and t == b == 0)
    assert modes == {"uniform", "letterbox", "asymmetric"}


def test_caption_band_adds_rows_of_band_colour(img: np.ndarray) -> None:
    h, w = img.shape[:2]
    for a in find("caption", img, r"band"):
        (top,), (bottom,) = ints(a.name, "top"), ints(a.name, "bottom")
        assert top + bottom > 0
        assert a.rgb.shape == (h + top + bottom, w, 3)
        np.testing.assert_array_equal(a.rgb[top : top + h], img)
        colour = 255 if "white band" in a.name else 0
        for band in (a.rgb[:top], a.rgb[top + h :]):
            if band.size:
                assert 0.12 * h - 1 <= band.shape[0] <= 0.25 * h + 1
                assert (band == colour).all(axis=2).mean() > 0.5
                assert (band != colour).any()  # there is text in it


def test_caption_overlaid_keeps_size(img: np.ndarray) -> None:
    for a in find("caption", img, r"overlaid"):
        assert a.rgb.shape == img.shape
        changed = (a.rgb != img).any(axis=2)
        assert 0 < changed.mean() < 0.4
        # the text sits along the top and/or bottom edge, not in the middle third
        assert not changed[img.shape[0] // 3 : 2 * img.shape[0] // 3].any()


def test_screenshot_contains_the_resized_image() -> None:
    image = texture(240, 320, seed=2)
    h, w = image.shape[:2]
    kinds = set()
    for seed in range(30):
        a = run("screenshot", image, seed)
        m = re.search(r"(\d+)x(\d+) image (\d+)x(\d+) at \((\d+), (\d+)\)", a.name)
        assert m, a.name
        cw, ch, pw, ph, x, y = map(int, m.groups())
        assert a.rgb.shape == (ch, cw, 3)
        assert pw < cw and ph < ch and abs(pw / ph - w / h) < 0.05
        assert y >= 0.06 * ch - 1  # below the top bar
        coverage = pw * ph / (cw * ch)
        assert coverage <= 0.76
        if "desktop" in a.name:
            assert coverage >= 0.34
            kinds.add("desktop")
        else:
            kinds.add("phone")
        region = a.rgb[y : y + ph, x : x + pw].astype(np.float64).ravel()
        ref = cv2.resize(image, (pw, ph), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
        assert np.corrcoef(region, ref)[0, 1] > 0.99
        # a shifted window is not the picture: the match above is a real localisation
        off = a.rgb[y : y + ph, x + pw // 3 : x + pw // 3 + pw]
        if off.shape[1] == pw:
            assert np.corrcoef(off.astype(np.float64).ravel(), ref)[0, 1] < 0.9
    assert kinds == {"desktop", "phone"}


def test_perspective_keeps_size_and_moves_content(img: np.ndarray) -> None:
    for seed in range(10):
        a = run("perspective", img, seed)
        assert a.rgb.shape == img.shape
        assert np.abs(a.rgb.astype(int) - img).mean() > 2


def test_aspect_scales_one_axis(img: np.ndarray) -> None:
    h, w = img.shape[:2]
    factors = []
    for seed in range(30):
        a = run("aspect", img, seed)
        f = float(a.name.split("x")[-1])
        factors.append(f)
        assert 0.6 <= f <= 0.85 or 1.2 <= f <= 1.6
        nh, nw = a.rgb.shape[:2]
        if "width" in a.name:
            assert nh == h and abs(nw - w * f) <= 1
        else:
            assert nw == w and abs(nh - h * f) <= 1
        assert abs((nw / nh) / (w / h) - (f if "width" in a.name else 1 / f)) < 0.01
    assert min(factors) < 0.85 and max(factors) > 1.2


# ---------------------------------------------------------------------------- photometric


def _jpeg_size(rgb: np.ndarray, quality: int) -> int:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.tell()


def test_jpeg_loses_detail_but_stays_close(img: np.ndarray) -> None:
    doubles = 0
    for seed in range(15):
        a = run("jpeg", img, seed)
        qs = [int(q) for q in re.findall(r"q=(\d+)", a.name)]
        assert 1 <= len(qs) <= 2 and all(5 <= q <= 20 for q in qs) and len(set(qs)) == len(qs)
        doubles += len(qs) == 2
        assert a.rgb.shape == img.shape
        assert _jpeg_size(a.rgb, 95) < _jpeg_size(img, 95)
        assert np.abs(a.rgb.astype(int) - img).mean() < 30
    assert doubles > 0


def test_downscale(img: np.ndarray) -> None:
    h, w = img.shape[:2]
    for a in find("downscale", img, r"and back"):
        assert a.rgb.shape == img.shape
        assert sharpness(a.rgb) < 0.7 * sharpness(img)
    for a in find("downscale", img, r"\d$"):
        nh, nw = a.rgb.shape[:2]
        assert nh < h and nw < w
        assert max(nh, nw) <= 0.35 * max(h, w) + 1 or min(nh, nw) == attacks.MIN_SIDE
        assert min(nh, nw) >= attacks.MIN_SIDE


def test_downscale_floor_on_small_input() -> None:
    small = texture(64, 80)
    for seed in range(20):
        a = run("downscale", small, seed)
        assert min(a.rgb.shape[:2]) >= 32


def test_noise_changes_spread_not_mean(img: np.ndarray) -> None:
    modes = set()
    for seed in range(30):
        a = run("noise", img, seed)
        modes.add(a.name.split()[1])
        diff = a.rgb.astype(np.float64) - img
        assert abs(diff.mean()) < 6, a.name
        assert diff.std() > 3, a.name
        assert abs(a.rgb.std() - img.std()) > 0.5, a.name
    assert modes == {"gaussian", "salt-and-pepper", "speckle"}


def test_blur_removes_detail(img: np.ndarray) -> None:
    modes = set()
    for seed in range(20):
        a = run("blur", img, seed)
        modes.add(a.name.split()[1])
        assert a.rgb.shape == img.shape
        assert sharpness(a.rgb) < 0.8 * sharpness(img), a.name
    assert modes == {"gaussian", "box", "motion"}


def test_colour_grayscale_is_grey(img: np.ndarray) -> None:
    for a in find("colour", img, r"grayscale"):
        assert (a.rgb[..., 0] == a.rgb[..., 1]).all() and (a.rgb[..., 1] == a.rgb[..., 2]).all()


def test_colour_ops_and_counts(img: np.ndarray) -> None:
    seen = set()
    for seed in range(200):
        a = run("colour", img, seed)
        parts = a.name.removeprefix("colour ").split(", ")
        assert 1 <= len(parts) <= 2
        seen |= {p.split()[0] for p in parts}
        assert a.rgb.shape == img.shape and np.abs(a.rgb.astype(int) - img).mean() > 1, a.name
    assert {"brightness", "contrast", "saturation", "hue", "gamma", "grayscale", "sepia"} <= seen
    assert seen & {"invert", "channels"}


def test_overlay_covers_a_minority(img: np.ndarray) -> None:
    for seed in range(30):
        a = run("overlay", img, seed)
        assert a.rgb.shape == img.shape
        changed = (a.rgb != img).any(axis=2).mean()
        assert 0 < changed < 0.3, a.name
    assert find("overlay", img, r"face") and find("overlay", img, r"star") and find("overlay", img, r"text")


def test_combo_parts(img: np.ndarray) -> None:
    counts = set()
    for seed in range(40):
        a = run("combo", img, seed)
        parts = a.name.split(" + ")
        counts.add(len(parts))
        assert 2 <= len(parts) <= 3
        fams = [p.split()[0] for p in parts]
        assert len(set(fams)) == len(fams)
        assert set(fams) <= set(FAMILIES) - {"combo"}
        assert set(fams) & set(GEOMETRIC) and set(fams) & set(PHOTOMETRIC), a.name
        if "downscale" in fams:
            assert fams[-1] == "downscale"
    assert counts == {2, 3}


# ---------------------------------------------------------------------------- among others


def _box(name: str) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = ints(name, "box")
    return x0, y0, x1, y1


def _shown_in(region: np.ndarray, image: np.ndarray) -> float:
    """How well ``region`` (the image resized to cover it and cut) is found in ``image``:
    the best normalised correlation of the region shrunk back to the image's scale."""
    h, w = image.shape[:2]
    ch, cw = region.shape[:2]
    k = max(cw / w, ch / h)
    small = cv2.resize(
        region, (min(w, max(1, round(cw / k))), min(h, max(1, round(ch / k)))), interpolation=cv2.INTER_AREA
    )
    found = cv2.matchTemplate(
        cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), cv2.TM_CCOEFF_NORMED
    )
    return float(found.max())


def test_collage_holds_the_copy_in_its_cell_among_the_others(img: np.ndarray) -> None:
    others = [texture(200, 260, seed=s) for s in (7, 8, 9)]
    layouts, gutters = set(), set()
    for seed in range(40):
        a = attack(img, "collage", np.random.default_rng(seed), others)
        layouts.add(a.name.split()[1])
        gutters.add(int(a.name.split()[4]) == 0)
        x0, y0, x1, y1 = _box(a.name)
        cell = a.rgb[y0:y1, x0:x1]
        assert _shown_in(cell, img) > 0.97, a.name
        # the copy keeps most of its picture: cells are shaped like it within 15 %
        h, w = img.shape[:2]
        assert 0.8 <= ((x1 - x0) / (y1 - y0)) / (w / h) <= 1.25, a.name
        assert (x1 - x0) * (y1 - y0) < 0.95 * a.rgb.shape[0] * a.rgb.shape[1]
    assert layouts == {"1x2", "2x1", "2x2", "2x3", "3x2", "3x3", "big+2", "big+3"}
    assert gutters == {True, False}


def test_collage_fills_other_cells_with_the_others_or_drawn_pictures(img: np.ndarray) -> None:
    magenta = np.zeros((200, 260, 3), np.uint8)
    magenta[:] = (255, 0, 255)
    for seed in range(5):
        a = attack(img, "collage", np.random.default_rng(seed), [magenta])
        x0, y0, x1, y1 = _box(a.name)
        is_magenta = np.all(a.rgb == (255, 0, 255), axis=2)
        assert not is_magenta[y0:y1, x0:x1].any()  # the copy's cell holds the copy
        assert is_magenta.mean() >= 0.1  # the other cells hold the others
        drawn = attack(img, "collage", np.random.default_rng(seed))
        assert drawn.name.split(" cell ")[0] == a.name.split(" cell ")[0]  # layout drawn first
        assert not np.all(drawn.rgb == (255, 0, 255), axis=2).any()
