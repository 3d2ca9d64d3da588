"""The weather flow, step by step and as whole dialogues.

Calls are answered by the test (no HTTP), except in the end-to-end
transcripts at the bottom, which answer them with the real client talking
to the fake Open-Meteo server.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import pytest

from engine.commands import Call, Choose, Input, Print
from engine.runner import Snapshot
from engine.states import Entered, State, conversation, load_flow
from engine.testing import FlowTest, check_transcript
from flows import weather
from flows.openmeteo import (
    MAX_NAME_LENGTH,
    NameTooLong,
    Place,
    ServiceUnavailable,
    Weather,
    current_weather,
    search_places,
)
from flows.weather import (
    NEXT_PROMPT,
    PLACE_PROMPT,
    UNAVAILABLE,
    AskAgain,
    AskCity,
    ChoosePlace,
    ShowWeather,
    WeatherFlow,
    conditions,
    place_labels,
)
from tests.support.openmeteo_server import FailureKind, FakeOpenMeteo


def snapshot(state: State) -> tuple[str, dict[str, Any]]:
    """A state as the journal saves it: its class path and its fields (unpickled here)."""
    saved = Snapshot.of(state)
    return saved.state_class, pickle.loads(saved.fields)


def restore(class_path: str, fields: dict[str, Any]) -> State:
    """A state back from its class path and fields, as recovery restores it."""
    return Snapshot(class_path, pickle.dumps(fields)).restore()

ASK = Input("Name a city: ")
AGAIN = Choose(NEXT_PROMPT, ["continue", "quit"], timeout=30 * 60)

LONDON_UK = Place("London", 51.50853, -0.12574, "United Kingdom", "England")
LONDON_CA = Place("London", 42.98339, -81.23304, "Canada", "Ontario")
LONDON_OH = Place("London", 39.88645, -83.44825, "United States", "Ohio")
LONDON_KY = Place("London", 37.12898, -84.08326, "United States", "Kentucky")
LONDON_AR = Place("London", 35.32897, -93.25296, "United States", "Arkansas")
LONDONS = [LONDON_UK, LONDON_CA, LONDON_OH, LONDON_KY, LONDON_AR]
LONDON_LABELS = [
    "London, England, United Kingdom",
    "London, Ontario, Canada",
    "London, Ohio, United States",
    "London, Kentucky, United States",
    "London, Arkansas, United States",
]
ANTARCTICA = Place("Antarctica", -78.15856, 16.40626)
OVERCAST = Weather(temperature=15.6, weather_code=3, wind_speed=4.8, wind_direction=13.0)

#: Every reason the client gives; the flow must treat them all alike.
FAILURES = [
    ServiceUnavailable("timed out"),
    ServiceUnavailable("cannot connect"),
    ServiceUnavailable("request failed"),
    ServiceUnavailable("rate limited"),
    ServiceUnavailable("HTTP 500"),
    ServiceUnavailable("HTTP 400: Latitude must be in range of -90 to 90°. Given: 200.0."),
    ServiceUnavailable("response is not JSON"),
    ServiceUnavailable("unexpected response"),
]


def state_of(flow: FlowTest) -> State | None:
    """The flow's state now (a call, so mypy does not keep an earlier narrowing)."""
    return flow.state


def at_search(city: str = "London") -> FlowTest:
    """A conversation waiting on the place search for `city`."""
    flow = FlowTest(WeatherFlow())
    flow.answer(city)
    assert flow.command == Call(search_places, city)
    return flow


# -- step level -------------------------------------------------------------------


def test_the_flow_starts_by_asking_a_city() -> None:
    flow = FlowTest(WeatherFlow())

    assert flow.command == ASK
    assert flow.state == AskCity()


def test_weather_flow_is_what_the_cli_loads_by_default() -> None:
    assert load_flow("flows.weather:WeatherFlow") is WeatherFlow is AskCity


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_blank_input_asks_again_without_a_call(blank: str) -> None:
    flow = FlowTest(WeatherFlow())

    assert flow.answer(blank) == ASK
    assert flow.answer("Paris") == Call(search_places, "Paris")


