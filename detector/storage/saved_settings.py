"""Settings saved in a database (the thresholds ``evaluate --calibrate`` measured), which every
later command on that database starts from; see :func:`detector.config.effective_settings`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from detector.storage.sql import utc_now

if TYPE_CHECKING:
    from detector.storage.store import Store


class SavedSettings:
    """The saved settings of one :class:`~detector.storage.store.Store` (``store.saved_settings``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.conn

    def read(self) -> dict[str, str]:
        """Saved settings: name -> value text, by name."""
        return dict(self.conn.execute("SELECT name, value FROM settings ORDER BY name"))

    def save(self, values: dict[str, object]) -> None:
        """Save settings that every later command on this database uses by default."""
        now = utc_now()
        with self.store.write():
            self.conn.executemany(
                "INSERT INTO settings (name, value, set_at) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = excluded.value, set_at = excluded.set_at",
                [(name, str(value), now) for name, value in values.items()],
            )
