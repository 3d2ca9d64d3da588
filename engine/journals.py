"""Choosing a journal from what the operator wrote: a file path or a database URL."""

from __future__ import annotations

from engine.journal import Journal, SqliteJournal

#: URL schemes that name a PostgreSQL database (libpq accepts both).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(spec: str) -> bool:
    """Whether `spec` (``--state`` or ``DATABASE_URL``) names a PostgreSQL database."""
    return spec.lower().startswith(POSTGRES_SCHEMES)


def open_journal(spec: str) -> Journal:
    """A :class:`PostgresJournal` for a ``postgresql://`` URL, else a :class:`SqliteJournal` file.

    Raises :class:`engine.journal.JournalError` (one line) if it cannot be used.
    """
    if is_postgres(spec):
        # Imported here: psycopg is needed only by those who use PostgreSQL.
        from engine.postgres_journal import PostgresJournal

        return PostgresJournal(spec)
    return SqliteJournal(spec)
