"""Test a flow without a network, a frontend or a mock library.

Two styles, for two needs (after redux-saga's advice):

* Step level, :class:`FlowTest`: look at each command the flow yields and
  answer it, with plain ``assert``::

      flow = FlowTest(AskCity())
      assert flow.command == Input("Name a city: ")
      flow.answer("London")
      assert flow.command == Call(search_places, "London")
      flow.returns([])
      flow.expect(Print("Found nothing"))

* Outcome level, :func:`check_transcript`: the whole dialogue as text, so a
  test does not break each time a step is added in the middle::

      check_transcript(WeatherFlow(), '''
          bot: Name a city:
          you: Atlantis
          call: search_places
          bot: Found nothing
          ...
      ''', calls={"search_places": lambda name: []})

Both are strict: an unexpected command, or a missing one, fails with the
dialogue so far and what was expected next.

A question asked with a ``timeout`` is let pass unanswered by
``flow.times_out()``, or by a ``timeout:`` line in a transcript (written
``timeout: 600`` in the dialogue so far); the flow sees
:class:`~engine.commands.Timeout` at its ``yield``, as when the engine's
timer fires.
"""

from __future__ import annotations

import pickle
import textwrap
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from engine.commands import (
    Answer,
    Call,
    Choose,
    Command,
    Forget,
    Input,
    Output,
    Picture,
    Print,
    Recall,
    Remember,
    Sleep,
    Timeout,
    User,
    Who,
)
from engine.frontend import Frontend, Receipt, refusal
from engine.runner import Diverged, Runner, Snapshot, Step, fingerprint
from engine.states import Flow, State, first_state

__all__ = ["FlowMismatch", "FlowTest", "RecordingFrontend", "check_transcript", "render"]


class FlowMismatch(AssertionError):
    """The flow did something other than what the test expected."""


def render(command: Command) -> list[str]:
    """A command as transcript lines: ``bot: ...``, ``call: ...``, ``sleep: ...``."""
    if isinstance(command, Print):
        return [f"bot: {line}".rstrip() for line in command.text.split("\n")]
    if isinstance(command, Input):
        return [f"bot: {command.prompt}".rstrip()] if command.prompt else []
    if isinstance(command, Choose):
        return [f"bot: {line}".rstrip() for line in [command.prompt, *command.numbered()]]
    if isinstance(command, Call):
        arguments = [repr(a) for a in command.args]
        arguments += [f"{k}={v!r}" for k, v in command.kwargs.items()]
        return [f"call: {_short_name(command)}({', '.join(arguments)})"]
    if isinstance(command, Sleep):
        return [f"sleep: {command.seconds:g}"]
    if isinstance(command, Picture):
        caption = f"{command.caption} " if command.caption else ""
        return [f"picture: {caption}({len(command.png)} bytes)"]
    if isinstance(command, Remember):
        return [f"remember: {command.data!r}"]
    if isinstance(command, Forget):
        return ["forget"]
    if isinstance(command, (Who, Recall)):  # reads: what they give shows in what follows
        return []
    return [f"bot: {command!r}"]


#: Commands a test must answer with a value (``resume()`` is not enough).
_ANSWERED = (Input, Choose, Call, Who, Recall)


