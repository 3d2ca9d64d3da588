"""Flows that know their user, take a location, remember, and show pictures.

The commands (``Who``, ``Input(accepts=...)``, ``Recall``/``Remember``/
``Forget``, ``Picture``) are checked where they are built, in the testing kit
(step and transcript style), on the real scheduler, and across a restart on
a real state file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine import (
    MEMORY_LIMIT,
    Call,
    Choose,
    Forget,
    Input,
    Location,
    Photo,
    Picture,
    Print,
    Recall,
    Remember,
    State,
    User,
    Who,
)
from engine.frontend import Notice, refusal
from engine.hosting import takes
from engine.journal import SCHEMA_VERSION, SqliteJournal
from engine.journals import open_journal
from engine.scheduler import Scheduler
from engine.states import Steps
from engine.testing import FlowMismatch, FlowTest, RecordingFrontend, check_transcript
from tests.conftest import Engine
from tests.support.engine import FORMAT_2, Confirming
from tests.support.flows import Echo, Pin, Visitor, tiny_png

StartEngine = Callable[..., Engine]

ANN = User(id="7", name="Ann", language="en", private=True, start="berlin")
PNG = tiny_png()
TEXT_PLEASE = f"bot: {Notice.ANSWER_WITH_TEXT.value}"
LOCATION_PLEASE = f"bot: {Notice.SEND_LOCATION.value}"


# -- the commands, checked where they are built ----------------------------------


def test_a_location_is_checked_and_typed_coordinates_parse() -> None:
    assert Location(51.5, 0) == Location(51.5, 0.0)
    assert str(Location(51.5, -0.12)) == "51.5, -0.12"
    assert Location.parse("51.5, -0.12") == Location(51.5, -0.12)
    assert Location.parse(" -33.9 151.2 ") == Location(-33.9, 151.2)
    assert Location.parse("London") is None
    assert Location.parse("3 days") is None
    with pytest.raises(ValueError, match="latitude must be from -90 to 90"):
        Location.parse("91, 0")
    with pytest.raises(ValueError, match="longitude must be from -180 to 180"):
        Location(0, 180.5)
    with pytest.raises(TypeError, match="must be a number"):
        Location("51.5", 0)  # type: ignore[arg-type]


def test_a_question_says_what_it_accepts() -> None:
    assert Input("City?").accepts == (str,)
    assert Input("Where?", accepts=Location).accepts == (Location,)
    assert Input("City?", accepts=(str, Location)) == Input("City?", accepts=[str, Location])  # type: ignore[arg-type]
    assert repr(Input("City?", accepts=(str, Location))) == (
        "Input(prompt='City?', accepts=(str, Location))"
    )
    assert repr(Input("City?")) == "Input(prompt='City?')"  # as state files of format 2 know it
    assert takes(Input("Where?", accepts=(str, Location)), Location)
    assert not takes(Input("City?"), Location)
    assert takes(Choose("Pick", ["a"], accepts=Location), Location)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="accepts str or kinds of Answer"):
        Input("City?", accepts=(int,))
    with pytest.raises(ValueError, match="at least one kind"):
        Input("City?", accepts=())


def test_what_each_question_takes() -> None:
    point = Location(51.5, -0.12)
    photo = Photo(PNG, "look")
    text_only = Input("City?")
    assert text_only.accept("London") == "London"
    assert text_only.accept(point) is None
    assert refusal(text_only, point) is Notice.ANSWER_WITH_TEXT
    assert refusal(text_only, photo) is Notice.ANSWER_WITH_TEXT
    either = Input("City?", accepts=(str, Location))
    assert either.accept("London") == "London"
    assert either.accept("51.5,-0.12") == point
    assert either.accept(point) == point
    assert either.accept("91, 0") is None
    assert refusal(either, "91, 0") is Notice.NOT_ON_EARTH
    only_point = Input("Where?", accepts=Location)
    assert only_point.accept("London") is None
    assert refusal(only_point, "London") is Notice.SEND_LOCATION
    assert refusal(only_point, photo) is Notice.SEND_LOCATION
    assert refusal(Input("Selfie?", accepts=Photo), "hi") is Notice.SEND_PHOTO
    places = Choose("Which?", ["Paris", "Rome"], accepts=(str, Location))
    assert places.accept("1") == "Rome"
    assert places.accept("Berlin") == "Berlin"  # a new city, typed
    assert places.accept(point) == point
    strict = Choose("Which?", ["Paris", "Rome"])
    assert strict.accept("Berlin") is None
    assert refusal(strict, "Berlin") is Notice.TRY_AGAIN
    assert refusal(strict, point) is Notice.ANSWER_WITH_TEXT


def test_remember_takes_small_plain_data_only() -> None:
    assert Remember({"places": ["Paris", "Rome"], "count": 2}).data["count"] == 2
    with pytest.raises(TypeError, match="takes a dict"):
        Remember(["Paris"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"plain data .*data\['when'\] is"):
        Remember({"when": object()})
    with pytest.raises(TypeError, match="key that is not text"):
        Remember({"places": {1: "Paris"}})
    with pytest.raises(ValueError, match=f"at most {MEMORY_LIMIT} bytes"):
        Remember({"notes": "x" * MEMORY_LIMIT})


def test_a_picture_is_png_bytes() -> None:
    assert repr(Picture(PNG, "Map")) == f"Picture({len(PNG)} bytes, caption='Map')"
    with pytest.raises(ValueError, match="PNG signature"):
        Picture(b"GIF89a...")
    with pytest.raises(TypeError, match="must be bytes"):
        Picture("not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="caption must be text"):
        Picture(PNG, caption=3)  # type: ignore[arg-type]


def test_a_user_is_checked() -> None:
    assert User("7", "Ann") == User("7", "Ann", None, True, None)
    with pytest.raises(TypeError, match="User id must be text"):
        User(7, "Ann")  # type: ignore[arg-type]


# -- the testing kit: step style -----------------------------------------------


def test_step_style_who_recall_location_remember_picture() -> None:
    flow = FlowTest(Visitor())
    assert flow.command == Who()
    flow.user(ANN)
    assert flow.command == Recall()
    flow.recall({"places": ["Paris"]})
    flow.expect(Print("Hello Ann"))
    flow.expect(Print("language en, private, start berlin"))
    flow.expect(Print("Last time: Paris"))
    assert flow.command == Input("Where?", accepts=(str, Location))
    flow.answer(Location(51.5, -0.12))
    flow.expect(Print("You said point 51.5, -0.12"))
    flow.expect(Remember({"places": ["point 51.5, -0.12", "Paris"]}))
    flow.expect(Picture(PNG, caption="Map of point 51.5, -0.12"))
    assert flow.finished
    assert flow.memory == {"places": ["point 51.5, -0.12", "Paris"]}
    assert "you: 51.5, -0.12" in flow.transcript
    flow.check_replay()


def test_step_style_a_refused_kind_of_answer_gets_the_hint() -> None:
    flow = FlowTest(Echo())
    flow.answer(Location(1, 2))
    assert flow.transcript[-2:] == [TEXT_PLEASE, "bot: Say something"]
    assert flow.command == Input("Say something")  # still pending
    flow = FlowTest(Pin())
    flow.answer("London")
    assert flow.transcript[-2:] == [LOCATION_PLEASE, "bot: Share a location"]
    flow.answer("48.85, 2.35")
    flow.expect(Print("Pinned 48.85 2.35"))


def test_step_style_who_and_recall_need_their_answers() -> None:
    flow = FlowTest(Visitor())
    with pytest.raises(FlowMismatch, match="Who needs an answer"):
        flow.resume()
    with pytest.raises(FlowMismatch, match="expected the flow to wait on Call"):
        flow.returns(ANN)
    flow.user(ANN)
    with pytest.raises(FlowMismatch, match="Recall needs an answer"):
        flow.resume()
    flow.recall()  # from `memory`: nothing yet
    assert flow.command == Print("Hello Ann")


def test_step_style_forget_empties_the_memory() -> None:
    flow = FlowTest(Visitor(), memory={"places": ["Paris"]})
    flow.user(ANN)
    flow.recall()
    flow.expect(Print("Hello Ann"))
    flow.expect(Print("language en, private, start berlin"))
    flow.expect(Print("Last time: Paris"))
    flow.answer("forget")
    flow.expect(Forget())
    flow.expect(Print("Forgotten"))
    assert flow.memory == {}


# -- the testing kit: transcript style -------------------------------------------


def test_transcript_style_with_a_location_a_picture_and_memory() -> None:
    test = check_transcript(
        Visitor(),
        f"""
        bot: Hello Ann
        bot: language en, private, start berlin
        bot: Last time: Rome
        bot: Where?
        you: 51.5, -0.12
        bot: You said point 51.5, -0.12
        remember: {{'places': ['point 51.5, -0.12', 'Rome']}}
        picture: Map of point 51.5, -0.12 ({len(PNG)} bytes)
        """,
        user=ANN,
        memory={"places": ["Rome"]},
    )
    assert test.memory == {"places": ["point 51.5, -0.12", "Rome"]}


def test_transcript_style_text_off_the_earth_and_a_picture_without_caption() -> None:
    check_transcript(
        Pin(),
        f"""
        bot: Share a location
        you: Paris
        bot: {Notice.SEND_LOCATION.value}
        bot: Share a location
        you: 95, 10
        bot: {Notice.NOT_ON_EARTH.value}
        bot: Share a location
        you: -33.9, 151.2
        bot: Pinned -33.9 151.2
        picture: ({len(PNG)} bytes)
        """,
    )


def test_transcript_style_needs_a_user_for_who() -> None:
    with pytest.raises(FlowMismatch, match=r"pass user=User"):
        check_transcript(Visitor(), "bot: Hello Ann")


# -- on the real scheduler ------------------------------------------------------------


def test_the_scheduler_answers_who_from_the_frontend(start_engine: StartEngine) -> None:
    frontend = RecordingFrontend()
    frontend.users["chat-1"] = ANN
    scheduler, _ = start_engine(Visitor, frontend)
    scheduler.begin("chat-1")
    lines = frontend.wait_for("chat-1", "bot: Where?")
    assert lines == ["bot: Hello Ann", "bot: language en, private, start berlin", "bot: Where?"]
    scheduler.begin("chat-2")  # a frontend that knows nobody: the key
    assert frontend.wait_for("chat-2", "bot: Where?")[:2] == [
        "bot: Hello chat-2",
        "bot: language None, private, start None",
    ]


def test_a_location_sent_by_the_frontend_or_typed(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(Visitor)
    scheduler.begin("ann")
    frontend.wait_for("ann", "bot: Where?")
    scheduler.send("ann", Location(51.5, -0.12))
    frontend.wait_for("ann", "ended")
    scheduler.begin("bob")
    frontend.wait_for("bob", "bot: Where?")
    scheduler.send("bob", "48.85, 2.35")
    lines = frontend.wait_for("bob", "ended")
    assert "bot: You said point 48.85, 2.35" in lines
    assert frontend.lines("ann")[-3:] == [
        "bot: You said point 51.5, -0.12",
        f"picture: Map of point 51.5, -0.12 ({len(PNG)} bytes)",
        "ended",
    ]


def test_a_text_question_hints_at_a_location_or_photo_and_stays(
    start_engine: StartEngine,
) -> None:
    scheduler, frontend = start_engine(Echo)
    scheduler.begin("ann")
    frontend.wait_for("ann", "bot: Say something")
    scheduler.send("ann", Location(51.5, -0.12))
    scheduler.send("ann", Photo(PNG))
    scheduler.send("ann", "hello")
    lines = frontend.wait_for("ann", "bot: echo: hello")
    assert lines == [
        "bot: Say something",
        TEXT_PLEASE,
        "bot: Say something",
        TEXT_PLEASE,
        "bot: Say something",
        "bot: echo: hello",
    ]
    with pytest.raises(TypeError, match="send takes text or an Answer"):
        scheduler.send("ann", 42)  # type: ignore[arg-type]


def test_a_location_question_hints_at_text(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(Pin)
    scheduler.begin("ann")
    frontend.wait_for("ann", "bot: Share a location")
    scheduler.send("ann", "Paris")
    scheduler.send("ann", "0, 200")
    scheduler.send("ann", Location(-33.9, 151.2))
    lines = frontend.wait_for("ann", "ended")
    assert lines == [
        "bot: Share a location",
        LOCATION_PLEASE,
        "bot: Share a location",
        f"bot: {Notice.NOT_ON_EARTH.value}",
        "bot: Share a location",
        "bot: Pinned -33.9 151.2",
        f"picture: ({len(PNG)} bytes)",
        "ended",
    ]


def test_memory_outlives_the_conversation_per_user_until_forgotten(
    start_engine: StartEngine,
) -> None:
    frontend = RecordingFrontend()
    # Two chats of one user (say, private and a group): one memory.
    frontend.users["private"] = User("7", "Ann")
    frontend.users["group"] = User("7", "Ann", private=False)
    scheduler, _ = start_engine(Visitor, frontend)
    scheduler.begin("private")
    frontend.wait_for("private", "bot: Where?")
    scheduler.send("private", "Paris")
    frontend.wait_for("private", "ended")
    scheduler.begin("group")
    frontend.wait_for("group", "bot: Where?")
    assert "bot: Last time: Paris" in frontend.lines("group")
    scheduler.send("group", "Rome")
    frontend.wait_for("group", "ended")
    scheduler.forget("group")  # the user's /forget
    scheduler.begin("private")
    lines = frontend.wait_until(lambda: frontend.lines("private").count("bot: Where?") == 2)
    lines = frontend.lines("private")
    assert lines[-2:] == ["bot: language None, private, start None", "bot: Where?"]
    assert not [line for line in lines if line.startswith("bot: Last time")]


def test_a_flow_forgets_by_itself(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(Visitor)
    for answer in ("Paris", "forget"):
        scheduler.begin("ann")
        frontend.wait_until(lambda: frontend.lines("ann").count("bot: Where?") >= 1)
        scheduler.send("ann", answer)
        frontend.wait_until(lambda: frontend.lines("ann").count("ended") >= 1)
        frontend.log["ann"].clear()
    scheduler.begin("ann")
    lines = frontend.wait_for("ann", "bot: Where?")
    assert "bot: Last time: Paris" not in lines


class Nobody(RecordingFrontend):
    """A frontend whose user() is broken."""

    def user(self, key: str) -> Any:
        return {"id": key}


@dataclass(frozen=True)
class AsksWho(State):
    """Catches what Who raises."""

    def run(self) -> Steps:
        try:
            yield Who()
        except TypeError as error:
            yield Print(f"no user: {error}")
        return None


def test_a_frontend_giving_no_user_fails_at_the_yield(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(AsksWho, Nobody())
    scheduler.begin("ann")
    lines = frontend.wait_for("ann", "ended")
    assert lines[0] == (
        "bot: no user: the recording frontend's user() gave {'id': 'ann'}, not a User"
    )


# -- across a restart, on a state file ---------------------------------------------------




class Running:
    """A scheduler on a state file, stopped without ending its conversations (a crash)."""

    def __init__(self, path: str, flow: Any, frontend: RecordingFrontend | None = None) -> None:
        self.frontend = frontend or RecordingFrontend()
        self.journal = open_journal(path)
        self.scheduler = Scheduler(self.frontend, flow, journal=self.journal)
        self.scheduler.start()

    def crash(self) -> None:
        self.scheduler.stop()
        self.journal.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path, no_engine_threads: None) -> str:
    """Where the journal keeps its state: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "state.sqlite3")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def state_file(tmp_path: Path, no_engine_threads: None) -> Path:
    return tmp_path / "state.sqlite3"


