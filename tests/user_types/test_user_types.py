"""A user's own program type-checks with ``mypy --strict``, and a user's mistakes do not."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _mypy(path: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mypy")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=HERE.parents[1],
    )


def test_a_users_program_passes_mypy_strict() -> None:
    done = _mypy(HERE / "user_program.py")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_rejects_each_marked_mistake_on_its_line() -> None:
    path = HERE / "user_mistakes.py"
    expected = {
        number
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "# error:" in line
    }
    done = _mypy(path)
    reported = {
        int(m.group(1)) for m in re.finditer(r"user_mistakes\.py:(\d+): error", done.stdout)
    }
    assert reported == expected, done.stdout
    assert 'maybe "state"?' in done.stdout
