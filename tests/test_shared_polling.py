"""Several ``weather-bot --shared`` instances in polling mode: one polls at a time, under the lease.

Three real bot processes on one PostgreSQL poll the fake Telegram, each as a
caller of its own (the fake tells them apart by the path of their
``TELEGRAM_API_URL``): the instance holding the lease polls and puts what it
gets into the updates table, and the owners of the shards take it from
there. The poller is killed with SIGKILL mid-load, then its successor is
stopped with SIGTERM mid-load: each time another takes over within seconds,
every dialogue completes, every chat gets exactly its texts in order, and
two instances never poll at once (a getUpdates from two instances at once
would get 409 on real Telegram; the fake counts them).
"""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import requests

from engine.shards import Shards
from tests.support.bot_cluster import BotCluster
from tests.support.fake_telegram import FakeTelegram
from tests.support.openmeteo_server import FakeOpenMeteo
from tests.test_telegram_scale import AFTER, DIALOGUE, EXPECTED, NOT_STARTED

T = TypeVar("T")

USERS = 30
FIRST_CHAT = 7000
STARTS = "polling Telegram: this instance holds the polling lease"
HOLDS = "holds the polling lease"


def _health(cluster: BotCluster, index: int) -> str:
    """Instance `index`'s ``/healthz`` body ("" if it does not answer)."""
    try:
        return requests.get(f"http://127.0.0.1:{cluster.ports[index]}/healthz", timeout=5).text
    except requests.RequestException:
        return ""


def _until(check: Callable[[], T | None], what: str, timeout: float = 15.0) -> T:
    """Poll `check` until it gives something other than None (the bots are other processes)."""
    deadline = time.monotonic() + timeout
    while (result := check()) is None:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


def _poller(cluster: BotCluster, among: list[int]) -> int:
    """Which of the instances `among` holds the lease (and says so on /healthz)."""
    return _until(lambda: next((i for i in among if f"; {HOLDS}" in _health(cluster, i)), None),
                  "an instance to hold the polling lease")  # fmt: skip


def _taken_over(telegram: FakeTelegram, gone: int, polls: int, since: float) -> float:
    """Seconds from `since` until an instance other than `gone` polled (after poll `polls`)."""
    telegram.wait_until(
        lambda: any(caller != f"instance-{gone}" for caller in telegram.pollers[polls:]),
        timeout=15, what="another instance to poll",
    )  # fmt: skip
    return time.monotonic() - since


def _without_resends(texts: list[str]) -> list[str]:
    """`texts` with a run of up to 4 messages repeated right after itself kept once."""
    kept: list[str] = []
    for text in texts:
        kept.append(text)
        for run in range(1, 5):
            if len(kept) >= 2 * run and kept[-run:] == kept[-2 * run : -run]:
                del kept[-run:]
                break
    return kept


def _wait_answers(telegram: FakeTelegram, chats: list[int], index: int) -> None:
    for chat in chats:
        telegram.wait_messages(chat, AFTER[index], 30)


