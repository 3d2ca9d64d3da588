"""What both programs share (``frontends.programs``): numbers, --help about the flow, start-up."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

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
)
from frontends.telegram.config import build_parser as bot_parser
from frontends.telegram.texts import help_text


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
        open_journal(str(damaged))
    assert "\n" not in str(caught.value)
