"""The readable view (the default): a statechart derived from the lifecycle table.

What a reader sees is read back from the drawing (mermaid text, Graphviz's own layout of the DOT
text, the PNG) and compared with the table: the active and terminal states are composite states,
a rule the table has for every active state is one arrow from the composite, every other row is
on exactly one arrow, the ``adopt`` rows are one note, and the labels are at least the README's
body size when the PNG is shown at the README's width.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from runmachine import lifecycle
from runmachine.diagrams import draw_lifecycle, draw_trace, example_history
from runmachine.lifecycle import TransitionSpec
from runmachine.machine import RunMachine
from runmachine.records import TransitionRecord

from .diagram_parsers import (
    MermaidDiagram,
    parse_chart_label,
    parse_dot,
    parse_mermaid,
    png_size,
    read_dot_json,
)
from .test_diagrams import Extended, Hooked

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is missing")

#: GitHub shows a README about 830 to 900 px wide (the narrow end here), its body text 16 px.
README_WIDTH = 830
BODY_PX = 16


class Watchdog(RunMachine):
    """Rows a subclass adds, to see them land in the right place without a change to the
    drawing code: a local trigger from every active state, one from a single state into a new
    state, and a new trigger from ``pending`` into several states (a fan, like ``adopt``)."""

    extra_transitions = (
        *(TransitionSpec("watchdog_fired", s, lifecycle.FAILED) for s in lifecycle.ACTIVE_STATES),
        TransitionSpec("pause", lifecycle.IN_PROGRESS, "paused"),
        TransitionSpec("unpause", "paused", lifecycle.IN_PROGRESS),
        *(
            TransitionSpec("restore", lifecycle.PENDING, s, (f"snapshot_is_{s}",))
            for s in (lifecycle.QUEUED, lifecycle.IN_PROGRESS, lifecycle.REQUIRES_ACTION)
        ),
    )


BACKENDS: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    "assistants": (lifecycle.ACTIVE_STATES, lifecycle.TERMINAL_STATES),
    "sessions": (lifecycle.TURN_ACTIVE_STATES, lifecycle.TURN_TERMINAL_STATES),
}
CASES = [
    ("assistants", RunMachine),
    ("assistants", Hooked),
    ("assistants", Extended),
    ("assistants", Watchdog),
    ("sessions", RunMachine),
]


def rows_of(backend: str, cls: type[RunMachine]) -> tuple[TransitionSpec, ...]:
    return lifecycle.TURN_TRANSITIONS if backend == "sessions" else cls.lifecycle_rows()


def fans(rows: Sequence[TransitionSpec]) -> set[tuple[str, str]]:
    """(source, trigger) of the rows one trigger takes from one state into three or more."""
    counts = Counter((r.source, r.trigger) for r in rows)
    return {key for key, n in counts.items() if n >= 3}


def shared_rules(rows: Sequence[TransitionSpec], active: Sequence[str]) -> set[tuple[Any, ...]]:
    """(trigger, guards, dest) the table has from every active state, to a state outside."""
    sources: dict[tuple[Any, ...], set[str]] = {}
    for row in rows:
        if row.source in active and row.dest not in active:
            sources.setdefault((row.trigger, row.guards, row.dest), set()).add(row.source)
    return {rule for rule, found in sources.items() if found == set(active)}


def drawn_rows(diagram: MermaidDiagram) -> Counter[tuple[str, str, str, tuple[str, ...]]]:
    """Every row the arrows stand for: an arrow from a composite stands for each member."""
    drawn: Counter[tuple[str, str, str, tuple[str, ...]]] = Counter()
    for source, label, dest in diagram.transitions:
        for trigger, guards in parse_chart_label(label).rules:
            for member in diagram.members(source):
                drawn[(member, trigger, dest, guards)] += 1
    return drawn


def composite_of(diagram: MermaidDiagram, members: set[str]) -> str:
    [name] = [n for n, found in diagram.composites.items() if found == members]
    return name


# --------------------------------------------------------------------------------------------
# Mermaid
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "cls"), CASES, ids=lambda c: getattr(c, "__name__", c))
def test_every_row_is_on_one_arrow_or_the_fan_note(backend: Any, cls: type[RunMachine]) -> None:
    rows = rows_of(backend, cls)
    diagram = parse_mermaid(str(draw_lifecycle(cls, backend=backend)))
    fanned = fans(rows)
    table = Counter((r.source, r.trigger, r.dest, r.guards) for r in rows)
    expected = Counter({k: n for k, n in table.items() if (k[0], k[1]) not in fanned})
    assert drawn_rows(diagram) == expected
    # Each fan is one note on its source, naming its trigger and every state it may enter (a
    # whole composite by its label).
    for source, trigger in fanned:
        [note] = [n for n in diagram.notes[source] if n.startswith(f"{trigger} [")]
        for row in rows:
            if (row.source, row.trigger) == (source, trigger):
                labels = [
                    diagram.composite_labels[c]
                    for c, members in diagram.composites.items()
                    if row.dest in members
                ]
                assert row.dest in note or any(f"any of the {lb}" in note for lb in labels)
    assert diagram.initial == [lifecycle.INITIAL_STATE]


@pytest.mark.parametrize(("backend", "cls"), CASES, ids=lambda c: getattr(c, "__name__", c))
def test_the_active_and_terminal_states_are_composite_states(
    backend: Any, cls: type[RunMachine]
) -> None:
    active, terminal = BACKENDS[backend]
    rows = rows_of(backend, cls)
    states = {s for r in rows for s in (r.source, r.dest)}
    diagram = parse_mermaid(str(draw_lifecycle(cls, backend=backend)))
    assert sorted(diagram.composites.values(), key=len) == sorted(
        [set(active), terminal & states], key=len
    )
    # The terminal composite ends the diagram once; no terminal state has an end of its own.
    assert diagram.final == [composite_of(diagram, set(terminal & states))]
    assert diagram.direction == "TB"
    # A state outside the table's groups (a subclass's) is drawn outside both composites.
    for state in states - set(active) - terminal:
        assert not any(state in members for members in diagram.composites.values())


@pytest.mark.parametrize(("backend", "cls"), CASES, ids=lambda c: getattr(c, "__name__", c))
def test_one_arrow_per_rule_every_active_state_has(backend: Any, cls: type[RunMachine]) -> None:
    active, _ = BACKENDS[backend]
    rows = rows_of(backend, cls)
    diagram = parse_mermaid(str(draw_lifecycle(cls, backend=backend)))
    box = composite_of(diagram, set(active))
    rules = shared_rules(rows, active)
    assert rules
    for trigger, guards, dest in rules:
        from_box = [
            label
            for source, label, d in diagram.transitions
            if source == box and d == dest and (trigger, guards) in parse_chart_label(label).rules
        ]
        from_members = [
            label
            for source, label, d in diagram.transitions
            if source in active
            and d == dest
            and (trigger, guards) in parse_chart_label(label).rules
        ]
        assert len(from_box) == 1, (trigger, dest)
        assert from_members == [], (trigger, dest)


def test_the_assistants_statechart_at_a_glance() -> None:
    """What the README shows: 11 states in 2 composites and 18 arrows instead of 39; the four
    'any active state' arrows; the guarded submission with its guards in words."""
    diagram = parse_mermaid(str(draw_lifecycle()))
    full = parse_mermaid(str(draw_lifecycle(detail="full")))
    assert len(full.transitions) == len(lifecycle.TRANSITIONS) == 39
    assert len(diagram.transitions) == 18
    assert diagram.states == set(lifecycle.STATES)
    box = composite_of(diagram, set(lifecycle.ACTIVE_STATES))
    assert diagram.composite_labels[box].startswith("active - an arrow from this box leaves")
    assert sorted((label, d) for s, label, d in diagram.transitions if s == box) == [
        ("cancel", "cancelling"),
        ("thread.run.cancelling", "cancelling"),
        ("thread.run.expired", "expired"),
        ("thread.run.failed", "failed"),
    ]
    labels = {(s, d): label for s, label, d in diagram.transitions}
    assert labels[("requires_action", "submitting")] == (
        "submit_tool_outputs [outputs match required calls and round not submitted before]"
    )
    [note] = diagram.notes["pending"]
    assert note.startswith("adopt [run status is ‹state›] - resume() enters the state the server")
    assert not any("adopt" in label for _, label, _ in diagram.transitions)


def test_rows_a_subclass_adds_land_where_the_table_puts_them() -> None:
    diagram = parse_mermaid(str(Watchdog.diagram()))
    box = composite_of(diagram, set(lifecycle.ACTIVE_STATES))
    assert (box, "watchdog_fired", "failed") in diagram.transitions
    assert ("in_progress", "pause", "paused") in diagram.transitions
    assert ("paused", "unpause", "in_progress") in diagram.transitions
    assert not any("paused" in members for members in diagram.composites.values())
    [note] = [n for n in diagram.notes["pending"] if n.startswith("restore")]
    assert note.startswith("restore [snapshot is ‹state›] - into one of (queued, in_progress")
    graph = parse_dot(str(Watchdog.diagram("dot")))
    fired = [a for _, _, a in graph.edges if a.get("label") == "watchdog_fired"]
    assert [a.get("ltail") for a in fired] == ["cluster_active"]


# --------------------------------------------------------------------------------------------
# Graphviz: the layout dot makes of it, and the PNG
# --------------------------------------------------------------------------------------------

_TURN_ROUNDS = (
    lifecycle.TURN_CREATED,
    lifecycle.TURN_IN_PROGRESS,
    lifecycle.SESSION_REQUIRES_ACTION,
    lifecycle.SUBMIT,
    lifecycle.SESSION_IN_PROGRESS,
    lifecycle.SESSION_REQUIRES_ACTION,
    lifecycle.SUBMIT,
    lifecycle.TURN_COMPLETED,
)


def turn_history() -> list[TransitionRecord]:
    """A turn with two rounds of required actions, walked on the turn's table."""
    state, steps = lifecycle.INITIAL_STATE, []
    for trigger in _TURN_ROUNDS:
        [row] = [r for r in lifecycle.TURN_TRANSITIONS if (r.source, r.trigger) == (state, trigger)]
        steps.append(TransitionRecord(state, row.dest, trigger, run_id=None, at=0.0))
        state = row.dest
    return steps


