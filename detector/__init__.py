"""copyscan's engine: perceptual-hash candidates, CNN rerank, geometric verification,
verdicts, storage, reports.

The public API, from here (importing this package loads no model and does not import torch;
the names below load on first use):

- :func:`open_catalog` -> :class:`Catalog`: add images, scan paths (a recorded run), check
  one image or its bytes, read runs and reports;
- the records every call returns: :class:`ScanResult`, :class:`Match`, :class:`RunInfo`,
  :class:`Report`, :class:`ReportRow`, :class:`AddResult`;
- :class:`Settings` (every tunable value, with its range) and the modes :data:`FAST`,
  :data:`THOROUGH`;
- :class:`CopyscanError`, the base of every error raised on purpose.

The pipeline's folders: ``intake/`` (sources, the safe loader, content boxes, prepare,
workers), ``stage1/`` (hashing, multi-index hashing, the index), ``stage2/`` (the network,
descriptors), ``stage3/`` (keypoints, verification), ``scoring``, ``scan/`` (the case
record, the chain, the scanner), ``storage/``, ``runs``, ``outputs/``, ``server/``,
``distributed`` and ``tasks/`` (catalog add, rehash, dedupe, evaluate, attacks).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "open_catalog": "detector.api",
    "Catalog": "detector.api",
    "ScanResult": "detector.records",
    "Match": "detector.records",
    "RunInfo": "detector.records",
    "Report": "detector.outputs.report",
    "ReportRow": "detector.outputs.report",
    "AddResult": "detector.tasks.cataloging",
    "Settings": "detector.config",
    "FAST": "detector.config",
    "THOROUGH": "detector.config",
    "CopyscanError": "detector.errors",
}
__all__ = [
    "FAST",
    "THOROUGH",
    "AddResult",
    "Catalog",
    "CopyscanError",
    "Match",
    "Report",
    "ReportRow",
    "RunInfo",
    "ScanResult",
    "Settings",
    "__version__",
    "open_catalog",
]

if TYPE_CHECKING:
    from detector.api import Catalog, open_catalog
    from detector.config import FAST, THOROUGH, Settings
    from detector.errors import CopyscanError
    from detector.outputs.report import Report, ReportRow
    from detector.records import Match, RunInfo, ScanResult
    from detector.tasks.cataloging import AddResult


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
