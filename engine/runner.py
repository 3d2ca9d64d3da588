"""The runner: the one place that drives a conversation's generator.

The scheduler, recovery after a restart, the testing kit and the terminal all
run conversations through :class:`Runner`, so a test exercises exactly the
code that production and recovery run. A runner:

* sends a value (or throws an error) in and gives back the next command;
* consumes state boundaries, snapshotting each new state (a state that cannot
  be saved fails right there, journal or not);
* tells a yielded non-command apart and says what to yield instead;
* rebuilds a conversation from a snapshot plus the steps recorded since,
  checking each step's fingerprint (see :meth:`Runner.rebuild`).

What the runner does not do is fulfil commands: that is the scheduler's table
(or a test's answers).
"""

from __future__ import annotations

import dataclasses
import importlib
import pickle
import types
from collections.abc import Callable, Iterable
from typing import Any

from engine.commands import TEXT, Call, Command, Input, Output, Remember
from engine.states import Conversation, Entered, State, conversation

__all__ = ["Diverged", "NotSaveable", "Runner", "Snapshot", "Step", "fingerprint"]

_PROTOCOL = pickle.HIGHEST_PROTOCOL


class NotSaveable(TypeError):
    """A state holds something that is not plain data, so it cannot be saved."""

    def __init__(self, state: State, error: BaseException | str) -> None:
        super().__init__(
            f"{type(state).__name__} holds something that is not plain data ({error}); "
            "a state's fields must be values that can be saved and copied"
        )


