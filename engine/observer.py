"""What the scheduler tells an operator's metrics, as it happens.

A frontend that exports metrics (the Telegram bot's ``/metrics``) passes an
:class:`Observer` to the scheduler; the default observes nothing. Every
method is called on the scheduler's thread, between journal writes, so it
must be quick and must not block: count, don't do I/O.
"""

from __future__ import annotations

from engine.frontend import Key

#: How a conversation ended, as :meth:`Observer.ended` is told.
FINISHED, CANCELLED, FAILED, EXPIRED, RESTARTED = (
    "finished", "cancelled", "failed", "expired", "restarted",
)


class Observer:
    """Told of conversations, commands, calls and commits. Subclass what you need."""

    def began(self, key: Key) -> None:
        """A new conversation began."""

    def ended(self, key: Key, how: str) -> None:
        """A conversation ended: :data:`FINISHED`, :data:`CANCELLED`, :data:`FAILED`,
        :data:`EXPIRED` or :data:`RESTARTED` (its flow changed)."""

    def command(self, kind: str) -> None:
        """A flow yielded a command of this kind (its class name: ``Print``, ``Call``...)."""

    def call_took(self, seconds: float) -> None:
        """A ``Call`` returned or raised after `seconds` on a worker."""

    def committed(self, seconds: float) -> None:
        """A journal commit took `seconds`."""

    def rebuilt(self, count: int) -> None:
        """`count` conversations were rebuilt from the journal at start."""
