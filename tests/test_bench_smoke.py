"""The benchmark's parts run at tiny sizes and count every step (counts, never times)."""

from __future__ import annotations

import pytest

from bench import engine_bench as bench

CONVERSATIONS, ANSWERS = 50, 3
STEPS = CONVERSATIONS * ANSWERS


@pytest.mark.parametrize("prints", [False, True], ids=["input", "input+print"])
@pytest.mark.parametrize(
    "run", [bench.run_floor, bench.run_scheduler, bench.run_asyncio, bench.run_asyncio_batch_fed]
)
def test_each_design_takes_every_answer(run: bench.Runner, prints: bool) -> None:
    result = run(CONVERSATIONS, ANSWERS, prints)
    assert result.steps == STEPS
    assert result.asked == STEPS  # the first question, then one after each answer but the last
    assert result.delivered == (STEPS if prints else 0)
    assert result.ended == CONVERSATIONS
    assert result.seconds > 0


def test_the_journaled_scheduler_plugs_in() -> None:
    result = bench.run_journaled(CONVERSATIONS, ANSWERS)
    if bench.find_sqlite_journal() is None:
        assert isinstance(result, str)
        pytest.skip(result)
    assert isinstance(result, bench.Result), result
    assert (result.steps, result.asked, result.ended) == (STEPS, STEPS, CONVERSATIONS)


def test_memory_is_measured_with_every_conversation_parked() -> None:
    for measure in (bench.memory_scheduler, bench.memory_asyncio):
        memory = measure(CONVERSATIONS, top=3)
        assert memory.parked == CONVERSATIONS
        assert memory.bytes_per_conversation > 0
        assert len(memory.top) == 3


def test_the_report_has_every_row_and_target(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--conversations", "40", "--answers", "2", "--repeat", "1", "--timers", "30"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    for suffix in ("", " +Print"):
        for row in ("gen.send floor", "scheduler", "asyncio", "asyncio batch-fed"):
            assert f"\n{row}{suffix} " in out
    assert "\nscheduler+timers " in out
    assert "SQLite journal:" in out
    assert "memory per parked conversation, scheduler" in out
    assert "memory per parked conversation, asyncio" in out
    assert "timers: 30 parked on Sleep: " in out
    assert "timers: 30 falling due at once fired in " in out
    assert out.count("PASS") + out.count("FAIL") == 4


def test_timers_are_measured_parked_and_firing() -> None:
    timers = bench.measure_timers(CONVERSATIONS, top=2)
    assert timers.parked.parked == timers.asking.parked == CONVERSATIONS
    assert timers.parked.bytes_per_conversation > 0 and timers.entry > 0
    assert len(timers.parked.top) == 2
    assert timers.firing.timers == CONVERSATIONS and timers.firing.seconds > 0


def test_parked_timers_leave_every_answer_taken() -> None:
    result = bench.run_scheduler(CONVERSATIONS, ANSWERS, timers=20)
    assert result.name == "scheduler+timers"
    assert (result.steps, result.asked, result.ended) == (STEPS, STEPS, CONVERSATIONS)


def test_a_miscount_is_caught() -> None:
    result = bench.run_floor(5, 2)
    result.ended -= 1
    with pytest.raises(AssertionError, match="ended"):
        bench._check_counts(result)


def test_the_journal_benchmark_has_a_row_per_journal(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import journal_bench

    journal_bench.main(
        ["--conversations", "30", "--answers", "2", "--repeat", "1", "--postgres-url", postgres_url]
    )
    out = capsys.readouterr().out
    for row in ("in memory", "SQLite journal", "PostgreSQL journal"):
        assert f"\n  {row} " in out
    assert "recovery of 30 conversations from SQLite" in out
    assert "recovery of 30 conversations from PostgreSQL" in out
