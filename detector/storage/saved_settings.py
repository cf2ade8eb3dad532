"""Settings saved in a database (the thresholds ``evaluate --calibrate`` measured), which every
later command on that database starts from; see :func:`detector.config.effective_settings`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from detector.storage.sql import utc_now

if TYPE_CHECKING:
    from detector.storage.store import Store


# The meta-table key of the notes saved with the settings: a JSON list of text.
NOTES_KEY = "saved_settings_notes"


class SavedSettings:
    """The saved settings of one :class:`~detector.storage.store.Store` (``store.saved_settings``),
    with the notes saved beside them (why the values may not be trusted)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.conn

    def read(self) -> dict[str, str]:
        """Saved settings: name -> value text, by name."""
        return dict(self.conn.execute("SELECT name, value FROM settings ORDER BY name"))

    def save(self, values: dict[str, object], notes: Sequence[str] = ()) -> None:
        """Save settings that every later command on this database uses by default, and the
        ``notes`` that go with them (such as why a calibration is unreliable), which replace
        those of an earlier save."""
        now = utc_now()
        with self.store.write():
            self.conn.executemany(
                "INSERT INTO settings (name, value, set_at) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = excluded.value, set_at = excluded.set_at",
                [(name, str(value), now) for name, value in values.items()],
            )
            self.conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (NOTES_KEY, json.dumps([str(n) for n in notes])),
            )

    def notes(self) -> tuple[str, ...]:
        """The notes saved with the settings (none when nothing said otherwise, or when they
        cannot be read)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (NOTES_KEY,)).fetchone()
        try:
            found = json.loads(row[0]) if row else []
        except ValueError:
            return ()
        return tuple(str(n) for n in found) if isinstance(found, list) else ()