def test_the_city_is_trimmed() -> None:
    flow = FlowTest(WeatherFlow())

    assert flow.answer("  London \n") == Call(search_places, "London")


@pytest.mark.parametrize("city", ["Île MacMurdo", "東京", "Zürich", "Москва"])
def test_accented_and_non_latin_names_are_searched_as_typed(city: str) -> None:
    at_search(city)


def test_nothing_found_asks_again() -> None:
    flow = at_search("Atlantis")

    flow.returns([])

    flow.expect(Print("Found nothing"))
    assert flow.command == ASK
    assert flow.state == AskCity()


def test_one_place_shows_its_weather_without_a_question() -> None:
    flow = at_search("London")

    flow.returns([LONDON_UK])

    assert flow.state == ShowWeather(LONDON_UK)
    assert flow.expect(
        Print("Found London (United Kingdom) at latitude 51.50853 and longitude -0.12574")
    ) == Call(current_weather, 51.50853, -0.12574)
    flow.returns(OVERCAST)
    flow.expect(Print("Current temperature is 15.6 °C"))
    assert flow.expect(Print("Overcast, wind 4.8 km/h from the north")) == AGAIN
    assert state_of(flow) == AskAgain()


def test_several_places_are_offered_as_name_region_country() -> None:
    flow = at_search("London")

    flow.returns(LONDONS)

    assert flow.command == Choose(PLACE_PROMPT, LONDON_LABELS)
    assert flow.state == ChoosePlace(tuple(LONDONS))


@pytest.mark.parametrize(
    ("answer", "place"),
    [
        ("0", LONDON_UK),
        ("1", LONDON_CA),
        (" 4 ", LONDON_AR),
        ("London, Ohio, United States", LONDON_OH),
        ("  london, kentucky, united states ", LONDON_KY),
    ],
)
def test_a_place_is_chosen_by_number_or_by_text(answer: str, place: Place) -> None:
    flow = at_search("London")
    flow.returns(LONDONS)

    flow.answer(answer)

    assert flow.state == ShowWeather(place)
    flow.expect(
        Print(
            f"Found London ({place.country}) at latitude {place.latitude} "
            f"and longitude {place.longitude}"
        )
    )
    assert flow.command == Call(current_weather, place.latitude, place.longitude)


def test_an_answer_naming_no_place_is_asked_again() -> None:
    flow = at_search("London")
    flow.returns(LONDONS)

    flow.answer("Londres")

    assert flow.command == Choose(PLACE_PROMPT, LONDON_LABELS)
    assert flow.transcript[-7:-6] == ["bot: Try again"]


def test_only_the_first_five_places_are_offered() -> None:
    places = [Place(f"Springfield{i}", float(i), float(i), "United States") for i in range(8)]
    flow = at_search("Springfield")

    flow.returns(places)

    assert isinstance(flow.command, Choose)
    assert flow.command.options == tuple(f"Springfield{i}, United States" for i in range(5))


def test_places_that_read_the_same_get_numbered() -> None:
    twin = Place("London", 51.0, -0.2, "United Kingdom", "England")
    flow = at_search("London")

    flow.returns([LONDON_UK, twin, LONDON_CA])
    flow.answer("London, England, United Kingdom (2)")

    assert isinstance(flow.state, ShowWeather)
    assert flow.state.place is twin


def test_labels_skip_missing_parts_and_stay_distinct() -> None:
    places = (
        ANTARCTICA,
        Place("Île MacMurdo", -48.89824, 69.41539),
        Place("Atlantic Point", 44.09647, -69.10087, "United States", "Maine"),
        Place("Singapore", 1.28967, 103.85007, "Singapore"),
        Place("Antarctica", -80.0, 0.0),
        Place("ANTARCTICA", -81.0, 0.0),
    )

    assert place_labels(places) == [
        "Antarctica",
        "Île MacMurdo",
        "Atlantic Point, Maine, United States",
        "Singapore",
        "Antarctica (2)",
        "ANTARCTICA (3)",
    ]


def test_a_place_without_a_country_is_found_without_parentheses() -> None:
    flow = at_search("Antarctica")

    flow.returns([ANTARCTICA])

    flow.expect(Print("Found Antarctica at latitude -78.15856 and longitude 16.40626"))


