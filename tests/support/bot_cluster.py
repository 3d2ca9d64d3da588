"""Several real ``weather-bot --shared`` processes on one PostgreSQL, behind a round-robin proxy.

For the scale tests and ``bench/scale_bench.py``: each instance listens on
its own port; the fake Telegram posts to the proxy, which spreads the
updates over the instances; an instance can be killed with SIGKILL and
started again on its port, and asked for its ``/healthz``.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import requests

from tests.support.fake_telegram import FakeTelegram
from tests.support.flows import CLASSIC
from tests.support.local_server import free_port
from tests.support.processes import spawn_bot, stop_process
from tests.support.round_robin import RoundRobin
from tests.support.webhook_bot import environment

HOOK_PATH = "/telegram/hook"
READY = "webhook mode: Telegram posts"
POLLING_READY = "running as @"


class BotCluster:
    """`count` instances of the bot on `url`; ``with`` stops them all (SIGTERM, then SIGKILL).

    `shared=False` runs the bot as a single instance (any ``--state``), for comparison.
    `polling=True` runs them in polling mode instead (no proxy used), ``/healthz`` on
    each one's port, each calling the fake Telegram as caller ``instance-<index>``.
    """

    def __init__(
        self,
        telegram: FakeTelegram,
        url: str,
        directory: Path,
        count: int,
        *,
        interval: float = 0.5,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        shared: bool = True,
        polling: bool = False,
    ) -> None:
        self.telegram = telegram
        self.url = url
        self.directory = directory
        self.interval = interval
        self.extra = extra
        self.env = env
        self.shared = shared
        self.polling = polling
        self.ports = [free_port() for _ in range(count)]
        self.proxy = RoundRobin([f"http://127.0.0.1:{port}" for port in self.ports])
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * count
        self.logs: list[Path] = [directory / f"instance-{n}.log" for n in range(count)]
        self._runs = 0

    def __enter__(self) -> BotCluster:
        self.proxy.__enter__()
        return self

    def start(self, index: int, *, ready: bool = True) -> subprocess.Popen[bytes]:
        """Start instance `index` (on its port); wait until it takes updates."""
        self._runs += 1
        log = self.logs[index] = self.directory / f"instance-{index}-{self._runs}.log"
        shared = ["--shared", "--shard-interval", str(self.interval)] if self.shared else []
        address = f"127.0.0.1:{self.ports[index]}"
        intake = (["--metrics", address] if self.polling
                  else ["--webhook", self.proxy.url + HOOK_PATH, "--listen", address])  # fmt: skip
        options = [
            "--no-pacing", "--flow", CLASSIC, *shared, "--state", self.url, *intake, *self.extra,
        ]  # fmt: skip
        env = self.env or environment(self.telegram)
        if self.polling:
            env = {**env, "TELEGRAM_API_URL": f"{self.telegram.url}/instance-{index}"}
        process = spawn_bot(options, cwd=self.directory, env=env, log=log)
        self.processes[index] = process
        if ready:
            self._wait_ready(index)
        return process

    def _wait_ready(self, index: int) -> None:
        process = self.processes[index]
        assert process is not None
        started = POLLING_READY if self.polling else READY
        self.telegram.wait_until(
            lambda: started in self.output(index) or process.poll() is not None,
            timeout=30, what=f"instance {index} to take updates",
        )  # fmt: skip
        assert process.poll() is None, self.output(index)

    def start_all(self, *indices: int) -> None:
        """Start the instances `indices` (default: all) at once; wait until each takes updates."""
        chosen = indices or tuple(range(len(self.ports)))
        for index in chosen:
            self.start(index, ready=False)
        for index in chosen:
            self._wait_ready(index)

    def output(self, index: int) -> str:
        return self.logs[index].read_text(encoding="utf-8", errors="replace")

    def health(self, index: int) -> tuple[int, str]:
        """Instance `index`'s ``/healthz``: its status and body."""
        with requests.Session() as session:
            session.trust_env = False
            answer = session.get(f"http://127.0.0.1:{self.ports[index]}/healthz", timeout=10)
            return answer.status_code, answer.text.strip()

    def kill(self, index: int) -> float:
        """``kill -9`` instance `index`; the monotonic time it died."""
        process = self.processes[index]
        assert process is not None and process.poll() is None, self.output(index)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        return time.monotonic()

    def stop(self, index: int) -> int | None:
        """SIGTERM instance `index`, wait; its exit status (None if it had to be killed)."""
        process = self.processes[index]
        assert process is not None
        return stop_process(process, 20)

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            if process is None:
                continue
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.proxy.__exit__(None, None, None)
