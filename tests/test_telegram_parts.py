"""The Telegram bot's parts: splitting, redaction, settings, pacing, the outbox, the poller."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import telebot
from telebot import apihelper as _apihelper
from telebot import types

from engine.frontend import Notice
from engine.testing import RecordingFrontend
from flows.weather import WeatherFlow
from frontends.telegram.api import classify
from frontends.telegram.config import (
    DEFAULT_API_URL,
    ConfigError,
    build_parser,
    pacing_from,
    read_settings,
)
from frontends.telegram.logs import Redactor
from frontends.telegram.polling import Journaled, Poller
from frontends.telegram.routing import Route, conversation_key
from frontends.telegram.sending import (
    MAX_RETRY_AFTER,
    Bucket,
    ChatGone,
    Outbox,
    Pacing,
    PermanentError,
    RetryAfter,
    Retrying,
    TransientError,
    split_text,
    utf16_len,
)
from frontends.telegram.texts import NOTICES, help_text
from tests.support.engine import Engine
from tests.support.fake_bot_api import FakeBotApi
from tests.support.fake_telegram import TOKEN, FakeTelegram

SECRET = TOKEN.split(":")[1]
apihelper: Any = _apihelper  # its exceptions are not annotated

# -- splitting ---------------------------------------------------------------------------


def test_a_short_text_is_one_message() -> None:
    assert split_text("Current temperature is 15.6 °C") == ["Current temperature is 15.6 °C"]


def test_a_text_of_exactly_the_limit_is_one_message() -> None:
    assert split_text("x" * 4096) == ["x" * 4096]


def test_blank_texts_make_no_message() -> None:
    assert split_text("") == []
    assert split_text("  \n ") == []


def test_long_text_is_cut_at_line_ends() -> None:
    lines = [f"line {n:04d} " + "word " * 8 for n in range(300)]
    text = "\n".join(line.rstrip() for line in lines)

    pieces = split_text(text)

    assert len(pieces) > 1
    assert all(utf16_len(piece) <= 4096 for piece in pieces)
    assert "\n".join(pieces) == text  # only the newlines at the cuts went


def test_a_paragraph_break_is_preferred_to_a_line_end() -> None:
    text = "a" * 60 + "\n\n" + "b" * 20 + "\n" + "c" * 10

    assert split_text(text, limit=90) == ["a" * 60, "b" * 20 + "\n" + "c" * 10]


def test_without_line_ends_it_cuts_after_a_sentence() -> None:
    text = "First sentence here. Second one is here! " + "third goes on and on"

    pieces = split_text(text, limit=50)

    assert pieces[0] == "First sentence here. Second one is here!"
    assert pieces[1] == "third goes on and on"


def test_without_sentences_it_cuts_between_words() -> None:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa"

    pieces = split_text(words, limit=20)

    assert all(len(piece) <= 20 for piece in pieces)
    assert " ".join(pieces) == words


def test_a_text_without_blanks_is_cut_hard() -> None:
    assert split_text("x" * 10_000) == ["x" * 4096, "x" * 4096, "x" * 1808]


def test_characters_outside_the_bmp_count_twice() -> None:
    text = "🌧" * 3000  # 6000 UTF-16 code units

    pieces = split_text(text)

    assert [len(piece) for piece in pieces] == [2048, 952]
    assert all(utf16_len(piece) <= 4096 for piece in pieces)


def test_a_hard_cut_keeps_a_combining_mark_with_its_letter() -> None:
    text = "e" * 10 + "\u0301" + "tail"  # the 11th character is a combining acute

    first, second = split_text(text, limit=10)

    assert first == "e" * 9
    assert second == "e\u0301tail"


# -- redaction ------------------------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, list[str]]]:
    """A logger whose handler formats records after a Redactor has seen them."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep()
    handler.addFilter(Redactor(TOKEN))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    yield logger, lines
    logger.removeHandler(handler)


def test_the_token_is_masked_in_messages_and_arguments(
    captured: tuple[logging.Logger, list[str]],
) -> None:
    logger, lines = captured
    url = f"http://127.0.0.1:1/bot{TOKEN}/getUpdates"

    logger.warning("GET %s failed", url)
    logger.warning(f"plain {TOKEN} and encoded {TOKEN.replace(':', '%3A')}")
    logger.warning("the secret alone: %s", SECRET)

    assert all(SECRET not in line for line in lines)
    assert lines[0] == "GET http://127.0.0.1:1/bot123456789:<token>/getUpdates failed"
    assert "123456789%3A<token>" in lines[1]