def test_a_non_latin_place_is_shown_as_named() -> None:
    tokyo = Place("東京", 35.6895, 139.69171, "日本", "東京都")
    flow = at_search("東京")

    flow.returns([tokyo])

    flow.expect(Print("Found 東京 (日本) at latitude 35.6895 and longitude 139.69171"))


@pytest.mark.parametrize("error", FAILURES, ids=str)
def test_search_failure_says_unavailable_and_asks_again(error: ServiceUnavailable) -> None:
    flow = at_search("London")

    flow.raises(error)

    flow.expect(Print(UNAVAILABLE))
    assert flow.command == ASK
    assert flow.state == AskCity()


def test_a_name_too_long_to_send_is_told_and_asked_again() -> None:
    city = "x" * (MAX_NAME_LENGTH + 1)
    flow = at_search(city)

    flow.raises(NameTooLong(len(city)))

    flow.expect(Print("That name is too long."))
    assert flow.command == ASK
    assert flow.state == AskCity()


@pytest.mark.parametrize("error", FAILURES, ids=str)
def test_weather_failure_says_unavailable_and_asks_again(error: ServiceUnavailable) -> None:
    flow = at_search("London")
    flow.returns([LONDON_UK])
    flow.resume()  # Found London ...

    flow.raises(error)

    flow.expect(Print(UNAVAILABLE))
    assert flow.command == ASK
    assert flow.state == AskCity()


def test_unavailable_is_one_plain_sentence() -> None:
    assert UNAVAILABLE == "The weather service is unavailable right now, please try again later."


def test_continue_asks_for_another_city_and_quit_ends() -> None:
    flow = FlowTest(AskAgain())
    assert flow.command == AGAIN

    assert flow.answer("continue") == ASK
    flow.answer("Paris")
    flow.returns([Place("Paris", 48.85341, 2.3488, "France", "Île-de-France")])
    flow.resume()
    flow.returns(Weather(temperature=21.0, weather_code=0, wind_speed=0.0))
    flow.expect(Print("Current temperature is 21.0 °C"))
    flow.expect(Print("Clear sky, no wind"))
    flow.answer("1")  # quit, by number

    flow.expect(Print("Terminating"))
    assert flow.finished


@pytest.mark.parametrize(
    ("weather", "line"),
    [
        (OVERCAST, "Overcast, wind 4.8 km/h from the north"),
        (Weather(-2.5, 71, 30.2, 238.0), "Slight snowfall, wind 30.2 km/h from the south-west"),
        (Weather(10.0, 95, 12.0), "Thunderstorm, wind 12.0 km/h"),
        (Weather(10.0, 2, 0.0, 90.0), "Partly cloudy, no wind"),
        (Weather(10.0), "Unknown conditions"),
        (Weather(10.0, 42), "Unknown conditions (code 42)"),
    ],
)
def test_conditions_in_words(weather: Weather, line: str) -> None:
    assert conditions(weather) == line


def test_raw_conversation_yields_entered_markers_between_commands() -> None:
    steps = conversation(WeatherFlow())

    assert next(steps) == Entered(AskCity())
    assert next(steps) == ASK
    assert steps.send("Antarctica") == Call(search_places, "Antarctica")
    assert steps.send([ANTARCTICA]) == Entered(ShowWeather(ANTARCTICA))
    assert isinstance(next(steps), Print)
    steps.close()


def test_every_state_snapshots_restores_and_pickles() -> None:
    seen = []
    flow = at_search("London")
    seen.append(flow.state)
    flow.returns(LONDONS)
    seen.append(flow.state)
    flow.answer("2")
    seen.append(flow.state)
    flow.resume()
    flow.returns(OVERCAST)
    flow.resume()
    flow.resume()
    seen.append(flow.state)

    assert [type(s) for s in seen] == [AskCity, ChoosePlace, ShowWeather, AskAgain]
    for state in seen:
        assert state is not None
        class_path, fields = snapshot(state)
        assert restore(class_path, pickle.loads(pickle.dumps(fields))) == state


