"""Insets: pictures shown inside a query (a web page, a collage) are found by cutting its
layout apart, searched as queries of their own, and reported in the query's frame."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

import detector
from detector.config import Settings
from detector.intake.framing import Box
from detector.intake.insets import FINE_SIDE, find_insets, overlap, ruled
from detector.intake.prepare import Inset, Prepared, prepare_bytes
from detector.records import Match
from detector.scan.insets import in_query, merged
from detector.stage1.hashing import Transform

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT / "fixtures" / "catalog"
NAMES = ("astronaut", "chelsea", "coffee", "rocket", "retina", "immunohistochemistry", "hubble_deep_field")


def picture(name: str) -> np.ndarray:
    return np.asarray(Image.open(CATALOG / f"{name}.jpg").convert("RGB"))


def fitted(rgb: np.ndarray, width: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (width, round(width * h / w)), interpolation=cv2.INTER_AREA)


def page_with(rgb: np.ndarray, share: float = 0.2, wrap: bool = False) -> tuple[np.ndarray, Box]:
    """A 1,200 x 900 web page drawn like a news site: a dark masthead, a navigation column of
    links, paragraphs of text, and the picture at ``share`` of the page width, either in a
    column of its own or (``wrap``) with the text flowing beside and under it."""
    page = Image.new("RGB", (1200, 900), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=15)
    draw.rectangle((0, 0, 1199, 59), fill=(30, 40, 60))
    draw.text((24, 18), "The Daily Example", font=font, fill=(255, 255, 255))
    for k in range(14):
        draw.text((24, 90 + 28 * k), f"section {k}", font=font, fill=(40, 90, 200))
    shown = fitted(rgb, round(share * 1200))
    x, y = 260, 110
    text_x = x + shown.shape[1] + 24 if wrap else 260
    text_y = 110 if wrap else y + shown.shape[0] + 24
    words = "a copy shown small in a page is still a copy and the rights holder wants to know "
    for k in range(22):
        line_x = text_x if (not wrap or 110 + 22 * k < y + shown.shape[0] + 16) else 260
        draw.text((line_x, text_y + 22 * k), (words * 2)[: 60 + k % 9], font=font, fill=(20, 20, 20))
    out = np.array(page)
    out[y : y + shown.shape[0], x : x + shown.shape[1]] = shown
    return out, Box(x, y, x + shown.shape[1], y + shown.shape[0])


def collage_of(
    names: tuple[str, ...], cols: int, gutter: int, colour: tuple[int, int, int] = (255, 255, 255)
) -> tuple[np.ndarray, list[Box]]:
    """The pictures in a grid of ``cols`` columns, cells 300 x 220, ``gutter`` pixels apart."""
    rows = -(-len(names) // cols)
    cw, ch = 300, 220
    out = np.empty((rows * ch + (rows + 1) * gutter, cols * cw + (cols + 1) * gutter, 3), np.uint8)
    out[:] = colour
    boxes = []
    for k, name in enumerate(names):
        r, c = divmod(k, cols)
        x, y = gutter + c * (cw + gutter), gutter + r * (ch + gutter)
        out[y : y + ch, x : x + cw] = cv2.resize(picture(name), (cw, ch), interpolation=cv2.INTER_AREA)
        boxes.append(Box(x, y, x + cw, y + ch))
    return out, boxes


def feed_with(rgb: np.ndarray, share: float = 0.3, gap: int = 6) -> tuple[np.ndarray, Box]:
    """A 1,300 x 1,700 social feed: a white top bar on a grey page, a column of links on the
    grey, one white card holding a poster's line, the picture (``share`` of the page width)
    with a line of words 6 px above and under it, and a column of trends. On a copy 512 px
    long its gutters are a pixel or less: the layout is one block in flat margins there."""
    width, height = 1300, 1700
    page = Image.new("RGB", (width, height), (240, 242, 245))
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=14)
    draw.rectangle((0, 0, width - 1, 44), fill=(255, 255, 255))
    draw.text((12, 12), "feed", font=font, fill=(30, 100, 220))
    draw.rounded_rectangle((70, 10, 260, 34), 10, fill=(225, 228, 232))
    for k in range(10):
        draw.text((12, 60 + 24 * k), f"link {k} here", font=font, fill=(40, 40, 40))
    shown = fitted(rgb, round(share * width))
    x0, y0 = 290, 60
    x1, y1 = x0 + shown.shape[1] + 160, y0 + 60 + shown.shape[0] + 80
    draw.rounded_rectangle((x0, y0, x1, y1), 8, fill=(255, 255, 255))
    draw.ellipse((x0 + 10, y0 + 10, x0 + 40, y0 + 40), fill=(200, 60, 200))
    draw.text((x0 + 50, y0 + 16), "somebody 11 min", font=font, fill=(20, 20, 20))
    x, y = x0 + 10, y0 + 66
    draw.text((x, y - 16 - gap), "a line of words above the picture", font=font, fill=(20, 20, 20))
    draw.text((x, y + shown.shape[0] + gap), "a line of words under it", font=font, fill=(20, 20, 20))
    for k in range(6):
        draw.text((x1 + 30, 60 + 30 * k), f"trend {k}", font=font, fill=(40, 40, 40))
    out = np.array(page)
    out[y : y + shown.shape[0], x : x + shown.shape[1]] = shown
    return out, Box(x, y, x + shown.shape[1], y + shown.shape[0])


def best_overlap(found: list[Box], truth: Box) -> float:
    return max((overlap(b, truth) for b in found), default=0.0)


def jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# ---------------------------------------------------------------------------- finding them


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket"])
def test_a_picture_in_a_page_is_found(name: str) -> None:
    page, truth = page_with(picture(name), share=0.2)
    assert best_overlap(find_insets(page, 8), truth) >= 0.8


def test_a_picture_the_text_flows_around_is_found() -> None:
    page, truth = page_with(picture("coffee"), share=0.25, wrap=True)
    assert best_overlap(find_insets(page, 8), truth) >= 0.8


@pytest.mark.parametrize("gutter,colour", [(8, (255, 255, 255)), (12, (0, 0, 0)), (4, (90, 200, 170))])
def test_every_cell_of_a_collage_with_gutters_is_found(gutter: int, colour: tuple[int, int, int]) -> None:
    image, cells = collage_of(
        ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field"), 3, gutter, colour
    )
    found = find_insets(image, 8)
    assert [round(best_overlap(found, c), 2) >= 0.8 for c in cells] == [True] * len(cells)


def test_a_cell_with_a_straight_line_of_its_own_is_found_whole() -> None:
    # a picture crossed by a straight edge of its own (a horizon, a façade's floor, here two
    # photos stacked) in a column of a collage with gutters: the gutters cut the column into
    # cells first, so the cell is a block of its own before its seam cuts it further
    image, cells = collage_of(("astronaut", "chelsea", "coffee"), 1, 10)
    c = cells[0]
    top, bottom = cv2.resize(picture("rocket"), (300, 110)), cv2.resize(picture("retina"), (300, 110))
    image[c.top : c.bottom, c.left : c.right] = np.vstack([top, bottom])
    found = find_insets(image, 8)
    assert [round(best_overlap(found, c), 2) >= 0.8 for c in cells] == [True] * 3


def test_pictures_pasted_edge_to_edge_are_cut_at_their_seam() -> None:
    image, cells = collage_of(("astronaut", "coffee"), 2, 0)
    found = find_insets(image, 8)
    assert all(best_overlap(found, c) >= 0.8 for c in cells)


def test_pictures_pasted_edge_to_edge_beside_busy_textures_are_cut_at_their_seams() -> None:
    # a 2 x 2 grid, edge to edge, two cells a busy texture (gravel, foliage, noise): the
    # texture steps on every line, so only the pictures' calm side tells the seams
    image, cells = collage_of(("rocket", "astronaut", "coffee", "chelsea"), 2, 0)
    rng = np.random.default_rng(3)
    for c in (cells[0], cells[3]):
        image[c.top : c.bottom, c.left : c.right] = rng.integers(
            0, 256, (c.height, c.width, 3), dtype=np.uint8
        )
    found = find_insets(image, 8)
    assert [best_overlap(found, c) >= 0.8 for c in cells[1:3]] == [True, True]


@pytest.mark.parametrize("name", ["chelsea", "rocket"])
def test_a_page_one_block_on_the_coarse_copy_is_cut_again_finer(name: str) -> None:
    page, truth = feed_with(picture(name))
    half = np.ascontiguousarray(page[::2, ::2])  # as a reduced decode gives it
    assert find_insets(half, 24, min_side=32) == []  # one block in flat margins at 512 px
    found = find_insets(half, 24, min_side=32, framed_side=FINE_SIDE)
    doubled = [Box(2 * b.left, 2 * b.top, 2 * b.right, 2 * b.bottom) for b in found]
    assert best_overlap(doubled, truth) >= 0.85


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket"])
def test_a_picture_in_a_feed_card_is_an_inset_of_the_prepared_query(name: str) -> None:
    # the file is decoded reduced first (650 px wide); its layout decides the whole decode
    page, truth = feed_with(picture(name))
    p = prepare_bytes("feed.jpg", jpeg(page), "sha", Settings())
    boxes = [
        Box(round(i.left * 1300), round(i.top * 1700), round(i.right * 1300), round(i.bottom * 1700))
        for i in p.insets
    ]
    assert best_overlap(boxes, truth) >= 0.85


def test_every_picture_of_a_grid_of_twenty_is_an_inset() -> None:
    names = NAMES[:5] * 4
    image, cells = collage_of(names, 5, 10)
    p = prepare_bytes("grid.jpg", jpeg(image), "sha", Settings())
    h, w = image.shape[:2]
    boxes = [
        Box(round(i.left * w), round(i.top * h), round(i.right * w), round(i.bottom * h)) for i in p.insets
    ]
    assert [best_overlap(boxes, c) >= 0.8 for c in cells] == [True] * 20


@pytest.mark.parametrize("name", NAMES)
def test_a_plain_photo_has_no_inset(name: str) -> None:
    assert find_insets(picture(name), 8) == []


def test_insets_are_bounded_inside_the_image_and_distinct() -> None:
    image, _ = collage_of(("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field"), 3, 8)
    h, w = image.shape[:2]
    for limit in (0, 1, 3, 8):
        found = find_insets(image, limit)
        assert len(found) <= limit
        for b in found:
            assert 0 <= b.left < b.right <= w and 0 <= b.top < b.bottom <= h
    found = find_insets(image, 8)
    assert all(overlap(a, b) < 0.7 for k, a in enumerate(found) for b in found[k + 1 :])


def test_a_query_is_prepared_with_its_insets_from_the_whole_decode() -> None:
    page, truth = page_with(picture("astronaut"), share=0.15)
    big = cv2.resize(page, (2400, 1800), interpolation=cv2.INTER_CUBIC)  # decoded at 1/2 or less
    settings = Settings()
    p = prepare_bytes("page.jpg", jpeg(big), "sha", settings)
    assert p.ok and p.insets
    best = max(
        p.insets,
        key=lambda i: overlap(
            Box(round(i.left * 1200), round(i.top * 900), round(i.right * 1200), round(i.bottom * 900)), truth
        ),
    )
    # cut from the whole 2,400 px decode, not from the reduced one (about 360 px wide, not 180)
    assert best.query.width >= 300
    assert all(str(pr.transform).endswith("+inset") for pr in best.query.probes)
    assert not best.query.insets
    assert not prepare_bytes("page.jpg", jpeg(big), "sha", settings.replace(insets=0)).insets
    catalog_side = prepare_bytes("page.jpg", jpeg(big), "sha", settings, catalog=True)
    assert not catalog_side.insets  # a catalog image is what is searched for, not a query


# ---------------------------------------------------------------------------- their matches


def test_transform_names_an_inset_and_reads_back() -> None:
    for t in (Transform("identity", inset=True), Transform("hflip", True, True), Transform("rot90")):
        assert Transform.parse(str(t)) == t
    assert str(Transform("hflip", True, True)) == "hflip+trim+inset"
    with pytest.raises(ValueError):
        Transform.parse("identity+inset+trim")


def _match(cid: int, score: float, **kw: object) -> Match:
    return Match(
        catalog_id=cid,
        catalog_path=f"{cid}.jpg",
        owner=None,
        hamming=3,
        cosine=0.9,
        score=score,
        verdict="copy",
        **kw,
    )  # type: ignore[arg-type]


def test_an_inset_match_is_put_in_the_query_frame() -> None:
    inset = Inset(0.5, 0.25, 0.75, 0.75, Prepared("q"))
    m = _match(
        1, 0.9, transform="identity+inset", query_region=((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)),
        query_coverage=0.8, disagreement=(((0.5, 0.5), (1.0, 0.5), (1.0, 1.0)),),
    )  # fmt: skip
    out = in_query(m, inset)
    assert out.query_region == ((0.5, 0.25), (0.75, 0.25), (0.75, 0.75), (0.5, 0.75))
    assert out.query_coverage == pytest.approx(0.8 * 0.125)
    assert out.disagreement == (((0.625, 0.5), (0.75, 0.5), (0.75, 0.75)),)
    # stage 3 drew no region: the inset itself is what was compared
    assert in_query(_match(1, 0.5), inset).query_region == (
        (0.5, 0.25),
        (0.75, 0.25),
        (0.75, 0.75),
        (0.5, 0.75),
    )


def test_a_catalog_image_found_twice_keeps_its_better_match() -> None:
    own = (_match(1, 0.6), _match(2, 0.95))
    found = (_match(1, 0.9, transform="identity+inset"), _match(3, 0.7, transform="identity+inset"))
    out = merged(own, found, Settings().replace(top_k=5))
    assert [(m.catalog_id, m.score, m.transform) for m in out] == [
        (2, 0.95, "identity"), (1, 0.9, "identity+inset"), (3, 0.7, "identity+inset"),
    ]  # fmt: skip
    assert len(merged(own, found, Settings().replace(top_k=2))) == 2
    tie = merged((_match(1, 0.9),), (_match(1, 0.9, transform="identity+inset"),), Settings())
    assert tie[0].transform == "identity"


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("insets") / "copyscan.db"
    with detector.open_catalog(db, create=True) as c:
        c.add([CATALOG])
    return db


@pytest.mark.parametrize("mode", ["fast", "thorough"])
@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_a_catalog_picture_shown_small_in_a_page_is_a_copy(catalog: Path, mode: str, name: str) -> None:
    page, truth = page_with(picture(name), share=0.18)
    data = jpeg(page)
    with detector.open_catalog(catalog, settings={"insets": 0}) as c:
        before = c.check_bytes(data, "page.jpg", mode=mode)
    assert not any(m.catalog_path.endswith(f"{name}.jpg") and m.verdict != "none" for m in before.matches)
    with detector.open_catalog(catalog) as c:
        after = c.check_bytes(data, "page.jpg", mode=mode)
    top = after.matches[0]
    assert top.catalog_path.endswith(f"{name}.jpg") and top.verdict == "copy", after.matches
    assert top.transform.endswith("+inset")
    xs = [x * 1200 for x, _ in top.query_region]
    ys = [y * 900 for _, y in top.query_region]
    # the region is where the picture is on the page, within a few pixels
    assert min(xs) >= truth.left - 8 and max(xs) <= truth.right + 8
    assert min(ys) >= truth.top - 8 and max(ys) <= truth.bottom + 8
    assert (max(xs) - min(xs)) * (max(ys) - min(ys)) >= 0.4 * truth.width * truth.height


def test_every_catalog_picture_in_a_collage_is_reported(catalog: Path) -> None:
    names = ("astronaut", "chelsea", "coffee", "rocket")
    image, _ = collage_of(names, 2, 10)
    with detector.open_catalog(catalog, settings={"top_k": 8}) as c:
        result = c.check_bytes(jpeg(image), "collage.jpg", mode="thorough")
    copies = {Path(m.catalog_path).stem for m in result.matches if m.verdict == "copy"}
    assert copies == set(names)


def test_a_page_of_pictures_outside_the_catalog_flags_nothing(catalog: Path) -> None:
    rng = np.random.default_rng(3)
    noise = cv2.resize(
        rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (320, 240), interpolation=cv2.INTER_CUBIC
    )
    page, _ = page_with(noise, share=0.3)
    with detector.open_catalog(catalog) as c:
        for mode in ("fast", "thorough"):
            assert not c.check_bytes(jpeg(page), "page.jpg", mode=mode).flagged


@pytest.mark.parametrize("names", [("astronaut", "coffee"), ("retina", "chelsea")])
def test_the_collage_cell_the_content_box_picked_is_an_inset_too(names: tuple[str, str]) -> None:
    # the content box of two pictures side by side is one of them (under half the query):
    # searched as the query's box only, it was compared inside the whole collage's grey
    image, cells = collage_of(names, 2, 12)
    image = cv2.resize(image, (image.shape[1] * 2, image.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
    cells = [Box(2 * c.left, 2 * c.top, 2 * c.right, 2 * c.bottom) for c in cells]
    p = prepare_bytes("collage.jpg", jpeg(image), "sha", Settings())
    h, w = image.shape[:2]
    boxes = [
        Box(round(i.left * w), round(i.top * h), round(i.right * w), round(i.bottom * h)) for i in p.insets
    ]
    assert [best_overlap(boxes, c) >= 0.9 for c in cells] == [True, True]


def test_a_gutter_a_pixel_wide_rules_the_image_and_a_photo_does_not() -> None:
    # what a reduced decode shows of a collage with thin gutters: a line of one colour between
    # busy ones, which triggers the whole decode; photos, bordered or not, have none
    image, _ = collage_of(("astronaut", "chelsea", "coffee", "rocket"), 2, 2)
    half = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    assert ruled(half)
    assert ruled(np.ascontiguousarray(half.transpose(1, 0, 2)))  # a gutter across, as well
    # a thin gutter beside a smooth picture (a sky, a snowfield) rules it too: the gutter
    # line is of one colour exactly, its neighbours are not
    sky = np.repeat(np.linspace(90, 170, 220, dtype=np.float32)[:, None, None], 300, axis=1)
    smooth = np.repeat(sky, 3, axis=2).astype(np.uint8)
    pair = np.full((220, 602, 3), 255, np.uint8)
    pair[:, :300] = smooth
    pair[:, 302:] = cv2.resize(picture("astronaut"), (300, 220), interpolation=cv2.INTER_AREA)
    assert ruled(np.ascontiguousarray(pair[:, ::2]))
    for name in NAMES:
        photo = picture(name)
        assert not ruled(photo)
        bordered = cv2.copyMakeBorder(photo, 20, 20, 20, 20, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        assert not ruled(bordered)
