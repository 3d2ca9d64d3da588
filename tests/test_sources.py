"""The record of update ids taken: in any order, once each, bounded (engine.sources)."""

from __future__ import annotations

from engine.sources import UNCHANGED, Taken, TakenChanges, unseen


def test_ids_taken_in_order_fold_into_the_low_water_mark_and_write_no_rows() -> None:
    taken = Taken(10)
    for source in (11, 12, 13):
        taken.take(source)
    assert (taken.low, taken.recent, taken.highest) == (13, set(), 13)
    assert taken.changes() == TakenChanges(13, [], [], False)
    assert taken.changes() is None  # written once


def test_an_id_arriving_after_a_higher_one_is_new_and_then_taken() -> None:
    taken = Taken(10)
    taken.take(12)
    assert (10 in taken, 11 in taken, 12 in taken) == (True, False, True)
    assert unseen(11, taken) and not unseen(12, taken)
    assert taken.changes() == TakenChanges(UNCHANGED, [12], [], False)  # a row while 11 is missing
    taken.take(11)
    assert (taken.low, taken.recent) == (12, set())
    assert taken.changes() == TakenChanges(12, [], [12], False)  # the row goes


def test_an_id_more_than_the_window_below_the_highest_counts_as_taken() -> None:
    taken = Taken(10, window=100)
    taken.take(12)  # 11 is missing
    taken.take(110)
    assert 11 not in taken  # still within the window
    taken.take(111)
    assert 11 in taken  # given up: if it comes now, it is taken for a redelivery
    assert (taken.low, taken.recent) == (12, {110, 111})


def test_a_new_record_counts_nothing_as_taken_until_its_window_has_filled() -> None:
    taken = Taken(window=3)
    taken.take(5)
    assert 4 not in taken  # the first ids may arrive in any order too
    taken.take(4)
    taken.take(6)
    assert (taken.low, taken.recent) == (None, {4, 5, 6})
    taken.take(7)
    assert (taken.low, taken.recent) == (7, set())
    assert 3 in taken  # more than the window below the highest


def test_ids_that_start_again_far_below_start_the_record_again() -> None:
    taken = Taken(900, [902])
    taken.changes()
    taken.take(5)  # the policy found it new: Telegram numbers from a random id again
    assert (taken.low, taken.recent, taken.highest) == (None, {5}, 5)
    assert taken.changes() == TakenChanges(None, [5], [], True)


def test_a_record_read_back_is_folded_and_a_copy_writes_all_of_it() -> None:
    taken = Taken(10, [11, 13])
    assert (taken.low, taken.recent) == (11, {13})
    assert taken.copy().changes() == TakenChanges(11, [13], [], False)