def test_the_token_is_masked_in_tracebacks(captured: tuple[logging.Logger, list[str]]) -> None:
    logger, lines = captured
    try:
        requests.get(f"http://127.0.0.1:9/bot{TOKEN}/getMe", timeout=2)
    except requests.ConnectionError:
        logger.exception("polling failed")

    assert "Traceback" in lines[0]
    assert "/bot123456789:<token>/getMe" in lines[0]
    assert SECRET not in lines[0]


# -- settings ---------------------------------------------------------------------------------


def test_the_token_and_url_come_from_the_environment() -> None:
    settings = read_settings(
        {"TELEGRAM_BOT_TOKEN": f" {TOKEN}\n", "TELEGRAM_API_URL": "http://127.0.0.1:8081/"}
    )

    assert settings.token == TOKEN
    assert settings.api_url == "http://127.0.0.1:8081"


def test_the_tutorials_variable_name_works_too() -> None:
    settings = read_settings({"TELEGRAM_BOT_API_KEY": TOKEN})

    assert settings.token == TOKEN
    assert settings.api_url == DEFAULT_API_URL


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"TELEGRAM_BOT_TOKEN": "  "},
        {"TELEGRAM_BOT_TOKEN": "123456:short"},
        {"TELEGRAM_BOT_TOKEN": SECRET},
        {"TELEGRAM_BOT_TOKEN": f"bot{TOKEN}"},
        {"TELEGRAM_BOT_TOKEN": TOKEN + " extra"},
        {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_URL": "api.telegram.org"},
    ],
)
def test_a_missing_or_malformed_setting_is_one_line_without_the_token(
    environ: dict[str, str],
) -> None:
    with pytest.raises(ConfigError) as raised:
        read_settings(environ)

    message = str(raised.value)
    assert "\n" not in message
    assert SECRET not in message and "short" not in message


def test_pacing_options_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_CHAT_RATE", "2.5")
    monkeypatch.setenv("TELEGRAM_GLOBAL_RATE", "10")

    pacing = pacing_from(build_parser().parse_args(["--global-rate", "0"]))

    assert pacing == Pacing(chat_rate=2.5, chat_burst=3.0, group_per_minute=20.0, global_rate=0.0)
    assert pacing_from(build_parser().parse_args(["--no-pacing"])) == Pacing.off()


def test_a_bad_pacing_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_CHAT_RATE", "fast")

    with pytest.raises(ConfigError, match="TELEGRAM_CHAT_RATE"):
        pacing_from(build_parser().parse_args([]))


def test_help_names_every_option() -> None:
    text = build_parser().format_help()

    for option in ("--flow", "--state", "--no-pacing", "--chat-rate", "--global-rate", "-v"):
        assert option in text
    assert "TELEGRAM_BOT_TOKEN" in text and "TELEGRAM_API_URL" in text


def test_the_tutorials_texts() -> None:
    assert NOTICES[Notice.NOT_STARTED] == "Not started, call /start first"
    assert NOTICES[Notice.ALREADY_RUNNING] == "Already running, call /cancel to exit"
    assert NOTICES[Notice.CANCELLED] == "Exiting..."
    weather = help_text(WeatherFlow)
    assert "weather" in weather and "/start" in weather and "/cancel" in weather


def test_keys_private_chat_and_group_member() -> None:
    assert conversation_key(42, 42, group=False) == "42"
    assert conversation_key(-100123, 7, group=True) == "-100123:7"
    assert Route.of("-100123:7") == Route(-100123, 7)
    assert Route.of("42") == Route(42)


# -- classifying failures ----------------------------------------------------------------------


def response(status: int, body: str = "", headers: dict[str, str] | None = None) -> Any:
    result = requests.Response()
    result.status_code = status
    result.reason = "Reason"
    result._content = body.encode()
    result.headers.update(headers or {})
    return result


def telegram_error(code: int, **parameters: Any) -> Exception:
    body = {"ok": False, "error_code": code, "description": f"error {code}"}
    if parameters:
        body["parameters"] = parameters
    error: Exception = apihelper.ApiTelegramException("sendMessage", response(code), body)
    return error


def test_429_waits_as_long_as_telegram_asks() -> None:
    reason = classify(telegram_error(429, retry_after=7))

    assert isinstance(reason, RetryAfter) and reason.seconds == 7


@pytest.mark.parametrize(
    ("asked", "waited"), [(1e400, MAX_RETRY_AFTER), (100000, MAX_RETRY_AFTER), ("soon", 1.0),
                          (float("nan"), 1.0), (-5, 1.0)],
)  # fmt: skip
def test_a_wait_a_server_asks_for_is_capped(asked: object, waited: float) -> None:
    reason = classify(telegram_error(429, retry_after=asked))

    assert isinstance(reason, RetryAfter) and reason.seconds == waited


@pytest.mark.parametrize("parameters", [[1], "text", 7, None])
def test_error_parameters_that_are_not_an_object_are_ignored(parameters: object) -> None:
    body = {"ok": False, "error_code": 429, "description": "x", "parameters": parameters}
    error = apihelper.ApiTelegramException("sendMessage", response(429), body)

    reason = classify(error)

    assert isinstance(reason, RetryAfter) and reason.seconds == 1.0


def test_a_blocked_bot_or_a_chat_not_found_is_a_chat_gone() -> None:
    assert isinstance(classify(telegram_error(403)), ChatGone)
    error = apihelper.ApiTelegramException(
        "sendMessage", response(400),
        {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"},
    )  # fmt: skip
    assert isinstance(classify(error), ChatGone)
    assert not isinstance(classify(telegram_error(400)), ChatGone)


@pytest.mark.parametrize(
    "error",
    [
        telegram_error(502),
        apihelper.ApiHTTPException("sendMessage", response(502, "<html>")),
        apihelper.ApiInvalidJSONException("sendMessage", response(200, "<html>")),
        requests.ConnectionError(f"Max retries exceeded with url: /bot{TOKEN}/sendMessage"),
        requests.ReadTimeout("read timed out"),
    ],
)
def test_server_errors_and_network_trouble_are_transient(error: Exception) -> None:
    reason = classify(error)

    assert isinstance(reason, TransientError)
    assert SECRET not in str(reason)


@pytest.mark.parametrize("code", [400, 403])
def test_bad_requests_and_blocked_bots_are_permanent(code: int) -> None:
    assert isinstance(classify(telegram_error(code)), PermanentError)


# -- pacing -------------------------------------------------------------------------------------


def test_a_bucket_allows_a_burst_then_its_rate() -> None:
    bucket = Bucket(rate=1.0, capacity=3, now=0.0)

    for _ in range(3):
        assert bucket.wait(0.0) == 0.0
        bucket.take(0.0)

    assert bucket.wait(0.0) == pytest.approx(1.0)
    assert bucket.wait(0.5) == pytest.approx(0.5)
    assert bucket.wait(1.0) == 0.0


def test_rate_zero_is_unlimited() -> None:
    bucket = Bucket(rate=0.0, capacity=1, now=0.0)

    for _ in range(100):
        assert bucket.wait(0.0) == 0.0
        bucket.take(0.0)


# -- the outbox ---------------------------------------------------------------------------------


FAST = Retrying(first_backoff=0.01, max_backoff=0.05)


@pytest.fixture
def api() -> FakeBotApi:
    return FakeBotApi()


@pytest.fixture
def outboxes() -> Iterator[list[Outbox]]:
    made: list[Outbox] = []
    yield made
    for outbox in made:
        outbox.close(timeout=1.0)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("telegram-sender")]


def start(made: list[Outbox], api: FakeBotApi, **options: Any) -> Outbox:
    options.setdefault("pacing", Pacing.off())
    options.setdefault("retrying", FAST)
    outbox = Outbox(api, **options)
    outbox.start()
    made.append(outbox)
    return outbox


def test_each_chat_gets_its_messages_in_order(api: FakeBotApi, outboxes: list[Outbox]) -> None:
    outbox = start(outboxes, api, senders=4)

    for n in range(50):
        for chat in range(1, 21):
            outbox.send_text(chat, f"{chat}/{n}")
    api.wait(1000)

    for chat in range(1, 21):
        assert api.texts(chat) == [f"{chat}/{n}" for n in range(50)]


def test_long_text_goes_as_several_messages(api: FakeBotApi, outboxes: list[Outbox]) -> None:
    outbox = start(outboxes, api)

    text = "\n".join(["x" * 99] * 100)  # 100 lines, 9,999 characters
    outbox.send_text(1, text)
    api.wait(3)

    assert [len(piece) for piece in api.texts(1)] == [3999, 3999, 1999]
    assert "\n".join(api.texts(1)) == text


def test_retry_after_is_honoured_without_holding_up_other_chats(
    api: FakeBotApi, outboxes: list[Outbox]
) -> None:
    outbox = start(outboxes, api, senders=1)
    api.failures[1] = [RetryAfter(0.3)]
    started = time.monotonic()

    outbox.send_text(1, "first")
    outbox.send_text(1, "second")
    outbox.send_text(2, "other chat")
    api.wait(3)

    when = {text: at - started for _, text, at in api.sent}
    assert [text for _, text, _ in api.sent] == ["other chat", "first", "second"]
    assert when["other chat"] < 0.2
    assert when["first"] >= 0.3


def test_transient_errors_are_retried_in_order(api: FakeBotApi, outboxes: list[Outbox]) -> None:
    outbox = start(outboxes, api)
    api.failures[1] = [TransientError("HTTP 502"), TransientError("connection failed")]

    outbox.send_text(1, "a")
    outbox.send_text(1, "b")
    api.wait(2)

    assert api.texts(1) == ["a", "b"]


def test_only_an_answer_that_can_never_succeed_ends_a_send(
    api: FakeBotApi, outboxes: list[Outbox], caplog: pytest.LogCaptureFixture
) -> None:
    outbox = start(outboxes, api)
    api.failures[77] = [ChatGone("HTTP 403: Forbidden: bot was blocked by the user")]
    api.failures[88] = [TransientError("HTTP 502")] * 30 + [RetryAfter(0.01)] * 30
    api.failures[99] = [PermanentError("HTTP 400: Bad Request: can't parse entities")]

    with caplog.at_level(logging.DEBUG):
        outbox.send_text(77, "lost")
        outbox.send_text(77, "also dropped: queued for a chat that is gone")
        outbox.send_text(88, "waits out the outage")
        outbox.send_text(88, "after")
        outbox.send_text(99, "refused")
        outbox.send_text(99, "next")
        api.wait(3, timeout=10)

    assert api.texts(88) == ["waits out the outage", "after"]
    assert api.texts(99) == ["next"] and api.texts(77) == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "chat 99: NOT SENT" in errors[0] and "'refused'" in errors[0]
    gone = [r.getMessage() for r in caplog.records if "chat 77" in r.getMessage()]
    assert len(gone) == 1 and "blocked" in gone[0] and "2 queued" in gone[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fails" in warnings[0]  # once, not once per attempt
    assert any("works again" in r.getMessage() for r in caplog.records)


def test_a_chat_is_paced_and_others_are_not_held_up(
    api: FakeBotApi, outboxes: list[Outbox]
) -> None:
    pacing = Pacing(chat_rate=10.0, chat_burst=2, group_per_minute=0, global_rate=0)
    outbox = start(outboxes, api, senders=1, pacing=pacing)
    started = time.monotonic()

    for n in range(6):
        outbox.send_text(1, f"paced {n}")
    outbox.send_text(2, "free")
    api.wait(7)

    times = [at - started for chat, _, at in api.sent if chat == 1]
    assert times[-1] >= 0.35  # two at once, then four at 10 a second
    assert next(at - started for chat, _, at in api.sent if chat == 2) < 0.1


def test_groups_are_paced_per_minute(api: FakeBotApi, outboxes: list[Outbox]) -> None:
    pacing = Pacing(chat_rate=0, chat_burst=1, group_per_minute=120, global_rate=0)
    outbox = start(outboxes, api, pacing=pacing)
    started = time.monotonic()

    for n in range(123):
        outbox.send_text(-100, f"group {n}")
    api.wait(123)

    assert api.sent[-1][2] - started >= 1.0  # a burst of 120, then 2 a second


def test_the_global_rate_is_shared_by_all_senders(api: FakeBotApi, outboxes: list[Outbox]) -> None:
    pacing = Pacing(chat_rate=0, chat_burst=1, group_per_minute=0, global_rate=20)
    outbox = start(outboxes, api, senders=4, pacing=pacing)
    started = time.monotonic()

    for chat in range(30):
        outbox.send_text(chat, "hello")
    api.wait(30)

    assert api.sent[-1][2] - started >= 0.4  # a burst of 20, then 10 more at 20 a second


def test_close_sends_what_is_queued(api: FakeBotApi, outboxes: list[Outbox]) -> None:
    pacing = Pacing(chat_rate=20.0, chat_burst=1, group_per_minute=0, global_rate=0)
    outbox = Outbox(api, pacing=pacing, retrying=FAST)
    outbox.start()
    for n in range(5):
        outbox.send_text(1, f"m{n}")

    assert outbox.close(timeout=2.0)

    assert api.texts(1) == [f"m{n}" for n in range(5)]


def test_close_counts_what_it_could_not_send_in_one_line(
    api: FakeBotApi, caplog: pytest.LogCaptureFixture
) -> None:
    pacing = Pacing(chat_rate=2.0, chat_burst=1, group_per_minute=0, global_rate=0)
    outbox = Outbox(api, pacing=pacing, retrying=FAST)
    outbox.start()
    for n in range(5):
        outbox.send_text(5, f"m{n}")

    with caplog.at_level(logging.INFO):
        outbox.close(timeout=0.2)
        outbox.send_text(5, "after close")

    assert api.texts(5) == ["m0"]
    # Not confirmed, so sent after the restart: nothing for an operator to act on.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("4 message(s) not sent before the stop" in r.getMessage() for r in caplog.records)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("telegram-sender")]


def test_a_message_is_confirmed_once_out_or_given_up_but_not_when_dropped_at_a_stop(
    api: FakeBotApi,
) -> None:
    pacing = Pacing(chat_rate=2.0, chat_burst=1, group_per_minute=0, global_rate=0)
    outbox = Outbox(api, pacing=pacing, retrying=FAST)
    outbox.start()
    done: list[str] = []
    api.failures[6] = [ChatGone("HTTP 403: Forbidden: bot was blocked by the user")]
    outbox.send_text(6, "blocked", on_done=lambda: done.append("blocked"))
    outbox.send_text(7, "sent", on_done=lambda: done.append("sent"))
    outbox.send_text(7, "still queued at the stop", on_done=lambda: done.append("dropped"))
    outbox.send_text(8, "   ", on_done=lambda: done.append("blank"))  # nothing to send
    api.wait(1)

    outbox.close(timeout=0.2)

    assert sorted(done) == ["blank", "blocked", "sent"]  # the dropped one goes again later


# -- the poller, in this process ----------------------------------------------------------------


class StopAfter:
    """Takes updates from the poller; asks it to stop after the first one."""

    def __init__(self, stopping: threading.Event) -> None:
        self.username = ""
        self.bot_id: int | None = None
        self.stopping = stopping
        self.handled: list[int] = []
        self.journaled = Journaled()

    def handle(self, update: types.Update) -> None:
        self.handled.append(update.update_id)
        self.journaled.committed(update.update_id)  # as if journaled at once
        self.stopping.set()

    def taken(self, update_id: int) -> bool:
        return update_id in self.handled


def test_updates_handed_over_before_a_stop_are_confirmed(
    telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apihelper, "API_URL", telegram.url + "/bot{0}/{1}")
    for n in range(3):
        telegram.send_text(50 + n, f"message {n}")
    stopping = threading.Event()
    sink = StopAfter(stopping)
    poller = Poller(
        telebot.TeleBot(TOKEN, threaded=False),
        sink,
        stopping,
        journaled=sink.journaled,
        poll_timeout=1,
        redact=str,
    )

    poller.start()
    poller.join(5)
    assert not poller.is_alive()
    assert len(sink.handled) == 3  # the whole batch, though a stop came after the first
    assert telegram.unconfirmed() == 3  # no poll after it: Telegram would send them again

    poller.confirm()

    assert telegram.unconfirmed() == 0


# -- confirming no further than the journal holds ------------------------------------------------


def _wait_in_thread(
    journaled: Journaled, update_id: int
) -> tuple[threading.Thread, list[int | None]]:
    got: list[int | None] = []
    waiter = threading.Thread(
        target=lambda: got.append(journaled.wait_for(update_id, timeout=30)), name="test-waiter"
    )
    waiter.start()
    return waiter, got


def test_the_wait_for_an_update_ends_with_the_commit_that_journals_it() -> None:
    journaled = Journaled(3)
    waiter, got = _wait_in_thread(journaled, 5)

    journaled.committed(4)  # not far enough: still waiting (it would return 5 at once)
    journaled.committed(5)
    waiter.join(30)

    assert got == [5]


def test_closing_ends_every_wait_with_what_is_journaled() -> None:
    journaled = Journaled(3)
    waiter, got = _wait_in_thread(journaled, 9)

    journaled.close()
    waiter.join(30)

    assert got == [3]


def test_the_scheduler_tells_the_frontend_what_each_commit_made_durable(
    start_engine: Callable[..., Engine],
) -> None:
    journaled = Journaled()

    class Told(RecordingFrontend):
        def committed(self, source: int | None) -> None:
            journaled.committed(source)

    scheduler, _ = start_engine(WeatherFlow, Told())
    scheduler.post(None, source=7)

    assert journaled.wait_for(7, timeout=30) == 7


def test_update_ids_are_new_unless_taken_or_far_below_the_highest() -> None:
    from engine.sources import Taken
    from frontends.telegram.updates import new_update

    assert new_update(5, Taken())
    assert new_update(101, Taken(100))  # every id up to 100 taken
    assert not new_update(100, Taken(100))
    assert not new_update(7, Taken(100))
    assert new_update(12_345, Taken(900_000_001))  # Telegram started again from a random id
    assert new_update(101, Taken(100, [102]))  # arrives after 102: not taken yet
    assert not new_update(102, Taken(100, [102]))
