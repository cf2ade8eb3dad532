"""Shared fixtures: generated images, the shipped demo fixtures, one model per test session."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.config import Settings
from detector.stage2.embedding import Models

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def models(settings: Settings) -> Models:
    """One embedder for the whole session (the weights load once)."""
    return Models(settings)


@pytest.fixture(scope="session")
def catalog_dir() -> Path:
    return FIXTURES / "catalog"


@pytest.fixture(scope="session")
def crawl_dir() -> Path:
    return FIXTURES / "crawl"


@pytest.fixture(scope="session")
def crawl_truth() -> dict[str, str | None]:
    """Crawl file name -> the catalog file it copies, None if unrelated, 'error' if bad."""
    return json.loads((FIXTURES / "crawl_truth.json").read_text())


def textured(seed: int, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """A smooth random colour field, (h, w, 3) uint8: distinct for every seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small, "RGB").resize(size, Image.Resampling.BICUBIC))


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """Write a generated image and return its path: make_image(name, seed=..., size=...)."""

    def write(name: str, seed: int = 0, size: tuple[int, int] = (160, 120), quality: int = 90) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(textured(seed, size)).save(path, quality=quality)
        return path

    return write
