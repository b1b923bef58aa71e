"""The README's demo command runs to completion and shows text, tool calls and transitions."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_in_a_subprocess() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runmachine.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "[requires_action -> submitting]" in out
    assert "tool call get_current_temperature" in out
    assert "round 2: slow_forecast" in out
    assert 'get_rain_probability returned "0.2"' in out
    assert out.count("completed, ") == 2
