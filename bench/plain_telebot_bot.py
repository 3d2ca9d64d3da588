"""The weather dialogue as a plain pyTelegramBotAPI bot: step handlers, no engine.

The baseline of ``bench/telegram_bench.py``. It is written the way the
library's examples write such a bot: ``TeleBot(token)`` with its default
worker pool (``threaded=True``, two threads), next step handlers
(``register_next_step_handler_by_chat_id``) to wait for the next answer,
the blocking Open-Meteo client of :mod:`flows.openmeteo` called right inside
the handlers, and ``infinity_polling``. Conversations live in the library's
memory only.

For the benchmark's dialogue it sends what the engine's bot sends: the texts
of ``flows.weather``, "What next?" with ``continue``/``quit`` buttons that
are taken off once answered (typed or pressed), and "typing" before each
lookup. Run from the repository root::

    TELEGRAM_BOT_TOKEN=... [TELEGRAM_API_URL=...] python bench/plain_telebot_bot.py

``OPEN_METEO_*`` variables point the lookups elsewhere (see
``flows/openmeteo.py``). SIGTERM or Ctrl-C ends it at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `flows` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import telebot
from telebot import apihelper, types

from flows.openmeteo import Place, ServiceUnavailable, current_weather, search_places
from flows.weather import (
    CITY_PROMPT,
    MAX_CHOICES,
    NEXT_PROMPT,
    NOTHING_FOUND,
    PLACE_PROMPT,
    TERMINATING,
    UNAVAILABLE,
    conditions,
    found,
    place_labels,
)

NOT_STARTED = "Not started, call /start first"
ALREADY_RUNNING = "Already running, call /cancel to exit"
CANCELLED = "Exiting..."
NEXT_OPTIONS = ("continue", "quit")

#: A step handler: takes the user's next message.
Step = Callable[[types.Message], None]


class StepBot(telebot.TeleBot):
    """TeleBot with its step handlers fixed for batches of updates.

    pyTelegramBotAPI 4.37.1's ``_notify_next_handlers`` pops each message it
    hands to a step handler from the list it is enumerating, so the message
    right after it in the same ``getUpdates`` batch skips its own step handler
    and reaches the ordinary handlers ("Not started") while its step handler
    stays registered. With many users answering at once that is most batches.
    """

    def _notify_next_handlers(self, new_messages: list[types.Message]) -> None:
        backend: Any = self.next_step_backend
        run: Any = self._exec_task  # untyped
        kept = []
        for message in new_messages:
            handlers = backend.get_handlers(message.chat.id)
            if not handlers:
                kept.append(message)
                continue
            for handler in handlers:
                run(handler["callback"], message, *handler["args"], **handler["kwargs"])
        new_messages[:] = kept


def make_bot(token: str, threads: int = 2) -> telebot.TeleBot:
    """The bot with its handlers (conversations: its step handlers and the dicts below)."""
    bot = StepBot(token, num_threads=threads)
    # chat id -> the places offered; the message whose buttons are to go; who is talking.
    places: dict[int, list[Place]] = {}
    buttons: dict[int, int] = {}
    active: set[int] = set()

    # Each step handler is registered before its question goes out: the answer
    # may be polled before send_message returns. For the same reason a
    # question's message id (known once send_message returns) is guarded: the
    # answer may be handled on the other worker thread meanwhile.
    sending: dict[int, threading.Lock] = {}

    def ask(chat_id: int, text: str, markup: types.InlineKeyboardMarkup, step: Step) -> None:
        bot.register_next_step_handler_by_chat_id(chat_id, step)
        with sending.setdefault(chat_id, threading.Lock()):
            buttons[chat_id] = bot.send_message(chat_id, text, reply_markup=markup).message_id

    def take_buttons_off(chat_id: int) -> None:
        with sending.setdefault(chat_id, threading.Lock()):
            message_id = buttons.pop(chat_id, None)
        if message_id is not None:
            bot.edit_message_reply_markup(chat_id, message_id)

    def keyboard(tag: str, labels: list[str] | tuple[str, ...]) -> types.InlineKeyboardMarkup:
        rows = [
            [types.InlineKeyboardButton(label, callback_data=f"{tag}:{n}")]
            for n, label in enumerate(labels)
        ]
        return types.InlineKeyboardMarkup(rows)

    def ask_city(chat_id: int) -> None:
        bot.register_next_step_handler_by_chat_id(chat_id, got_city)
        bot.send_message(chat_id, CITY_PROMPT)

    def got_city(message: types.Message) -> None:
        chat_id = message.chat.id
        city = (message.text or "").strip()
        if city.startswith("/"):
            command(message, got_city)
            return
        if not city:
            ask_city(chat_id)
            return
        bot.send_chat_action(chat_id, "typing")
        try:
            found_places = search_places(city)
        except ServiceUnavailable:
            bot.send_message(chat_id, UNAVAILABLE)
            ask_city(chat_id)
            return
        if not found_places:
            bot.send_message(chat_id, NOTHING_FOUND)
            ask_city(chat_id)
        elif len(found_places) == 1:
            show_weather(chat_id, found_places[0])
        else:
            places[chat_id] = found_places[:MAX_CHOICES]
            labels = place_labels(tuple(places[chat_id]))
            ask(chat_id, PLACE_PROMPT, keyboard("place", labels), got_place)

    def got_place(message: types.Message) -> None:
        chat_id = message.chat.id
        text = (message.text or "").strip()
        if text.startswith("/"):
            command(message, got_place)
            return
        offered = places.get(chat_id, [])
        labels = [label.casefold() for label in place_labels(tuple(offered))]
        if text.casefold() in labels:
            place_chosen(chat_id, labels.index(text.casefold()))
        elif text.isdigit() and 1 <= int(text) <= len(offered):
            place_chosen(chat_id, int(text) - 1)
        else:
            bot.register_next_step_handler_by_chat_id(chat_id, got_place)
            bot.send_message(chat_id, "Please pick one of the places.")

    def place_chosen(chat_id: int, index: int) -> None:
        take_buttons_off(chat_id)
        place = places.pop(chat_id)[index]
        show_weather(chat_id, place)

    def show_weather(chat_id: int, place: Place) -> None:
        bot.send_message(chat_id, found(place))
        bot.send_chat_action(chat_id, "typing")
        try:
            weather = current_weather(place.latitude, place.longitude)
        except ServiceUnavailable:
            bot.send_message(chat_id, UNAVAILABLE)
            ask_city(chat_id)
            return
        bot.send_message(chat_id, f"Current temperature is {weather.temperature} °C")
        bot.send_message(chat_id, conditions(weather))
        ask(chat_id, NEXT_PROMPT, keyboard("next", NEXT_OPTIONS), got_next)

    def got_next(message: types.Message) -> None:
        chat_id = message.chat.id
        text = (message.text or "").strip().casefold()
        if text.startswith("/"):
            command(message, got_next)
        elif text in NEXT_OPTIONS:
            next_chosen(chat_id, text)
        else:
            bot.register_next_step_handler_by_chat_id(chat_id, got_next)
            bot.send_message(chat_id, "Please answer continue or quit.")

    def next_chosen(chat_id: int, choice: str) -> None:
        take_buttons_off(chat_id)
        if choice == "quit":
            active.discard(chat_id)
            bot.send_message(chat_id, TERMINATING)
        else:
            ask_city(chat_id)

    def command(message: types.Message, step: Step | None = None) -> None:
        """/start, /cancel, /help; `step` is the answer being waited for, if any."""
        chat_id = message.chat.id
        name = (message.text or "/").split(maxsplit=1)[0][1:].partition("@")[0].casefold()
        if name == "start":
            if chat_id in active:
                if step is not None:
                    bot.register_next_step_handler_by_chat_id(chat_id, step)
                bot.send_message(chat_id, ALREADY_RUNNING)
                return
            active.add(chat_id)
            ask_city(chat_id)
        elif name == "cancel":
            bot.clear_step_handler_by_chat_id(chat_id)
            take_buttons_off(chat_id)
            if chat_id in active:
                active.discard(chat_id)
                bot.send_message(chat_id, CANCELLED)
            else:
                bot.send_message(chat_id, NOT_STARTED)
        else:
            if step is not None:
                bot.register_next_step_handler_by_chat_id(chat_id, step)
            bot.send_message(chat_id, "I know /start and /cancel.")

    def on_command(message: types.Message) -> None:
        command(message)

    def on_other(message: types.Message) -> None:
        bot.send_message(message.chat.id, NOT_STARTED)

    def on_press(press: types.CallbackQuery) -> None:
        bot.answer_callback_query(press.id)
        message: Any = press.message
        if message is None:
            return
        chat_id = message.chat.id
        tag, _, number = (press.data or "").partition(":")
        if buttons.get(chat_id) != message.message_id or not number.isdigit():
            return
        bot.clear_step_handler_by_chat_id(chat_id)
        if tag == "place" and int(number) < len(places.get(chat_id, [])):
            place_chosen(chat_id, int(number))
        elif tag == "next" and int(number) < len(NEXT_OPTIONS):
            next_chosen(chat_id, NEXT_OPTIONS[int(number)])

    # What @bot.message_handler(...) would do (the decorators are untyped).
    bot.register_message_handler(on_command, commands=["start", "cancel", "help"])
    bot.register_message_handler(on_other, func=lambda message: True)
    bot.register_callback_query_handler(on_press, func=lambda press: True)
    return bot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--threads", type=int, default=2, help="the worker pool's size (the library's default 2)"
    )
    args = parser.parse_args(argv)
    token = os.environ.get("TELEGRAM_BOT_TOKEN", "").strip()
    if not token:
        print("set TELEGRAM_BOT_TOKEN", file=sys.stderr)
        return 2
    api_url = os.environ.get("TELEGRAM_API_URL", "").strip().rstrip("/")
    if api_url:
        helper: Any = apihelper
        helper.API_URL = api_url + "/bot{0}/{1}"
    bot = make_bot(token, args.threads)
    bot.infinity_polling(timeout=10, long_polling_timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
