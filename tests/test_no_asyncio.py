"""The engine runs without asyncio: not imported by it, nor by anything it imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHECK = (
    "import engine, engine.scheduler, engine.testing, engine.journal, engine.journals, sys; "
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


def test_importing_the_engine_does_not_import_asyncio() -> None:
    result = run_fresh(CHECK)
    assert result.returncode == 0, result.stderr


def test_the_check_would_see_asyncio() -> None:
    # The same check in an interpreter that did import asyncio must fail,
    # or the test above proves nothing.
    result = run_fresh("import asyncio; " + CHECK)
    assert result.returncode != 0
    assert "AssertionError" in result.stderr
