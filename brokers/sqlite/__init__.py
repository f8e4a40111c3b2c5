"""SQLite transport: the embedded default (one WAL-mode database file)."""

from brokers.sqlite.transport import SqliteSettings, SqliteTransport

__all__ = ["SqliteSettings", "SqliteTransport"]
