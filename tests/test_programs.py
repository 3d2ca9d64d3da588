"""What both programs share (``frontends.programs``): numbers, --help about the flow, start-up."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.postgres_journal import redact
from flows.weather import WeatherFlow
from frontends import cli
from frontends.programs import (
    GENERIC_HELP,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    ConfigError,
    env_number,
    flow_help,
    load,
    open_journal,
    state_spec,
)
from frontends.telegram.config import build_parser as bot_parser
from frontends.telegram.texts import help_text
from tests.support.fake_telegram import FakeTelegram, bot_environment
from tests.support.postgres_server import PostgresServer, closed_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("parse", "raw", "reason"),
    [
        (NON_NEGATIVE, "x", "not a number: 'x'"),
        (NON_NEGATIVE, "-1", "must not be negative"),
        (POSITIVE, "0", "must be more than 0"),
        (POSITIVE_INT, "1.5", "not a whole number: '1.5'"),
        (POSITIVE_INT, "0", "must be at least 1"),
    ],
)
def test_a_bad_number_option_says_why(parse: object, raw: str, reason: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=reason):
        parse(raw)  # type: ignore[operator]


def test_number_options_give_numbers() -> None:
    assert (NON_NEGATIVE("0"), POSITIVE("0.5"), POSITIVE_INT("3")) == (0.0, 0.5, 3)


def test_a_number_variable_is_read_or_defaults() -> None:
    assert env_number({"RATE": " 2.5 "}, "RATE", 1.0) == 2.5
    assert env_number({}, "RATE", 1.0) == 1.0
    with pytest.raises(ConfigError, match=r"^RATE must be a number, got 'fast'$"):
        env_number({"RATE": "fast"}, "RATE", 1.0)
    with pytest.raises(ConfigError, match=r"^RATE must not be negative$"):
        env_number({"RATE": "-3"}, "RATE", 1.0)


def test_a_flow_without_help_gets_a_generic_line() -> None:
    assert flow_help(lambda: None) == GENERIC_HELP
    assert help_text(lambda: None).startswith(GENERIC_HELP + "\n\n/start")  # type: ignore[arg-type]


def test_the_weather_flow_says_what_it_does_and_reads() -> None:
    assert help_text(WeatherFlow).startswith(
        "I tell you the current weather anywhere in the world: name a city (or share a "
        "location), pick the place you mean if there are several, and I show its temperature, "
        "sky and wind; then, if you like, the next 7 days and a chart of the next 48 hours. "
        "I remember the last 5 places you looked up, to offer them next time, and nothing "
        "else. Weather data by Open-Meteo.com.\n\n/start - begin a conversation"
    )


@pytest.mark.parametrize("parser", [cli.build_parser("weather-cli"), bot_parser()])
def test_both_programs_help_ends_with_the_default_flows_help(
    parser: argparse.ArgumentParser,
) -> None:
    text = parser.format_help()
    flow_part = text[text.index("the flow (flows.weather:WeatherFlow):") :]
    assert "name a city" in flow_part
    for variable in ("OPEN_METEO_GEOCODING_URL", "OPEN_METEO_FORECAST_URL", "OPEN_METEO_TIMEOUT"):
        assert text.count(variable) == 1 and variable in flow_part
    assert "exit status" in flow_part  # the program's own epilog comes after


def test_start_up_failures_are_one_line_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--flow must look like MODULE:ATTR"):
        load("flows.weather")
    damaged = tmp_path / "state.sqlite3"
    damaged.write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigError, match=str(damaged)) as caught:
        open_journal(str(damaged), "flows.weather:WeatherFlow")
    assert "\n" not in str(caught.value)


# -- state in PostgreSQL: --state postgresql://... or DATABASE_URL ----------------------


def test_the_state_comes_from_the_option_then_database_url_then_the_default() -> None:
    environ = {"DATABASE_URL": " postgresql://db/bot "}
    assert state_spec("mine.sqlite3", environ, "default.sqlite3") == "mine.sqlite3"
    assert state_spec(None, environ, "default.sqlite3") == "postgresql://db/bot"
    assert state_spec(None, {"DATABASE_URL": ""}, "default.sqlite3") == "default.sqlite3"
    assert state_spec(None, {}, None) is None


def test_a_database_of_another_flow_is_refused(postgres_url: str) -> None:
    open_journal(postgres_url, "flows.weather:WeatherFlow").close()
    with pytest.raises(ConfigError, match=r"belongs to the flow flows\.weather:WeatherFlow"):
        open_journal(postgres_url, "tests.support.flows:Visitor")


def _bad_databases(server: PostgresServer, database_url: str) -> dict[str, tuple[str, str]]:
    """URL and the reason each program must give, per way a database can be unusable."""
    database = database_url.rpartition("/")[2]
    wrong = server.url(database, password="not-the-password")
    return {
        "malformed": ("postgresql://ann:s3cret@db:port/bot", "not a valid PostgreSQL URL"),
        "refused login": (wrong, "login refused (password authentication failed"),
        "unreachable": (
            f"postgresql://ann:s3cret@127.0.0.1:{closed_port()}/bot",
            "cannot reach the server (Connection refused",
        ),
    }


@pytest.mark.parametrize("how", ["option", "DATABASE_URL"])
@pytest.mark.parametrize("program", ["weather-cli", "weather-bot"])
def test_an_unusable_database_is_one_line_and_exit_2(
    postgres_server: PostgresServer,
    postgres_url: str,
    telegram: FakeTelegram,
    tmp_path: Path,
    program: str,
    how: str,
) -> None:
    for url, reason in _bad_databases(postgres_server, postgres_url).values():
        environment = {**bot_environment(telegram), "PYTHONIOENCODING": "utf-8"}
        options = ["--state", url] if how == "option" else []
        if how == "DATABASE_URL":
            environment["DATABASE_URL"] = url
        module = "frontends.cli" if program == "weather-cli" else "frontends.telegram"
        result = subprocess.run(
            [sys.executable, "-m", module, *options],
            cwd=tmp_path, env=environment, input="", capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.splitlines()
        assert f": error: {redact(url)}: {reason}" in line
        assert "s3cret" not in line and "not-the-password" not in line
    assert list(tmp_path.iterdir()) == []  # no state file made instead


def test_the_terminal_keeps_memory_in_postgresql_between_runs(
    postgres_url: str, tmp_path: Path
) -> None:
    environment = {**os.environ, "PYTHONIOENCODING": "utf-8", "LOGNAME": "alice"}
    command = [sys.executable, "-m", "frontends.cli", "--flow", "tests.support.flows:Visitor",
               "--pictures", str(tmp_path)]
    first = subprocess.run(
        [*command, "--state", postgres_url], input="Paris\n", env=environment, cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )
    assert first.returncode == 0, first.stderr
    second = subprocess.run(  # the database named by DATABASE_URL this time
        command, input="1 2\n", env={**environment, "DATABASE_URL": postgres_url}, cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )
    assert second.returncode == 0, second.stderr
    assert "Last time: Paris" in second.stdout.splitlines()