class FlowTest:
    """Steps one conversation of a flow, command by command.

    `command` is what the flow is waiting on now (``None`` once it ended);
    `state` is the state it is in; `transcript` is the dialogue so far, as
    the lines :func:`check_transcript` uses; `memory` is what the user has
    remembered (`memory=` to start with some), as ``Remember`` and
    ``Forget`` leave it. The conversation runs on the
    engine's own :class:`~engine.runner.Runner`, so every state is snapshotted
    as the journal would, and :meth:`check_replay` rebuilds it as recovery does.
    """

    def __init__(self, flow: Flow, *, memory: Mapping[str, Any] | None = None) -> None:
        #: What ``Recall`` gives when not told otherwise; ``Remember``/``Forget`` change it.
        self.memory: dict[str, Any] = dict(memory or {})
        #: Every command answered so far, with what was sent in: (command, value, error).
        self.history: list[tuple[Command, Any, BaseException | None]] = []
        self.command: Command | None = None
        self.transcript: list[str] = []
        # (how many history entries came before, the snapshot): one per state entered.
        self._boundaries: list[tuple[int, Snapshot]] = []
        # A copy, through the journal's path: the test must not change the given state.
        start = Snapshot.of(first_state(flow)).restore()
        self._runner = Runner(start, self._entered)
        self._advance(None, None)

    @property
    def state(self) -> State | None:
        """The state the conversation is in (``None`` once it ended)."""
        return self._runner.state

    @property
    def finished(self) -> bool:
        """Whether the conversation has ended."""
        return self.command is None

    # -- answering the current command ---------------------------------

    def answer(self, text: str | Answer) -> Command | None:
        """Answer the pending ``Input`` or ``Choose`` as a user would: text, or an Answer.

        ``answer(Location(51.5, -0.12))`` is a shared location (the
        transcript says ``you: 51.5, -0.12``). The answer is checked the way
        the engine does it: one the question refuses adds the engine's hint
        (``Try again``, ``Please answer with text.``) to the transcript and
        the same question stays pending.
        """
        question = self._require(Input, Choose)
        assert isinstance(question, (Input, Choose))
        self.transcript.append(f"you: {text}")
        value = question.accept(text)
        if value is None:
            self.transcript.append(f"bot: {refusal(question, text).value}")
            self.transcript.extend(render(question))
            return self.command
        return self._advance(value, None)

    def user(self, user: User) -> Command | None:
        """Answer the pending ``Who`` with `user`, as a frontend would."""
        self._require(Who)
        if not isinstance(user, User):
            self._fail(f"Who is answered with a User, not {user!r}")
        return self._advance(user, None)

    def recall(self, data: Mapping[str, Any] | None = None) -> Command | None:
        """Answer the pending ``Recall`` with `data`, or by default with `memory`."""
        self._require(Recall)
        if data is not None:
            self.memory = dict(data)
        return self._advance(_kept(self.memory), None)

    def returns(self, value: Any) -> Command | None:
        """Answer the pending ``Call`` with `value`, as if the function returned it."""
        self._require(Call)
        return self._advance(value, None)

    def raises(self, error: BaseException) -> Command | None:
        """Answer the pending ``Call`` by raising `error` at its ``yield``."""
        self._require(Call)
        self.transcript.append(f"  raised {error!r}")
        return self._advance(None, error)

    def times_out(self) -> Command | None:
        """Let the pending question's ``timeout`` pass with no answer.

        The flow sees :class:`~engine.commands.Timeout` at its ``yield``, as it
        does when the engine's timer fires; the transcript says ``timeout: <seconds>``.
        """
        question = self._require(Input, Choose)
        seconds = getattr(question, "timeout", None)
        if seconds is None:
            self._fail(f"{question!r} has no timeout, so it cannot time out")
        assert seconds is not None
        self.transcript.append(f"timeout: {seconds:g}")
        return self._advance(None, Timeout(seconds))

    def resume(self) -> Command | None:
        """Let a pending ``Print``, ``Sleep``, ``Remember`` (or other output) complete."""
        self._require(Command)
        if isinstance(self.command, _ANSWERED):
            self._fail(f"{type(self.command).__name__} needs an answer, not resume()")
        return self._advance(None, None)

    def expect(self, command: Command) -> Command | None:
        """Check the pending command equals `command`; resume it if it is output."""
        if self.command != command:
            self._fail(f"expected {command!r}")
        if isinstance(command, _ANSWERED):
            return self.command
        return self.resume()

    def throw(self, error: BaseException) -> Command | None:
        """Raise `error` inside the flow at its current ``yield`` (e.g. a cancel)."""
        self._require(Command)
        return self._advance(None, error)

    # -- surviving a restart ---------------------------------------------

    def check_replay(self) -> None:
        """Rebuild this dialogue as recovery would after a restart; fail if it goes differently.

        For every state the dialogue entered, its snapshot is restored and the
        values recorded since are replayed into it, by the very code the
        scheduler's recovery runs (:meth:`Runner.rebuild`). A flow that fails
        here would not survive a restart: something non-deterministic (the
        time, randomness, I/O) happens outside a ``Call``, a state does not
        restore, or a value sent in cannot be saved.
        """
        for before, snapshot in self._boundaries:
            self._replay_from(before, snapshot)

    def _replay_from(self, before: int, snapshot: Snapshot) -> None:
        recorded = [command for command, _, _ in self.history[before:]]
        if self.command is not None:
            recorded.append(self.command)
        answered = [entry for entry in self.history[before:] if not isinstance(entry[0], Output)]
        steps = [self._saved_step(entry) for entry in answered]
        replayed: list[Command] = []
        try:
            runner = Runner.rebuild(snapshot, steps, seen=replayed.append)
        except Diverged as diverged:
            self._compare(before, recorded, replayed)
            raise FlowMismatch(
                f"the flow does not survive a restart in state "
                f"{snapshot.state_class.rpartition(':')[2]}: {diverged}"
                f"\n{_show_dialogue(self.transcript)}"
            ) from None
        command = runner.command
        while command is not None and len(replayed) < len(recorded):
            replayed.append(command)
            if not isinstance(command, Output):
                break
            command = runner.send(None)
        runner.steps.close()
        self._compare(before, recorded, replayed)
        if self.command is None and command is not None and len(replayed) == len(recorded):
            self._not_deterministic("after the last step", command, None)

    def _compare(self, before: int, recorded: list[Command], replayed: list[Command]) -> None:
        pairs = zip(replayed, recorded, strict=False)
        for number, (again, first) in enumerate(pairs, before + 1):
            if fingerprint(again) != fingerprint(first):
                self._not_deterministic(f"at step {number}", again, first)
        if len(replayed) < len(recorded):
            self._not_deterministic(
                f"at step {before + len(replayed) + 1}", None, recorded[len(replayed)]
            )

    def _saved_step(self, entry: tuple[Command, Any, BaseException | None]) -> Step:
        """A history entry as the journal keeps it: values go through pickle."""
        command, value, error = entry
        try:
            return Step(fingerprint(command), _kept(value), _kept(error))
        except Exception as failure:
            raise FlowMismatch(
                f"what was sent in for {command!r} cannot be saved ({failure}), so the "
                f"conversation would start over after a restart\n{_show_dialogue(self.transcript)}"
            ) from None

    def _not_deterministic(
        self, where: str, replayed: Command | None, recorded: Command | None
    ) -> None:
        raise FlowMismatch(
            f"the flow is not deterministic: {where} it yielded {replayed!r} on replay, "
            f"{recorded!r} the first time. Is something non-deterministic (time, randomness, "
            f"I/O) done outside a Call?\n{_show_dialogue(self.transcript)}"
        )

    # -- internals -------------------------------------------------------

    def _entered(self, runner: Runner, snapshot: Snapshot) -> None:
        self._boundaries.append((len(self.history), snapshot))

    def _advance(self, value: Any, error: BaseException | None) -> Command | None:
        if self.command is not None:
            self.history.append((self.command, value, error))
            if isinstance(self.command, Remember) and error is None:
                self.memory = _kept(self.command.data)
            elif isinstance(self.command, Forget) and error is None:
                self.memory = {}
        runner = self._runner
        step = runner.throw(error) if error is not None else runner.send(value)
        self.command = step
        if step is not None:
            self.transcript.extend(render(step))
        return step

    def _require(self, *kinds: type[Command]) -> Command:
        wanted = " or ".join(k.__name__ for k in kinds)
        if self.command is None or not isinstance(self.command, kinds):
            self._fail(f"expected the flow to wait on {wanted}")
        assert self.command is not None
        return self.command

    def _fail(self, what: str) -> None:
        now = "the flow has ended" if self.command is None else f"it is at {self.command!r}"
        raise FlowMismatch(f"{what}, but {now}\n{_show_dialogue(self.transcript)}")