# -- transcripts ------------------------------------------------------------------


def fake_search(name: str) -> list[Place]:
    places = {"london": LONDONS, "antarctica": [ANTARCTICA]}
    if name == "Nowhere Down":
        raise ServiceUnavailable("timed out")
    return places.get(name.casefold(), [])


def fake_weather(latitude: float, longitude: float) -> Weather:
    if latitude < -60:
        raise ServiceUnavailable("HTTP 500")
    return Weather(
        temperature=round(latitude / 4, 1), weather_code=61, wind_speed=11.2, wind_direction=270.0
    )


FAKES: dict[str, Callable[..., Any]] = {
    "search_places": fake_search,
    "current_weather": fake_weather,
}


def test_transcript_choose_a_place_then_quit() -> None:
    check_transcript(
        WeatherFlow(),
        """
        bot: Name a city:
        you: london
        call: search_places('london')
        bot: Which one do you mean?
        bot: 0) London, England, United Kingdom
        bot: 1) London, Ontario, Canada
        bot: 2) London, Ohio, United States
        bot: 3) London, Kentucky, United States
        bot: 4) London, Arkansas, United States
        you: London, Ontario, Canada
        bot: Found London (Canada) at latitude 42.98339 and longitude -81.23304
        call: current_weather(42.98339, -81.23304)
        bot: Current temperature is 10.7 °C
        bot: Slight rain, wind 11.2 km/h from the west
        bot: What next?
        bot: 0) continue
        bot: 1) quit
        you: quit
        bot: Terminating
        """,
        calls=FAKES,
    )


def test_transcript_blank_nothing_failures_then_continue() -> None:
    check_transcript(
        WeatherFlow(),
        """
        bot: Name a city:
        you:
        bot: Name a city:
        you: Atlantis
        call: search_places
        bot: Found nothing
        bot: Name a city:
        you: Nowhere Down
        call: search_places
        bot: The weather service is unavailable right now, please try again later.
        bot: Name a city:
        you: Antarctica
        call: search_places
        bot: Found Antarctica at latitude -78.15856 and longitude 16.40626
        call: current_weather
        bot: The weather service is unavailable right now, please try again later.
        bot: Name a city:
        you: London
        call: search_places
        bot: Which one do you mean?
        bot: 0) London, England, United Kingdom
        bot: 1) London, Ontario, Canada
        bot: 2) London, Ohio, United States
        bot: 3) London, Kentucky, United States
        bot: 4) London, Arkansas, United States
        you: 0
        bot: Found London (United Kingdom) at latitude 51.50853 and longitude -0.12574
        call: current_weather
        bot: Current temperature is 12.9 °C
        bot: Slight rain, wind 11.2 km/h from the west
        bot: What next?
        bot: 0) continue
        bot: 1) quit
        you: continue
        bot: Name a city:
        """,
        calls=FAKES,
        finished=False,
    )


# -- end to end: the real client and the fake server ---------------------------------

REAL: dict[str, Callable[..., Any]] = {
    "search_places": search_places,
    "current_weather": current_weather,
}


