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

from engine.commands import (
    Call,
    Choose,
    Command,
    Input,
    Location,
    Picture,
    Print,
    Recall,
    Remember,
    User,
    Who,
)
from engine.runner import Snapshot
from engine.states import Entered, State, conversation, load_flow
from engine.testing import FlowTest, check_transcript
from flows import weather
from flows.forecast_chart import forecast_chart
from flows.openmeteo import (
    MAX_NAME_LENGTH,
    Forecast,
    ForecastDay,
    ForecastHour,
    NameTooLong,
    Place,
    ServiceUnavailable,
    Weather,
    current_weather,
    search_places,
    weather_forecast,
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
    Welcome,
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

ASK = Input("Name a city: ", accepts=(str, Location))
AGAIN = Choose(NEXT_PROMPT, ["continue", "quit", "forecast"], timeout=30 * 60)
ANN = User(id="7", name="Ann", language="en")

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
TOKYO = Place("東京", 35.6895, 139.69171, "日本", "東京都")
MACMURDO = Place("Île MacMurdo", -48.89824, 69.41539)
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


def recalled(flow: FlowTest, memory: dict[str, Any] | None = None) -> Command | None:
    """Answer the ``Recall`` the flow waits on (nothing remembered by default)."""
    assert flow.command == Recall()
    return flow.recall(memory)


def asking(memory: dict[str, Any] | None = None) -> FlowTest:
    """A conversation past the greeting, waiting on "Name a city"."""
    flow = FlowTest(AskCity())
    recalled(flow, memory)
    return flow


def remembering(flow: FlowTest) -> Command | None:
    """Go past the ``Recall`` and ``Remember`` of the place just found."""
    recalled(flow)
    assert isinstance(flow.command, Remember)
    return flow.resume()


def at_search(city: str = "London") -> FlowTest:
    """A conversation waiting on the place search for `city`."""
    flow = asking()
    flow.answer(city)
    assert flow.command == Call(search_places, city)
    return flow


# -- step level -------------------------------------------------------------------


def test_the_flow_greets_the_user_by_name_then_asks_a_city() -> None:
    flow = FlowTest(WeatherFlow())
    assert flow.command == Who()

    flow.user(ANN)

    flow.expect(
        Print("Hello, Ann! Name a city or share a location, and I tell you its weather.")
    )
    assert flow.command == Recall()
    assert flow.state == AskCity()
    assert flow.recall() == ASK


def test_weather_flow_is_what_the_cli_loads_by_default() -> None:
    assert load_flow("flows.weather:WeatherFlow") is WeatherFlow is Welcome


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_blank_input_asks_again_without_a_call(blank: str) -> None:
    flow = asking()

    assert flow.answer(blank) == ASK
    assert flow.answer("Paris") == Call(search_places, "Paris")


def test_the_city_is_trimmed() -> None:
    flow = asking()

    assert flow.answer("  London \n") == Call(search_places, "London")


@pytest.mark.parametrize("city", ["Île MacMurdo", "東京", "Zürich", "Москва"])
def test_accented_and_non_latin_names_are_searched_as_typed(city: str) -> None:
    at_search(city)


def test_nothing_found_asks_again() -> None:
    flow = at_search("Atlantis")

    flow.returns([])

    flow.expect(Print("Found nothing"))
    assert flow.state == AskCity()
    assert recalled(flow) == ASK


def test_one_place_shows_its_weather_without_a_question() -> None:
    flow = at_search("London")

    flow.returns([LONDON_UK])

    assert flow.state == ShowWeather(LONDON_UK)
    flow.expect(
        Print("Found London (United Kingdom) at latitude 51.50853 and longitude -0.12574")
    )
    assert remembering(flow) == Call(current_weather, 51.50853, -0.12574)
    flow.returns(OVERCAST)
    flow.expect(Print("Current temperature is 15.6 °C"))
    assert flow.expect(Print("Overcast, wind 4.8 km/h from the north")) == AGAIN
    assert state_of(flow) == AskAgain(LONDON_UK)


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
    assert remembering(flow) == Call(current_weather, place.latitude, place.longitude)


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
    assert flow.state == AskCity()
    assert recalled(flow) == ASK


def test_a_name_too_long_to_send_is_told_and_asked_again() -> None:
    city = "x" * (MAX_NAME_LENGTH + 1)
    flow = at_search(city)

    flow.raises(NameTooLong(len(city)))

    flow.expect(Print("That name is too long."))
    assert flow.state == AskCity()
    assert recalled(flow) == ASK


@pytest.mark.parametrize("error", FAILURES, ids=str)
def test_weather_failure_says_unavailable_and_asks_again(error: ServiceUnavailable) -> None:
    flow = at_search("London")
    flow.returns([LONDON_UK])
    flow.resume()  # Found London ...
    remembering(flow)

    flow.raises(error)

    flow.expect(Print(UNAVAILABLE))
    assert flow.state == AskCity()
    # the place was found, so it is offered next time all the same
    assert recalled(flow) == Choose(
        "Name a city: ", ["London, England, United Kingdom"], accepts=(str, Location)
    )


def test_unavailable_is_one_plain_sentence() -> None:
    assert UNAVAILABLE == "The weather service is unavailable right now, please try again later."


def test_continue_asks_for_another_city_and_quit_ends() -> None:
    flow = FlowTest(AskAgain(LONDON_UK))
    assert flow.command == AGAIN

    flow.answer("continue")
    assert recalled(flow) == ASK
    flow.answer("Paris")
    flow.returns([Place("Paris", 48.85341, 2.3488, "France", "Île-de-France")])
    flow.resume()
    remembering(flow)
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

    assert next(steps) == Entered(Welcome())
    assert next(steps) == Who()
    assert isinstance(steps.send(ANN), Print)
    assert next(steps) == Entered(AskCity())
    assert next(steps) == Recall()
    assert steps.send({}) == ASK
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
    remembering(flow)
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
HELLO = "bot: Hello, Ann! Name a city or share a location, and I tell you its weather."


def kept(*places: Place) -> str:
    """The transcript line of remembering `places`, newest first."""
    memory: dict[str, Any] = {}
    for place in reversed(places):
        memory = weather.remembered(memory, place)
    return f"remember: {memory!r}"


def test_transcript_choose_a_place_then_quit() -> None:
    check_transcript(
        WeatherFlow(),
        f"""
        {HELLO}
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
        {kept(LONDON_CA)}
        call: current_weather(42.98339, -81.23304)
        bot: Current temperature is 10.7 °C
        bot: Slight rain, wind 11.2 km/h from the west
        bot: What next?
        bot: 0) continue
        bot: 1) quit
        bot: 2) forecast
        you: quit
        bot: Terminating
        """,
        calls=FAKES,
        user=ANN,
    )


def test_transcript_blank_nothing_failures_then_continue() -> None:
    check_transcript(
        WeatherFlow(),
        f"""
        {HELLO}
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
        {kept(ANTARCTICA)}
        call: current_weather
        bot: The weather service is unavailable right now, please try again later.
        bot: Name a city:
        bot: 0) Antarctica
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
        {kept(LONDON_UK, ANTARCTICA)}
        call: current_weather
        bot: Current temperature is 12.9 °C
        bot: Slight rain, wind 11.2 km/h from the west
        bot: What next?
        bot: 0) continue
        bot: 1) quit
        bot: 2) forecast
        you: continue
        bot: Name a city:
        bot: 0) London, England, United Kingdom
        bot: 1) Antarctica
        """,
        calls=FAKES,
        user=ANN,
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
        f"""
        {HELLO}
        bot: Name a city:
        you: 東京
        call: search_places('東京')
        bot: The weather service is unavailable right now, please try again later.
        bot: Name a city:
        you: 東京
        call: search_places('東京')
        bot: Found 東京 (日本) at latitude 35.6895 and longitude 139.69171
        {kept(TOKYO)}
        call: current_weather(35.6895, 139.69171)
        bot: Current temperature is 21.5 °C
        bot: Slight rain showers, wind 7.0 km/h from the south
        bot: What next?
        bot: 0) continue
        bot: 1) quit
        bot: 2) forecast
        you: continue
        bot: Name a city:
        bot: 0) 東京, 東京都, 日本
        you: Île MacMurdo
        call: search_places('Île MacMurdo')
        bot: Found Île MacMurdo at latitude -48.89824 and longitude 69.41539
        {kept(MACMURDO, TOKYO)}
        call: current_weather(-48.89824, 69.41539)
        bot: Current temperature is 15.6 °C
        bot: Overcast, wind 4.8 km/h from the north
        bot: What next?
        bot: 0) continue
        bot: 1) quit
        bot: 2) forecast
        you: quit
        bot: Terminating
        """,
        calls=REAL,
        user=ANN,
    )
    assert [r.failure for r in openmeteo.requests] == ["rate_limit", None, None, None, None]


@pytest.mark.parametrize("kind", ["server_error", "not_json", "wrong_shape", "close"])
def test_a_failing_forecast_from_the_fake_server_is_survived(
    openmeteo: FakeOpenMeteo, kind: FailureKind
) -> None:
    openmeteo.fail(kind, endpoint="forecast")

    check_transcript(
        WeatherFlow(),
        f"""
        {HELLO}
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
        {kept(LONDON_CA)}
        call: current_weather
        bot: The weather service is unavailable right now, please try again later.
        bot: Name a city:
        bot: 0) London, Ontario, Canada
        """,
        calls=REAL,
        user=ANN,
        finished=False,
    )


def test_each_generated_city_gets_its_own_temperature(openmeteo: FakeOpenMeteo) -> None:
    for city in openmeteo.add_cities(12):
        where = f"latitude {city.latitude} and longitude {city.longitude}"
        found = f"Found {city.name} (Testland) at {where}"
        place = Place(city.name, city.latitude, city.longitude, "Testland")
        test = check_transcript(
            AskCity(),
            f"""
            bot: Name a city:
            you: {city.name.lower()}
            call: search_places
            bot: {found}
            {kept(place)}
            call: current_weather
            bot: Current temperature is {city.temperature} °C
            bot: Overcast, wind 4.8 km/h from the north
            bot: What next?
            bot: 0) continue
            bot: 1) quit
            bot: 2) forecast
            """,
            calls=REAL,
            finished=False,
        )
        assert test.command == AGAIN


# -- "What next?" left unanswered --------------------------------------------------


def test_what_next_left_unanswered_for_30_minutes_ends_politely() -> None:
    check_transcript(
        WeatherFlow(),
        f"""
        {HELLO}
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
        {kept(LONDON_CA)}
        call: current_weather(42.98339, -81.23304)
        bot: Current temperature is 10.7 °C
        bot: Slight rain, wind 11.2 km/h from the west
        bot: What next?
        bot: 0) continue
        bot: 1) quit
        bot: 2) forecast
        timeout: 1800
        bot: No answer for 30 minutes, so I stopped here. Goodbye!
        """,
        calls=FAKES,
        user=ANN,
    )


def test_how_long_what_next_waits_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weather, "IDLE_MINUTES", 1.0)
    flow = FlowTest(AskAgain(LONDON_UK))
    assert flow.command == Choose(NEXT_PROMPT, ["continue", "quit", "forecast"], timeout=60)
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