def _kept(value: Any) -> Any:
    """`value` after a trip through the journal (plain values are kept as they are)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))


def check_transcript(
    flow: Flow,
    script: str,
    calls: Mapping[str, Callable[..., Any]] | None = None,
    *,
    finished: bool = True,
    replay: bool = True,
    user: User | None = None,
    memory: Mapping[str, Any] | None = None,
) -> FlowTest:
    """Run `flow` against a dialogue written as text; fail on any difference.

    Lines are ``bot: <text>`` (a Print, an Input's prompt, a Choose's prompt
    and its numbered options), ``you: <answer>``, ``call: <name>`` or
    ``call: <name>(<args as repr>)``, ``sleep: <seconds>``, and ``timeout:``
    (or ``timeout: <seconds>``) where a question with a ``timeout`` goes
    unanswered (see :meth:`FlowTest.times_out`). Each Call is
    answered by the fake in `calls` of that function's name: a plain function
    taking the same arguments, whose return value or exception goes back into
    the flow. With `finished` the flow must end where the script ends.
    With `replay` (the default) the dialogue is then replayed into a fresh
    conversation, as the journal would after a restart, and must go exactly
    the same way (see :meth:`FlowTest.check_replay`).
    A ``Who`` is answered with `user`; a ``Recall`` with `memory` (nothing
    remembered by default), which ``Remember``/``Forget`` change: they show
    as ``remember: {...}`` and ``forget`` lines, a ``Picture`` as
    ``picture: <caption> (N bytes)``; ``you: 51.5, -0.12`` answers a
    question taking a location with a :class:`~engine.commands.Location`.
    Returns the :class:`FlowTest`, to look further (``.memory``).
    """
    expected = _script_lines(script)
    fakes = dict(calls or {})
    test = FlowTest(flow, memory=memory)
    checked = 0
    while True:
        said = [line for line in test.transcript if not line.startswith("  ")]
        for index in range(checked, len(said)):
            wanted = expected[index] if index < len(expected) else "(the end)"
            if not _same_line(said[index], wanted):
                raise FlowMismatch(
                    f"transcript line {index + 1}: expected {wanted!r}, the flow gave "
                    f"{said[index]!r}\n{_show_dialogue(test.transcript)}"
                )
        checked = len(said)
        command = test.command
        if command is None:
            if checked < len(expected):
                raise FlowMismatch(
                    f"the flow ended, but the transcript goes on with {expected[checked]!r}"
                    f"\n{_show_dialogue(test.transcript)}"
                )
            if replay:
                test.check_replay()
            return test
        if checked >= len(expected) and isinstance(command, (Input, Choose)):
            if not finished:
                if replay:
                    test.check_replay()
                return test
            raise FlowMismatch(
                f"the transcript ended, but the flow goes on with {command!r}"
                f"\n{_show_dialogue(test.transcript)}"
            )
        if isinstance(command, (Input, Choose)):
            line = expected[checked]
            if line.startswith("timeout:"):
                test.times_out()
                continue
            if not line.startswith("you:"):
                raise FlowMismatch(
                    f"transcript line {checked + 1}: expected {line!r}, but the flow waits "
                    f"for an answer to {command!r}\n{_show_dialogue(test.transcript)}"
                )
            test.answer(line[len("you:"):].strip())
        elif isinstance(command, Call):
            fake = fakes.get(_short_name(command)) or fakes.get(command.name)
            if fake is None:
                raise FlowMismatch(
                    f"no fake given for {command!r}: pass calls={{{_short_name(command)!r}: ...}}"
                    f"\n{_show_dialogue(test.transcript)}"
                )
            try:
                result = fake(*command.args, **command.kwargs)
            except Exception as error:  # the fake's exception goes into the flow
                test.raises(error)
            else:
                test.returns(result)
        elif isinstance(command, Who):
            if user is None:
                raise FlowMismatch(
                    "the flow asks Who it talks to: pass user=User(...)"
                    f"\n{_show_dialogue(test.transcript)}"
                )
            test.user(user)
        elif isinstance(command, Recall):
            test.recall()
        else:
            test.resume()


def _short_name(command: Call) -> str:
    return getattr(command.fn, "__name__", None) or command.name


def _script_lines(script: str) -> list[str]:
    lines = [line.strip() for line in textwrap.dedent(script).strip("\n").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _same_line(actual: str, wanted: str) -> bool:
    if actual.startswith("call: ") and "(" not in wanted:
        return actual.split("(", 1)[0] == wanted.rstrip()
    if actual.startswith("timeout: ") and wanted.rstrip() == "timeout:":
        return True
    if actual.startswith("you: ") and wanted.startswith("you:"):
        return actual[4:].strip() == wanted[4:].strip()
    return actual.rstrip() == wanted.rstrip()


def _show_dialogue(lines: Iterable[str]) -> str:
    shown = list(lines)
    return "dialogue so far:\n" + ("\n".join(f"    {line}" for line in shown) or "    (nothing)")


class RecordingFrontend(Frontend):
    """A frontend that writes down everything, for tests of the scheduler.

    Each key's `log` is a list of transcript lines, as :func:`render` makes
    them, plus ``ended``. :meth:`wait_for` blocks (with a timeout) until a
    key's log satisfies a test.
    """

    name = "recording"
    extra_commands: tuple[type[Command], ...] = (Picture,)

    def __init__(self) -> None:
        #: Who each key's conversation is with (``Who``); by default a user named after the key.
        self.users: dict[str, User] = {}
        self.log: dict[str, list[str]] = {}
        self.asked: dict[str, Input | Choose] = {}
        self._changed = threading.Condition()

    def deliver(self, key: str, command: Command, receipt: Receipt = None) -> None:
        """Write the Print down."""
        self._write(key, render(command))

    def ask(self, key: str, question: Input | Choose, receipt: Receipt = None) -> None:
        """Write the question down; it stays in `asked` until the next one."""
        self.asked[key] = question
        self._write(key, render(question))

    def user(self, key: str) -> User:
        """The user set in `users`, else one whose id and name are `key`."""
        return self.users.get(key) or User(id=key, name=key)

    def restored(self, key: str, question: Input | Choose) -> None:
        """Note the question that a rebuilt conversation waits on."""
        self.asked[key] = question
        self._write(key, ["(restored)"])

    def ended(self, key: str) -> None:
        """Write ``ended``."""
        self.asked.pop(key, None)
        self._write(key, ["ended"])

    def lines(self, key: str) -> list[str]:
        """What `key` was shown so far."""
        with self._changed:
            return list(self.log.get(key, []))

    def wait_for(self, key: str, line: str, timeout: float = 5.0) -> list[str]:
        """Wait until `line` is in `key`'s log; return the log, or fail."""
        return self.wait_until(lambda: line in self.log.get(key, []), timeout, key)

    def wait_until(
        self, test: Callable[[], bool], timeout: float = 5.0, key: str | None = None
    ) -> list[str]:
        """Wait until `test()` is true (checked on each change); fail after `timeout`."""
        with self._changed:
            if not self._changed.wait_for(test, timeout):
                shown = self.log.get(key, []) if key is not None else sorted(self.log)
                raise AssertionError(f"timed out after {timeout} s; log: {shown}")
            return list(self.log.get(key, [])) if key is not None else []

    def _write(self, key: str, lines: list[str]) -> None:
        with self._changed:
            self.log.setdefault(key, []).extend(lines)
            self._changed.notify_all()
