"""Move a bot's state from a SQLite state file to a PostgreSQL database.

    python -m engine.sqlite_to_postgres STATE_FILE postgresql://USER:PASSWORD@HOST/DB

Stop the bot first (a running bot holds the file and is refused), run this
from the bot's directory (so the state classes of its flows can be imported
and their saved fields read), then start the bot with the URL as its state.
Copied, in one transaction: every unfinished conversation (its state, the
answers given since, the messages waiting for it, its timer's deadline and
last activity), every output not yet confirmed as sent, the users' memory,
the flow the file belongs to, and the update ids taken (see engine.sources),
so Telegram's redelivered updates are still skipped. The state file is left in
place. A database that already holds state for the bot is refused, not
overwritten.

Exit status: 0 when copied, 2 for bad input (a missing or unusable file, a
bad or unreachable database, a database already in use), 1 if writing failed.
"""

from __future__ import annotations

import argparse
import os
import sys

from engine.journal import UNREADABLE, JournalError, Saved, SqliteJournal
from engine.journals import is_postgres
from engine.postgres_journal import DEFAULT_BOT, PostgresJournal


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m engine.sqlite_to_postgres",
        description="Copy a bot's state from a SQLite state file to a PostgreSQL database.",
    )
    parser.add_argument("state_file", help="the SQLite state file (the bot's --state PATH)")
    parser.add_argument("database_url", help="postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE")
    parser.add_argument("--bot", default=DEFAULT_BOT, help="the bot's name in the database")
    options = parser.parse_args(argv)
    try:
        summary = migrate(options.state_file, options.database_url, bot=options.bot)
    except _BadInput as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except JournalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def migrate(state_file: str, database_url: str, *, bot: str = DEFAULT_BOT) -> str:
    """Copy `state_file` into the database; returns what was copied, in a sentence."""
    if not is_postgres(database_url):
        raise _BadInput(f"{database_url}: not a postgresql:// URL")
    if not os.path.isfile(state_file):  # SqliteJournal would create an empty one
        raise _BadInput(f"{state_file}: no such state file")
    try:
        source = SqliteJournal(state_file)
    except JournalError as error:
        raise _BadInput(str(error)) from None
    try:
        conversations = list(source.unfinished())
        outputs = source.undelivered()
        taken = source.taken()
        memory, flow = _memory_and_flow(source)
    finally:
        source.close()
    try:
        target = PostgresJournal(database_url, bot=bot)
    except JournalError as error:
        raise _BadInput(str(error)) from None
    try:
        if target.holds_state():
            raise _BadInput(
                f"{target.label}: bot {bot!r} already has state in this database; "
                "not overwriting it"
            )
        target.import_state(conversations, outputs, taken, memory=memory, flow=flow)
    finally:
        target.close()
    return _summary(state_file, target.label, conversations, len(outputs), taken.highest)


def _memory_and_flow(source: SqliteJournal) -> tuple[list[tuple[str, bytes]], str | None]:
    """The users' memory and the flow the file belongs to (read from the file's tables)."""
    query = source._connection.execute  # the file's own tables: nothing else reads them
    memory = [(str(user), bytes(data)) for user, data in query("SELECT user, data FROM memory")]
    row = query("SELECT value FROM meta WHERE name = 'flow'").fetchone()
    return memory, None if row is None else str(row[0])


def _summary(
    state_file: str, label: str, conversations: list[Saved], outputs: int, last_source: int | None
) -> str:
    unreadable = sum(1 for saved in conversations if _has_unreadable(saved))
    text = (
        f"copied {len(conversations)} conversation(s), {outputs} unsent output(s) "
        f"and the last update id ({last_source}) from {state_file} to {label}"
    )
    if unreadable:
        text += (
            f"; {unreadable} of them hold values that could not be read here and will start "
            "over (run this from the bot's directory so its flows can be imported)"
        )
    return text


def _has_unreadable(saved: Saved) -> bool:
    return any(step.fingerprint == UNREADABLE for step in saved.steps)


class _BadInput(Exception):
    """Input the command refuses (exit status 2)."""


if __name__ == "__main__":
    sys.exit(main())
