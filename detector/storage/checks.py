"""Checks of ``copyscan serve``: every checked upload with its result, and the moderators'
decisions on the flagged ones."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from detector.errors import NotFound, StoreError
from detector.storage.sql import from_db, to_db, utc_now

if TYPE_CHECKING:
    from detector.storage.store import Store

DECISIONS = ("confirmed", "dismissed")
_CHECK_SELECT = (
    "SELECT id, checked_at, sha256, name, upload_path, status, error, verdict, result,"
    " decision, decided_at, note, metadata FROM checks"
)


@dataclass(frozen=True)
class NewCheck:
    """What :meth:`Checks.record` stores: ``result`` is the JSON record of the check (as
    ``scan`` writes it), ``upload_path`` where the uploaded bytes were kept (if they were),
    ``meta`` what the client said of the upload (``url``, ``page_url``, ``uploader``,
    ``listing_id``)."""

    sha256: str | None
    name: str | None
    upload_path: str | None
    status: str
    error: str | None
    verdict: str
    result: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class CheckRecord(NewCheck):
    """A stored check: what was stored, its id and time, and the moderator's decision (None
    until one is taken)."""

    id: int
    checked_at: str
    decision: str | None
    decided_at: str | None
    note: str | None


class Checks:
    """The checks of one :class:`~detector.storage.store.Store` (``store.checks``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.conn

    def record(self, check: NewCheck) -> int:
        """Store one checked upload with its result; returns its id."""
        with self.store.write():
            cur = self.conn.execute(
                "INSERT INTO checks (checked_at, sha256, name, upload_path, status, error, verdict, result,"
                " metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    utc_now(),
                    check.sha256,
                    to_db(check.name),
                    check.upload_path,
                    check.status,
                    check.error,
                    check.verdict,
                    json.dumps(check.result, ensure_ascii=False),
                    json.dumps(check.meta, ensure_ascii=False) if check.meta else None,
                ),
            )
        if cur.lastrowid is None:
            raise StoreError("could not record the check")
        return int(cur.lastrowid)

    def recent(self, limit: int = 50, flagged_only: bool = True) -> list[CheckRecord]:
        """Recent checks, newest first; with ``flagged_only`` those a copy or a near-duplicate
        was found for."""
        where = "WHERE verdict != 'none'" if flagged_only else ""
        return [
            _check(row)
            for row in self.conn.execute(f"{_CHECK_SELECT} {where} ORDER BY id DESC LIMIT ?", (int(limit),))
        ]

    def get(self, check_id: int) -> CheckRecord:
        """One recorded check; :class:`NotFound` if there is none."""
        row = self.conn.execute(f"{_CHECK_SELECT} WHERE id = ?", (int(check_id),)).fetchone()
        if row is None:
            raise NotFound(f"no check {check_id}")
        return _check(row)

    def decide(self, check_id: int, decision: str, note: str | None = None) -> CheckRecord:
        """Store a moderator's decision ('confirmed' or 'dismissed') on a check."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}")
        with self.store.write():
            cur = self.conn.execute(
                "UPDATE checks SET decision = ?, decided_at = ?, note = ? WHERE id = ?",
                (decision, utc_now(), note, int(check_id)),
            )
        if cur.rowcount != 1:
            raise NotFound(f"no check {check_id}")
        return self.get(check_id)

    def counts(self) -> dict[str, int]:
        """Checks by state: the moderator's decision, else 'pending' (flagged) or 'clean'."""
        return {
            str(k): int(n)
            for k, n in self.conn.execute(
                "SELECT coalesce(decision, CASE WHEN verdict = 'none' THEN 'clean' ELSE 'pending' END),"
                " count(*) FROM checks GROUP BY 1"
            )
        }


def _check(row: Sequence[Any]) -> CheckRecord:
    result = _object(row[8])
    return CheckRecord(
        id=int(row[0]),
        checked_at=row[1],
        sha256=row[2],
        name=from_db(row[3]),
        upload_path=row[4],
        status=row[5],
        error=row[6],
        verdict=row[7],
        result=result,
        meta=_object(row[12]),
        decision=row[9],
        decided_at=row[10],
        note=row[11],
    )


def _object(text: str | None) -> dict[str, Any]:
    """A stored JSON object, or {} for none or anything else."""
    try:
        found = json.loads(text) if text else {}
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
