"""Trace diagrams: the path one run took, drawn on the lifecycle's own layout.

The readable view (the default) numbers the steps on the arrows and fades the states the run
never visited; the full view (``detail="full"``) keeps the every-row drawing with ``×N`` counts.
"""

from __future__ import annotations

import shutil
from collections import Counter
from typing import Any

import openai
import pytest

from runmachine import RunMachine, lifecycle, tool
from runmachine.diagrams import draw_lifecycle, draw_trace, example_history
from runmachine.records import TransitionRecord
from runmachine.result import RunResult
from runmachine.testing import Emulator, Scenario

from .diagram_parsers import (
    parse_chart_label,
    parse_dot,
    parse_label,
    parse_mermaid,
    read_svg,
)

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is missing")


class Weather(RunMachine):
    @tool
    async def get_weather(self, city: str) -> str:
        """Current weather in a city."""
        return f"sunny in {city}"


def mermaid_counts(text: str) -> dict[tuple[str, str, str], int]:
    counts = {}
    for source, label, dest in parse_mermaid(text).transitions:
        parsed = parse_label(label)
        if parsed.count is not None:
            counts[(source, parsed.trigger, dest)] = parsed.count
    return counts


def numbered_steps(text: str) -> dict[int, tuple[set[str], set[str], str]]:
    """Step number -> (the states the arrow leaves, its triggers, where it goes), read from a
    readable trace's mermaid text; a number on two arrows is an error."""
    diagram = parse_mermaid(text)
    steps: dict[int, tuple[set[str], set[str], str]] = {}
    for source, label, dest in diagram.transitions:
        parsed = parse_chart_label(label)
        for number in parsed.steps:
            assert number not in steps, f"step {number} is on two arrows"
            steps[number] = (diagram.members(source), {t for t, _ in parsed.rules}, dest)
    return steps


def assert_steps_follow(text: str, history: list[Any] | tuple[Any, ...]) -> None:
    """Every step of ``history`` is numbered, 1 to N in order, on the arrow it took."""
    steps = numbered_steps(text)
    assert sorted(steps) == list(range(1, len(history) + 1))
    for number, step in enumerate(history, start=1):
        sources, triggers, dest = steps[number]
        assert step.source in sources and step.trigger in triggers and step.dest == dest


def dot_counts(text: str) -> dict[tuple[str, str, str], int]:
    counts = {}
    for source, dest, attributes in parse_dot(text).edges:
        if "headlabel" in attributes:
            trigger = parse_label(attributes["label"]).trigger
            counts[(source, trigger, dest)] = int(attributes["headlabel"].lstrip("×"))
    return counts


@pytest.mark.anyio
async def test_a_run_with_two_tool_rounds_shows_the_counts_and_the_final_state(
    emulator: Emulator, openai_client: openai.AsyncOpenAI
) -> None:
    emulator.enqueue(
        Scenario()
        .tool_round([("get_weather", {"city": "Oslo"})])
        .tool_round([("get_weather", {"city": "Rome"})])
        .reply("Sunny in both.")
    )
    assistant = await openai_client.beta.assistants.create(
        model="gpt-4o",
        tools=Weather.tool_definitions(),  # type: ignore[arg-type]
    )
    thread = await openai_client.beta.threads.create(
        messages=[{"role": "user", "content": "weather?"}]
    )
    result = await Weather(openai_client).run(thread_id=thread.id, assistant_id=assistant.id)
    assert isinstance(result, RunResult)
    assert result.status == "completed"
    assert result.rounds == 2

    taken = Counter((t.source, t.trigger, t.dest) for t in result.transitions)
    expected = {key: n for key, n in taken.items()}
    assert expected[("requires_action", "submit_tool_outputs", "submitting")] == 2
    assert expected[("in_progress", "thread.run.requires_action", "requires_action")] == 2

    mermaid = str(result.diagram(format="mermaid", detail="full"))
    assert mermaid_counts(mermaid) == expected
    diagram = parse_mermaid(mermaid)
    assert diagram.classes["final"] == {"completed"}
    visited = {s for key in expected for s in (key[0], key[2])}
    assert diagram.classes["visited"] == visited - {"completed"}
    assert "stopped" not in diagram.classes

    dot = parse_dot(str(result.diagram(format="dot", detail="full")))
    assert dot_counts(str(result.diagram(format="dot", detail="full"))) == expected
    assert dot.nodes["completed"]["xlabel"] == "final state"
    # The trace is drawn with the subclass's own table when asked to.
    own = str(draw_trace(result.transitions, final_state="completed", machine=Weather))
    readable = str(result.diagram())
    assert parse_mermaid(own).transitions == parse_mermaid(readable).transitions
    assert parse_mermaid(own).title == "Weather, one run"

    # The readable trace: the run's steps numbered in order, rounds said, unvisited faded.
    assert_steps_follow(readable, result.transitions)
    chart = parse_mermaid(readable)
    assert chart.classes["final"] == {"completed"}
    assert chart.classes["visited"] == visited - {"completed"}
    assert chart.classes["unvisited"] == set(lifecycle.STATES) - visited
    assert chart.notes["completed"] == ["final state, after 11 steps and 2 tool rounds"]


