"""The README's quickstart, taken literally from README.md and run as a script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_code() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Quickstart\n") :]
    match = re.search(r"^```python\n(.*?)^```$", section, re.S | re.M)
    assert match is not None, "no ```python block under ## Quickstart"
    return match.group(1)


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


def test_the_public_api_listing_matches_all() -> None:
    import runmachine

    text = README.read_text(encoding="utf-8")
    block = text[text.index("<!-- public-api:start -->") : text.index("<!-- public-api:end -->")]
    listed = re.findall(r"`([A-Za-z_]+)`", block)
    assert sorted(listed) == sorted(runmachine.__all__)
    assert len(listed) == len(set(listed))
