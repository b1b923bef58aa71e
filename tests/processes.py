"""Helpers of the tests that run real processes and kill them: read a child's kill point, kill
it for real, count the side effects its tools left in files."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path


def count(effects: Path, tool: str) -> int:
    """How many times ``tool`` ran: the lines it appended to ``effects/<tool>``."""
    path = effects / tool
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for_point(child: subprocess.Popen[str], point: str) -> list[str]:
    """Read the child's stdout until it reports ``point POINT ...``; return what follows the
    point's name. A watchdog bounds the wait."""
    watchdog = threading.Timer(60, child.kill)
    watchdog.start()
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("point "):
                _, name, *rest = line.split()
                assert name == point
                return rest
        raise AssertionError(
            f"the child ended (exit {child.wait()}) before point {point}: "
            f"{child.stderr.read() if child.stderr else ''}"
        )
    finally:
        watchdog.cancel()


def kill(child: subprocess.Popen[str]) -> None:
    """SIGKILL: no handler, no cleanup, no flush."""
    child.kill()
    child.wait()
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    child.stderr.close()
    assert child.returncode == -9
