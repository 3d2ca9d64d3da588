"""Choosing a journal from what the operator wrote: a file path or a database URL."""

from __future__ import annotations

from engine.journal import Journal, JournalError, SqliteJournal

#: URL schemes that name a PostgreSQL database (libpq accepts both).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(spec: str) -> bool:
    """Whether `spec` (``--state`` or ``DATABASE_URL``) names a PostgreSQL database."""
    return spec.lower().startswith(POSTGRES_SCHEMES)


def open_journal(spec: str, *, shared: bool = False) -> Journal:
    """A :class:`PostgresJournal` for a ``postgresql://`` URL, else a :class:`SqliteJournal` file.

    `shared`: one of several instances of a bot on one database (PostgreSQL
    only). Raises :class:`engine.journal.JournalError` (one line) if it cannot
    be used.
    """
    if is_postgres(spec):
        # Imported here: psycopg is needed only by those who use PostgreSQL.
        from engine.postgres_journal import PostgresJournal

        return PostgresJournal(spec, shared=shared)
    if shared:
        raise JournalError("--shared needs a postgresql:// --state (or DATABASE_URL)")
    return SqliteJournal(spec)