def test_the_trace_of_the_example_history_marks_every_taken_row() -> None:
    history = example_history()
    mermaid = str(draw_trace(history, final_state="completed", detail="full"))
    counts = mermaid_counts(mermaid)
    assert counts == Counter((s.source, s.trigger, s.dest) for s in history)
    assert counts[("requires_action", "submit_tool_outputs", "submitting")] == 2
    assert counts[("submitting", "thread.run.queued", "queued")] == 2
    assert counts[("queued", "thread.run.in_progress", "in_progress")] == 3
    # Untaken rows are still drawn: the trace is the whole lifecycle, highlighted.
    lifecycle_rows = parse_mermaid(str(draw_lifecycle(detail="full"))).transitions
    assert len(parse_mermaid(mermaid).transitions) == len(lifecycle_rows)


def test_a_two_round_trace_reads_in_order_without_a_legend() -> None:
    """Steps 1 to 11 on the arrows; the loop taken twice shows two numbers on each of its
    arrows and which round each submission ended; the count of steps and rounds is written."""
    history = example_history()
    text = str(draw_trace(history, final_state="completed"))
    assert_steps_follow(text, history)
    labels = {(s, d): parse_chart_label(label) for s, label, d in parse_mermaid(text).transitions}
    assert labels[("queued", "in_progress")].steps == (2, 6, 10)
    assert labels[("in_progress", "requires_action")].steps == (3, 7)
    assert labels[("requires_action", "submitting")].rounds == {4: 1, 8: 2}
    assert labels[("submitting", "queued")].steps == (5, 9)
    assert labels[("in_progress", "completed")].steps == (11,)
    assert "in_progress --> completed : thread.run.completed ×1 (step 11)" in text
    # Arrows not taken keep their labels, without numbers; the lifecycle's arrows all stay.
    assert labels[("submitting", "in_progress")].steps == ()
    chart = parse_mermaid(text).transitions
    assert len(chart) == len(parse_mermaid(str(draw_lifecycle())).transitions)

    graph = parse_dot(str(draw_trace(history, final_state="completed", format="dot")))
    assert "11 steps and 2 tool rounds, ended in completed" in graph.attrs["label"]
    taken = [a for _, _, a in graph.edges if "step" in a.get("label", "")]
    assert len(taken) == 6
    assert {a["penwidth"] for a in taken} == {"3"}
    faded = set()
    for state in set(lifecycle.STATES) - {s for step in history for s in (step.source, step.dest)}:
        assert graph.nodes[state]["fontcolor"] == "#94a3b8"
        faded.add(state)
    assert faded == {"cancelling", "failed", "cancelled", "expired", "incomplete"}
    assert graph.nodes["completed"]["xlabel"] == "final state"


