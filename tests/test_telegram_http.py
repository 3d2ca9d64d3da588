"""The bot's Bot API transport: pyTelegramBotAPI's calls on http.client, against the fake Bot API.

Each test drives the real pyTelegramBotAPI client (or the transport as it
calls it) over HTTP to the fake server on 127.0.0.1, and checks that what
arrives and what fails is what ``requests`` would have made of it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import telebot
from telebot import apihelper as _apihelper

from frontends.telegram.api import classify
from frontends.telegram.http import BotApiTransport, install, query_string
from frontends.telegram.sending import PermanentError, RetryAfter, TransientError
from tests.support.fake_telegram import TOKEN, FakeTelegram
from tests.support.local_server import (
    TEST_CERTIFICATE,
    KeepAliveHandler,
    KeepAliveServer,
    LocalServer,
)

apihelper: Any = _apihelper  # its settings and exceptions are not annotated


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram() as server:
        yield server


@pytest.fixture
def transport(telegram: FakeTelegram) -> Iterator[BotApiTransport]:
    """pyTelegramBotAPI pointed at the fake and sending through a fresh transport."""
    saved = apihelper.API_URL, apihelper.CUSTOM_REQUEST_SENDER
    apihelper.API_URL = telegram.url + "/bot{0}/{1}"
    sender = BotApiTransport(connections=2)
    apihelper.CUSTOM_REQUEST_SENDER = sender
    try:
        yield sender
    finally:
        apihelper.API_URL, apihelper.CUSTOM_REQUEST_SENDER = saved
        sender.close()


def failure_of(call: Any) -> Exception:
    with pytest.raises(Exception) as caught:
        call()
    assert isinstance(caught.value, Exception)
    return caught.value


@pytest.mark.parametrize(
    "params",
    [
        {"chat_id": 5, "text": "Straße *bold* _x_ & 100% = ?"},
        {"chat_id": -100123, "text": "Токио 東京 🌧", "reply_to_message_id": None},
        {"offset": 7, "allowed_updates": '["message", "callback_query"]', "flag": True},
        {"ids": [1, 2, 3], "empty": ""},
    ],
)
def test_parameters_are_encoded_as_requests_encodes_them(params: dict[str, Any]) -> None:
    prepared = requests.Request("GET", "http://127.0.0.1/x", params=params).prepare()
    assert query_string(params) == urlsplit(prepared.url).query


def test_a_message_arrives_whole_through_the_real_client(
    transport: BotApiTransport, telegram: FakeTelegram
) -> None:
    text = "Found Zürich (Schweiz) at latitude 47.37 and longitude 8.55\n*not bold* _nor this_"
    sent = telebot.TeleBot(TOKEN, threaded=False).send_message(42, text)
    assert sent.text == text and sent.chat.id == 42
    assert telegram.texts(42) == [text]


def test_a_long_text_goes_in_the_body_not_the_url(
    transport: BotApiTransport, telegram: FakeTelegram
) -> None:
    text = "Ж" * 4096
    telebot.TeleBot(TOKEN, threaded=False).send_message(42, text)
    assert telegram.texts(42) == [text]


def test_long_polling_works_through_it(transport: BotApiTransport, telegram: FakeTelegram) -> None:
    telegram.send_text(7, "hello")
    updates = telebot.TeleBot(TOKEN, threaded=False).get_updates(timeout=1, long_polling_timeout=1)
    assert [update.message.text for update in updates] == ["hello"]


def test_connections_are_kept_alive(transport: BotApiTransport, telegram: FakeTelegram) -> None:
    bot = telebot.TeleBot(TOKEN, threaded=False)
    for number in range(5):
        bot.send_message(42, f"message {number}")
    assert transport.opened == 1
    assert len(telegram.requests_to("sendMessage")) == 5


def test_a_connection_the_server_closed_while_idle_is_not_used_again(
    transport: BotApiTransport, telegram: FakeTelegram
) -> None:
    bot = telebot.TeleBot(TOKEN, threaded=False)
    bot.send_message(42, "first")
    server = telegram._server
    assert server is not None
    server.cut_connections()  # as a server's idle timeout would
    telegram.wait_until(lambda: not server.connections or None, what="the server to close")
    assert bot.send_message(42, "second").text == "second"
    assert transport.opened == 2


def test_telegrams_errors_read_as_before(
    transport: BotApiTransport, telegram: FakeTelegram
) -> None:
    bot = telebot.TeleBot(TOKEN, threaded=False)
    telegram.fail("sendMessage", 429, retry_after=3)
    telegram.fail("sendMessage", 502)
    telegram.fail("sendMessage", 403)
    throttled = classify(failure_of(lambda: bot.send_message(1, "a")))
    assert isinstance(throttled, RetryAfter) and throttled.seconds == 3
    bad_gateway = failure_of(lambda: bot.send_message(1, "b"))
    assert isinstance(bad_gateway, apihelper.ApiHTTPException)
    assert isinstance(classify(bad_gateway), TransientError)
    assert "HTTP 502" in str(classify(bad_gateway))
    assert isinstance(classify(failure_of(lambda: bot.send_message(1, "c"))), PermanentError)
    assert bot.send_message(1, "d").text == "d"  # and the connection is still good


def test_a_dropped_connection_is_a_requests_connection_error(
    transport: BotApiTransport, telegram: FakeTelegram
) -> None:
    bot = telebot.TeleBot(TOKEN, threaded=False)
    telegram.fail("sendMessage", drop=True)
    error = failure_of(lambda: bot.send_message(1, "lost"))
    assert isinstance(error, requests.ConnectionError)
    assert isinstance(classify(error), TransientError)
    assert bot.send_message(1, "again").text == "again"


def test_a_refused_connection_names_no_token(transport: BotApiTransport) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = failure_of(
        lambda: transport("post", f"http://127.0.0.1:{port}/bot{TOKEN}/getMe", timeout=(1, 1))
    )
    assert type(error) is requests.ConnectionError
    assert TOKEN.split(":")[1] not in str(error)


def test_a_slow_answer_is_a_read_timeout(
    transport: BotApiTransport, telegram: FakeTelegram
) -> None:
    url = f"{telegram.url}/bot{TOKEN}/getUpdates"
    error = failure_of(lambda: transport("get", url, params={"timeout": 5}, timeout=(1, 0.2)))
    assert isinstance(error, requests.ReadTimeout)
    assert isinstance(classify(error), TransientError)


class Redirector(LocalServer):
    """Answers every request with a 301 to the same path on `target`."""

    name = "redirector"

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def _make_server(self) -> KeepAliveServer:
        target = self.target

        class Handler(KeepAliveHandler):
            def do_GET(self) -> None:
                self.send_response(301)
                self.send_header("Location", target + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET

        return KeepAliveServer(("127.0.0.1", 0), Handler)


def test_a_redirect_is_followed_as_requests_follows_it(
    transport: BotApiTransport, telegram: FakeTelegram
) -> None:
    with Redirector(telegram.url) as redirector:
        apihelper.API_URL = redirector.base_url + "/bot{0}/{1}"
        sent = telebot.TeleBot(TOKEN, threaded=False).send_message(9, "moved on")
    assert sent.text == "moved on"
    assert telegram.texts(9) == ["moved on"]


def test_a_proxy_in_the_environment_leaves_sending_to_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    saved = apihelper.CUSTOM_REQUEST_SENDER
    try:
        for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
            monkeypatch.delenv(name.lower(), raising=False)
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
        assert install("https://api.telegram.org", 4) is None
        assert apihelper.CUSTOM_REQUEST_SENDER is None
        monkeypatch.delenv("HTTPS_PROXY")
        transport = install("https://api.telegram.org", 4)
        assert transport is not None and apihelper.CUSTOM_REQUEST_SENDER is transport
        transport.close()
        assert apihelper.CUSTOM_REQUEST_SENDER is None  # closed, it no longer sends for all
    finally:
        apihelper.CUSTOM_REQUEST_SENDER = saved


@pytest.fixture
def https_telegram(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTelegram]:
    """The fake Bot API on HTTPS, pyTelegramBotAPI pointed at it; no CA bundle set yet."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    saved = apihelper.API_URL
    with FakeTelegram(tls=True) as server:
        apihelper.API_URL = server.url + "/bot{0}/{1}"
        try:
            yield server
        finally:
            apihelper.API_URL = saved


