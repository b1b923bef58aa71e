"""The lifecycle diagrams: drawn from the table, every state and row of it and nothing else."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from runmachine import lifecycle
from runmachine.cli import main
from runmachine.diagrams import (
    GraphvizNotFound,
    draw_lifecycle,
    draw_trace,
    example_history,
    generated_files,
    readme_block,
)
from runmachine.errors import RunMachineError
from runmachine.lifecycle import TransitionSpec
from runmachine.machine import RunMachine

from .diagram_parsers import (
    MermaidSyntaxError,
    parse_dot,
    parse_label,
    parse_mermaid,
    read_svg,
)

ROOT = Path(__file__).resolve().parents[2]
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is missing")


class Hooked(RunMachine):
    async def on_enter_requires_action(self, run: Any) -> None: ...

    def on_exit_queued(self, run: Any) -> None: ...

    async def on_text_delta(self, delta: Any, snapshot: Any) -> None: ...


class Extended(RunMachine):
    """Adds a review step before submitting: states of its own, one a name no id can be."""

    extra_transitions = (
        TransitionSpec("review", "requires_action", "reviewing", ("reviewer_present",)),
        TransitionSpec("approve", "reviewing", "submitting"),
        TransitionSpec("escalate", "reviewing", "human review"),
        TransitionSpec("approve", "human review", "submitting"),
    )

    async def on_enter_reviewing(self, run: Any) -> None: ...


def table(cls: type[RunMachine]) -> Counter[tuple[str, str, str, tuple[str, ...]]]:
    return Counter((r.source, r.trigger, r.dest, r.guards) for r in cls.lifecycle_rows())


def table_states(cls: type[RunMachine]) -> set[str]:
    return {s for r in cls.lifecycle_rows() for s in (r.source, r.dest)} | set(lifecycle.STATES)


MACHINES = [RunMachine, Hooked, Extended]


# --------------------------------------------------------------------------------------------
# Mermaid
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MACHINES, ids=lambda c: c.__name__)
def test_mermaid_has_every_state_and_row_and_nothing_else(cls: type[RunMachine]) -> None:
    diagram = parse_mermaid(str(draw_lifecycle(cls, format="mermaid")))
    assert diagram.states == table_states(cls)
    drawn = Counter()
    for source, label, dest in diagram.transitions:
        parsed = parse_label(label)
        assert parsed.count is None
        drawn[(source, parsed.trigger, dest, parsed.guards)] += 1
    assert drawn == table(cls)
    assert diagram.initial == [lifecycle.INITIAL_STATE]
    assert sorted(diagram.final) == sorted(lifecycle.TERMINAL_STATES)
    assert diagram.classes["terminal"] == set(lifecycle.TERMINAL_STATES)


def test_mermaid_labels_are_the_trigger_names_and_guards() -> None:
    diagram = parse_mermaid(str(draw_lifecycle(format="mermaid")))
    labels = {(s, d): label for s, label, d in diagram.transitions}
    assert labels[("in_progress", "requires_action")] == "thread.run.requires_action"
    assert labels[("requires_action", "submitting")] == (
        "submit_tool_outputs [outputs_match_required_calls] [round_not_submitted_before]"
    )


def test_a_state_name_that_is_no_mermaid_id_gets_an_alias() -> None:
    text = str(draw_lifecycle(Extended, format="mermaid"))
    assert '    state "human review" as human_review' in text
    assert parse_mermaid(text).names["human_review"] == "human review"


@pytest.mark.parametrize(
    "line",
    [
        "    a -> b : x",
        "    a --> b : x; c --> d",
        "    a --> b",
        "    note over a : x",
        "    class a undefined_class",
        "    end --> b : x",
        "  a --> b : x",
        "    a --> b : x #59 y",
        "    [*] --> [*]",
        "    state a {",
    ],
)
def test_the_grammar_check_rejects_what_is_not_in_the_subset(line: str) -> None:
    with pytest.raises(MermaidSyntaxError):
        parse_mermaid(f"stateDiagram-v2\n    direction LR\n    a --> b : ok\n{line}\n")


def test_the_grammar_check_needs_the_header() -> None:
    with pytest.raises(MermaidSyntaxError):
        parse_mermaid("stateDiagram\n    a --> b : x\n")
    with pytest.raises(MermaidSyntaxError):
        parse_mermaid("---\ntitle: x\n\nstateDiagram-v2\n")


def _mmdc() -> list[str] | None:
    configured = os.environ.get("RUNMACHINE_MMDC")
    if configured:
        return configured.split()
    found = shutil.which("mmdc")
    return [found] if found else None


@pytest.mark.skipif(
    _mmdc() is None, reason="no mermaid CLI (set RUNMACHINE_MMDC or put mmdc on PATH)"
)
@pytest.mark.parametrize("name", ["lifecycle.mmd", "trace-two-rounds.mmd"])
def test_mermaid_cli_renders_the_diagrams(name: str, tmp_path: Path) -> None:
    command = _mmdc()
    assert command is not None
    source = tmp_path / name
    source.write_text(generated_files()[name])
    out = tmp_path / "out.svg"
    done = subprocess.run(
        [*command, "-i", str(source), "-o", str(out)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    ET.fromstring(out.read_text())


# --------------------------------------------------------------------------------------------
# Graphviz
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MACHINES, ids=lambda c: c.__name__)
def test_dot_has_every_state_and_row_and_nothing_else(cls: type[RunMachine]) -> None:
    graph = parse_dot(str(draw_lifecycle(cls, format="dot")))
    assert set(graph.nodes) == table_states(cls)
    drawn = Counter()
    for source, dest, attributes in graph.edges:
        parsed = parse_label(attributes["label"])
        drawn[(source, parsed.trigger, dest, parsed.guards)] += 1
        # Server lifecycle events are solid; local triggers (a subclass's too) are dashed.
        local = parsed.trigger not in lifecycle.LIFECYCLE_EVENTS
        assert (attributes.get("style") == "dashed") == local
    assert drawn == table(cls)
    assert graph.clusters == {"cluster_terminal": set(lifecycle.TERMINAL_STATES)}
    assert graph.attrs["rankdir"] == "LR"


@needs_dot
@pytest.mark.parametrize("cls", MACHINES, ids=lambda c: c.__name__)
def test_svg_is_well_formed_with_one_node_per_state(cls: type[RunMachine]) -> None:
    svg = draw_lifecycle(cls, format="svg")
    assert isinstance(svg, str)
    shape = read_svg(svg)
    assert shape.nodes == Counter(table_states(cls))
    assert shape.edges == Counter(f"{r.source}->{r.dest}" for r in cls.lifecycle_rows())


@needs_dot
def test_png_is_a_png_of_some_size() -> None:
    png = draw_lifecycle(format="png")
    assert isinstance(png, bytes)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 50_000


def test_without_dot_svg_and_png_say_to_install_graphviz(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("dot") is None
    for format in ("svg", "png"):
        with pytest.raises(GraphvizNotFound) as caught:
            draw_lifecycle(format=format)
        assert isinstance(caught.value, RunMachineError)
        assert "install the graphviz system package" in str(caught.value)
        assert "apt-get install graphviz" in str(caught.value)
    with pytest.raises(GraphvizNotFound):
        draw_trace(example_history(), final_state="completed", format="svg")
    # The text formats never need it.
    parse_mermaid(str(draw_lifecycle(format="mermaid")))
    parse_dot(str(draw_lifecycle(format="dot")))
    assert main(["diagram", "--format", "png", "-o", str(tmp_path / "x.png")]) == 1
    assert not (tmp_path / "x.png").exists()


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="jpeg"):
        draw_lifecycle(format="jpeg")
    with pytest.raises(ValueError, match="jpeg"):
        RunMachine.diagram(format="jpeg")


# --------------------------------------------------------------------------------------------
# Hooks and additions of a subclass
# --------------------------------------------------------------------------------------------


def test_hooks_of_a_subclass_show_on_their_states_and_not_on_runmachine() -> None:
    mermaid = parse_mermaid(str(Hooked.diagram(format="mermaid")))
    assert mermaid.descriptions == {
        "requires_action": ["on_enter_requires_action"],
        "queued": ["on_exit_queued"],
    }
    assert mermaid.notes == {"in_progress": ["event hooks, on stream content - on_text_delta"]}
    graph = parse_dot(str(Hooked.diagram(format="dot")))
    assert graph.nodes["requires_action"]["label"] == "requires_action\n▸ on_enter_requires_action"
    assert graph.nodes["queued"]["label"] == "queued\n▸ on_exit_queued"
    assert "on_text_delta" in graph.attrs["label"]

    base_mermaid = parse_mermaid(str(RunMachine.diagram(format="mermaid")))
    assert base_mermaid.descriptions == {}
    assert base_mermaid.notes == {}
    base = parse_dot(str(RunMachine.diagram(format="dot")))
    assert all(attributes["label"] == name for name, attributes in base.nodes.items())
    assert base.attrs["label"] == "RunMachine"
    assert RunMachine.hooks() == frozenset()


@needs_dot
def test_hooks_show_in_the_rendered_svg() -> None:
    texts = read_svg(str(Hooked.diagram(format="svg"))).texts
    assert texts["▸ on_enter_requires_action"] == 1
    assert not any("on_enter" in t for t in read_svg(str(RunMachine.diagram(format="svg"))).texts)


def test_rows_a_subclass_adds_are_drawn_with_their_hooks() -> None:
    mermaid = parse_mermaid(str(Extended.diagram(format="mermaid")))
    assert ("requires_action", "review [reviewer_present]", "reviewing") in mermaid.transitions
    assert ("reviewing", "escalate", "human review") in mermaid.transitions
    assert ("human review", "approve", "submitting") in mermaid.transitions
    assert mermaid.descriptions == {"reviewing": ["on_enter_reviewing"]}
    graph = parse_dot(str(Extended.diagram(format="dot")))
    assert graph.nodes["reviewing"]["label"] == "reviewing\n▸ on_enter_reviewing"
    base = parse_mermaid(str(RunMachine.diagram())).states
    assert not base & {"reviewing", "human review"}


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


def test_cli_draws_runmachine_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram"]) == 0
    assert capsys.readouterr().out == draw_lifecycle(format="mermaid")


def test_cli_draws_a_class_named_module_colon_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_machines.py").write_text(
        textwrap.dedent(
            """
            from runmachine import RunMachine

            class Greeter(RunMachine):
                async def on_enter_completed(self, run):
                    pass
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "greeter.dot"
    assert main(["diagram", "my_machines:Greeter", "--format", "dot", "-o", str(out)]) == 0
    graph = parse_dot(out.read_text())
    assert graph.nodes["completed"]["label"] == "completed\n▸ on_enter_completed"
    assert main(["diagram", "my_machines:RunMachine", "-o", str(tmp_path / "base.mmd")]) == 0
    assert main(["diagram", "no_colon_here"]) == 2
    assert main(["diagram", "os:path"]) == 2


