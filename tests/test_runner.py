"""The runner: the one driver of conversations, used by the scheduler, recovery and the kit.

The kit must pass exactly the flows that survive a restart: these tests take
the two cases where the first release's kit and recovery disagreed, and check
both sides agree now.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import pytest

from engine import Call, Input, Print, State, Steps
from engine.runner import Diverged, Runner, Snapshot, Step
from engine.testing import FlowTest, check_transcript


@dataclass(frozen=True)
class Counted(State):
    """A state with a field that ``__init__`` does not take."""

    name: str
    visits: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "visits", len(self.name))

    def run(self) -> Steps:
        answer = yield Input(f"{self.name} ({self.visits})?")
        yield Print(f"got {answer}")
        return None


def test_a_field_with_init_false_is_restored_as_saved() -> None:
    snapshot = Snapshot.of(Counted("Ann"))
    assert snapshot.restore() == Counted("Ann")
    runner = Runner.rebuild(snapshot, [])
    assert runner.command == Input("Ann (3)?")


def test_the_kit_and_recovery_agree_on_a_field_with_init_false() -> None:
    check_transcript(Counted("Bob"), "bot: Bob (3)?\nyou: hi\nbot: got hi")


@dataclass(frozen=True)
class Timed(State):
    def run(self) -> Steps:
        now = yield Call(lambda: time.time())
        yield Print("late" if now > 0 else "early")
        yield Input("More?")
        return None


def test_a_lambda_call_replays_by_its_name() -> None:
    flow = FlowTest(Timed())
    flow.returns(1234.5)
    flow.expect(Print("late"))
    assert flow.command == Input("More?")
    flow.check_replay()  # recovery replays it fine, so the kit passes it


def test_a_step_with_another_fingerprint_diverges() -> None:
    snapshot = Snapshot.of(Counted("Ann"))
    with pytest.raises(Diverged, match="at step 1"):
        Runner.rebuild(snapshot, [Step("Input 'Someone else?'", "x")])


@dataclass(frozen=True)
class Sub(State):
    def run(self) -> Steps:
        yield Print("inside")
        return None


@dataclass(frozen=True)
class Mistaken(State):
    mistake: str

    def run(self) -> Steps:
        try:
            if self.mistake == "text":
                yield "Welcome!"  # type: ignore[misc]
            elif self.mistake == "generator":
                yield Sub().run()  # type: ignore[misc]
            else:
                yield Sub()  # type: ignore[misc]
        except TypeError as error:
            yield Print(str(error))
        return None


@pytest.mark.parametrize(
    ("mistake", "advice"),
    [
        ("text", "write yield Print('Welcome!') to show it"),
        ("generator", "run a sub-flow with `yield from sub.run()`"),
        ("state", "move to it with `return Sub(...)`"),
    ],
)
def test_yielding_a_non_command_says_what_to_yield_at_that_yield(mistake: str, advice: str) -> None:
    flow = FlowTest(Mistaken(mistake))
    assert isinstance(flow.command, Print)
    assert advice in flow.command.text


def price(size: str) -> float:
    return 3.5


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Print(42), r"^Print text must be text \(a str\), got int 42"),
        (lambda: Call(price("small")), r"^Call needs a function to call, got float 3.5"),
        (lambda: Input(7), r"^Input prompt must be text"),
    ],
)
def test_a_malformed_command_fails_where_it_is_built(build: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        build()