class Diverged(Exception):
    """A recorded conversation no longer replays as recorded (its flow changed)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """A state as saved at a state boundary: its class path and its pickled fields."""

    state_class: str
    fields: bytes

    @classmethod
    def of(cls, state: State) -> Snapshot:
        """Snapshot `state`; raises :class:`NotSaveable` if a field cannot be saved."""
        kind = type(state)
        if "<locals>" in kind.__qualname__:
            raise NotSaveable(
                state,
                "its class is defined inside a function; state classes live at module level, "
                "where a restart finds them again",
            )
        if dataclasses.is_dataclass(state):
            fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
        else:
            fields = dict(vars(state))
        try:
            blob = pickle.dumps(fields, _PROTOCOL)
        except Exception as error:
            raise NotSaveable(state, error) from None
        return cls(f"{kind.__module__}:{kind.__qualname__}", blob)

    def restore(self) -> State:
        """The state again, with exactly the saved field values.

        The fields are set as saved, without calling ``__init__``, so fields
        with ``init=False`` or a ``__post_init__`` come back as they were.
        Raises ``LookupError`` when the class is gone or its fields changed
        (the flow's code changed), or the fields cannot be read back.
        """
        target = _find_class(self.state_class)
        try:
            fields = pickle.loads(self.fields)
        except Exception as error:
            raise LookupError(f"state {self.state_class} cannot be read back: {error}") from None
        if dataclasses.is_dataclass(target):
            now = {f.name for f in dataclasses.fields(target)}
            if now != set(fields):
                raise LookupError(
                    f"state {self.state_class} changed its fields: saved "
                    f"{sorted(fields)}, now {sorted(now)}"
                )
        state = target.__new__(target)
        for name, value in fields.items():
            object.__setattr__(state, name, value)
        return state  # type: ignore[no-any-return]


def _find_class(class_path: str) -> Any:
    module_name, _, qualname = class_path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise LookupError(f"state class {class_path} is gone: {error}") from None
    if not (isinstance(target, type) and issubclass(target, State)):
        raise LookupError(f"{class_path} is no longer a State")
    return target


_INPUT_FINGERPRINTS: dict[str | None, str] = {}


def fingerprint(command: Command) -> str:
    """What must stay the same for a recorded value to answer `command` again.

    A ``Call`` is recognised by its function's module and name, not its
    arguments: an argument such as a session object has no stable text, and
    the function says enough. A question's ``timeout`` is left out.
    """
    if type(command) is Input and command.accepts is TEXT:  # the commonest: made once
        known = _INPUT_FINGERPRINTS.get(command.prompt)
        if known is None:
            if len(_INPUT_FINGERPRINTS) >= 4096:  # prompts made up on the fly
                _INPUT_FINGERPRINTS.clear()
            known = _INPUT_FINGERPRINTS[command.prompt] = f"Input {command.prompt!r}"
        return known
    if isinstance(command, Remember):  # its data may be long; the steps before decide it
        return "Remember"
    if isinstance(command, Call):
        module = getattr(command.fn, "__module__", None) or "?"
        return f"Call {module}.{command.name}"
    if getattr(command, "timeout", None) is not None:
        # How long a question waits is not what it asks: a recorded answer
        # still answers it after its timeout is changed.
        command = dataclasses.replace(command, timeout=None)  # type: ignore[call-arg]
    return repr(command)


@dataclasses.dataclass(slots=True)
class Step:
    """A value (or an exception) sent into a generator in answer to a command."""

    fingerprint: str
    value: Any = None
    error: BaseException | None = None


#: Called with the runner and the snapshot of each state it enters. One callable
#: serves every conversation of a scheduler: no closure per conversation.
OnEnter = Callable[["Runner", Snapshot], None]


class Runner:
    """Drives one conversation: ``send``/``throw`` in, the next command out.

    `command` is the command it waits on (``None`` once finished); `state`
    the state it is in. Exceptions the flow lets escape propagate out of
    :meth:`send` and :meth:`throw`: the caller ends the conversation.
    """

    __slots__ = ("command", "entered", "state", "steps")

    def __init__(self, start: State, entered: OnEnter | None = None) -> None:
        self.steps: Conversation = conversation(start)
        self.state: State | None = None
        self.command: Command | None = None
        #: Told of each new state's snapshot (the journal saves it); may be None.
        self.entered = entered

    @property
    def finished(self) -> bool:
        """Whether the conversation has ended."""
        return self.command is None and self.state is None

    def send(self, value: Any) -> Command | None:
        """Send `value` in; the next command, or ``None`` when the conversation ends."""
        return self._advance(value, None)

    def throw(self, error: BaseException) -> Command | None:
        """Raise `error` in the flow at its ``yield``; the next command, or ``None``."""
        return self._advance(None, error)

    def _advance(self, value: Any, error: BaseException | None) -> Command | None:
        # The scheduler inlines this loop in its _resume (measured); all else comes here.
        try:
            command = self.steps.send(value) if error is None else self.steps.throw(error)
            if not isinstance(command, Command):  # rare: a state boundary, a mistake
                command = self.settle(command)
        except StopIteration:
            self.command = self.state = None
            return None
        self.command = command
        return command

    def close(self, error: BaseException) -> bool:
        """End the conversation by raising `error` at its ``yield`` (its ``finally`` runs).

        Returns whether the flow let it end; a flow that goes on regardless is
        closed by force. An exception the flow raises instead propagates.
        """
        self.command = None
        try:
            self.steps.throw(error)
        except (StopIteration, type(error)):
            return True
        finally:
            self.state = None
        self.steps.close()
        return False

    def settle(self, item: object) -> Command:
        """The command after `item`, something other than a command the flow yielded.

        For a driver that sends into :attr:`steps` itself: it handles state
        boundaries and mistakes as :meth:`send` does. ``StopIteration`` (the
        conversation ended) propagates.
        """
        while not isinstance(item, Command):
            item = self._not_a_command(item)
        return item

    def _not_a_command(self, item: object) -> Command:
        if isinstance(item, Entered):
            self._enter(item.state)
            return self.steps.send(None)  # type: ignore[return-value]
        return self.steps.throw(TypeError(_what_to_yield(item)))  # type: ignore[return-value]

    def _enter(self, state: State) -> None:
        self.state = state
        try:
            snapshot = Snapshot.of(state)
        except NotSaveable:
            self.steps.close()
            raise
        if self.entered is not None:
            self.entered(self, snapshot)

    # -- rebuilding -----------------------------------------------------------

    @staticmethod
    def restored(snapshot: Snapshot) -> State:
        """The state `snapshot` saved; :class:`Diverged` if it cannot be restored."""
        try:
            return snapshot.restore()
        except LookupError as gone:
            raise Diverged(str(gone)) from None

    def replay(self, steps: Iterable[Step], seen: Callable[[Command], None] | None = None) -> None:
        """Bring a fresh runner up to date by sending the recorded `steps` in.

        Outputs met on the way (shown before) resume with ``None``. Each
        command that took a recorded value must have the recorded
        fingerprint, else the flow's code changed: :class:`Diverged`. The
        runner is left at the command after the last step, not yet fulfilled
        (`command`). `entered` is not told of the states replayed; `seen`, if
        given, is told of every command replayed (the testing kit compares).
        """
        entered, self.entered = self.entered, None
        try:
            command = self.send(None)
            for number, step in enumerate(steps, 1):
                while isinstance(command, Output):
                    if seen is not None:
                        seen(command)
                    command = self.send(None)
                if seen is not None and command is not None:
                    seen(command)
                if command is None or fingerprint(command) != step.fingerprint:
                    raise Diverged(
                        f"at step {number} the flow gave {command!r}, recorded: {step.fingerprint}"
                    )
                if step.error is not None:
                    command = self.throw(step.error)
                else:
                    command = self.send(step.value)
        except Diverged:
            self.steps.close()
            raise
        except Exception as failure:
            self.steps.close()
            raise Diverged(f"the flow failed during replay: {failure!r}") from None
        self.entered = entered

    @classmethod
    def rebuild(
        cls,
        snapshot: Snapshot,
        steps: Iterable[Step],
        entered: OnEnter | None = None,
        seen: Callable[[Command], None] | None = None,
    ) -> Runner:
        """A conversation rebuilt from `snapshot` and the `steps` since (see :meth:`replay`)."""
        runner = cls(cls.restored(snapshot), entered)
        runner.replay(steps, seen)
        return runner


def _what_to_yield(item: object) -> str:
    """One sentence for a flow that yielded something other than a command."""
    if isinstance(item, str):
        return f"a flow yields commands, not text: write yield Print({item!r}) to show it"
    if isinstance(item, types.GeneratorType):
        return (
            "a flow yielded a generator: run a sub-flow with `yield from sub.run()`, "
            "not `yield sub.run()`"
        )
    if isinstance(item, State):
        return (
            f"a flow yielded the state {type(item).__name__}: move to it with "
            f"`return {type(item).__name__}(...)`, or run it with `yield from state.run()`"
        )
    if isinstance(item, type) and issubclass(item, Command):
        return f"a flow yielded the class {item.__name__}: yield an instance, {item.__name__}(...)"
    return (
        f"a flow yields commands (Print, Input, Choose, Call, Sleep), got {type(item).__name__} "
        f"{item!r}"
    )