VIEWS: dict[str, Callable[[str], str | bytes]] = {
    "lifecycle": lambda f: draw_lifecycle(format=f),
    "turn-lifecycle": lambda f: draw_lifecycle(format=f, backend="sessions"),
    "trace-two-rounds": lambda f: draw_trace(
        example_history(), final_state=lifecycle.COMPLETED, format=f
    ),
    "turn-trace": lambda f: draw_trace(
        turn_history(), final_state=lifecycle.COMPLETED, format=f, backend="sessions"
    ),
    "web-chat": lambda f: RunMachine.diagram(f, omit=(lifecycle.ADOPT,)),
}


def layout(dot_text: str) -> Any:
    done = subprocess.run(
        ["dot", "-Tjson"], input=dot_text, capture_output=True, text=True, check=True
    )
    return read_dot_json(done.stdout)


@needs_dot
@pytest.mark.parametrize("view", list(VIEWS))
def test_each_view_as_png_is_a_statechart_readable_at_the_readme_width(view: str) -> None:
    backend = "sessions" if view.startswith("turn") else "assistants"
    active, terminal = BACKENDS[backend]
    rows = lifecycle.TURN_TRANSITIONS if backend == "sessions" else lifecycle.TRANSITIONS
    drawn = layout(str(VIEWS[view]("dot")))
    png = VIEWS[view]("png")
    assert isinstance(png, bytes)
    width, height = png_size(png)
    # The PNG is dot's layout at 96 dpi (plus dot's margin).
    assert width == pytest.approx(drawn.width * 96 / 72, rel=0.02)
    assert height == pytest.approx(drawn.height * 96 / 72, rel=0.02)

    # Composite states: a cluster of the active states and one of the terminal states.
    assert drawn.clusters == {"cluster_active": set(active), "cluster_terminal": set(terminal)}
    assert drawn.cluster_attrs["cluster_active"]["label"].startswith("active")

    # One arrow, from the composite, per rule every active state has.
    from_box: Counter[tuple[str, tuple[str, ...], str]] = Counter()
    from_members: Counter[tuple[str, tuple[str, ...], str]] = Counter()
    for _, _, attrs in drawn.edges:
        tip = re.fullmatch(
            r"(?P<source>.+?) -> (?P<dest>[^:]+): (?P<rules>.+)", attrs.get("tooltip", "")
        )
        if tip is None:
            continue  # a junction's outgoing arrow, or a note's line
        for trigger, guards in parse_chart_label(tip["rules"]).rules:
            key = (trigger, guards, tip["dest"])
            if attrs.get("ltail") == "cluster_active":
                assert tip["source"] == "any active state"
                from_box[key] += 1
            elif tip["source"] in active:
                from_members[key] += 1
    rules = shared_rules(rows, active)
    assert from_box == Counter(dict.fromkeys(rules, 1))
    assert not set(from_members) & rules

    # Every text on an arrow, and on a state, is at least the README's body size when the PNG
    # is shown at the README's width (GitHub scales a wider image down to it).
    px_per_point = min(width, README_WIDTH) / drawn.width
    assert drawn.edge_text_sizes
    assert min(drawn.edge_text_sizes) * px_per_point >= BODY_PX
    assert min(drawn.node_text_sizes) * px_per_point >= BODY_PX


@needs_dot
def test_the_full_view_as_png_is_the_every_row_web() -> None:
    """The full view keeps one arrow per row: 39 of them between 11 states, no composite."""
    drawn = layout(str(draw_lifecycle(format="dot", detail="full")))
    assert len(drawn.edges) == len(lifecycle.TRANSITIONS)
    assert set(drawn.clusters) == {"cluster_terminal"}
    assert set(drawn.nodes) == set(lifecycle.STATES)
    # What the readable view is for: shown at the README's width, these labels are tiny.
    png = draw_lifecycle(format="png", detail="full")
    assert isinstance(png, bytes)
    width, _ = png_size(png)
    assert min(drawn.edge_text_sizes) * min(width, README_WIDTH) / drawn.width < BODY_PX / 2
