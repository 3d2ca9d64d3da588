"""What both real programs refuse at start, in one line with exit status 2.

A flow's bad settings (its ``check``: for the weather flow, Open-Meteo URLs
without a scheme, a timeout that is not a number) and a state file written
for another ``--flow``. Each runs ``weather-cli``
and ``weather-bot`` as installed, in a subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from engine.commands import Print
from engine.journal import SqliteJournal
from engine.states import State, Steps
from frontends.programs import DEFAULT_FLOW, ConfigError, check_flow_settings
from tests.support.fake_telegram import ROOT, FakeTelegram, bot_environment

#: The installed programs (``pip install -e .`` puts them beside the interpreter).
CLI = [str(Path(sys.executable).with_name("weather-cli"))]
BOT = [str(Path(sys.executable).with_name("weather-bot"))]
ECHO = "tests.support.flows:Echo"


def cli_environment() -> dict[str, str]:
    """The terminal's environment: no Open-Meteo settings of the caller's, our code first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPEN_METEO_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def run(
    command: list[str], env: Mapping[str, str], cwd: Path, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=dict(env), input=stdin, capture_output=True, text=True, timeout=30
    )


def one_error_line(result: subprocess.CompletedProcess[str], program: str) -> str:
    """The single ``PROGRAM: error: ...`` line the program wrote, checked to be alone."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{program}: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


# -- a flow's settings ---------------------------------------------------------------

BAD_SETTINGS = [
    ("OPEN_METEO_GEOCODING_URL", "127.0.0.1:8089/v1/search", "not an http:// or https:// URL"),
    ("OPEN_METEO_FORECAST_URL", "ftp://example.org/v1/forecast", "not an http:// or https:// URL"),
    ("OPEN_METEO_TIMEOUT", "abc", "is not READ, CONNECT,READ or CONNECT,READ,TOTAL"),
]


@pytest.mark.parametrize(("variable", "value", "reason"), BAD_SETTINGS)
def test_the_terminal_refuses_bad_open_meteo_settings_at_start(
    tmp_path: Path, variable: str, value: str, reason: str
) -> None:
    result = run(CLI, {**cli_environment(), variable: value}, tmp_path, stdin="London\n")

    line = one_error_line(result, "weather-cli")
    assert variable in line and repr(value) in line and reason in line
    assert result.stdout == ""  # no question was asked


@pytest.mark.parametrize(("variable", "value", "reason"), BAD_SETTINGS)
def test_the_bot_refuses_bad_open_meteo_settings_at_start(
    telegram: FakeTelegram, tmp_path: Path, variable: str, value: str, reason: str
) -> None:
    result = run(BOT, {**bot_environment(telegram), variable: value}, tmp_path)

    line = one_error_line(result, "weather-bot")
    assert variable in line and repr(value) in line and reason in line
    assert telegram.requests == []  # it never went online
    assert not (tmp_path / "weather-bot.sqlite3").exists()


def test_good_settings_start_both_programs(telegram: FakeTelegram, tmp_path: Path) -> None:
    settings = {
        "OPEN_METEO_GEOCODING_URL": "http://127.0.0.1:9/v1/search",
        "OPEN_METEO_TIMEOUT": "1,2,3",
    }
    result = run(CLI, {**cli_environment(), **settings}, tmp_path)  # no input: ends at once
    assert result.returncode == 3, result.stderr  # the input ended before the dialogue
    assert "Name a city:" in result.stdout
    start_and_stop_bot(telegram, tmp_path, {**bot_environment(telegram), **settings})


@dataclass(frozen=True)
class Checked(State):
    """A flow of the test's own with a check: programs name no flow but the default."""

    seen: ClassVar[list[Mapping[str, str]]] = []

    @staticmethod
    def check(environ: Mapping[str, str]) -> None:
        Checked.seen.append(environ)
        if environ.get("GREETING", "hello") not in ("hello", "hi"):
            raise ValueError(f"GREETING must be hello or hi,\n got {environ['GREETING']!r}")

    def run(self) -> Steps:
        yield Print("hello")
        return None


def test_any_flow_may_check_its_settings_and_flows_without_a_check_pass() -> None:
    check_flow_settings(Checked, {"GREETING": "hi"})
    assert Checked.seen == [{"GREETING": "hi"}]
    with pytest.raises(ConfigError, match=r"^GREETING must be hello or hi, got 'yo'$"):
        check_flow_settings(Checked, {"GREETING": "yo"})  # made one line
    check_flow_settings(lambda: Checked(), {"GREETING": "yo"})  # a callable without a check
    with pytest.raises(ConfigError, match="GREETING"):
        check_flow_settings(Checked(), {"GREETING": "yo"})  # a state instance as the flow


# -- a state file belongs to its flow ---------------------------------------------------


def claimed(path: Path, flow: str) -> None:
    journal = SqliteJournal(path)
    try:
        journal.claim(flow)
    finally:
        journal.close()


def test_the_terminal_refuses_a_state_file_of_another_flow(tmp_path: Path) -> None:
    state = tmp_path / "chat.sqlite3"
    first = run([*CLI, "--flow", ECHO, "--state", str(state)], cli_environment(), tmp_path, "hi\n")
    assert first.returncode == 3, first.stderr  # the input ended mid-dialogue

    result = run([*CLI, "--state", str(state)], cli_environment(), tmp_path, "London\n")

    line = one_error_line(result, "weather-cli")
    assert line == (
        f"weather-cli: error: {state}: the state file belongs to the flow {ECHO}, "
        f"not {DEFAULT_FLOW}; run with --flow {ECHO}, or use another state file"
    )
    assert result.stdout == ""

    again = run([*CLI, "--flow", ECHO, "--state", str(state)], cli_environment(), tmp_path, "x\n")
    assert again.returncode == 3, again.stderr
    assert "echo: x" in again.stdout  # its own flow still runs on it


def test_the_bot_refuses_a_state_file_of_another_flow(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    claimed(tmp_path / "weather-bot.sqlite3", DEFAULT_FLOW)

    result = run([*BOT, "--flow", ECHO], bot_environment(telegram), tmp_path)

    line = one_error_line(result, "weather-bot")
    assert line == (
        f"weather-bot: error: weather-bot.sqlite3: the state file belongs to the flow "
        f"{DEFAULT_FLOW}, not {ECHO}; run with --flow {DEFAULT_FLOW}, or use another state file"
    )
    assert telegram.requests == []


def test_the_bot_claims_a_new_state_file_for_its_flow(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    start_and_stop_bot(telegram, tmp_path, bot_environment(telegram), "--flow", ECHO)

    result = run(BOT, bot_environment(telegram), tmp_path)  # the default flow now

    assert f"belongs to the flow {ECHO}, not {DEFAULT_FLOW}" in one_error_line(
        result, "weather-bot"
    )


def start_and_stop_bot(
    telegram: FakeTelegram, directory: Path, env: Mapping[str, str], *options: str
) -> None:
    """Run the bot until it polls, then SIGTERM it; it must exit 0."""
    process = subprocess.Popen(
        [*BOT, *options],
        cwd=directory,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        telegram.wait_until(
            lambda: telegram.requests_to("getUpdates") or process.poll() is not None,
            timeout=15,
            what="the bot to poll",
        )
        assert process.poll() is None, process.communicate(timeout=5)[0]
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
        assert process.returncode == 0, output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
