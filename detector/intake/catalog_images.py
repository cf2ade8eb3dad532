"""Catalog images decoded again from their files, for the stages that compare pixels with a
query (stage 2's degraded descriptors, stage 3's keypoints): each file is read through the
same safe loader as every query, once for all of its consumers while it is among the last
few used."""

from __future__ import annotations

import numpy as np

from detector.config import Settings
from detector.errors import ImageError
from detector.intake.loader import load_image
from detector.lru import LRU

_KEEP = 8  # decoded catalog images kept (up to 448 px on a side: about 0.6 MB each)


class CatalogImages:
    """Decoded catalog files by catalog id: ``(h, w, 3)`` uint8 RGB as the loader gives them
    (decoded at ``settings.decode_side``), or None when the file cannot be read any more."""

    def __init__(self, settings: Settings, keep: int = _KEEP) -> None:
        self.settings = settings
        self._decoded: LRU[np.ndarray | None] = LRU(keep)

    def rgb(self, catalog_id: int, path: str) -> np.ndarray | None:
        """The catalog image ``catalog_id`` stored at ``path``, or None if it is unreadable."""
        return self._decoded.get_or(catalog_id, lambda: self._load(path))

    def _load(self, path: str) -> np.ndarray | None:
        try:
            return load_image(path, self.settings).rgb
        except ImageError:
            return None