def test_one_instance_polls_at_a_time_and_another_takes_over_after_kill_and_stop(
    telegram: FakeTelegram, places: FakeOpenMeteo, postgres_url: str, tmp_path: Path
) -> None:
    chats = list(range(FIRST_CHAT, FIRST_CHAT + USERS))
    with BotCluster(telegram, postgres_url, tmp_path, 3, interval=0.5, polling=True,
                    extra=("--retry-cap", "1", "--drain-timeout", "10")) as cluster:
        cluster.start_all()
        # Started at once, the first to join owns every shard until the others'
        # first rebalance: wait for that, so the kill below takes a third of the
        # chats (each with the replies it had not yet recorded as sent), not all.
        for index in (0, 1, 2):
            _until(lambda i=index: re.search(r"owns [1-9]\d* of 64", _health(cluster, i)),
                   f"instance {index} to own shards")  # fmt: skip
        first = _poller(cluster, [0, 1, 2])
        for index in (0, 1):
            telegram.send_texts((chat, DIALOGUE[index]) for chat in chats)
            _wait_answers(telegram, chats, index)
        # Mid-load: the poller dies with updates polled, kept or not yet confirmed.
        telegram.send_texts((chat, DIALOGUE[2]) for chat in chats)
        polls = len(telegram.pollers)  # all of them the first poller's
        killed_at = cluster.kill(first)
        after_kill = _taken_over(telegram, first, polls, killed_at)
        _wait_answers(telegram, chats, 2)
        survivors = [index for index in (0, 1, 2) if index != first]
        second = _poller(cluster, survivors)
        # Mid-load again: the poller is stopped. Telegram taking no message, it
        # spends its whole --drain-timeout trying to send; it hands the lease
        # over before that, its last poll over, so the next poller polls alone.
        telegram.down("sendMessage")
        telegram.send_texts((chat, DIALOGUE[3]) for chat in chats)
        telegram.wait_until(lambda: any(
            request.caller == f"instance-{second}" and request.fault is not None
            for request in telegram.requests_to("sendMessage")
        ), what="the poller to have messages it cannot send")  # fmt: skip
        stopping = cluster.processes[second]
        assert stopping is not None
        polls, stopped_at = len(telegram.pollers), time.monotonic()
        stopping.send_signal(signal.SIGTERM)
        after_stop = _taken_over(telegram, second, polls, stopped_at)
        assert stopping.poll() is None  # still draining: two instances alive, one polling
        telegram.up("sendMessage")
        assert stopping.wait(20) == 0, cluster.output(second)
        _wait_answers(telegram, chats, 3)
        (last,) = [index for index in survivors if index != second]
        telegram.send_texts((chat, DIALOGUE[4]) for chat in chats)
        _wait_answers(telegram, chats, 4)
        telegram.send_texts((chat, "/cancel") for chat in chats)
        for chat in chats:
            telegram.wait_text(chat, NOT_STARTED, 30)
        # Alone now: it owns every shard and says so, on /healthz and /metrics.
        _until(lambda: "owns 64 of 64 shards" in _health(cluster, last) or None,
               "the last instance to own every shard")  # fmt: skip
        assert _health(cluster, last) == f"ready\nowns 64 of 64 shards; {HOLDS}\n"
        metrics = requests.get(f"http://127.0.0.1:{cluster.ports[last]}/metrics", timeout=5).text
        assert "bot_shards_owned 64.0" in metrics and "bot_polling_lease 1.0" in metrics
        assert re.search(r'bot_updates_total\{mode="polling"\} [1-9]', metrics)
        outputs = {index: cluster.output(index) for index in (0, 1, 2)}
    # Nothing lost, nothing out of order, nothing answered twice. Outputs are at
    # least once: what the killed instance sent and had not yet journaled as
    # sent is sent again by the shard's new owner, right after; only a few are.
    for chat in chats:
        assert _without_resends(telegram.texts(chat)) == [*EXPECTED, NOT_STARTED], chat
    repeated = [chat for chat in chats if len(telegram.texts(chat)) > len(EXPECTED) + 1]
    assert len(repeated) <= USERS // 5, repeated
    # Exactly one instance polled at any time, and each said when it began and ended.
    assert telegram.poll_overlaps == []
    assert {caller for caller in telegram.pollers} == {f"instance-{i}" for i in (0, 1, 2)}
    assert outputs[first].count(STARTS) == 1
    assert outputs[second].count(STARTS) == 1
    assert "stopped polling Telegram: stopping" in outputs[second]
    assert outputs[last].count(STARTS) == 1
    assert all("Traceback" not in output for output in outputs.values())
    print(f"polling taken over {after_kill:.2f} s after kill -9, {after_stop:.2f} s after SIGTERM")
    assert after_kill < 5 and after_stop < 5


def test_the_fake_counts_two_callers_polling_at_once_but_not_a_dead_one(
    telegram: FakeTelegram,
) -> None:
    def poll(caller: str, wait: int) -> requests.Response:
        return requests.get(f"{telegram.url}/{caller}/bot{telegram.token}/getUpdates",
                            params={"timeout": wait}, timeout=10)  # fmt: skip

    waiting: list[requests.Response] = []
    first = threading.Thread(target=lambda: waiting.append(poll("a", 5)), name="poll-a")
    first.start()
    telegram.wait_until(lambda: telegram.pollers == ["a"], what="a's poll")
    assert poll("b", 0).status_code == 200
    first.join(10)
    assert waiting[0].status_code == 409  # as Telegram: the newer poll ends the older
    assert telegram.poll_overlaps == [("b", ["a"])]
    # A caller gone (killed: its connection closed) while its poll waits is no overlap.
    host, port = telegram.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as gone:
        gone.sendall(f"GET /c/bot{telegram.token}/getUpdates?timeout=5 HTTP/1.1\r\n"
                     f"Host: {host}\r\n\r\n".encode())  # fmt: skip
        telegram.wait_until(lambda: telegram.pollers[-1:] == ["c"], what="c's poll")
    assert poll("b", 0).status_code == 200
    assert telegram.poll_overlaps == [("b", ["a"])]


def test_a_lease_given_up_goes_to_another_instance_and_is_not_taken_back(
    postgres_url: str,
) -> None:
    first = Shards(postgres_url, interval=3600).start()
    second = Shards(postgres_url, interval=3600).start()
    try:
        assert first.leader and not second.leader
        first.release_lease()
        assert not first.leader
        second.rebalance()
        first.rebalance()
        assert second.leader and not first.leader
        second.stop()  # the lease is free again, but the first gave it up for good
        first.rebalance()
        assert not first.leader
    finally:
        second.stop()
        first.stop()