# -- who, where, memory and the forecast --------------------------------------------------

VIENNA = Place("Vienna", 48.20849, 16.37208, "Austria", "Vienna")
BERLIN = Place("Berlin", 52.52437, 13.41053, "Germany", "Land Berlin")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
TWO_DAYS = Forecast(
    latitude=51.5,
    longitude=-0.12,
    timezone="Europe/London",
    utc_offset_seconds=3600,
    hourly=(ForecastHour("2026-10-17T00:00", 12.0, 0.0, 3),),
    daily=(
        ForecastDay("2026-10-17", 11.6, 18.7, 63, 4.6),
        ForecastDay("2026-10-18", None, None, None, None),
    ),
)


def test_a_shared_location_gets_its_weather_by_coordinates() -> None:
    flow = asking()

    flow.answer(Location(51.5, -0.12))

    assert flow.state == ShowWeather(Place("51.5, -0.12", 51.5, -0.12), point=True)
    flow.expect(Print("Your location is at latitude 51.5 and longitude -0.12"))
    assert remembering(flow) == Call(current_weather, 51.5, -0.12)


def test_typed_coordinates_are_a_location_too() -> None:
    check_transcript(
        AskCity(),
        f"""
        bot: Name a city:
        you: 48.2085, 16.3721
        bot: Your location is at latitude 48.2085 and longitude 16.3721
        {kept(Place("48.2085, 16.3721", 48.2085, 16.3721))}
        call: current_weather(48.2085, 16.3721)
        bot: Current temperature is 12.1 °C
        bot: Slight rain, wind 11.2 km/h from the west
        bot: What next?
        bot: 0) continue
        bot: 1) quit
        bot: 2) forecast
        you: quit
        bot: Terminating
        """,
        calls=FAKES,
    )


def test_the_deep_link_payload_is_the_city() -> None:
    check_transcript(
        WeatherFlow(),
        """
        bot: Hello, Ann! Name a city or share a location, and I tell you its weather.
        call: search_places('new york')
        bot: Found nothing
        bot: Name a city:
        """,
        calls=FAKES,
        user=User(id="7", name="Ann", start="new_york"),
        finished=False,
    )


def test_recent_places_are_offered_and_a_new_city_can_still_be_typed() -> None:
    memory = weather.remembered(weather.remembered({}, VIENNA), LONDON_CA)
    flow = asking(memory)
    offered = Choose(
        "Name a city: ", ["London, Ontario, Canada", "Vienna, Austria"], accepts=(str, Location)
    )
    assert flow.command == offered

    flow.answer("1")  # Vienna: no search needed
    assert flow.state == ShowWeather(VIENNA)

    flow = asking(memory)
    assert flow.answer("Berlin") == Call(search_places, "Berlin")

    flow = asking(memory)
    flow.answer(Location(1.0, 2.0))
    assert flow.state == ShowWeather(Place("1.0, 2.0", 1.0, 2.0), point=True)


def test_the_last_five_places_are_remembered_newest_first_once_each() -> None:
    places = [Place(f"Town{n}", float(n), float(n), "Testland") for n in range(7)]
    memory: dict[str, Any] = {"language": "kept as it was"}
    for place in [*places, places[3]]:
        memory = weather.remembered(memory, place)

    assert weather.recent_places(memory) == (places[3], places[6], places[5], places[4], places[2])
    assert memory["language"] == "kept as it was"
    assert memory["places"][0] == {
        "name": "Town3", "latitude": 3.0, "longitude": 3.0, "country": "Testland"
    }


def test_memory_the_flow_cannot_read_is_skipped() -> None:
    ok = {"name": "Ok", "latitude": 1, "longitude": 2}
    memory = {"places": [{"name": "Nowhere"}, "junk", ok]}
    assert weather.recent_places(memory) == (Place("Ok", 1.0, 2.0),)
    assert weather.recent_places({"places": "junk"}) == ()


def test_forecast_shows_seven_days_as_text_then_a_chart() -> None:
    flow = FlowTest(AskAgain(LONDON_UK))

    assert flow.answer("forecast") == Call(weather_forecast, 51.50853, -0.12574)
    flow.returns(TWO_DAYS)
    flow.expect(
        Print(
            "The next 7 days in London:\n"
            "Sat 17 Oct: 12 to 19 °C, Moderate rain, 4.6 mm precipitation\n"
            "Sun 18 Oct: no forecast yet"
        )
    )
    assert flow.command == Call(forecast_chart, TWO_DAYS, "London")
    flow.returns(PNG)
    assert flow.expect(Picture(PNG, caption="The next 48 hours in London")) == AGAIN
    assert flow.state == AskAgain(LONDON_UK)


def test_forecast_unavailable_says_so_and_asks_what_next() -> None:
    flow = FlowTest(AskAgain(LONDON_UK))
    flow.answer("2")

    flow.raises(ServiceUnavailable("timed out"))

    assert flow.expect(Print(UNAVAILABLE)) == AGAIN


