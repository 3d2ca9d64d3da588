"""The Open-Meteo client against the fake server, over real HTTP (no mocks)."""

from __future__ import annotations

import logging
import pickle
import socket
import threading
import time

import pytest

import flows.openmeteo as openmeteo_client
from flows.openmeteo import (
    LOG_LINE_LIMIT,
    MAX_NAME_LENGTH,
    USER_AGENT,
    NameTooLong,
    Place,
    ServiceUnavailable,
    Weather,
    check_settings,
    compass_point,
    current_weather,
    describe_weather_code,
    search_places,
)
from tests.support.local_server import TEST_CERTIFICATE
from tests.support.openmeteo_server import FailureKind, FakeOpenMeteo, load_fixture

LONDON = Place(
    name="London",
    latitude=51.50853,
    longitude=-0.12574,
    country="United Kingdom",
    admin1="England",
    country_code="GB",
    timezone="Europe/London",
    population=8961989,
    elevation=25.0,
    id=2643743,
)


# -- search_places -------------------------------------------------------------


def test_london_has_five_places_best_first(openmeteo: FakeOpenMeteo) -> None:
    places = search_places("London")

    assert len(places) == 5
    assert places[0] == LONDON
    assert [(p.admin1, p.country) for p in places[1:]] == [
        ("Ontario", "Canada"),
        ("Ohio", "United States"),
        ("Kentucky", "United States"),
        ("Arkansas", "United States"),
    ]


def test_search_sends_the_documented_parameters_and_user_agent(
    openmeteo: FakeOpenMeteo,
) -> None:
    search_places("  London ", count=2)

    (request,) = openmeteo.requests
    assert request.path == "/v1/search"
    assert request.params == {"name": "London", "count": "2", "language": "en", "format": "json"}
    assert request.headers["User-Agent"] == USER_AGENT == "yielded-weather/0.1"


def test_count_limits_the_results(openmeteo: FakeOpenMeteo) -> None:
    assert [p.admin1 for p in search_places("london", count=2)] == ["England", "Ontario"]


def test_missing_fields_are_none(openmeteo: FakeOpenMeteo) -> None:
    antarctica, macmurdo, atlantic_point = search_places("Antarctica")

    assert antarctica == Place(
        name="Antarctica",
        latitude=-78.15856,
        longitude=16.40626,
        timezone="Antarctica/Syowa",
        population=1100,
        elevation=3199.0,
        id=6255152,
    )
    assert (macmurdo.country, macmurdo.admin1, macmurdo.population) == (None, None, None)
    assert macmurdo.country_code == "TF"
    assert (atlantic_point.elevation, atlantic_point.population) == (None, None)
    assert (atlantic_point.admin1, atlantic_point.country) == ("Maine", "United States")


def test_no_match_is_an_empty_list(openmeteo: FakeOpenMeteo) -> None:
    assert search_places("Atlantis") == []
    assert openmeteo.requests[-1].params["name"] == "Atlantis"


def test_blank_name_is_an_empty_list_without_a_request(openmeteo: FakeOpenMeteo) -> None:
    assert search_places("   ") == []
    assert openmeteo.requests == []


@pytest.mark.parametrize(
    ("name", "encoded", "expected"),
    [
        ("Île MacMurdo", "name=%C3%8Ele+MacMurdo", "Île MacMurdo"),
        ("東京", "name=%E6%9D%B1%E4%BA%AC", "東京"),
    ],
)
def test_non_ascii_names_are_sent_as_utf8(
    openmeteo: FakeOpenMeteo, name: str, encoded: str, expected: str
) -> None:
    (place,) = search_places(name)

    assert place.name == expected
    assert encoded in openmeteo.requests[-1].query
    assert openmeteo.requests[-1].params["name"] == name


def test_non_latin_place_keeps_its_region_and_country(openmeteo: FakeOpenMeteo) -> None:
    (tokyo,) = search_places("東京")
    assert (tokyo.admin1, tokyo.country, tokyo.latitude) == ("東京都", "日本", 35.6895)