def test_a_resumed_run_shows_the_adopt_row_it_took() -> None:
    """The adopt rows are one note, but a trace draws the one a resumed run took, numbered."""
    adopt = TransitionRecord(
        lifecycle.PENDING, lifecycle.REQUIRES_ACTION, lifecycle.ADOPT, run_id=None, at=0.0
    )
    history = [adopt, *example_history()[3:]]
    text = str(draw_trace(history, final_state="completed"))
    assert_steps_follow(text, history)
    assert "pending --> requires_action : adopt [run status is requires action] ×1 (step 1)" in text
    assert parse_mermaid(text).notes["pending"][0].startswith("adopt [run status is ‹state›]")


def test_a_turn_trace_is_drawn_on_the_turn_statechart() -> None:
    from .test_readable import turn_history

    history = turn_history()
    text = str(draw_trace(history, final_state="completed", backend="sessions"))
    assert_steps_follow(text, history)
    assert "thread.run." not in text
    assert parse_mermaid(text).title == "RunMachine (agent-session turn), one turn"


def test_a_run_stopped_by_a_guard_shows_where_it_stopped() -> None:
    history = example_history()[:4]  # pending ... requires_action -> submitting
    error = "tool outputs for run run_1, calls ['call_a'], were already submitted; refusing"
    mermaid = parse_mermaid(
        str(
            draw_trace(
                history, final_state="submitting", error=error, format="mermaid", detail="full"
            )
        )
    )
    assert mermaid.classes["stopped"] == {"submitting"}
    assert "final" not in mermaid.classes
    [note] = mermaid.notes["submitting"]
    assert note.startswith("stopped here - tool outputs for run run_1")
    for detail in ("full", "readable"):
        dot = parse_dot(
            str(
                draw_trace(
                    history, final_state="submitting", error=error, format="dot", detail=detail
                )
            )
        )
        assert (
            dot.nodes["submitting"]["xlabel"]
            .replace("\n", " ")
            .startswith("stopped here: tool outputs for run run_1")
        )
        lifecycle_dot = parse_dot(str(draw_lifecycle(format="dot", detail=detail)))
        assert set(dot.nodes) == set(lifecycle_dot.nodes)
    chart = parse_mermaid(str(draw_trace(history, final_state="submitting", error=error)))
    assert chart.classes["stopped"] == {"submitting"}
    [note] = chart.notes["submitting"]
    assert note.startswith("stopped here after 4 steps and 1 tool round  tool outputs for run")


def test_steps_the_table_does_not_have_are_still_drawn() -> None:
    class Step:
        source, trigger, dest = "requires_action", "review", "reviewing"

    mermaid = parse_mermaid(
        str(draw_trace([Step()], final_state="reviewing", error="stopped", detail="full"))
    )
    assert ("requires_action", "review ×1", "reviewing") in mermaid.transitions
    chart = parse_mermaid(str(draw_trace([Step()], final_state="reviewing", error="stopped")))
    assert ("requires_action", "review ×1 (step 1)", "reviewing") in chart.transitions


@needs_dot
def test_a_full_trace_keeps_the_lifecycle_layout() -> None:
    """In the full view every state sits exactly where the lifecycle diagram puts it, whatever
    the trace marks (the readable view writes the step numbers into the labels, which may move
    things a little)."""
    lifecycle_svg = read_svg(str(draw_lifecycle(format="svg", detail="full")))
    for kwargs in ({}, {"error": "a guard failed here, with a long message " * 3}):
        trace = read_svg(
            str(
                draw_trace(
                    example_history(),
                    final_state="completed",
                    format="svg",
                    detail="full",
                    **kwargs,
                )
            )
        )
        assert trace.nodes == lifecycle_svg.nodes
        assert trace.edges == lifecycle_svg.edges
        assert trace.node_outlines == lifecycle_svg.node_outlines


def test_runresult_diagram_delegates() -> None:
    history = example_history()
    result: Any = RunResult(
        status="completed",
        run=None,
        text="",
        messages=(),
        run_steps=(),
        tool_calls=(),
        rounds=2,
        transitions=history,
        usage=None,
    )
    assert result.diagram("dot") == draw_trace(history, final_state="completed", format="dot")
    assert result.diagram("dot", detail="full") == draw_trace(
        history, final_state="completed", format="dot", detail="full"
    )
