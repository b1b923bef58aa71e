"""The package's structure, checked: the table owns every name, no module reaches into another.

- No state, status or event name is spelled as a string literal outside ``runmachine.lifecycle``
  (the emulator in ``runmachine.testing`` excepted: it is an independent oracle and must not
  read the table it is used to check).
- No module imports another module's ``_`` names, or reads ``_`` attributes of objects that are
  not its own (``self`` and ``cls`` aside); a package's private modules are imported only from
  inside that package.
- The import layers themselves are import-linter's contract in ``pyproject.toml``; a test runs
  ``lint-imports`` so that the suite fails with CI.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runmachine import lifecycle

SRC = Path(__file__).resolve().parents[1] / "src" / "runmachine"
ROOT = SRC.parents[1]

#: Every name the table owns. ``"error"`` is left out: besides the ``error`` stream event
#: (``lifecycle.ERROR_EVENT``) it is the key of every API error body (``{"error": {...}}``).
OWNED = (
    set(lifecycle.STATES)
    | set(lifecycle.LIFECYCLE_EVENTS)
    | set(lifecycle.CONTENT_EVENTS)
    | set(lifecycle.LOCAL_TRIGGERS)
) - {lifecycle.ERROR_EVENT}


def _modules() -> list[tuple[str, Path, ast.Module]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path, ast.parse(path.read_text(encoding="utf-8"))))
    return found


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
        # Attribute docstrings: a string statement right after an assignment.
        for field in ("body", "orelse"):
            statements = getattr(node, field, None)
            for stmt in statements if isinstance(statements, list) else []:
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                    ids.add(id(stmt.value))
    return ids


def _literals(name: str, tree: ast.Module) -> list[str]:
    docs = _docstrings(tree)
    return [
        f"{name}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in OWNED
        and id(node) not in docs
    ]


def test_no_state_or_event_literal_outside_the_table() -> None:
    found = []
    for name, _, tree in _modules():
        if name == "runmachine.lifecycle" or name.startswith("runmachine.testing"):
            continue
        found.extend(_literals(name, tree))
    assert found == []


def test_the_literal_check_finds_a_literal() -> None:
    tree = ast.parse('"""doc"""\nstate = "requires_action"\nif event == "thread.run.failed": ...\n')
    assert len(_literals("probe", tree)) == 2


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _package(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def _reaches(module: str, path: Path, tree: ast.Module) -> list[str]:
    here = _package(module, path.name == "__init__.py")
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, (ast.AnnAssign,)) and isinstance(node.target, ast.Name):
            own.add(node.target.id)
        elif isinstance(node, ast.arg):
            own.add(node.arg)
    problems = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("runmachine")
        ):
            target_parts = node.module.split(".")
            for alias in node.names:
                submodule = SRC.parent.joinpath(*target_parts, alias.name)
                inside = here.startswith(node.module) and (
                    submodule.with_suffix(".py").exists() or submodule.is_dir()
                )
                if _private(alias.name) and not inside:
                    problems.append(f"{module}:{node.lineno}: imports {node.module}.{alias.name}")
            private_parts = [p for p in target_parts if _private(p)]
            if private_parts:
                owner = ".".join(target_parts[: target_parts.index(private_parts[0])])
                if not here.startswith(owner):
                    problems.append(f"{module}:{node.lineno}: imports private {node.module}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            mine = isinstance(base, ast.Name) and base.id in ("self", "cls")
            mine = mine or (
                isinstance(base, ast.Call)
                and isinstance(base.func, ast.Name)
                and base.func.id == "type"
            )
            if not mine and node.attr not in own:
                problems.append(f"{module}:{node.lineno}: reads {ast.unparse(node)}")
    return problems


def test_no_module_reaches_into_another_modules_private_names() -> None:
    found = []
    for name, path, tree in _modules():
        found.extend(_reaches(name, path, tree))
    assert found == []


def test_the_private_check_finds_a_reach() -> None:
    probe = ast.parse(
        "from runmachine.core import _CONTENT_HANDLERS\n"
        "def f(machine):\n    return machine._overridden\n"
    )
    assert len(_reaches("runmachine.driver", SRC / "driver.py", probe)) == 2


@pytest.mark.skipif(
    shutil.which("lint-imports") is None
    and not Path(sys.executable).with_name("lint-imports").exists(),
    reason="import-linter is not installed (pip install -e '.[dev]')",
)
def test_the_import_layers_hold() -> None:
    command = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    done = subprocess.run([command], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout
