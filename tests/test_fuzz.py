"""Fuzzing the real bot: thousands of random and mutated updates and Bot API answers.

``weather-bot`` runs as a subprocess against the fake Bot API (and the fake
Open-Meteo). Users write, press, share, edit, join and leave at random; the
server also answers the bot's calls with garbage (bodies that are not JSON,
results of the wrong type, errors whose fields are of the wrong type, 429s,
5xx) and hands it updates that are mutated copies of real ones (keys gone,
values of every type, ids out of range). Random is seeded, so a failure
comes again the same way. However it goes, afterwards the bot must still be
running, have logged no traceback, and answer a plain ``/start``.
"""

from __future__ import annotations

import copy
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_telegram import SECRET, FakeTelegram, Sent, bot_environment
from tests.support.openmeteo_server import FakeOpenMeteo
from tests.support.processes import stop_process

#: The seed of the whole run; change it to explore, keep it to reproduce.
SEED = 20261128
#: Updates the run aims at, and the wall time it may take at most.
UPDATES = 3000
TIME_BUDGET = 30.0
#: Fed at least this many within the budget, even on a slow machine.
AT_LEAST = 1000
#: Each round: this many user updates, a batch of mutated ones, a few garbled answers.
#: Big rounds, because each batch of mutated updates costs the bot a wait it makes on
#: purpose (polling again at once after updates it cannot take would spin): about a
#: second a round, whatever the round holds.
USER_UPDATES_PER_ROUND = 150
MUTATED_PER_ROUND = (15, 45)
GARBLED_PER_ROUND = (2, 6)

CHATS = [*range(1, 13), -100, -101]  # private chats, and two groups
CITIES = ["London", "Paris", "City0001", "City0002", "Berlin", ""]

#: The calls whose answers are garbled, and the statuses they get. A 401 or 404 to
#: getUpdates is left out: that is how Telegram says the token was revoked, and the
#: bot stops then by design.
GARBLED = {
    "getUpdates": [200, 200, 400, 409, 429, 500, 502],
    "sendMessage": [200, 400, 403, 404, 429, 500, 502],
    "answerCallbackQuery": [200, 400, 429, 500],
    "editMessageReplyMarkup": [200, 400, 429, 502],
    "editMessageText": [200, 400, 500],
    "sendChatAction": [200, 400, 429, 500],
}

#: Small retry_after values only: capping a huge one is tested on its own, and the
#: fuzz must not sit out a long (if capped) wait.
RETRY_AFTERS: list[Any] = [0, 1, -1, 0.5, "1", "x", None, [], {}, True, "nan"]


