"""Running ``weather-bot`` as a subprocess in webhook or polling mode, for the webhook tests."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support.fake_telegram import TOKEN, FakeTelegram, bot_environment
from tests.support.flows import CLASSIC
from tests.support.local_server import free_port
from tests.support.openmeteo_server import FakeOpenMeteo
from tests.support.processes import spawn_bot, stop_process, wait_until_called

SECRET_PART = TOKEN.split(":")[1]
HOOK_SECRET = "test-webhook-secret_0123456789"


@dataclass
class Bot:
    """A running bot process and where it listens."""

    process: subprocess.Popen[bytes]
    output_path: Path
    port: int
    hook_path: str = "/telegram/hook"

    def output(self) -> str:
        return self.output_path.read_text(encoding="utf-8", errors="replace")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hook_url(self) -> str:
        return self.base + self.hook_path

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def get(self, path: str) -> requests.Response:
        with requests.Session() as session:
            session.trust_env = False
            return session.get(self.base + path, timeout=10)


StartBot = Callable[..., Bot]


def environment(telegram: FakeTelegram) -> dict[str, str]:
    """:func:`bot_environment` with the webhook secret the tests know."""
    return {**bot_environment(telegram), "TELEGRAM_WEBHOOK_SECRET": HOOK_SECRET}


@pytest.fixture(name="start_bot")
def start_bot_fixture(
    telegram: FakeTelegram, openmeteo: FakeOpenMeteo, tmp_path: Path
) -> Iterator[StartBot]:
    """``start_bot(*options, webhook=True, ready=True)``: a bot until the test ends.

    In webhook mode it listens on a free port and waits until ``setWebhook``
    was called; in polling mode (``webhook=False``) until it polls. Its
    output must hold neither the token nor a traceback.
    """
    started: list[Bot] = []

    def start(
        *options: str,
        webhook: bool = True,
        ready: bool = True,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> Bot:
        port = port or free_port()
        path = tmp_path / f"bot-{len(started)}.log"
        bot_options = ["--no-pacing", *options]
        if "--flow" not in options:  # the text-only dialogue (see tests.support.flows)
            bot_options += ["--flow", CLASSIC]
        bot = Bot(None, path, port)  # type: ignore[arg-type]
        if webhook:
            bot_options += ["--webhook", bot.hook_url, "--listen", f"127.0.0.1:{port}"]
        method = "setWebhook" if webhook else "getUpdates"
        before = len(telegram.requests_to(method))
        env = env if env is not None else environment(telegram)
        bot.process = spawn_bot(bot_options, cwd=tmp_path, env=env, log=path)
        started.append(bot)
        if ready:
            wait_until_called(telegram, method, before, bot.process, path, timeout=15)
            if webhook:  # setWebhook answered: taking updates
                telegram.wait_until(
                    lambda: "webhook mode: Telegram posts" in bot.output()
                    or bot.process.poll() is not None,
                    timeout=15,
                    what="the bot to take updates",
                )
        return bot

    try:
        yield start
    finally:
        for bot in started:
            stop_process(bot.process, 15)
        for bot in started:
            output = bot.output()
            assert SECRET_PART not in output, "the token leaked into the bot's output"
            assert HOOK_SECRET not in output, "the webhook secret leaked into the output"
            assert "Traceback" not in output, output


def post(
    url: str,
    body: bytes,
    *,
    secret: str | None = HOOK_SECRET,
    content_type: str = "application/json",
) -> requests.Response:
    """POST `body` to the bot's webhook as Telegram would (or would not)."""
    headers = {"Content-Type": content_type}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    with requests.Session() as session:
        session.trust_env = False
        return session.post(url, data=body, headers=headers, timeout=10)
