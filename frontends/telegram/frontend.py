"""The engine's side: :class:`TelegramFrontend`, called by the scheduler; it only queues sends."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.commands import Call, Choose, Command, Input, Location, Picture, Print, User, takes
from engine.frontend import Frontend, Key, Notice, Receipt
from frontends.telegram.media import send_picture, send_with_reply_keyboard
from frontends.telegram.routing import (
    BUTTONS_NOTE,
    ROUTE_NOTE,
    PressAnswer,
    Question,
    Registry,
    Reply,
    Route,
    Unbutton,
    question_tag,
    retire_buttons,
)
from frontends.telegram.sending import AnswerCallback, Confirmation, EditMessage, Keyboard, Outbox
from frontends.telegram.texts import LOCATION_HINT, NOTICES
from frontends.telegram.users import Users

if TYPE_CHECKING:
    from engine.scheduler import Scheduler


class TelegramFrontend(Frontend):
    """What the scheduler calls (on its thread): all of it only queues sends."""

    name = "Telegram"
    notices = NOTICES
    confirms_delivery = True
    extra_commands = (Picture,)

    def __init__(
        self,
        outbox: Outbox,
        registry: Registry,
        on_halt: Callable[[str], None] | None = None,
        on_commit: Callable[[int | None], None] | None = None,
        users: Users | None = None,
    ) -> None:
        self.outbox = outbox
        self.registry = registry
        self.on_halt = on_halt
        self.on_commit = on_commit
        #: Who each conversation is with (filled by the updates), what its question takes.
        self.users = users if users is not None else Users()
        #: Set by the program: positions and notes in the journal (see ask, reopened).
        self.scheduler: Scheduler | None = None
        self._noted_buttons: dict[Key, tuple[str, int]] = {}  # after a restart, until restored

    def user(self, key: Key) -> User:
        """Who `key`'s conversation is with, from the latest update (never blocks)."""
        return self.users.user(key)

    def _position(self, key: Key) -> int | None:
        return None if self.scheduler is None else self.scheduler.position(key)

    def _note(self, key: Key, name: str, value: Any) -> None:
        if self.scheduler is not None:
            self.scheduler.note(key, name, value)

    def _send(
        self,
        key: Key,
        text: str,
        receipt: Receipt,
        *,
        keyboard: Keyboard | None = None,
        force_reply: bool = False,
        on_sent: Callable[[int, str], None] | None = None,
        question_open: bool = False,
    ) -> None:
        route = self.registry.route(key)
        done = self._confirmer(key, receipt)
        if keyboard is None and not question_open and self.users.location_keyboard(key, False):
            # The "Send my location" keyboard goes with the first message after its question.
            send_with_reply_keyboard(
                self.outbox, route.chat_id, text, "remove", reply_to=route.reply_to, on_done=done
            )
            return
        self.outbox.send_text(
            route.chat_id,
            text,
            reply_to=route.reply_to,
            keyboard=keyboard,
            force_reply=force_reply and route.user_id is not None,
            on_sent=on_sent,
            on_done=done,
        )

    def _ask_location(self, key: Key, text: str, receipt: Receipt) -> None:
        """Send `text` with the "Send my location" keyboard."""
        route = self.registry.route(key)
        self.users.location_keyboard(key, True)
        send_with_reply_keyboard(
            self.outbox,
            route.chat_id,
            text,
            "location",
            reply_to=route.reply_to,
            on_done=self._confirmer(key, receipt),
        )

    def _retire(self, question: Question | None) -> None:
        """Take the buttons off a question that is over."""
        if question is not None:
            retire_buttons(self.outbox, question.chat_id, lambda: question.message_id)

    def _confirmer(self, key: Key, receipt: Receipt) -> Callable[[], None] | None:
        """What confirms output `receipt` of `key`'s conversation once it is out."""
        return None if receipt is None else Confirmation(key, receipt, self.sent)

    def _own(self, key: Key, output: Command, receipt: Receipt) -> bool:
        """Show one of the bot's own outputs (see ``Scheduler.say``); False if it is none."""
        if isinstance(output, Reply):  # the conversation goes on: keep its buttons
            self._send(key, output.text, receipt)
        elif isinstance(output, PressAnswer):
            self.outbox.put(AnswerCallback(
                self.registry.route(key).chat_id, callback_id=output.callback_id,
                text=output.text, on_done=self._confirmer(key, receipt),
            ))  # fmt: skip
        elif isinstance(output, Unbutton):
            message_id = output.message_id
            self.outbox.put(EditMessage(
                output.chat_id, message_id=lambda: message_id, text=output.text,
                on_done=self._confirmer(key, receipt),
            ))  # fmt: skip
        else:
            return False
        return True

    def deliver(self, key: Key, command: Command, receipt: Receipt = None) -> None:
        if self._own(key, command, receipt):
            return
        if isinstance(command, Picture):
            self._retire(self.registry.close(key))
            route = self.registry.route(key)
            send_picture(
                self.outbox,
                route.chat_id,
                command.png,
                command.caption,
                reply_to=route.reply_to,
                on_done=self._confirmer(key, receipt),
            )
            return
        if not isinstance(command, Print):
            raise TypeError(f"the Telegram frontend cannot show {command!r}")
        self._retire(self.registry.close(key))
        self._send(key, command.text, receipt)

    def notify(self, key: Key, notice: Notice, receipt: Receipt = None) -> None:
        text = self.notices.get(notice, notice.value)
        if not text:
            self.sent(receipt)
            return
        if notice in (Notice.ALREADY_RUNNING, Notice.NOT_STARTED):
            # the conversation goes on: keep its buttons (and its location keyboard)
            self._send(key, text, receipt, question_open=True)
        else:
            self.deliver(key, Print(text), receipt)

    def ask(self, key: Key, question: Input | Choose, receipt: Receipt = None) -> None:
        self.registry.activate(key)
        self._retire(self.registry.close(key))
        self.users.asked(key, question.accepts)
        location = takes(question, Location)
        self._noted_buttons.pop(key, None)
        route = self.registry.route(key)
        if route.user_id is not None:  # a group: whom to quote after a restart too
            self._note(key, ROUTE_NOTE, (route.reply_to, route.name))
        if isinstance(question, Input):
            if location:
                self._ask_location(key, question.prompt or LOCATION_HINT, receipt)
            elif question.prompt and question.prompt.strip():
                self._send(key, question.prompt, receipt, force_reply=True)
            else:  # nothing to send, so nothing that would end "typing…" either
                self.outbox.typing(self.registry.route(key).chat_id, on=False)
                self.sent(receipt)
            return
        tag = question_tag(question, self._position(key))
        shown = Question(key, route.chat_id, tag, question.options)
        self.registry.open(shown)
        # In a group the buttons name whose they are: anyone there can press them.
        owner = "" if route.user_id is None else f":{route.user_id}"
        keyboard = tuple((option, f"{tag}:{n}{owner}") for n, option in enumerate(question.options))

        def on_sent(message_id: int, text: str) -> None:  # on a sender thread
            self.registry.sent(shown, message_id)
            # So that after a restart its buttons can still be taken off.
            self._note(key, BUTTONS_NOTE, (tag, message_id))

        prompt = question.prompt if question.prompt.strip() else "Choose one:"
        if location:  # the buttons of the options, then the location keyboard below
            self._send(key, prompt, None, keyboard=keyboard, on_sent=on_sent)
            self._ask_location(key, LOCATION_HINT, receipt)
            return
        self._send(key, prompt, receipt, keyboard=keyboard, on_sent=on_sent)

    def restored(self, key: Key, question: Input | Choose) -> None:
        """After a restart: the question is on screen already; its buttons work again."""
        self.registry.activate(key)
        self.users.asked(key, question.accepts)
        if takes(question, Location):  # shown before: the next message takes it away
            self.users.location_keyboard(key, True)
        noted = self._noted_buttons.pop(key, None)
        if not isinstance(question, Choose):
            return
        tag = question_tag(question, self._position(key))
        open_now = self.registry.question(key)
        if open_now is not None and open_now.tag == tag:  # sent again just now
            return
        shown = Question(key, self.registry.route(key).chat_id, tag, question.options)
        if noted is not None and noted[0] == tag:
            shown.message_id = noted[1]
        elif noted is None:  # asked by an earlier version, or before its send was noted
            shown.legacy_tag = question_tag(question)
        self.registry.open(shown)

    def reopened(self, key: Key, notes: dict[str, Any]) -> None:
        """After a restart: where the question's buttons are; in a group, whom to quote."""
        buttons: Any = notes.get(BUTTONS_NOTE)
        if _pair(buttons, str, int):
            self._noted_buttons[key] = buttons
        quoted: Any = notes.get(ROUTE_NOTE)
        route = Route.of(key)
        if route.user_id is not None and _pair(quoted, (int, type(None)), (str, type(None))):
            route.reply_to, route.name = quoted
            self.registry.saw(key, route)

    def working(self, key: Key, command: Command) -> None:
        self.registry.activate(key)
        self.users.asked(key, ())
        self._retire(self.registry.close(key))
        if isinstance(command, Call):
            self.outbox.typing(self.registry.route(key).chat_id)

    def ended(self, key: Key) -> None:
        self.users.asked(key, ())
        self._noted_buttons.pop(key, None)
        self.outbox.typing(self.registry.route(key).chat_id, on=False)
        self._retire(self.registry.end(key))

    def halted(self, reason: str) -> None:
        if self.on_halt is not None:
            self.on_halt(reason)

    def committed(self, source: int | None) -> None:
        """The journal holds every update up to `source`: the poller may confirm them."""
        if self.on_commit is not None:
            self.on_commit(source)


def _pair(value: Any, first: type | tuple[type, ...], second: type | tuple[type, ...]) -> bool:
    """Whether a note read back is the pair it should be (a damaged one is ignored)."""
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], first)
        and isinstance(value[1], second)
    )
