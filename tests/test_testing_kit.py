"""The testing kit: FlowTest, check_transcript, render and RecordingFrontend."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from engine import Call, Choose, Input, Print, Sleep, State
from engine.commands import Cancelled, Command
from engine.frontend import Notice
from engine.states import Steps
from engine.testing import FlowMismatch, FlowTest, RecordingFrontend, check_transcript, render

pytestmark = pytest.mark.usefixtures("no_engine_threads")


class NotFound(Exception):
    pass


def search(city: str, *, limit: int = 5) -> list[str]:
    raise AssertionError("the tests answer this call; it must not run")


def forecast(place: str) -> str:
    raise AssertionError("the tests answer this call; it must not run")


@dataclass(frozen=True, slots=True)
class Wave(Command):
    """An output command only some frontends have."""

    hand: str


@dataclass
class AskCity(State):
    """A small weather flow: the example the kit is for."""

    def run(self) -> Steps:
        city = yield Input("Name a city: ")
        try:
            places = yield Call(search, city, limit=3)
        except NotFound as error:
            yield Print(f"Not found: {error}")
            return AskCity()
        if not places:
            yield Print("Found nothing")
            return AskCity()
        return PickPlace(tuple(places))


@dataclass
class PickPlace(State):
    places: tuple[str, ...]

    def run(self) -> Steps:
        place = yield Choose("Which one?", self.places)
        weather = yield Call(forecast, place)
        yield Print(f"{place}:\n{weather}")
        yield Sleep(0.5)
        yield Wave("right")
        return None


@dataclass
class Careful(State):
    """Cleans up when something is thrown in at a yield."""

    log: list[str] = field(default_factory=list)

    def run(self) -> Steps:
        try:
            yield Input("Anything?")
        finally:
            self.log.append("cleaned up")
            yield Print(f"cleanup log: {self.log}")
        return None


# -- render ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "lines"),
    [
        (Print("hello"), ["bot: hello"]),
        (Print("two\nlines  "), ["bot: two", "bot: lines"]),
        (Print(""), ["bot:"]),
        (Input("Name? "), ["bot: Name?"]),
        (Input(), []),
        (Choose("Go?", ["on", "off"]), ["bot: Go?", "bot: 0) on", "bot: 1) off"]),
        (Call(search, "Paris", limit=3), ["call: search('Paris', limit=3)"]),
        (Call(str.upper, "x"), ["call: upper('x')"]),
        (Sleep(0.5), ["sleep: 0.5"]),
        (Sleep(2.0), ["sleep: 2"]),
        (Wave("left"), ["bot: Wave(hand='left')"]),
    ],
)
def test_render_writes_a_command_as_transcript_lines(command: Command, lines: list[str]) -> None:
    assert render(command) == lines


# -- FlowTest: steps --------------------------------------------------------------------


def test_flowtest_steps_through_a_flow() -> None:
    flow = FlowTest(AskCity())
    assert flow.command == Input("Name a city: ")
    assert flow.state == AskCity()
    assert not flow.finished
    assert flow.answer("Atlantis") == Call(search, "Atlantis", limit=3)
    assert flow.returns([]) == Print("Found nothing")
    assert flow.expect(Print("Found nothing")) == Input("Name a city: ")
    flow.answer("Springfield")
    assert flow.raises(NotFound("no Springfield")) == Print("Not found: no Springfield")
    flow.resume()
    flow.answer("Paris")
    assert flow.returns(["Paris, France", "Paris, Texas"]) == Choose(
        "Which one?", ["Paris, France", "Paris, Texas"]
    )
    assert flow.state == PickPlace(("Paris, France", "Paris, Texas"))
    assert flow.expect(Choose("Which one?", ["Paris, France", "Paris, Texas"])) == flow.command
    assert flow.answer(" paris, texas ") == Call(forecast, "Paris, Texas")
    assert flow.returns("hot") == Print("Paris, Texas:\nhot")
    assert flow.expect(Print("Paris, Texas:\nhot")) == Sleep(0.5)
    assert flow.resume() == Wave("right")
    assert flow.resume() is None
    assert flow.finished
    assert flow.command is None
    assert flow.state is None
    assert flow.transcript == [
        "bot: Name a city:",
        "you: Atlantis",
        "call: search('Atlantis', limit=3)",
        "bot: Found nothing",
        "bot: Name a city:",
        "you: Springfield",
        "call: search('Springfield', limit=3)",
        "  raised NotFound('no Springfield')",
        "bot: Not found: no Springfield",
        "bot: Name a city:",
        "you: Paris",
        "call: search('Paris', limit=3)",
        "bot: Which one?",
        "bot: 0) Paris, France",
        "bot: 1) Paris, Texas",
        "you:  paris, texas ",
        "call: forecast('Paris, Texas')",
        "bot: Paris, Texas:",
        "bot: hot",
        "sleep: 0.5",
        "bot: Wave(hand='right')",
    ]


def test_flowtest_validates_a_choose_like_the_engine() -> None:
    flow = FlowTest(PickPlace(("Rome", "Oslo")))
    question = flow.command
    assert flow.answer("Madrid") == question
    assert flow.answer("2") == question
    assert flow.transcript == [
        "bot: Which one?",
        "bot: 0) Rome",
        "bot: 1) Oslo",
        "you: Madrid",
        f"bot: {Notice.TRY_AGAIN.value}",
        "bot: Which one?",
        "bot: 0) Rome",
        "bot: 1) Oslo",
        "you: 2",
        "bot: Try again",
        "bot: Which one?",
        "bot: 0) Rome",
        "bot: 1) Oslo",
    ]
    assert flow.answer("1") == Call(forecast, "Oslo")


def test_flowtest_throws_into_the_flow() -> None:
    flow = FlowTest(Careful())
    assert flow.throw(Cancelled()) == Print("cleanup log: ['cleaned up']")
    with pytest.raises(Cancelled):
        flow.resume()


def test_flowtest_leaves_the_given_state_alone() -> None:
    start = Careful()
    flow = FlowTest(start)
    flow.answer("hi")
    assert flow.command == Print("cleanup log: ['cleaned up']")
    assert start.log == []


# -- FlowTest: strictness -------------------------------------------------------------------


def mismatch(action: object) -> str:
    assert callable(action)
    with pytest.raises(FlowMismatch) as failure:
        action()
    return str(failure.value)


def test_answering_a_print_fails_with_the_dialogue_so_far() -> None:
    flow = FlowTest(AskCity())
    flow.answer("Atlantis")
    flow.returns([])
    message = mismatch(lambda: flow.answer("hello?"))
    assert message == (
        "expected the flow to wait on Input or Choose, but it is at Print(text='Found nothing')\n"
        "dialogue so far:\n"
        "    bot: Name a city:\n"
        "    you: Atlantis\n"
        "    call: search('Atlantis', limit=3)\n"
        "    bot: Found nothing"
    )
    assert flow.command == Print("Found nothing")  # nothing moved


def test_flowtest_refuses_answers_of_the_wrong_kind() -> None:
    flow = FlowTest(AskCity())
    assert "expected the flow to wait on Call, but it is at Input(" in mismatch(
        lambda: flow.returns([])
    )
    assert "expected the flow to wait on Call" in mismatch(lambda: flow.raises(NotFound("x")))
    assert "Input needs an answer, not resume(), but it is at Input(" in mismatch(flow.resume)
    flow.answer("Paris")
    assert "Call needs an answer, not resume()" in mismatch(flow.resume)
    assert "wait on Input or Choose, but it is at Call(search, 'Paris', limit=3)" in mismatch(
        lambda: flow.answer("Rome")
    )
    assert flow.transcript == ["bot: Name a city:", "you: Paris", "call: search('Paris', limit=3)"]


def test_expect_fails_on_a_different_command() -> None:
    flow = FlowTest(AskCity())
    message = mismatch(lambda: flow.expect(Input("Name a town: ")))
    assert message.startswith(
        "expected Input(prompt='Name a town: '), but it is at Input(prompt='Name a city: ')\n"
        "dialogue so far:\n    bot: Name a city:"
    )
    flow.answer("Oslo")
    assert "expected Call(search, 'Oslo', limit=5)" in mismatch(
        lambda: flow.expect(Call(search, "Oslo", limit=5))
    )


def test_flowtest_fails_once_the_flow_ended() -> None:
    flow = FlowTest(PickPlace(("Rome",)))
    flow.answer("rome")
    flow.returns("sunny")
    flow.resume()
    flow.resume()
    flow.resume()
    assert flow.finished
    for action in [lambda: flow.answer("x"), lambda: flow.returns(1), flow.resume]:
        message = mismatch(action)
        assert message.startswith("expected the flow to wait on ")
        assert ", but the flow has ended\n" in message
        assert message.endswith(
            "\ndialogue so far:\n" + "\n".join(f"    {line}" for line in flow.transcript)
        )
    message = mismatch(lambda: flow.expect(Print("more")))
    assert message.startswith("expected Print(text='more'), but the flow has ended\n")
    assert message.endswith("    bot: Wave(hand='right')")


def test_a_flow_mismatch_is_an_assertion_error() -> None:
    assert issubclass(FlowMismatch, AssertionError)


# -- check_transcript ---------------------------------------------------------------------


def test_check_transcript_passes_a_matching_dialogue() -> None:
    test = check_transcript(
        AskCity(),
        """
        bot: Name a city:
        you: Atlantis
        call: search
        bot: Found nothing

        # a line starting with # is a comment
        bot: Name a city:
        you:   Springfield
        call: search('Springfield', limit=3)
        bot: Not found: Springfield
        bot: Name a city:
        you: Paris
        call: search
        bot: Which one?
        bot: 0) Paris, France
        bot: 1) Paris, Texas
        you: Lyon
        bot: Try again
        bot: Which one?
        bot: 0) Paris, France
        bot: 1) Paris, Texas
        you: 1
        call: forecast('Paris, Texas')
        bot: Paris, Texas:
        bot: 35 C
        sleep: 0.5
        bot: Wave(hand='right')
        """,
        calls={
            "search": fake_search,
            "forecast": lambda place: "35 C",
        },
    )
    assert test.finished
    assert "  raised NotFound('Springfield')" in test.transcript


def fake_search(city: str, *, limit: int) -> list[str]:
    if city == "Springfield":
        raise NotFound(city)
    return {"Paris": ["Paris, France", "Paris, Texas"]}.get(city, [])[:limit]


def test_check_transcript_can_stop_at_a_question() -> None:
    test = check_transcript(
        AskCity(),
        """
        bot: Name a city:
        you: Atlantis
        call: search
        bot: Found nothing
        bot: Name a city:
        """,
        calls={"search": fake_search},
        finished=False,
    )
    assert test.command == Input("Name a city: ")


def transcript_failure(script: str, finished: bool = True) -> str:
    with pytest.raises(FlowMismatch) as failure:
        check_transcript(AskCity(), script, calls={"search": fake_search}, finished=finished)
    return str(failure.value)


def test_check_transcript_fails_on_an_extra_command() -> None:
    message = transcript_failure(
        """
        bot: Name a city:
        you: Rome
        call: search
        """
    )
    assert message == (
        "transcript line 4: expected '(the end)', the flow gave 'bot: Found nothing'\n"
        "dialogue so far:\n"
        "    bot: Name a city:\n"
        "    you: Rome\n"
        "    call: search('Rome', limit=3)\n"
        "    bot: Found nothing"
    )


def test_check_transcript_fails_on_a_missing_command() -> None:
    message = transcript_failure(
        """
        bot: Name a city:
        you: Rome
        bot: Found nothing
        """
    )
    assert message.startswith(
        "transcript line 3: expected 'bot: Found nothing', the flow gave "
        "\"call: search('Rome', limit=3)\"\ndialogue so far:\n"
    )
    message = transcript_failure(
        """
        bot: Name a city:
        you: Rome
        call: search
        bot: Found nothing
        bot: Name a city:
        you: Oslo
        call: search
        bot: Found nothing
        bot: Goodbye
        """,
        finished=False,
    )
    assert "expected 'bot: Goodbye', the flow gave 'bot: Name a city:'" in message


def test_check_transcript_fails_when_the_flow_ends_before_the_script() -> None:
    with pytest.raises(FlowMismatch) as failure:
        check_transcript(
            PickPlace(("Rome",)),
            """
            bot: Which one?
            bot: 0) Rome
            you: 0
            call: forecast
            bot: Rome:
            bot: mild
            sleep: 0.5
            bot: Wave(hand='right')
            bot: Arrivederci
            """,
            calls={"forecast": lambda place: "mild"},
        )
    message = str(failure.value)
    assert message.startswith(
        "the flow ended, but the transcript goes on with 'bot: Arrivederci'\ndialogue so far:\n"
    )
    assert message.endswith("    bot: Wave(hand='right')")


def test_check_transcript_fails_on_wrong_text() -> None:
    message = transcript_failure(
        """
        bot: Name a town:
        you: Rome
        """
    )
    assert message == (
        "transcript line 1: expected 'bot: Name a town:', the flow gave 'bot: Name a city:'\n"
        "dialogue so far:\n"
        "    bot: Name a city:"
    )
    message = transcript_failure(
        """
        bot: Name a city:
        you: Rome
        call: search('Roma', limit=3)
        """
    )
    assert message.startswith(
        "transcript line 3: expected \"call: search('Roma', limit=3)\", the flow gave "
        "\"call: search('Rome', limit=3)\""
    )
    message = transcript_failure(
        """
        bot: Name a city:
        you: Rome
        call: find
        """
    )
    assert "expected 'call: find', the flow gave \"call: search('Rome', limit=3)\"" in message


def test_check_transcript_fails_when_the_flow_waits_for_an_answer() -> None:
    message = transcript_failure(
        """
        bot: Name a city:
        bot: Paris?
        """
    )
    assert message.startswith(
        "transcript line 2: expected 'bot: Paris?', but the flow waits for an answer to "
        "Input(prompt='Name a city: ')\ndialogue so far:\n    bot: Name a city:"
    )


def test_check_transcript_fails_when_the_script_ends_before_the_flow() -> None:
    message = transcript_failure(
        """
        bot: Name a city:
        you: Rome
        call: search
        bot: Found nothing
        bot: Name a city:
        """
    )
    assert message.startswith(
        "the transcript ended, but the flow goes on with Input(prompt='Name a city: ')\n"
    )


def test_check_transcript_needs_a_fake_for_each_call() -> None:
    with pytest.raises(FlowMismatch) as failure:
        check_transcript(AskCity(), "bot: Name a city:\nyou: Rome\ncall: search")
    assert str(failure.value).startswith(
        "no fake given for Call(search, 'Rome', limit=3): pass calls={'search': ...}\n"
        "dialogue so far:\n"
    )


# -- replay -----------------------------------------------------------------------------------

VISITS: list[int] = []


@dataclass
class Forgetful(State):
    """Counts visits outside a Call: a replay after a restart would go differently."""

    def run(self) -> Steps:
        name = yield Input("Name?")
        VISITS.append(1)
        yield Print(f"{name}, visit {len(VISITS)}")
        yield Input("More?")
        return None


def test_check_transcript_replays_the_dialogue_to_catch_non_determinism() -> None:
    VISITS.clear()
    script = """
        bot: Name?
        you: Ann
        bot: Ann, visit 1
        bot: More?
    """
    with pytest.raises(FlowMismatch, match=re.escape("the flow is not deterministic")) as failure:
        check_transcript(Forgetful(), script, finished=False)
    assert "at step 2 it yielded Print(text='Ann, visit 2') on replay" in str(failure.value)
    VISITS.clear()
    check_transcript(Forgetful(), script, finished=False, replay=False)


def test_a_deterministic_flow_replays_the_same() -> None:
    flow = FlowTest(AskCity())
    flow.answer("Paris")
    flow.returns(["Paris"])
    flow.answer("0")
    assert [command for command, _, _ in flow.history] == [
        Input("Name a city: "),
        Call(search, "Paris", limit=3),
        Choose("Which one?", ["Paris"]),
    ]
    flow.check_replay()


# -- RecordingFrontend ----------------------------------------------------------------------------


def test_recording_frontend_writes_down_what_the_engine_does() -> None:
    frontend = RecordingFrontend()
    frontend.deliver("ann", Print("hi\nthere"))
    frontend.ask("ann", Input("Name?"))
    frontend.notify("ann", Notice.TRY_AGAIN)
    frontend.restored("ann", Choose("Go?", ["on"]))
    assert frontend.asked["ann"] == Choose("Go?", ["on"])
    frontend.ended("ann")
    assert "ann" not in frontend.asked
    lines = frontend.lines("ann")
    assert lines == ["bot: hi", "bot: there", "bot: Name?", "bot: Try again", "(restored)", "ended"]
    lines.append("not written")
    assert frontend.lines("ann")[-1] == "ended"
    assert frontend.lines("bob") == []


def test_recording_frontend_waits_for_a_line_from_another_thread() -> None:
    frontend = RecordingFrontend()
    writer = threading.Timer(0.05, frontend.deliver, ("ann", Print("late")))
    writer.start()
    try:
        assert frontend.wait_for("ann", "bot: late", timeout=5) == ["bot: late"]
    finally:
        writer.join()


def test_recording_frontend_times_out_with_the_log() -> None:
    frontend = RecordingFrontend()
    frontend.deliver("ann", Print("only this"))
    with pytest.raises(AssertionError, match=re.escape("timed out after 0.05 s; log: ['bot: only")):
        frontend.wait_for("ann", "bot: never", timeout=0.05)
    with pytest.raises(AssertionError, match=re.escape("log: ['ann']")):
        frontend.wait_until(lambda: False, timeout=0.05)


@dataclass
class Locked(State):
    lock: Any

    def run(self) -> Steps:
        yield Print("never")
        return None


def test_a_start_state_that_is_not_plain_data_is_named_in_the_error() -> None:
    with pytest.raises(TypeError, match=r"^Locked holds something that is not plain data"):
        FlowTest(Locked(threading.Lock()))


@dataclass
class Later(State):
    lock: Any = None

    def run(self) -> Steps:
        yield Input("Name? ")
        return Later(threading.Lock())


def test_a_later_state_that_cannot_be_saved_fails_the_test_too() -> None:
    flow = FlowTest(Later())
    with pytest.raises(TypeError, match=r"^Later holds something that is not plain data"):
        flow.answer("Ann")


@dataclass
class Local(State):
    def run(self) -> Steps:
        @dataclass
        class Inner(State):
            def run(self) -> Steps:
                yield Print("inside")
                return None

        yield Input("Name? ")
        return Inner()


def test_a_state_class_defined_in_a_function_is_refused_where_it_is_entered() -> None:
    flow = FlowTest(Local())
    with pytest.raises(TypeError, match=r"^Inner holds .*defined inside a function"):
        flow.answer("Ann")
