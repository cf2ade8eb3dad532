"""The page attack: a copy rendered small inside a real web page by headless Chromium."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from detector.tasks import pages
from detector.tasks.attacks import attack

from .browser import needs_chromium
from .test_attacks import ints, texture


@pytest.fixture(scope="module")
def rendered() -> list[tuple[np.ndarray, object]]:
    image = texture(240, 320, seed=4)
    others = [texture(180, 240, seed=s) for s in (21, 22, 23)]
    return [(image, attack(image, "page", np.random.default_rng(seed), others)) for seed in range(6)]


@needs_chromium
def test_the_copy_is_where_the_name_says_at_the_width_drawn(rendered: list) -> None:
    layouts = set()
    for image, a in rendered:
        assert a.family == "page" and a.rgb.dtype == np.uint8 and a.rgb.flags.c_contiguous
        m = re.match(r"page (\w+) (\d+)x(\d+) image (\d+)x(\d+)", a.name)
        assert m, a.name
        layouts.add(m.group(1))
        page_w, page_h = int(m.group(2)), int(m.group(3))
        assert a.rgb.shape == (page_h, page_w, 3) and 1200 <= page_w <= 1440
        x0, y0, x1, y1 = ints(a.name, "box")
        assert 0.095 <= (x1 - x0) / page_w <= 0.405, a.name
        shown = cv2.resize(image, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA).astype(np.float64)
        region = a.rgb[y0:y1, x0:x1].astype(np.float64)
        assert np.corrcoef(region.ravel(), shown.ravel())[0, 1] > 0.98, a.name
    assert len(layouts) >= 3


@needs_chromium
def test_a_page_is_drawn_again_the_same_from_its_seed(rendered: list) -> None:
    image, first = rendered[0]
    others = [texture(180, 240, seed=s) for s in (21, 22, 23)]
    again = attack(image, "page", np.random.default_rng(0), others)
    assert again.name == first.name
    assert np.abs(again.rgb.astype(int) - first.rgb.astype(int)).mean() < 1.0


def test_without_a_browser_the_page_attack_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPYSCAN_CHROMIUM", "/nonexistent/chromium")
    assert pages.find_browser() is None
    with pytest.raises(pages.RendererMissing, match="apt-get install chromium"):
        attack(texture(120, 160), "page", np.random.default_rng(0))
