"""States: the conversation loop, loading a flow by name, snapshots."""

from __future__ import annotations

import pickle
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine import Call, Input, Print, State
from engine.runner import Snapshot
from engine.states import Entered, Steps, conversation, first_state, load_flow


def snapshot(state: State) -> tuple[str, dict[str, Any]]:
    """A state as the journal saves it: its class path and its fields (unpickled here)."""
    saved = Snapshot.of(state)
    return saved.state_class, pickle.loads(saved.fields)


def restore(class_path: str, fields: dict[str, Any]) -> State:
    """A state back from its class path and fields, as recovery restores it."""
    return Snapshot(class_path, pickle.dumps(fields)).restore()

pytestmark = pytest.mark.usefixtures("no_engine_threads")


@dataclass
class AskName(State):
    greeting: str = "Hello"

    def run(self) -> Steps:
        name = yield Input("Name?")
        if not name:
            return AskName(self.greeting)
        return Greet(self.greeting, name)


@dataclass
class Greet(State):
    greeting: str
    name: str

    def run(self) -> Steps:
        yield Print(f"{self.greeting}, {self.name}")
        yield from farewell(self.name)
        return None


def farewell(name: str) -> Steps:
    """A sub-flow, composed with ``yield from``."""
    yield Print(f"Bye, {name}")
    return None


def make_flow() -> State:
    return AskName("Hi")


NOT_A_STATE = 42
AN_INSTANCE = AskName("Hey")


class NoRun(State):
    pass


@dataclass
class Wanderer(State):
    def run(self) -> Steps:
        yield Print("where to?")
        return "nowhere"  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Frozen(State):
    city: str
    tries: int = 0
    seen: tuple[str, ...] = ()

    def run(self) -> Steps:
        yield Print(f"{self.city} after {self.tries} tries")
        return None


class Plain(State):
    """Not a dataclass: its instance dict is its snapshot."""

    def __init__(self, count: int) -> None:
        self.count = count

    def run(self) -> Steps:
        yield Print(f"count {self.count}")
        return None


class Outer:
    @dataclass
    class Inner(State):
        depth: int = 1

        def run(self) -> Steps:
            yield Print(f"depth {self.depth}")
            return None


class NotAState:
    pass


# -- the conversation loop --------------------------------------------------------


def test_conversation_moves_from_state_to_state() -> None:
    steps = conversation(AskName())
    assert next(steps) == Entered(AskName())
    assert next(steps) == Input("Name?")
    assert steps.send("") == Entered(AskName())  # a blank name asks again
    assert next(steps) == Input("Name?")
    assert steps.send("Ann") == Entered(Greet("Hello", "Ann"))
    assert next(steps) == Print("Hello, Ann")
    assert next(steps) == Print("Bye, Ann")
    with pytest.raises(StopIteration):
        next(steps)


@pytest.mark.parametrize("flow", [AskName("Hi"), make_flow, lambda: AskName("Hi")])
def test_a_flow_is_a_state_or_makes_one(flow: State | Callable[[], State]) -> None:
    assert first_state(flow) == AskName("Hi")
    steps = conversation(flow)
    assert next(steps) == Entered(AskName("Hi"))


def test_a_state_class_is_a_flow() -> None:
    assert first_state(AskName) == AskName()


def test_a_flow_must_make_a_state() -> None:
    with pytest.raises(TypeError, match="a flow must be a State or make one, got 'text'"):
        first_state(lambda: "text")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="a flow must be a State"):
        next(conversation(lambda: None))  # type: ignore[arg-type,return-value]


def test_run_must_return_a_state_or_none() -> None:
    steps = conversation(Wanderer())
    assert next(steps) == Entered(Wanderer())
    assert next(steps) == Print("where to?")
    wrong = re.escape("run() must return a State or None, got 'nowhere'")
    with pytest.raises(TypeError, match=wrong):
        next(steps)


def test_a_state_without_run_says_so() -> None:
    steps = conversation(NoRun())
    next(steps)
    with pytest.raises(NotImplementedError, match=re.escape("NoRun.run() is not written")):
        next(steps)


def test_an_exception_in_a_state_comes_out_of_the_conversation() -> None:
    steps = conversation(AskName())
    next(steps)
    assert next(steps) == Input("Name?")
    with pytest.raises(KeyError, match="thrown in"):
        steps.throw(KeyError("thrown in"))


# -- load_flow ------------------------------------------------------------------------