def test_a_what_next_saved_before_the_forecast_offers_continue_and_quit() -> None:
    flow = FlowTest(AskAgain())
    assert flow.command == Choose(NEXT_PROMPT, ["continue", "quit"], timeout=30 * 60)


def test_transcript_location_then_forecast_with_memory() -> None:
    test = check_transcript(
        WeatherFlow(),
        f"""
        {HELLO}
        bot: Name a city:
        bot: 0) Berlin, Land Berlin, Germany
        you: 51.5, -0.12
        bot: Your location is at latitude 51.5 and longitude -0.12
        {kept(Place("51.5, -0.12", 51.5, -0.12), BERLIN)}
        call: current_weather(51.5, -0.12)
        bot: Current temperature is 12.9 °C
        bot: Slight rain, wind 11.2 km/h from the west
        bot: What next?
        bot: 0) continue
        bot: 1) quit
        bot: 2) forecast
        you: forecast
        call: weather_forecast(51.5, -0.12)
        bot: The next 7 days in 51.5, -0.12:
        bot: Sat 17 Oct: 12 to 19 °C, Moderate rain, 4.6 mm precipitation
        bot: Sun 18 Oct: no forecast yet
        call: forecast_chart
        picture: The next 48 hours in 51.5, -0.12 ({len(PNG)} bytes)
        bot: What next?
        bot: 0) continue
        bot: 1) quit
        bot: 2) forecast
        you: continue
        bot: Name a city:
        bot: 0) 51.5, -0.12
        bot: 1) Berlin, Land Berlin, Germany
        you: 1
        bot: Found Berlin (Germany) at latitude 52.52437 and longitude 13.41053
        {kept(BERLIN, Place("51.5, -0.12", 51.5, -0.12))}
        call: current_weather
        bot: Current temperature is 13.1 °C
        bot: Slight rain, wind 11.2 km/h from the west
        bot: What next?
        bot: 0) continue
        bot: 1) quit
        bot: 2) forecast
        you: quit
        bot: Terminating
        """,
        calls={
            **FAKES,
            "weather_forecast": lambda latitude, longitude: TWO_DAYS,
            "forecast_chart": lambda forecast, where: PNG,
        },
        user=ANN,
        memory=weather.remembered({}, BERLIN),
    )
    assert [p.name for p in weather.recent_places(test.memory)] == ["Berlin", "51.5, -0.12"]


def test_forecast_against_the_fake_server_draws_a_real_chart(openmeteo: FakeOpenMeteo) -> None:
    flow = FlowTest(AskAgain(ANTARCTICA))
    flow.answer("forecast")
    assert isinstance(flow.command, Call)
    forecast = flow.command.run()  # the real client, against the fake server
    flow.returns(forecast)
    assert isinstance(flow.command, Print)
    assert flow.command.text.splitlines()[:2] == [
        "The next 7 days in Antarctica:",
        "Sat 17 Oct: 12 to 19 °C, Moderate rain, 4.6 mm precipitation",
    ]
    chart = flow.resume()
    assert isinstance(chart, Call)
    flow.returns(chart.run())  # drawn for real

    assert isinstance(flow.command, Picture)
    assert flow.command.png.startswith(b"\x89PNG") and len(flow.command.png) > 10_000
    assert flow.command.caption == "The next 48 hours in Antarctica"
    assert flow.resume() == AGAIN
    flow.check_replay()


def test_a_remembered_location_chosen_again_is_told_as_a_location() -> None:
    point = Place("51.5, -0.12", 51.5, -0.12)
    flow = asking(weather.remembered({}, point))

    flow.answer("0")

    assert flow.state == ShowWeather(point, point=True)
    flow.expect(Print("Your location is at latitude 51.5 and longitude -0.12"))
