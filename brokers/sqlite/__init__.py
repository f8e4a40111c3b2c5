"""SQLite transport: the embedded default (one WAL-mode database file)."""

from brokers.sqlite.settings import SqliteSettings
from brokers.sqlite.transport import SqliteTransport

__all__ = ["SqliteSettings", "SqliteTransport"]
