"""Each example runs as a user runs it, ``python examples/X.py``, on the embedded emulator."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .example_loader import EXAMPLES


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("hooks.py", [], "INFO support_bot: run run_"),
        ("parallel_tools.py", [], "at most 2 tools ran at once (tool_concurrency=2)"),
        (
            "anyio_app.py",
            ["--backend", "trio"],
            "cancelled by the app: server run status: cancelled",
        ),
        ("polling_and_resume.py", [], "it was requires_action, now completed"),
    ],
)
def test_example_runs_as_a_script(script: str, args: list[str], expected: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