def test_transcript_against_the_fake_server(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.set_forecast(
        35.6895, 139.69171, temperature=21.5, weather_code=80, wind_speed=7.0, wind_direction=180
    )
    openmeteo.fail("rate_limit", endpoint="search")

    check_transcript(
        WeatherFlow(),
        """
        bot: Name a city:
        you: 東京
        call: search_places('東京')
        bot: The weather service is unavailable right now, please try again later.
        bot: Name a city:
        you: 東京
        call: search_places('東京')
        bot: Found 東京 (日本) at latitude 35.6895 and longitude 139.69171
        call: current_weather(35.6895, 139.69171)
        bot: Current temperature is 21.5 °C
        bot: Slight rain showers, wind 7.0 km/h from the south
        bot: What next?
        bot: 0) continue
        bot: 1) quit
        you: continue
        bot: Name a city:
        you: Île MacMurdo
        call: search_places('Île MacMurdo')
        bot: Found Île MacMurdo at latitude -48.89824 and longitude 69.41539
        call: current_weather(-48.89824, 69.41539)
        bot: Current temperature is 15.6 °C
        bot: Overcast, wind 4.8 km/h from the north
        bot: What next?
        bot: 0) continue
        bot: 1) quit
        you: quit
        bot: Terminating
        """,
        calls=REAL,
    )
    assert [r.failure for r in openmeteo.requests] == ["rate_limit", None, None, None, None]


@pytest.mark.parametrize("kind", ["server_error", "not_json", "wrong_shape", "close"])
def test_a_failing_forecast_from_the_fake_server_is_survived(
    openmeteo: FakeOpenMeteo, kind: FailureKind
) -> None:
    openmeteo.fail(kind, endpoint="forecast")

    check_transcript(
        WeatherFlow(),
        """
        bot: Name a city:
        you: London
        call: search_places
        bot: Which one do you mean?
        bot: 0) London, England, United Kingdom
        bot: 1) London, Ontario, Canada
        bot: 2) London, Ohio, United States
        bot: 3) London, Kentucky, United States
        bot: 4) London, Arkansas, United States
        you: 1
        bot: Found London (Canada) at latitude 42.98339 and longitude -81.23304
        call: current_weather
        bot: The weather service is unavailable right now, please try again later.
        bot: Name a city:
        """,
        calls=REAL,
        finished=False,
    )


def test_each_generated_city_gets_its_own_temperature(openmeteo: FakeOpenMeteo) -> None:
    for city in openmeteo.add_cities(12):
        where = f"latitude {city.latitude} and longitude {city.longitude}"
        found = f"Found {city.name} (Testland) at {where}"
        test = check_transcript(
            WeatherFlow(),
            f"""
            bot: Name a city:
            you: {city.name.lower()}
            call: search_places
            bot: {found}
            call: current_weather
            bot: Current temperature is {city.temperature} °C
            bot: Overcast, wind 4.8 km/h from the north
            bot: What next?
            bot: 0) continue
            bot: 1) quit
            """,
            calls=REAL,
            finished=False,
        )
        assert test.command == AGAIN


# -- "What next?" left unanswered --------------------------------------------------


def test_what_next_left_unanswered_for_30_minutes_ends_politely() -> None:
    check_transcript(
        WeatherFlow(),
        """
        bot: Name a city:
        you: london
        call: search_places('london')
        bot: Which one do you mean?
        bot: 0) London, England, United Kingdom
        bot: 1) London, Ontario, Canada
        bot: 2) London, Ohio, United States
        bot: 3) London, Kentucky, United States
        bot: 4) London, Arkansas, United States
        you: 1
        bot: Found London (Canada) at latitude 42.98339 and longitude -81.23304
        call: current_weather(42.98339, -81.23304)
        bot: Current temperature is 10.7 °C
        bot: Slight rain, wind 11.2 km/h from the west
        bot: What next?
        bot: 0) continue
        bot: 1) quit
        timeout: 1800
        bot: No answer for 30 minutes, so I stopped here. Goodbye!
        """,
        calls=FAKES,
    )


def test_how_long_what_next_waits_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weather, "IDLE_MINUTES", 1.0)
    flow = FlowTest(AskAgain())
    assert flow.command == Choose(NEXT_PROMPT, ["continue", "quit"], timeout=60)
    flow.times_out()
    flow.expect(Print("No answer for 1 minute, so I stopped here. Goodbye!"))
    assert flow.finished


@pytest.mark.parametrize(
    ("environ", "minutes"),
    [({}, 30.0), ({"WEATHER_IDLE_MINUTES": " "}, 30.0), ({"WEATHER_IDLE_MINUTES": "2.5"}, 2.5)],
)
def test_idle_minutes_come_from_the_environment(environ: dict[str, str], minutes: float) -> None:
    assert weather.idle_minutes(environ) == minutes


@pytest.mark.parametrize("text", ["0", "-5", "soon", "inf", "nan"])
def test_a_bad_idle_minutes_is_one_line_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"^WEATHER_IDLE_MINUTES must be a positive number"):
        weather.idle_minutes({"WEATHER_IDLE_MINUTES": text})