def test_memory_and_who_survive_a_restart(state: str) -> None:
    first = Running(state, Visitor)
    first.frontend.users["ann"] = ANN
    first.scheduler.begin("ann")
    first.frontend.wait_for("ann", "bot: Where?")
    first.scheduler.send("ann", "Paris")
    first.frontend.wait_for("ann", "ended")
    first.scheduler.begin("ann")
    first.frontend.wait_for("ann", "bot: Last time: Paris")
    first.crash()  # parked at "Where?", after Who and Recall

    second = Running(state, Visitor)
    second.frontend.users["ann"] = User("7", "Ann B.")  # renamed since: replay keeps "Ann"
    try:
        second.scheduler.send("ann", Location(52.52, 13.4))
        lines = second.frontend.wait_for("ann", "ended")
        assert lines[:2] == ["(restored)", "bot: You said point 52.52, 13.4"]
        second.scheduler.begin("ann")  # a new conversation asks Who again
        lines = second.frontend.wait_for("ann", "bot: Last time: point 52.52, 13.4, Paris")
        assert "bot: Hello Ann B." in lines
    finally:
        second.crash()


def test_a_picture_not_confirmed_before_a_crash_is_sent_again(state: str) -> None:
    first = Running(state, Pin, Confirming())
    first.scheduler.begin("ann")
    first.frontend.wait_for("ann", "bot: Share a location")
    assert isinstance(first.frontend, Confirming)
    first.frontend.confirm_all()
    first.scheduler.send("ann", "1.5, 2.5")
    first.frontend.wait_for("ann", "ended")  # shown, never confirmed
    first.crash()

    second = Running(state, Pin, Confirming())
    try:
        lines = second.frontend.wait_for("ann", f"picture: ({len(PNG)} bytes)")
    finally:
        second.crash()
    assert lines == ["bot: Pinned 1.5 2.5", f"picture: ({len(PNG)} bytes)"]