def test_https_is_verified_against_the_bundle_requests_would_use(
    https_telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert https_telegram.url.startswith("https://")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(TEST_CERTIFICATE))
    transport = install(https_telegram.url, 2)
    assert transport is not None
    try:
        assert telebot.TeleBot(TOKEN, threaded=False).send_message(3, "secure").text == "secure"
    finally:
        transport.close()
    assert https_telegram.texts(3) == ["secure"]


def test_a_directory_of_certificates_works_as_with_requests(
    https_telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(TEST_CERTIFICATE.with_name("certs")))
    transport = install(https_telegram.url, 2)
    assert transport is not None
    try:
        assert telebot.TeleBot(TOKEN, threaded=False).send_message(3, "dir").text == "dir"
    finally:
        transport.close()


def test_an_untrusted_certificate_is_refused(https_telegram: FakeTelegram) -> None:
    transport = install(https_telegram.url, 2)  # certifi's bundle, which does not know the fake
    assert transport is not None
    try:
        error = failure_of(lambda: telebot.TeleBot(TOKEN, threaded=False).send_message(3, "no"))
    finally:
        transport.close()
    assert isinstance(error, requests.exceptions.SSLError)
    assert isinstance(classify(error), TransientError)
    assert TOKEN.split(":")[1] not in str(error)
    assert https_telegram.texts(3) == []
