"""Scan results as a Parquet file (``scan --parquet-out``), for the data tools a crawl's owner
already runs (Spark, DuckDB, pandas). pyarrow is optional: imported only here."""

from __future__ import annotations

import os
from typing import Any

from detector.errors import ReportError
from detector.outputs.records import json_text, match_record
from detector.records import ScanResult


class ParquetResults:
    """Writes scan results to a Parquet file, one row group per batch written: ``query``,
    ``url``, ``page_url``, ``status``, ``error``, ``sha256``, ``best_verdict``,
    ``best_score``, ``matches`` (the JSON Lines ``matches`` list, as JSON text) and ``meta``
    (the query's crawl metadata, as JSON text). Use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ReportError("--parquet-out needs pyarrow: pip install 'copyscan[parquet]'") from e

        self._pa = pa
        self.schema = pa.schema(
            [
                ("query", pa.string()),
                ("url", pa.string()),
                ("page_url", pa.string()),
                ("status", pa.string()),
                ("error", pa.string()),
                ("sha256", pa.string()),
                ("best_verdict", pa.string()),
                ("best_score", pa.float64()),
                ("matches", pa.string()),
                ("meta", pa.string()),
            ]
        )
        self._writer = pq.ParquetWriter(str(path), self.schema)
        self._rows: list[dict[str, Any]] = []

    def write(self, r: ScanResult, flush_every: int = 1024) -> None:
        best = r.matches[0] if r.matches else None
        meta = r.meta
        self._rows.append(
            {
                "query": r.query,
                "url": _text(meta.get("url")),
                "page_url": _text(meta.get("page_url")),
                "status": r.status,
                "error": r.error,
                "sha256": r.sha256,
                "best_verdict": best.verdict if best else None,
                "best_score": best.score if best else None,
                "matches": json_text([match_record(m) for m in r.matches]),
                "meta": json_text(meta) if meta else None,
            }
        )
        if len(self._rows) >= flush_every:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            self._writer.write_table(self._pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows = []

    def close(self) -> None:
        self.flush()
        self._writer.close()

    def __enter__(self) -> ParquetResults:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
