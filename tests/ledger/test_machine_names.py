"""How the ledger names a machine class, so that ``runmachine resume`` can import it again."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runmachine.ledger_cli import load_machine_class


def test_a_class_of_a_script_run_directly_is_named_after_the_script(tmp_path: Path) -> None:
    script = tmp_path / "myshop.py"
    script.write_text(
        textwrap.dedent(
            """
            from runmachine import RunMachine
            from runmachine.machine import importable_name

            class Shop(RunMachine):
                pass

            if __name__ == "__main__":
                print(importable_name(Shop))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert done.stdout.strip() == "myshop:Shop"
    # ... and that name loads the class again, from the script's directory.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "from runmachine.ledger_cli import load_machine_class as load; "
            "print(load('myshop:Shop').__name__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert loaded.stdout.strip() == "Shop"


def test_a_main_module_path_says_how_to_give_an_importable_one() -> None:
    with pytest.raises(ValueError, match=r"__main__:Shop names a class of a script") as info:
        load_machine_class("__main__:Shop")
    assert "myscript:Shop" in str(info.value)