def junk(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value, of any type, sometimes nested, sometimes extreme."""
    kind = rng.randrange(12 if depth < 2 else 9)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**53, 2**63, 2**64, -(2**63) - 1, 10**30])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, -1e308, 3.0])
    if kind == 4:
        return ""
    if kind == 5:
        return rng.choice(["²", "١٢", "tag:²", "ok:1:2", "\u0000", "\ud7ff", "🌦", "/start"])
    if kind == 6:
        return "x" * rng.choice([1, 100, 5000, 70_000])
    if kind == 7:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(1, 40)))
    if kind == 8:
        return rng.randrange(-5, 10**6)
    if kind == 9:
        return [junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(junk(rng, 2))[:20]: junk(rng, depth + 1) for _ in range(rng.randrange(4))}


def mutate(rng: random.Random, value: Any, times: int) -> Any:
    """`value` (JSON) with `times` random changes: keys dropped, added, values replaced."""
    value = copy.deepcopy(value)
    for _ in range(times):
        containers = list(_containers(value))
        if not containers:
            return junk(rng)
        node = rng.choice(containers)
        if isinstance(node, dict) and node:
            key = rng.choice(list(node))
            action = rng.randrange(3)
            if action == 0:
                del node[key]
            elif action == 1:
                node[key] = junk(rng)
            else:
                node[str(junk(rng, 2))[:20]] = junk(rng)
        elif isinstance(node, list) and node:
            node[rng.randrange(len(node))] = junk(rng)
        else:
            node_value = junk(rng)
            if isinstance(node, dict):
                node["x"] = node_value
            else:
                node.append(node_value)
    return value


def _containers(node: Any) -> Iterator[Any]:
    """Every dict and list in `node`, itself included."""
    if isinstance(node, (dict, list)):
        yield node
        for child in node.values() if isinstance(node, dict) else node:
            yield from _containers(child)


class Fuzzer:
    """Plays the users and the broken server, from one seeded random stream."""

    def __init__(self, telegram: FakeTelegram, rng: random.Random) -> None:
        self.telegram = telegram
        self.rng = rng
        self.fed = 0
        self.garbled = 0

    # -- updates through the queue (real ones, as users make them)

    def user_update(self) -> None:
        """One thing a user does, queued as Telegram would."""
        rng, telegram = self.rng, self.telegram
        chat = rng.choice(CHATS)
        user = {"user_id": abs(chat) % 7 + 1} if chat < 0 else {}
        kind = rng.randrange(10)
        if kind < 4:
            text = rng.choice(
                ["/start", "/cancel", "/help", "/forget", "/start berlin", "0", "1", "quit",
                 "continue", *CITIES, str(junk(rng, 2))[:5000]]
            )  # fmt: skip
            telegram.send_text(chat, text or " ", **user)
        elif kind < 6:
            self.press(chat, user)
        elif kind == 6:
            message = telegram.message(chat, location={"latitude": rng.uniform(-90, 90),
                                                       "longitude": rng.uniform(-180, 180)},
                                       **user)  # fmt: skip
            telegram.push({"message": message})
        elif kind == 7:
            rng.choice([telegram.send_photo, telegram.send_sticker, telegram.send_voice])(
                chat, **user
            )
        elif kind == 8:
            message = telegram.send_text(chat, "Paris", **user)
            telegram.edit_user_message(message, "London")
        elif chat > 0:
            telegram.member_update(chat, chat, rng.choice(["kicked", "member"]))
        else:
            telegram.channel_post(-1000 - abs(chat), "news")
        self.fed += 1

    def press(self, chat: int, user: dict[str, int]) -> None:
        """Press a button the bot sent, or one with forged data."""
        sent = self.telegram.messages(chat)
        with_buttons = [m for m in sent if m.keyboard]
        target: Sent = (
            self.rng.choice(with_buttons)
            if with_buttons
            else Sent(chat_id=chat, message_id=self.rng.randrange(1, 50), text="?")
        )
        forged = None
        if not with_buttons or self.rng.random() < 0.4:
            forged = str(
                self.rng.choice(["x", "tag:²", "0:0", "1:99", "", "9" * 80, junk(self.rng, 2)])
            )
        if with_buttons and forged is None:
            self.telegram.press(chat, target, self.rng.randrange(len(target.buttons)), **user)
        else:
            self.telegram.press(chat, target, 0, data=forged[:64] if forged else "", **user)

    # -- updates handed over by a garbled getUpdates answer

    def mutated_updates(self, count: int) -> None:
        """Mutated copies of real updates, in one getUpdates answer, taken once."""
        rng, telegram = self.rng, self.telegram
        updates: list[Any] = []
        for _ in range(count):
            chat = rng.choice(CHATS[:6])
            base: dict[str, Any] = {
                "update_id": rng.choice(
                    [rng.randrange(1, 10**6), rng.randrange(10**6, 10**9), junk(rng, 2)]
                ),
                "message": telegram.message(chat, text=rng.choice(["/start", "London", "0"]))
                if chat > 0
                else telegram.message(chat, user_id=3, text="/start"),
            }
            if rng.random() < 0.3:
                base = {
                    "update_id": base["update_id"],
                    "callback_query": {
                        "id": str(rng.randrange(10**6)),
                        "from": telegram.user(abs(chat)),
                        "message": base["message"],
                        "chat_instance": "i",
                        "data": "0:0",
                    },
                }
            one = mutate(rng, base, rng.randrange(1, 6)) if rng.random() < 0.9 else junk(rng)
            updates.append(one)
        body: Any = {"ok": True, "result": updates}
        if rng.random() < 0.1:  # the whole answer, not just its updates
            body = mutate(rng, body, rng.randrange(1, 4))
        telegram.answer_raw("getUpdates", body)
        self.fed += count

    # -- garbled answers to the bot's own calls

    def garbled_answer(self) -> None:
        rng = self.rng
        method = rng.choice(list(GARBLED))
        status = rng.choice(GARBLED[method])
        body = self.garbled_body(status)
        kind = rng.choice(["application/json", "application/json", "text/html", "text/plain"])
        self.telegram.answer_raw(method, body, status=status, content_type=kind)
        self.garbled += 1

    def garbled_body(self, status: int) -> Any:
        rng = self.rng
        choice = rng.randrange(8)
        if choice == 0:
            return rng.choice([b"", b"not json", b"<html>502</html>", b"\xff\xfe\x00", b"{", b"[]"])
        if choice == 1:
            return junk(rng)
        if choice == 2:
            return {"ok": True, "result": junk(rng)}
        if choice == 3:
            return {
                "ok": rng.choice([True, False, None, "yes"]),
                "result": {"message_id": junk(rng)},
            }
        parameters = rng.choice(
            [junk(rng, 2), {"retry_after": rng.choice(RETRY_AFTERS)},
             {"migrate_to_chat_id": junk(rng, 2)}]
        )  # fmt: skip
        return mutate(
            rng,
            {
                "ok": False,
                "error_code": status if rng.random() < 0.7 else junk(rng, 2),
                "description": rng.choice(["Bad Request", junk(rng, 2)]),
                "parameters": parameters,
            },
            rng.randrange(0, 2),
        )


class BotRun:
    """The bot as a subprocess; its output kept in a file."""

    def __init__(self, telegram: FakeTelegram, directory: Path) -> None:
        self.log = directory / "bot.log"
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "frontends.telegram", "--no-pacing"],
                cwd=directory,
                env=bot_environment(telegram),
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int | None:
        return stop_process(self.process, 15)


@pytest.fixture
def bot(telegram: FakeTelegram, openmeteo: FakeOpenMeteo, tmp_path: Path) -> Iterator[BotRun]:
    openmeteo.add_cities(2)
    run = BotRun(telegram, tmp_path)
    try:
        telegram.wait_until(
            lambda: telegram.requests_to("getUpdates") or run.process.poll() is not None,
            timeout=15,
            what="the bot to poll",
        )
        yield run
    finally:
        run.stop()


def clean_polls(telegram: FakeTelegram) -> int:
    return sum(1 for r in telegram.requests_to("getUpdates") if r.fault is None)


def wait_for(telegram: FakeTelegram, check: Callable[[], bool], what: str, timeout: float) -> None:
    telegram.wait_until(lambda: check() or None, timeout=timeout, what=what)


def test_random_and_mutated_updates_and_answers_leave_the_bot_answering(
    telegram: FakeTelegram, bot: BotRun
) -> None:
    rng = random.Random(SEED)
    fuzzer = Fuzzer(telegram, rng)
    deadline = time.monotonic() + TIME_BUDGET
    while fuzzer.fed < UPDATES and time.monotonic() < deadline:
        for _ in range(USER_UPDATES_PER_ROUND):
            fuzzer.user_update()
        fuzzer.mutated_updates(rng.randrange(*MUTATED_PER_ROUND))
        for _ in range(rng.randrange(*GARBLED_PER_ROUND)):
            fuzzer.garbled_answer()
        assert bot.process.poll() is None, bot.output()[-5000:]
        # Keep the queue short, so what is fed is also taken within the budget.
        wait_for(
            telegram,
            lambda: telegram.unconfirmed() < 40 or bot.process.poll() is not None,
            "the bot to take the queued updates",
            timeout=max(1.0, deadline - time.monotonic()) + 20,
        )

    assert fuzzer.fed >= AT_LEAST, f"only {fuzzer.fed} updates fed in {TIME_BUDGET}s"
    telegram.clear_faults()
    # One more update, taken and confirmed by clean polls: the queue empties, however
    # huge an id the garbage had (the fake numbers new updates above it). Sent at
    # once, so it ends the long poll in flight rather than waiting it out.
    polls = clean_polls(telegram)
    telegram.send_text(776, "/help")
    wait_for(
        telegram,
        lambda: clean_polls(telegram) > polls and telegram.unconfirmed() == 0,
        "clean polls to take and confirm everything",
        60,
    )
    assert bot.process.poll() is None, bot.output()[-5000:]

    telegram.send_text(777, "/start")
    telegram.wait_text(777, "Name a city", timeout=30)
    telegram.send_text(777, "City0001")
    telegram.wait_text(777, "Current temperature is", timeout=30)

    assert bot.stop() == 0, bot.output()[-5000:]
    output = bot.output()
    assert SECRET not in output
    assert "Traceback" not in output, traceback_excerpt(output)
    assert "CRITICAL" not in output, output[-5000:]
    print(f"fed {fuzzer.fed} updates and {fuzzer.garbled} garbled answers")


def traceback_excerpt(output: str) -> str:
    """Each distinct traceback in the bot's output (the first of each kind), for the report."""
    lines = output.splitlines()
    seen: dict[str, str] = {}
    for index, line in enumerate(lines):
        if line.startswith("Traceback"):
            end = index + 1
            while end < len(lines) and (lines[end].startswith((" ", "\t")) or lines[end] == ""):
                end += 1
            block = "\n".join(lines[max(0, index - 1) : end + 1])
            seen.setdefault(lines[min(end, len(lines) - 1)], block)
    return "\n\n".join(seen.values())
