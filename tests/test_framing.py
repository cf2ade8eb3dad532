"""Content boxes: flat borders, caption bands and screenshot frames are cut off; pictures
without flat margins are left whole."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw, ImageFont

from detector.intake.framing import Box, content_box, content_shapes
from detector.stage1.hashing import hamming, image_codes

from .conftest import textured

PICTURES = {name: getattr(skimage.data, name)() for name in ("chelsea", "coffee", "rocket")}


def _close(box: Box | None, expected: Box, slack: int = 4) -> bool:
    if box is None:
        return False
    got = (box.left, box.top, box.right, box.bottom)
    want = (expected.left, expected.top, expected.right, expected.bottom)
    return all(abs(a - b) <= slack for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("name", sorted(PICTURES))
def test_a_picture_without_flat_margins_is_not_cut(name):
    assert content_box(PICTURES[name]) is None


@pytest.mark.parametrize("name", sorted(PICTURES))
@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (90, 140, 200)])
def test_uneven_border_is_cut_to_the_picture(name, colour):
    pic = PICTURES[name]
    h, w = pic.shape[:2]
    framed = cv2.copyMakeBorder(pic, 40, 70, 25, 10, cv2.BORDER_CONSTANT, value=colour)
    box = content_box(framed)
    assert _close(box, Box(25, 40, 25 + w, 40 + h))
    assert box is not None
    assert hamming(image_codes(box.cut(framed)).phash, image_codes(pic).phash) <= 6
    assert hamming(image_codes(framed).phash, image_codes(pic).phash) > 12  # why trimming pays


def test_caption_band_with_text_is_cut_off():
    pic = PICTURES["chelsea"]
    h, w = pic.shape[:2]
    band = Image.new("RGB", (w, 70), "white")
    ImageDraw.Draw(band).text(
        (w // 2, 35), "WHEN THE CAT", fill="black", font=ImageFont.load_default(size=48), anchor="mm"
    )
    meme = np.vstack([np.asarray(band), pic])
    assert _close(content_box(meme), Box(0, 70, w, 70 + h))


def test_picture_in_a_screenshot_frame_is_found_despite_text_beside_it():
    pic = PICTURES["coffee"]
    h, w = pic.shape[:2]
    canvas = np.full((h + 200, w + 300, 3), 242, np.uint8)
    canvas[:50] = (50, 52, 60)  # a toolbar
    canvas[12:38, 100:500] = 255  # its address bar
    canvas[90 : 90 + h, 30 : 30 + w] = pic
    frame = Image.fromarray(canvas)
    draw = ImageDraw.Draw(frame)
    font = ImageFont.load_default(size=18)
    for k in range(8):
        draw.text((w + 45, 95 + 30 * k), "lorem ipsum dolor", fill="black", font=font)
    assert _close(content_box(np.asarray(frame)), Box(30, 90, 30 + w, 90 + h))


def test_tiny_or_flat_content_is_not_trusted():
    canvas = np.full((300, 300, 3), 255, np.uint8)
    canvas[140:160, 140:160] = textured(1, (20, 20))  # under the minimum share of the image
    assert content_box(canvas) is None


def _turned(pic: np.ndarray, degrees: float, fill: tuple[int, int, int]) -> np.ndarray:
    """``pic`` turned about its centre, the canvas grown to hold it and its corners filled."""
    h, w = pic.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    cos, sin = abs(turn[0, 0]), abs(turn[0, 1])
    size = (int(h * sin + w * cos), int(h * cos + w * sin))
    turn[0, 2] += size[0] / 2 - w / 2
    turn[1, 2] += size[1] / 2 - h / 2
    return cv2.warpAffine(pic, turn, size, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


@pytest.mark.parametrize("name", sorted(PICTURES))
@pytest.mark.parametrize(("degrees", "fill"), [(9, (255, 255, 255)), (-6, (0, 0, 0)), (14, (160, 30, 90))])
def test_a_picture_turned_on_flat_corners_is_set_upright(name, degrees, fill):
    """A copy turned a few degrees, its corners filled: no box cuts it (the picture reaches
    every edge), and its pHash is far from the original's; the tilt set upright is near."""
    pic = PICTURES[name]
    turned = _turned(pic, degrees, fill)
    box, tilt = content_shapes(turned)
    assert box is None and tilt is not None
    upright = tilt.cut(turned)
    assert abs(upright.shape[1] / upright.shape[0] - pic.shape[1] / pic.shape[0]) < 0.05
    assert hamming(image_codes(upright).phash, image_codes(pic).phash) <= 8
    assert hamming(image_codes(turned).phash, image_codes(pic).phash) > 12  # why it pays


@pytest.mark.parametrize("name", sorted(PICTURES))
def test_an_upright_or_diamond_shaped_picture_has_no_tilt(name):
    pic = PICTURES[name]
    framed = cv2.copyMakeBorder(pic, 40, 70, 25, 10, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    assert content_shapes(framed)[1] is None and content_shapes(pic) == (None, None)
    square = cv2.resize(pic, (300, 300))
    assert content_shapes(_turned(square, 45, (255, 255, 255)))[1] is None  # a shape of its own
    assert content_shapes(_turned(pic, 9, (255, 255, 255)), tilted=False) == (None, None)
