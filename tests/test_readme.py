"""The README's code, taken literally from README.md: the quickstart run as a script and checked
with ``mypy --strict``, and the emulator section's pytest example run by pytest."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_code() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Quickstart\n") :]
    match = re.search(r"^```python\n(.*?)^```$", section, re.S | re.M)
    assert match is not None, "no ```python block under ## Quickstart"
    return match.group(1)


def section(title: str) -> str:
    """The README's ``## title`` section, up to the next ``## `` heading."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def pytest_example_code() -> str:
    text = section("Test your own machine with the emulator")
    start, end = "<!-- pytest-example:start -->\n", "<!-- pytest-example:end -->"
    assert start in text and end in text, "no pytest-example markers in the emulator section"
    marked = text[text.index(start) + len(start) : text.index(end)]
    match = re.fullmatch(r"```python\n(.*)```\n", marked, re.S)
    assert match is not None, "the pytest-example markers must hold one ```python block"
    return match.group(1)


def pytest_example_config() -> str:
    """The pytest configuration the emulator section shows (its ``filterwarnings``)."""
    match = re.search(
        r"^```toml\n(.*?)^```$", section("Test your own machine with the emulator"), re.S | re.M
    )
    assert match is not None, "no ```toml block under ## Test your own machine with the emulator"
    return match.group(1)


# Not in the README: runs the example on both of anyio's backends.
BOTH_BACKENDS = """\
import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
"""


def test_quickstart_is_short() -> None:
    code = [line for line in quickstart_code().splitlines() if line.strip()]
    assert len(code) <= 30


def test_quickstart_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart_code(), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    # The streamed answer, then the summary line; nothing on stderr.
    assert done.stdout == (
        'get_rain_probability returned "0.2".\ncompleted after 1 round(s): 0.2\n'
    )
    assert done.stderr == ""


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the README's examples (checked with the same options): the SDK and
    runmachine are analysed once, not once per example."""
    return tmp_path_factory.mktemp("mypy-cache")


def test_quickstart_passes_mypy_strict(tmp_path: Path, mypy_cache: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart_code(), encoding="utf-8")
    # From tmp_path, mypy reads no configuration of this repository and finds runmachine (and
    # its py.typed) where it is installed.
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(mypy_cache), str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_pytest_example_passes_on_both_backends(tmp_path: Path) -> None:
    (tmp_path / "test_readme_example.py").write_text(pytest_example_code(), encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text(pytest_example_config(), encoding="utf-8")
    (tmp_path / "conftest.py").write_text(BOTH_BACKENDS, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "anyio", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # Both backends passed, and the README's filterwarnings left no warning to report.
    summary = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"2 passed in [0-9.]+s", summary), output


def test_the_public_api_listing_matches_all() -> None:
    import runmachine

    text = README.read_text(encoding="utf-8")
    block = text[text.index("<!-- public-api:start -->") : text.index("<!-- public-api:end -->")]
    listed = re.findall(r"`([A-Za-z_]+)`", block)
    assert sorted(listed) == sorted(runmachine.__all__)
    assert len(listed) == len(set(listed))


def marked_code(title: str, marker: str) -> str:
    """The one ```python block between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in
    the README's ``## title`` section."""
    text = section(title)
    start, end = f"<!-- {marker}:start -->\n", f"<!-- {marker}:end -->"
    marked = text[text.index(start) + len(start) : text.index(end)]
    match = re.fullmatch(r"```python\n(.*)```\n", marked, re.S)
    assert match is not None, f"the {marker} markers must hold one ```python block"
    return match.group(1)


def run_script(
    tmp_path: Path, code: str, *args: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``code`` written to a file and run as ``python [args] file`` in ``tmp_path``."""
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    return subprocess.run(
        [sys.executable, *args, str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )


SESSIONS = ("Agent sessions: the same machine drives turns", "sessions")
ADMISSION = ("Many runs at once: admission control", "admission")


def test_the_sessions_example_runs_as_written(tmp_path: Path) -> None:
    done = run_script(tmp_path, marked_code(*SESSIONS), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == 'completed 1 get_weather returned "sunny in Oslo".\ncompleted Found.\n'
    assert done.stderr == ""


def test_the_admission_example_runs_as_written(tmp_path: Path) -> None:
    done = run_script(tmp_path, marked_code(*ADMISSION), timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "300 {'completed'}\n"
    assert done.stderr == ""


@pytest.mark.parametrize("example", [SESSIONS, ADMISSION], ids=["sessions", "admission"])
def test_the_example_passes_mypy_strict(
    tmp_path: Path, example: tuple[str, str], mypy_cache: Path
) -> None:
    done = run_script(
        tmp_path,
        marked_code(*example),
        "-m",
        "mypy",
        "--strict",
        "--cache-dir",
        str(mypy_cache),
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
