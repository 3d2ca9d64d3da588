"""``/healthz`` and ``/metrics`` of the running bot, in webhook and polling mode."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from flows.weather import NEXT_PROMPT
from tests.support.fake_telegram import FakeTelegram
from tests.support.openmeteo_server import FakeOpenMeteo
from tests.support.webhook_bot import Bot, StartBot, free_port, post, start_bot_fixture  # noqa: F401

CITY = "Name a city: "


def samples(bot: Bot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape /metrics: (sample name, labels) -> value."""
    answer = bot.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_count_what_happened(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo
) -> None:
    cities = openmeteo.add_cities(3)
    bot = start_bot()
    telegram.fail("sendMessage", 429, retry_after=0)
    for chat, city in enumerate(cities, start=1):
        telegram.send_text(chat, "/start")
        telegram.wait_text(chat, CITY)
        telegram.send_text(chat, city.name)
        telegram.wait_text(chat, NEXT_PROMPT)
        telegram.send_text(chat, "quit")
        telegram.wait_text(chat, "Terminating")
    assert post(bot.hook_url, b"{garbage").status_code == 400
    assert post(bot.hook_url, b"{}", secret="wrong").status_code == 403

    def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        found = samples(bot)
        return found if found[("bot_conversations_active", ())] == 0 else None

    found = telegram.wait_until(settled, what="conversations over")
    assert found[("bot_updates_total", (("mode", "webhook"),))] == 9
    assert found[("bot_updates_refused_total", (("reason", "not_json"),))] == 1
    assert found[("bot_updates_refused_total", (("reason", "secret"),))] == 1
    assert found[("bot_conversations_started_total", ())] == 3
    assert found[("bot_conversations_ended_total", (("how", "finished"),))] == 3
    assert found[("bot_commands_total", (("kind", "Input"),))] == 3
    assert found[("bot_commands_total", (("kind", "Choose"),))] == 3
    assert found[("bot_commands_total", (("kind", "Call"),))] == 6  # search and forecast
    sent = [r for r in telegram.requests_to("sendMessage") if r.fault is None]
    assert found[("bot_messages_sent_total", ())] == len(sent)
    assert found[("bot_telegram_rate_limited_total", ())] == 1
    assert found[("bot_journal_commit_seconds_count", ())] > 0
    assert found[("bot_conversations_rebuilt", ())] == 0


def test_healthz_follows_the_state_file_and_telegram(
    start_bot: StartBot, telegram: FakeTelegram, tmp_path: Path
) -> None:
    port = free_port()
    bot = start_bot(
        "--metrics", f"127.0.0.1:{port}", "--ready-window", "1", "--poll-timeout", "1",
        webhook=False, port=port,
    )  # fmt: skip
    telegram.wait_until(lambda: bot.get("/healthz").status_code == 200, what="ready")
    assert bot.get("/healthz").text == "ready\n"

    state = tmp_path / "weather-bot.sqlite3"
    os.chmod(state, 0o444)
    try:
        answer = bot.get("/healthz")
        assert answer.status_code == 503
        assert answer.text == "not ready: state file weather-bot.sqlite3 is not writable\n"
    finally:
        os.chmod(state, 0o644)
    assert bot.get("/healthz").status_code == 200

    telegram.fail("getUpdates", 502, times=10_000)
    telegram.fail("getMe", 502, times=10_000)
    telegram.wait_until(
        lambda: bot.get("/healthz").status_code == 503, timeout=15, what="not ready"
    )
    assert "Telegram not reachable in the last 1s" in bot.get("/healthz").text
    telegram.clear_faults()
    telegram.wait_until(lambda: bot.get("/healthz").status_code == 200, timeout=15, what="ready")

    found = samples(bot)
    assert found[("bot_telegram_failures_total", ())] > 0
    assert bot.stop() == 0
