"""A question's deadline survives ``kill -9``: the reminder comes at its original moment.

``weather-bot --flow tests.support.flows:Remind`` against the fake Bot API:
the question goes unanswered, the bot is killed before its deadline and
started again, and the reminder still arrives, from the new process, at the
moment the first one set (not a full timeout after the restart).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_telegram import SECRET, FakeTelegram, bot_environment
from tests.support.flows import REMIND_AFTER
from tests.support.processes import spawn_bot, stop_process, wait_until_called

QUESTION = "What is your name?"
REMINDER = "Still there? I would like to know your name."
#: How early a reminder may seem: the fake stamps the question when it arrives,
#: a moment after the bot read its clock for the deadline.
SLACK = 0.5
#: How long after the question the bot is killed: it has journaled the question as sent.
SETTLE = 0.3


class Runs:
    """The bot's processes, one after the other, in one directory (one state file)."""

    def __init__(self, telegram: FakeTelegram, directory: Path) -> None:
        self.telegram = telegram
        self.directory = directory
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self) -> float:
        """Start the bot and wait until it polls (it has recovered by then); return when."""
        polls = len(self.telegram.requests_to("getUpdates"))
        log = self.directory / f"bot-{len(self.started)}.log"
        process = spawn_bot(
            ["--no-pacing", "--flow", "tests.support.flows:Remind"],
            cwd=self.directory, env=bot_environment(self.telegram), log=log,
        )  # fmt: skip
        self.started.append((process, log))
        wait_until_called(self.telegram, "getUpdates", polls, process, log)
        return time.monotonic()

    def kill(self) -> float:
        """``kill -9`` the running bot; return when it was dead."""
        process = self.started[-1][0]
        assert process.poll() is None, "the bot died by itself"
        process.kill()
        assert process.wait(10) == -signal.SIGKILL
        return time.monotonic()

    def outputs(self) -> list[str]:
        return [log.read_text(encoding="utf-8", errors="replace") for _, log in self.started]

    def stop(self) -> None:
        for process, _ in self.started:
            stop_process(process, 10)


@pytest.fixture
def runs(telegram: FakeTelegram, tmp_path: Path) -> Iterator[Runs]:
    runner = Runs(telegram, tmp_path)
    try:
        yield runner
    finally:
        runner.stop()
    for output in runner.outputs():
        assert SECRET not in output
        assert "Traceback" not in output, output


def test_a_reminder_comes_on_time_though_the_bot_was_killed_before_it(
    telegram: FakeTelegram, runs: Runs
) -> None:
    runs.start()
    telegram.send_text(5, "/start")
    asked = telegram.wait_text(5, QUESTION).at
    # The bot journals that a message is out a moment after Telegram took it; a kill
    # within that moment sends it again after the restart (twice rather than lost).
    threading.Event().wait(SETTLE)
    killed = runs.kill()
    assert killed < asked + REMIND_AFTER, "too slow a machine: killed after the deadline"
    assert REMINDER not in telegram.texts(5)

    # Down for a while (not a proof of anything: the time the bot is away).
    threading.Event().wait(max(0.0, asked + REMIND_AFTER / 3 - time.monotonic()))
    restarted = runs.start()
    assert restarted < asked + REMIND_AFTER, "too slow a machine: restarted after the deadline"

    reminder = telegram.wait_text(5, REMINDER, timeout=REMIND_AFTER + 20)
    assert reminder.at >= asked + REMIND_AFTER - SLACK  # the deadline was kept, not cut short
    # ... and not counted again from the restart: that reminder would come later still.
    assert reminder.at < restarted + REMIND_AFTER
    again = telegram.wait_text(5, QUESTION, after=telegram.texts(5).index(REMINDER))
    assert telegram.texts(5) == [QUESTION, REMINDER, QUESTION]  # nothing repeated
    assert again.at >= reminder.at

    telegram.send_text(5, "Ann")
    telegram.wait_text(5, "Hello, Ann!")