@needs_dot
def test_cli_in_a_subprocess_writes_svg(tmp_path: Path) -> None:
    out = tmp_path / "lifecycle.svg"
    done = subprocess.run(
        [sys.executable, "-m", "runmachine.cli", "diagram", "--format", "svg", "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert read_svg(out.read_text()).nodes == Counter(lifecycle.STATES)


# --------------------------------------------------------------------------------------------
# The repository's diagrams/ folder and the README
# --------------------------------------------------------------------------------------------


@needs_dot
def test_the_committed_diagrams_are_fresh() -> None:
    """If this fails, run ``python -m runmachine.diagrams diagrams --readme README.md``."""
    fresh = generated_files()
    committed = {p.name for p in (ROOT / "diagrams").iterdir() if p.is_file()}
    assert set(fresh) <= committed
    for name, text in fresh.items():
        on_disk = (ROOT / "diagrams" / name).read_text(encoding="utf-8")
        if name.endswith(".svg"):
            # Graphviz versions differ in coordinates and comments; compare what is drawn.
            new, old = read_svg(text), read_svg(on_disk)
            assert (old.nodes, old.edges, old.texts) == (new.nodes, new.edges, new.texts), name
        else:
            assert on_disk == text, name


def test_the_readme_embeds_the_committed_mermaid_diagram() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    committed = (ROOT / "diagrams" / "lifecycle.mmd").read_text(encoding="utf-8")
    assert readme_block(committed) in readme
    assert readme.count("<!-- lifecycle-diagram:start -->") == 1
    assert committed == draw_lifecycle(format="mermaid")


def test_the_example_history_follows_the_table() -> None:
    history = example_history()
    rows = {(r.source, r.trigger, r.dest) for r in lifecycle.TRANSITIONS}
    assert all((s.source, s.trigger, s.dest) in rows for s in history)
    assert history[0].source == lifecycle.INITIAL_STATE
    assert history[-1].dest == "completed"
    assert all(a.dest == b.source for a, b in itertools.pairwise(history))
    with pytest.raises(ValueError, match="cancel"):
        example_history(["cancel"])


def test_omit_leaves_out_the_rows_of_named_triggers() -> None:
    full = str(draw_lifecycle(RunMachine, format="dot"))
    small = str(draw_lifecycle(RunMachine, format="dot", omit=("adopt",)))
    assert "adopt" in full and "adopt" not in small
    # Every other row stays, and every state.
    assert small.count("->") == full.count("->") - sum(
        1 for row in RunMachine.lifecycle_rows() if row.trigger == "adopt"
    )
    for state in lifecycle.STATES:
        assert state in small
    assert RunMachine.diagram("dot", omit=("adopt",)) == small
