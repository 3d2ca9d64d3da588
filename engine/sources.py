"""Which event sources (update ids) were taken: the record a journal keeps of them.

A frontend tags each event with the id of what caused it (Telegram's update
id), so that one delivered again is taken once. Ids grow, but they need not
arrive in order: Telegram posts different chats' updates to a webhook at the
same time, so update 10 may reach the engine after 11. The highest id taken
is therefore not enough to tell a redelivery from a late first delivery; the
record keeps every id taken within a window below the highest:

* `low`: every id at or below it counts as taken (``None``: a new record,
  whose window has not filled yet);
* `recent`: the ids taken above `low`.

Ids taken in order fold into `low` at once, so `recent` holds only ids taken
while an earlier one is still missing, and the journal writes a row only for
those. An id `window` or more below the highest taken counts as taken whether
it came or not: the record stays bounded, and an update that late is taken
for a redelivery. A policy may still find such an id new (Telegram numbers
updates from a random id after a week without any): taking it starts the
record again from it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass

#: How far below the highest id taken a missing one is still waited for. In
#: webhook mode Telegram has at most ``max_connections`` (100 at most) updates
#: in flight and retries a failed one with a backoff of seconds; ten thousand
#: updates later is far beyond any reordering seen. Rows are written only for
#: ids taken while an earlier one is missing (and, in a new journal, until the
#: window has filled once), so a wide window costs little.
WINDOW = 10_000


@dataclass(slots=True)
class TakenChanges:
    """What changed in a :class:`Taken` since the journal last wrote it."""

    #: The new `low` (``None``: none is), or :data:`UNCHANGED`.
    low: int | object | None
    #: Ids now in `recent` that were not written.
    added: list[int]
    #: Ids written as recent that are no longer (folded into `low`, or pruned).
    removed: list[int]
    #: Every id written is gone (the ids started again): delete them all first.
    cleared: bool


#: :attr:`TakenChanges.low` when `low` did not change.
UNCHANGED = object()


class Taken:
    """The ids taken, as `low` and `recent` (see the module docstring).

    Changed only on the scheduler's thread (:meth:`take`); ``id in taken``
    is safe from any thread (a frontend asking whether an update was taken).
    """

    __slots__ = (
        "_added", "_cleared", "_heap", "_low_changed", "_removed", "highest", "low", "recent",
        "window",
    )  # fmt: skip

    def __init__(
        self, low: int | None = None, recent: Iterable[int] = (), *, window: int = WINDOW
    ) -> None:
        self.low = low
        self.recent = {source for source in recent if low is None or source > low}
        self.window = window
        self._heap = sorted(self.recent)  # the smallest recent id first, for pruning
        self.highest: int | None = max(self.recent, default=low)
        self._added: set[int] = set()
        self._removed: set[int] = set()
        self._low_changed = False
        self._cleared = False
        if self.highest is not None:
            self._fold()

    def __contains__(self, source: object) -> bool:
        # `recent` first: :meth:`_fold` raises `low` before it drops an id from
        # `recent`, so a reader on another thread sees a folded id in one or the other.
        if source in self.recent:
            return True
        if not isinstance(source, int):
            return False
        low = self.low
        if low is not None:
            return source <= low  # never below the window's floor (see _fold)
        highest = self.highest  # a new record: only what is beyond the window
        return highest is not None and source <= highest - self.window

    def take(self, source: int) -> None:
        """`source` is taken (the policy found it new)."""
        if source in self:
            # Taken although it counts as taken: the policy says ids started
            # again (Telegram numbers from a random id after a week without updates).
            self._start_again()
        low = self.low
        highest = self.highest
        if highest is None or source > highest:
            self.highest = highest = source
        if low is not None and source == low + 1 and not self.recent:
            self.low = source  # in order, nothing missing: the common case
            self._low_changed = True
        else:
            self.recent.add(source)
            self._added.add(source)
            heapq.heappush(self._heap, source)
        low = self.low
        if low is None:
            if highest - self.window >= self._heap[0]:  # the window has filled once
                self._fold()
        elif highest - self.window > low or low + 1 in self.recent:
            self._fold()

    def _fold(self) -> None:
        """Raise `low` past ids taken in a row and past the window; drop them from `recent`."""
        assert self.highest is not None
        floor = self.highest - self.window
        low = self.low
        if low is None:
            if not self._heap or self._heap[0] > floor:
                return  # the window has not filled yet: nothing counts as taken below
            low = floor
        low = max(low, floor)
        recent = self.recent
        while low + 1 in recent:
            low += 1
        if low != self.low:
            self.low = low
            self._low_changed = True
        heap = self._heap
        while heap and heap[0] <= low:
            gone = heapq.heappop(heap)
            if gone in recent:
                recent.discard(gone)
                if gone in self._added:
                    self._added.discard(gone)  # never written
                else:
                    self._removed.add(gone)

    def _start_again(self) -> None:
        self.low = None
        self.highest = None
        self.recent.clear()
        self._heap.clear()
        self._added.clear()
        self._removed.clear()
        self._low_changed = True
        self._cleared = True

    def copy(self) -> Taken:
        """A copy whose :meth:`changes` are all of it: to write it into an empty journal."""
        copied = Taken(self.low, self.recent, window=self.window)
        copied._low_changed = copied.low is not None
        copied._added = set(copied.recent)
        return copied

    def changes(self) -> TakenChanges | None:
        """What to write since the last call (``None``: nothing), and forget it."""
        if not (self._low_changed or self._added or self._removed or self._cleared):
            return None
        found = TakenChanges(
            self.low if self._low_changed else UNCHANGED,
            sorted(self._added),
            sorted(self._removed),
            self._cleared,
        )
        self._added.clear()
        self._removed.clear()
        self._low_changed = self._cleared = False
        return found


#: Decides whether an event's source (e.g. a Telegram update id) is new,
#: given the ids taken so far. The default is :func:`unseen`.
SourcePolicy = Callable[[int, Taken], bool]


def unseen(source: int, taken: Taken) -> bool:
    """The default :data:`SourcePolicy`: a source is new unless taken (or counted as taken)."""
    return source not in taken
