"""The scan state: a fingerprint of everything a scan's results depend on besides the image,
so that stored results are reused only where a new scan would give the same ones."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from detector import __version__
from detector.config import RUNTIME, Settings

# The packages and modules whose code decides a scan's results. Their source is part of the
# fingerprint, so an engine change (a constant in a stage, say) is never mixed with results
# stored by the engine before it, even within one version number.
_ENGINE = ("intake", "stage1", "stage2", "stage3", "scan", "scoring.py", "config.py", "records.py")


@cache
def engine_revision() -> str:
    """A digest of the engine's source files (16 hex digits)."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for part in _ENGINE:
        path = root / part
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            digest.update(f.relative_to(root).as_posix().encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def scan_state(
    settings: Settings,
    mode: str,
    generation: int,
    hidden: Sequence[int],
    hasher: str,
    embedder: str,
) -> str:
    """A fingerprint of the catalog's generation, the settings (those of :data:`RUNTIME`
    aside), the mode, the hidden catalog ids, the hasher, the embedder, the copyscan version
    and :func:`engine_revision`. Equal fingerprints give equal results."""
    values = dataclasses.asdict(settings)
    for name in RUNTIME:
        values.pop(name)
    blob = json.dumps(
        [values, mode, generation, list(hidden), hasher, embedder, __version__, engine_revision()],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
