"""Content boxes: flat borders, caption bands and screenshot frames are cut off; pictures
without flat margins are left whole."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw, ImageFont

from detector.intake.framing import Box, content_box
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