GATE = threading.Event()


def gate() -> str:
    """A Call that waits for the test (at most 5 s)."""
    GATE.wait(5)
    return "open"


@dataclass(frozen=True)
class Busy(State):
    """Busy in a Call, then a question taking a location."""

    def run(self) -> Steps:
        yield Call(gate)
        where = yield Input("Where?", accepts=Location)
        yield Print(f"at {where}")
        return None


def test_a_location_waiting_in_the_mailbox_survives_a_restart(state: str) -> None:
    GATE.clear()
    first = Running(state, Busy)
    first.scheduler.begin("ann")
    first.scheduler.send("ann", Location(10, 20))  # the flow is busy: it waits in the mailbox
    committed = threading.Event()
    first.scheduler.post(committed.set)  # runs once the batches before it are committed
    assert committed.wait(5)
    first.crash()
    GATE.set()

    second = Running(state, Busy)
    try:
        lines = second.frontend.wait_for("ann", "ended")
    finally:
        second.crash()
    assert lines == ["bot: at 10.0, 20.0", "ended"]


def test_a_format_2_file_gets_the_memory_table(state_file: Path) -> None:
    with closing(sqlite3.connect(state_file)) as connection:  # as format 2 left it
        connection.executescript(FORMAT_2)
        connection.commit()
    journal = SqliteJournal(state_file)
    try:
        journal.remember("7", b"kept")
        assert journal.recall("7") == b"kept"  # within the batch, before the commit
        journal.commit(None)
    finally:
        journal.close()
    journal = SqliteJournal(state_file)
    try:
        assert journal.recall("7") == b"kept"
        journal.remember("7", None)
        journal.commit(None)
        assert journal.recall("7") is None
    finally:
        journal.close()
    with closing(sqlite3.connect(state_file)) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
