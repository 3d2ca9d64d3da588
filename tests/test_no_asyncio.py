"""No asyncio anywhere: not imported by the engine, the flows or either program.

Each check imports the modules in a fresh interpreter, so that nothing the
test process imported before counts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: What must import without asyncio: the engine, the flows, and both programs
#: with all they use (``frontends.telegram`` pulls in pyTelegramBotAPI, urllib3 and requests).
MODULES = {
    "the engine": "engine, engine.scheduler, engine.testing, engine.journal, engine.journals",
    "the flows": "flows.weather, flows.openmeteo",
    "the terminal": "frontends.cli",
    "the bot": "frontends.telegram, frontends.telegram.program",
}


def check(modules: str) -> str:
    """Code that imports `modules` and fails if any asyncio module came with them."""
    return (
        f"import sys; import {modules}; "
        "assert 'asyncio' not in sys.modules, sorted(m for m in sys.modules if 'asyncio' in m)"
    )


def run_fresh(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("modules", MODULES.values(), ids=MODULES.keys())
def test_importing_does_not_import_asyncio(modules: str) -> None:
    result = run_fresh(check(modules))
    assert result.returncode == 0, result.stderr


def test_the_check_would_see_asyncio() -> None:
    # The same check in an interpreter that did import asyncio must fail,
    # or the tests above prove nothing.
    result = run_fresh("import asyncio; " + check("engine"))
    assert result.returncode != 0
    assert "AssertionError" in result.stderr
