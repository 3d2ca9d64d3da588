"""Shared pytest fixtures."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from engine.scheduler import Scheduler
from engine.states import Flow
from engine.testing import RecordingFrontend
from tests.support.engine import Engine, engine_threads
from tests.support.fake_telegram import FakeTelegram
from tests.support.openmeteo_server import FakeOpenMeteo
from tests.support.postgres_server import PostgresServer, ServerError


def pytest_configure(config: pytest.Config) -> None:
    """Let the tests, and the hundreds of programs they start, keep compiled modules.

    With ``PYTHONDONTWRITEBYTECODE`` set, every ``weather-bot`` a test starts
    compiles the project from source again (0.1 s of CPU a start, a fifth of
    it, measured), and every test worker rewrites every test module (2 s).
    Set here, before the workers start, so they and their programs inherit it;
    ``__pycache__`` is ignored by git.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False


@pytest.fixture
def openmeteo(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenMeteo]:
    """A running fake Open-Meteo that `flows.openmeteo` talks to for this test.

    Sets ``OPEN_METEO_GEOCODING_URL``/``OPEN_METEO_FORECAST_URL`` to it and
    ``OPEN_METEO_TIMEOUT`` to 5 s (lower it to test a hang). Script it with
    ``add_place``/``set_forecast``/``add_cities``/``fail``; read ``requests``.
    """
    with FakeOpenMeteo() as server:
        monkeypatch.setenv("OPEN_METEO_GEOCODING_URL", server.geocoding_url)
        monkeypatch.setenv("OPEN_METEO_FORECAST_URL", server.forecast_url)
        monkeypatch.setenv("OPEN_METEO_TIMEOUT", "5")
        monkeypatch.delenv("HTTP_PROXY", raising=False)
        monkeypatch.delenv("http_proxy", raising=False)
        monkeypatch.delenv("ALL_PROXY", raising=False)
        monkeypatch.delenv("all_proxy", raising=False)
        yield server


@pytest.fixture
def places(openmeteo: FakeOpenMeteo) -> FakeOpenMeteo:
    """The fake Open-Meteo knowing the two cities the bot dialogues of the tests ask for."""
    openmeteo.add_place("Springfield", 39.8, -89.6, country="United States")
    openmeteo.set_forecast(39.8, -89.6, temperature=21.5)
    openmeteo.add_place("Shelbyville", 35.5, -86.5, country="United States")
    openmeteo.set_forecast(35.5, -86.5, temperature=9.0)
    return openmeteo


# -- the engine ---------------------------------------------------------------

@pytest.fixture
def no_engine_threads() -> Iterator[None]:
    """Fail the test if it leaves a scheduler or worker thread running.

    Test modules of the engine use it for every test, with
    ``pytestmark = pytest.mark.usefixtures("no_engine_threads")``.
    """
    before = engine_threads()
    assert not before, f"engine threads left over by an earlier test: {before}"
    yield
    deadline = time.monotonic() + 2.0
    while engine_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    left = engine_threads()
    assert not left, f"the test left engine threads running: {left}"


@pytest.fixture
def gates(no_engine_threads: None) -> Iterator[Callable[[], threading.Event]]:
    """Make events that a blocking ``Call`` waits on; all are set after the test.

    So a test that fails half-way does not leave a worker stuck for the next.
    """
    made: list[threading.Event] = []

    def make() -> threading.Event:
        made.append(threading.Event())
        return made[-1]

    yield make
    for gate in made:
        gate.set()


@pytest.fixture
def start_engine(no_engine_threads: None) -> Iterator[Callable[..., Engine]]:
    """Start a :class:`Scheduler` for a flow; every one started is stopped after the test.

    ``start_engine(flow, frontend=None, **options)`` returns ``(scheduler, frontend)``;
    the frontend is a new :class:`RecordingFrontend` unless one is given, and
    `options` go to the scheduler (``workers``, ``idle_timeout``, ``clock``...).
    """
    started: list[Scheduler] = []

    def start(flow: Flow, frontend: RecordingFrontend | None = None, **options: Any) -> Engine:
        frontend = frontend if frontend is not None else RecordingFrontend()
        scheduler = Scheduler(frontend, flow, **options)
        scheduler.start()
        started.append(scheduler)
        return scheduler, frontend

    yield start
    for scheduler in started:
        scheduler.stop()


# -- the Telegram bot ------------------------------------------------------------


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    """A running fake Telegram Bot API on 127.0.0.1 (see ``tests/support/fake_telegram.py``).

    Point a bot at it with ``TELEGRAM_API_URL=telegram.url`` and the token
    ``tests.support.fake_telegram.TOKEN``; play users with ``send_text``/``press``...;
    read what the bot sent with ``messages``/``wait_text``; inject failures
    with ``fail``. Stopped, with all its threads joined, after the test.
    """
    with FakeTelegram() as server:
        yield server


# -- PostgreSQL -------------------------------------------------------------------


def _running_postgres(whose: str) -> Iterator[PostgresServer]:
    """A real PostgreSQL, started now, stopped and deleted after; a failed start fails."""
    server = PostgresServer()
    try:
        server.start()
    except (ServerError, OSError) as error:
        pytest.fail(f"cannot start PostgreSQL for {whose}: {error}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the whole session (see ``tests/support/postgres_server.py``).

    Started the first time a test asks for it, stopped and deleted at the end.
    Never skipped: if it cannot start, every test that needs it fails, saying why.
    """
    yield from _running_postgres("the tests")


@pytest.fixture
def restartable_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of the test's own, which it may stop and start again (``halt``/``resume``)."""
    yield from _running_postgres("the test")


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's server (as its superuser)."""
    return postgres_server.create_database()