def test_load_flow_finds_a_state_class_an_instance_or_a_factory() -> None:
    assert load_flow("tests.test_states:AskName") is AskName
    assert load_flow("tests.test_states:make_flow") is make_flow
    assert load_flow("tests.test_states:AN_INSTANCE") is AN_INSTANCE


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("tests.test_states", "--flow must look like MODULE:ATTR, got 'tests.test_states'"),
        (":AskName", "--flow must look like MODULE:ATTR, got ':AskName'"),
        ("tests.test_states:", "--flow must look like MODULE:ATTR, got 'tests.test_states:'"),
        ("", "--flow must look like MODULE:ATTR, got ''"),
        ("tests.nowhere:Flow", "cannot import flow module 'tests.nowhere': No module named"),
        ("tests.test_states:Missing", "module 'tests.test_states' has no attribute 'Missing'"),
        ("tests.test_states:NOT_A_STATE", "tests.test_states:NOT_A_STATE is neither a State nor"),
    ],
)
def test_load_flow_fails_with_a_one_line_value_error(spec: str, reason: str) -> None:
    with pytest.raises(ValueError) as failure:
        load_flow(spec)
    message = str(failure.value)
    assert message.startswith(reason)
    assert "\n" not in message
    assert failure.value.__suppress_context__ or failure.value.__context__ is None


# -- snapshots ------------------------------------------------------------------------


def test_a_dataclass_state_snapshots_to_its_class_and_fields() -> None:
    state = Frozen("Paris", tries=2, seen=("Lyon",))
    class_path, fields = snapshot(state)
    assert class_path == "tests.test_states:Frozen"
    assert fields == {"city": "Paris", "tries": 2, "seen": ("Lyon",)}
    restored = restore(class_path, fields)
    assert restored == state
    assert restored is not state
    steps = conversation(restored)
    next(steps)
    assert next(steps) == Print("Paris after 2 tries")


def test_a_nested_state_class_is_found_again() -> None:
    class_path, fields = snapshot(Outer.Inner(3))
    assert class_path == "tests.test_states:Outer.Inner"
    assert restore(class_path, fields) == Outer.Inner(3)


def test_a_plain_state_snapshots_its_attributes() -> None:
    class_path, fields = snapshot(Plain(7))
    assert (class_path, fields) == ("tests.test_states:Plain", {"count": 7})
    restored = restore(class_path, fields)
    assert isinstance(restored, Plain)
    assert restored.count == 7


@pytest.mark.parametrize(
    ("class_path", "fields", "reason"),
    [
        ("tests.test_states:Vanished", {}, "state class tests.test_states:Vanished is gone"),
        ("tests.gone_module:Frozen", {}, "state class tests.gone_module:Frozen is gone"),
        ("tests.test_states:Outer.Missing", {}, "state class tests.test_states:Outer.Missing"),
        ("tests.test_states:NotAState", {}, "tests.test_states:NotAState is no longer a State"),
        ("tests.test_states:make_flow", {}, "tests.test_states:make_flow is no longer a State"),
        (
            "tests.test_states:Frozen",
            {"town": "Paris"},
            "state tests.test_states:Frozen changed its fields",
        ),
        ("tests.test_states:Frozen", {}, "state tests.test_states:Frozen changed its fields"),
    ],
)
def test_restore_of_what_is_gone_is_a_lookup_error(
    class_path: str, fields: dict[str, object], reason: str
) -> None:
    with pytest.raises(LookupError) as failure:
        restore(class_path, fields)
    assert str(failure.value).startswith(reason)
    assert "\n" not in str(failure.value)


@dataclass
class Counter(State):
    """Mutable fields: a restored copy must not share them with the original."""

    calls: list[str] = field(default_factory=list)

    def run(self) -> Steps:
        result = yield Call(len, self.calls)
        yield Print(f"{result} calls")
        return None


def test_snapshot_restore_round_trip_keeps_the_values() -> None:
    original = Counter(["a", "b"])
    restored = restore(*snapshot(original))
    assert restored == original
    steps = conversation(restored)
    next(steps)
    assert next(steps) == Call(len, ["a", "b"])
    assert steps.send(2) == Print("2 calls")


def test_load_flow_finds_a_module_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "flow_in_cwd.py").write_text(
        "from engine import Print, State\n\n"
        "class Hello(State):\n"
        "    def run(self):\n"
        "        yield Print('hello')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "flow_in_cwd", raising=False)
    flow = load_flow("flow_in_cwd:Hello")
    assert first_state(flow).__class__.__name__ == "Hello"


def test_a_broken_flow_module_is_one_line_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_flow.py").write_text("def oops(:\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "broken_flow", raising=False)
    with pytest.raises(ValueError, match=r"^cannot load flow module 'broken_flow': SyntaxError"):
        load_flow("broken_flow:Start")