def test_malformed_results_are_dropped(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.add_places("Nowhere", [{"name": "Nowhere"}, {"latitude": 1, "longitude": 2}])
    openmeteo.add_place("Nowhere", 10.0, 20.0, country="Somewhere")

    assert search_places("Nowhere") == [Place("Nowhere", 10.0, 20.0, country="Somewhere")]


def test_only_malformed_results_is_unavailable(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.add_places("Nowhere", [{"name": "Nowhere", "latitude": "north"}])

    with pytest.raises(ServiceUnavailable, match="unexpected response"):
        search_places("Nowhere")


# -- current_weather -----------------------------------------------------------


def test_current_weather_reads_the_current_block(openmeteo: FakeOpenMeteo) -> None:
    weather = current_weather(51.50853, -0.12574)

    assert weather == Weather(
        temperature=15.6,
        weather_code=3,
        wind_speed=4.8,
        wind_direction=13.0,
        time="2025-09-02T16:45",
    )
    assert weather.description == "Overcast"
    (request,) = openmeteo.requests
    assert request.path == "/v1/forecast"
    assert request.params["current"] == (
        "temperature_2m,weather_code,wind_speed_10m,wind_direction_10m"
    )
    assert (request.params["latitude"], request.params["longitude"]) == ("51.50853", "-0.12574")
    assert request.headers["User-Agent"] == USER_AGENT


def test_each_city_gets_its_own_weather(openmeteo: FakeOpenMeteo) -> None:
    cities = openmeteo.add_cities(3)

    for city in cities:
        (place,) = search_places(city.name)
        assert current_weather(place.latitude, place.longitude).temperature == city.temperature
    assert [c.temperature for c in cities] == [0.01, 0.02, 0.03]


def test_legacy_current_weather_shape_is_accepted(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.set_forecast(47.0, 122.0, body=load_fixture("forecast_current_weather"))

    assert current_weather(47.0, 122.0) == Weather(
        temperature=15.6,
        weather_code=3,
        wind_speed=4.8,
        wind_direction=13.0,
        time="2025-09-02T16:45",
    )


def test_other_units_are_converted_to_celsius_and_kmh(openmeteo: FakeOpenMeteo) -> None:
    # The recorded New York answer is in °F and mp/h.
    openmeteo.set_forecast(40.71, -73.99, body=load_fixture("forecast_current"))

    weather = current_weather(40.71, -73.99)

    assert (weather.temperature, weather.wind_speed) == (16.1, 3.4)
    assert (weather.weather_code, weather.description) == (1, "Mainly clear")
    assert weather.wind_direction == 238.0


def test_missing_wind_and_code_are_none(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.set_forecast(1.0, 2.0, body={"current": {"temperature_2m": -3}})

    weather = current_weather(1.0, 2.0)

    assert weather == Weather(temperature=-3.0)
    assert weather.description == "Unknown conditions"


def test_missing_temperature_is_unavailable(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.set_forecast(1.0, 2.0, body={"current": {"weather_code": 3, "temperature_2m": None}})

    with pytest.raises(ServiceUnavailable, match="unexpected response"):
        current_weather(1.0, 2.0)


def test_unknown_temperature_unit_is_unavailable(openmeteo: FakeOpenMeteo) -> None:
    body = {"current_units": {"temperature_2m": "K"}, "current": {"temperature_2m": 280}}
    openmeteo.set_forecast(1.0, 2.0, body=body)

    with pytest.raises(ServiceUnavailable, match="unexpected response"):
        current_weather(1.0, 2.0)


def test_the_service_rejecting_a_latitude_is_unavailable_with_its_reason(
    openmeteo: FakeOpenMeteo,
) -> None:
    with pytest.raises(ServiceUnavailable) as caught:
        current_weather(200.0, 0.0)

    assert caught.value.reason == (
        "HTTP 400: Latitude must be in range of -90 to 90°. Given: 200.0."
    )


# -- failures ---------------------------------------------------------------------


def _call(endpoint: str) -> object:
    return search_places("London") if endpoint == "search" else current_weather(51.5, -0.1)


@pytest.mark.parametrize("endpoint", ["search", "forecast"])
@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("rate_limit", "rate limited"),
        ("server_error", "HTTP 500"),
        ("bad_request", "HTTP 400: Latitude must be in range of -90 to 90°. Given: 200.0."),
        ("not_json", "response is not JSON"),
        ("wrong_shape", "unexpected response"),
        ("close", "cannot connect"),
    ],
)
def test_every_failure_is_service_unavailable(
    openmeteo: FakeOpenMeteo, endpoint: str, kind: FailureKind, reason: str
) -> None:
    openmeteo.fail(kind)

    with pytest.raises(ServiceUnavailable) as caught:
        _call(endpoint)

    assert caught.value.reason == reason
    assert openmeteo.requests[-1].failure == kind
    _call(endpoint)  # only the next request failed


@pytest.mark.parametrize("endpoint", ["search", "forecast"])
def test_a_hang_times_out(
    openmeteo: FakeOpenMeteo, monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    monkeypatch.setenv("OPEN_METEO_TIMEOUT", "0.2")
    openmeteo.fail("hang")

    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="timed out"):
        _call(endpoint)

    assert time.monotonic() - started < openmeteo.hang_seconds / 2
    _call(endpoint)


def test_other_5xx_statuses_are_unavailable(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.fail("server_error", status=503, endpoint="forecast")

    assert search_places("London")  # the failure waits for a forecast request
    with pytest.raises(ServiceUnavailable, match="HTTP 503"):
        current_weather(51.5, -0.1)


def test_failures_queue_in_order(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.fail("rate_limit", times=2)
    openmeteo.fail("not_json")

    reasons = []
    for _ in range(3):
        with pytest.raises(ServiceUnavailable) as caught:
            search_places("London")
        reasons.append(caught.value.reason)

    assert reasons == ["rate limited", "rate limited", "response is not JSON"]
    assert len(search_places("London")) == 5


def test_connection_refused_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OPEN_METEO_GEOCODING_URL", f"http://127.0.0.1:{port}/v1/search")

    with pytest.raises(ServiceUnavailable, match="cannot connect"):
        search_places("London")


def test_a_proxy_named_in_the_environment_is_used(
    openmeteo: FakeOpenMeteo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake answers a proxy's request too (its path is then the whole URL),
    # so a host that does not exist is reached through it, and only through it.
    monkeypatch.setenv("OPEN_METEO_GEOCODING_URL", "http://open-meteo.invalid/v1/search")
    monkeypatch.setenv("HTTP_PROXY", openmeteo.base_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    assert search_places("London")[0] == LONDON
    (request,) = openmeteo.requests
    assert request.headers["Host"] == "open-meteo.invalid"


def test_https_is_verified_against_requests_ca_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    def as_if_restarted() -> None:  # the environment is read once per URL and process
        monkeypatch.setattr(openmeteo_client, "_session", None)
        openmeteo_client._environment.cache_clear()

    as_if_restarted()
    with FakeOpenMeteo(tls=True) as server:
        monkeypatch.setenv("OPEN_METEO_GEOCODING_URL", server.geocoding_url)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(TEST_CERTIFICATE))
        assert search_places("London")[0].name == "London"

        as_if_restarted()
        monkeypatch.delenv("REQUESTS_CA_BUNDLE")  # certifi's bundle: the fake is unknown there
        with pytest.raises(ServiceUnavailable, match="cannot connect"):
            search_places("London")


def test_failures_are_logged_with_their_detail(
    openmeteo: FakeOpenMeteo, caplog: pytest.LogCaptureFixture
) -> None:
    openmeteo.fail("rate_limit", reason="Hourly API request limit exceeded.")

    with (
        caplog.at_level(logging.WARNING, logger="flows.openmeteo"),
        pytest.raises(ServiceUnavailable),
    ):
        search_places("London")

    (record,) = caplog.records
    assert record.name == "flows.openmeteo"
    assert record.levelno == logging.WARNING
    assert "Hourly API request limit exceeded." in record.getMessage()


def test_a_bad_timeout_setting_falls_back_to_the_default(
    openmeteo: FakeOpenMeteo, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OPEN_METEO_TIMEOUT", "soon")

    with caplog.at_level(logging.WARNING, logger="flows.openmeteo"):
        assert len(search_places("London")) == 5

    assert "OPEN_METEO_TIMEOUT" in caplog.text


# -- plain data --------------------------------------------------------------------


def test_results_and_errors_survive_pickle(openmeteo: FakeOpenMeteo) -> None:
    places = search_places("London")
    weather = current_weather(places[0].latitude, places[0].longitude)
    openmeteo.fail("rate_limit")
    with pytest.raises(ServiceUnavailable) as caught:
        search_places("London")

    assert pickle.loads(pickle.dumps(places)) == places
    assert pickle.loads(pickle.dumps(weather)) == weather
    error = pickle.loads(pickle.dumps(caught.value))
    assert type(error) is ServiceUnavailable
    assert error.reason == "rate limited"
    assert str(error) == "rate limited"


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (0, "Clear sky"),
        (1, "Mainly clear"),
        (2, "Partly cloudy"),
        (3, "Overcast"),
        (45, "Fog"),
        (48, "Depositing rime fog"),
        (51, "Light drizzle"),
        (57, "Dense freezing drizzle"),
        (61, "Slight rain"),
        (67, "Heavy freezing rain"),
        (71, "Slight snowfall"),
        (77, "Snow grains"),
        (80, "Slight rain showers"),
        (82, "Violent rain showers"),
        (85, "Slight snow showers"),
        (86, "Heavy snow showers"),
        (95, "Thunderstorm"),
        (99, "Thunderstorm with heavy hail"),
        (42, "Unknown conditions (code 42)"),
        (None, "Unknown conditions"),
    ],
)
def test_weather_codes_in_words(code: int | None, words: str) -> None:
    assert describe_weather_code(code) == words


@pytest.mark.parametrize(
    ("degrees", "point"),
    [(0, "north"), (13, "north"), (45, "north-east"), (238, "south-west"), (350, "north")],
)
def test_compass_points(degrees: float, point: str) -> None:
    assert compass_point(degrees) == point


# -- the fake server itself ------------------------------------------------------


def test_the_fake_server_leaves_no_thread_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    before = set(threading.enumerate())
    with FakeOpenMeteo(hang_seconds=30) as server:
        monkeypatch.setenv("OPEN_METEO_GEOCODING_URL", server.geocoding_url)
        monkeypatch.setenv("OPEN_METEO_TIMEOUT", "0.2")
        server.fail("hang")
        with pytest.raises(ServiceUnavailable):
            search_places("London")
        assert any(t.name == "fake-openmeteo" for t in threading.enumerate())
        started = time.monotonic()

    assert time.monotonic() - started < 5  # the hanging request was released
    assert set(threading.enumerate()) <= before


# -- hostile and broken input (issue 14) -----------------------------------------


@pytest.mark.parametrize("endpoint", ["search", "forecast"])
@pytest.mark.parametrize("kind", ["trickle", "trickle_headers"])
def test_a_trickling_server_is_cut_off_at_the_overall_deadline(
    openmeteo: FakeOpenMeteo, monkeypatch: pytest.MonkeyPatch, endpoint: str, kind: FailureKind
) -> None:
    # Each byte comes well within the 2 s read timeout; the whole answer would
    # take minutes. The total of 1 s must end the lookup.
    monkeypatch.setenv("OPEN_METEO_TIMEOUT", "2,2,1")
    openmeteo.fail(kind)

    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="timed out"):
        _call(endpoint)

    assert time.monotonic() - started < 4  # the deadline, plus slack for a busy machine
    assert openmeteo.requests[-1].failure == kind
    _call(endpoint)  # the next lookup is served as usual


def test_the_total_defaults_to_connect_plus_read() -> None:
    assert openmeteo_client._parse_timeout("2") == (2, 2, 4)
    assert openmeteo_client._parse_timeout("1,3") == (1, 3, 4)
    assert openmeteo_client._parse_timeout("1,3,2.5") == (1, 3, 2.5)
    assert openmeteo_client.DEFAULT_TIMEOUT.total == 13.05


def test_an_oversized_answer_is_refused(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.fail("huge")

    with pytest.raises(ServiceUnavailable, match="response too large"):
        search_places("London")


def test_a_name_too_long_is_not_sent(openmeteo: FakeOpenMeteo) -> None:
    with pytest.raises(NameTooLong) as caught:
        search_places("x" * 100_000)

    assert caught.value.length == 100_000
    assert "100000 characters" in str(caught.value)
    assert openmeteo.requests == []
    assert pickle.loads(pickle.dumps(caught.value)).length == 100_000


def test_a_name_of_the_longest_length_is_sent(openmeteo: FakeOpenMeteo) -> None:
    assert search_places(" " + "y" * MAX_NAME_LENGTH + " ") == []

    assert openmeteo.requests[-1].params["name"] == "y" * MAX_NAME_LENGTH


def test_no_log_line_is_longer_than_the_limit(
    openmeteo: FakeOpenMeteo, caplog: pytest.LogCaptureFixture
) -> None:
    openmeteo.fail("rate_limit", reason="z" * 50_000)

    with (
        caplog.at_level(logging.WARNING, logger="flows.openmeteo"),
        pytest.raises(ServiceUnavailable),
    ):
        search_places("London")

    (record,) = caplog.records
    message = record.getMessage()
    assert len(message) < LOG_LINE_LIMIT + 40
    assert message.endswith("characters)")
    assert "rate limited" in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OPEN_METEO_GEOCODING_URL", "127.0.0.1:8089/v1/search"),
        ("OPEN_METEO_FORECAST_URL", "ftp://example.org/v1/forecast"),
        ("OPEN_METEO_FORECAST_URL", "http:///v1/forecast"),
        ("OPEN_METEO_TIMEOUT", "abc"),
        ("OPEN_METEO_TIMEOUT", "0"),
        ("OPEN_METEO_TIMEOUT", "1,2,3,4"),
        ("OPEN_METEO_TIMEOUT", "nan"),
        ("OPEN_METEO_TIMEOUT", "-1,5"),
    ],
)
def test_check_settings_refuses_bad_values_in_one_line(variable: str, value: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_settings({variable: value})

    message = str(caught.value)
    assert message.startswith(f"{variable}=")
    assert "\n" not in message


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OPEN_METEO_GEOCODING_URL": "", "OPEN_METEO_TIMEOUT": " "},
        {
            "OPEN_METEO_GEOCODING_URL": "http://127.0.0.1:8089/v1/search",
            "OPEN_METEO_FORECAST_URL": "https://meteo.example.org/v1/forecast",
            "OPEN_METEO_TIMEOUT": "3.05,10,12",
        },
    ],
)
def test_check_settings_accepts_good_and_absent_values(environ: dict[str, str]) -> None:
    check_settings(environ)


def test_a_url_without_a_scheme_is_a_configuration_error_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OPEN_METEO_GEOCODING_URL", "127.0.0.1:1/nowhere-at-all")

    with caplog.at_level(logging.DEBUG, logger="flows.openmeteo"):
        for _ in range(3):
            with pytest.raises(ServiceUnavailable, match="misconfigured"):
                search_places("London")

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "OPEN_METEO_GEOCODING_URL" in errors[0].getMessage()


def test_a_404_on_every_request_is_logged_once_as_a_configuration_error(
    openmeteo: FakeOpenMeteo, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OPEN_METEO_FORECAST_URL", f"{openmeteo.base_url}/v1/forcast")

    with caplog.at_level(logging.DEBUG, logger="flows.openmeteo"):
        for _ in range(3):
            with pytest.raises(ServiceUnavailable, match="HTTP 404"):
                current_weather(51.5, -0.1)

    assert len(openmeteo.requests) == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1
    assert "configuration error" in errors[0]
    assert "/v1/forcast" in errors[0]
    assert "OPEN_METEO_FORECAST_URL" in errors[0]


def test_lookups_keep_their_connection_alive(openmeteo: FakeOpenMeteo) -> None:
    before = openmeteo_client._connections.opened
    for _ in range(3):
        assert search_places("London")[0] == LONDON
        assert current_weather(51.5, -0.1).temperature is not None

    assert openmeteo_client._connections.opened - before <= 1
    assert len(openmeteo.requests) == 6
