"""Starting the bot as the tests do, and stopping what the tests start as an operator would."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.fake_telegram import FakeTelegram


def spawn_bot(
    options: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """Start ``python -m frontends.telegram`` with `options`; its stdout and stderr go to `log`.

    `cwd` is where it keeps its state file (``weather-bot.sqlite3``) unless
    ``--state`` says otherwise.
    """
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "frontends.telegram", *options],
            cwd=cwd,
            env=dict(env),
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def wait_until_called(
    telegram: FakeTelegram,
    method: str,
    before: int,
    process: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 20.0,
) -> None:
    """Wait until the bot `process` calls `method`, `before` being the calls seen until it started.

    Once it calls ``getUpdates`` it polls: it has recovered what its state
    file held. Fails with the bot's output if it exits instead.
    """
    telegram.wait_until(
        lambda: len(telegram.requests_to(method)) > before or process.poll() is not None,
        timeout=timeout,
        what=f"the bot to call {method}",
    )
    assert process.poll() is None, log.read_text(encoding="utf-8", errors="replace")


def stop_process(process: subprocess.Popen[bytes], grace: float) -> int | None:
    """SIGTERM, then wait up to `grace` seconds; kill it if it is still running.

    Returns its exit status, or ``None`` if it had to be killed.
    """
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        return None
