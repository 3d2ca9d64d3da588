"""Stopping the programs the tests start, the way an operator would."""

from __future__ import annotations

import signal
import subprocess


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
