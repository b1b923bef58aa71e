"""Trace diagrams: the path one run took, drawn on the lifecycle's own layout."""

from __future__ import annotations

import shutil
from collections import Counter
from typing import Any

import openai
import pytest

from runmachine import RunMachine, tool
from runmachine.diagrams import draw_lifecycle, draw_trace, example_history
from runmachine.result import RunResult
from runmachine.testing import Emulator, Scenario

from .diagram_parsers import parse_dot, parse_label, parse_mermaid, read_svg

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

    mermaid = str(result.diagram(format="mermaid"))
    assert mermaid_counts(mermaid) == expected
    diagram = parse_mermaid(mermaid)
    assert diagram.classes["final"] == {"completed"}
    visited = {s for key in expected for s in (key[0], key[2])}
    assert diagram.classes["visited"] == visited - {"completed"}
    assert "stopped" not in diagram.classes

    dot = parse_dot(str(result.diagram(format="dot")))
    assert dot_counts(str(result.diagram(format="dot"))) == expected
    assert dot.nodes["completed"]["xlabel"] == "final state"
    # The trace is drawn with the subclass's own table when asked to.
    own = str(draw_trace(result.transitions, final_state="completed", machine=Weather))
    assert parse_mermaid(own).transitions == diagram.transitions
    assert parse_mermaid(own).title == "Weather, one run"


def test_the_trace_of_the_example_history_marks_every_taken_row() -> None:
    history = example_history()
    mermaid = str(draw_trace(history, final_state="completed"))
    counts = mermaid_counts(mermaid)
    assert counts == Counter((s.source, s.trigger, s.dest) for s in history)
    assert counts[("requires_action", "submit_tool_outputs", "submitting")] == 2
    assert counts[("submitting", "thread.run.queued", "queued")] == 2
    assert counts[("queued", "thread.run.in_progress", "in_progress")] == 3
    # Untaken rows are still drawn: the trace is the whole lifecycle, highlighted.
    lifecycle_rows = parse_mermaid(str(draw_lifecycle())).transitions
    assert len(parse_mermaid(mermaid).transitions) == len(lifecycle_rows)


def test_a_run_stopped_by_a_guard_shows_where_it_stopped() -> None:
    history = example_history()[:4]  # pending ... requires_action -> submitting
    error = "tool outputs for run run_1, calls ['call_a'], were already submitted; refusing"
    mermaid = parse_mermaid(
        str(draw_trace(history, final_state="submitting", error=error, format="mermaid"))
    )
    assert mermaid.classes["stopped"] == {"submitting"}
    assert "final" not in mermaid.classes
    [note] = mermaid.notes["submitting"]
    assert note.startswith("stopped here - tool outputs for run run_1")
    dot = parse_dot(str(draw_trace(history, final_state="submitting", error=error, format="dot")))
    assert (
        dot.nodes["submitting"]["xlabel"]
        .replace("\n", " ")
        .startswith("stopped here: tool outputs for run run_1")
    )
    assert set(dot.nodes) == set(parse_dot(str(draw_lifecycle(format="dot"))).nodes)


def test_steps_the_table_does_not_have_are_still_drawn() -> None:
    class Step:
        source, trigger, dest = "requires_action", "review", "reviewing"

    mermaid = parse_mermaid(str(draw_trace([Step()], final_state="reviewing", error="stopped")))
    assert ("requires_action", "review ×1", "reviewing") in mermaid.transitions


@needs_dot
def test_a_trace_keeps_the_lifecycle_layout() -> None:
    """Every state sits exactly where the lifecycle diagram puts it, whatever the trace marks."""
    lifecycle_svg = read_svg(str(draw_lifecycle(format="svg")))
    for kwargs in ({}, {"error": "a guard failed here, with a long message " * 3}):
        trace = read_svg(
            str(draw_trace(example_history(), final_state="completed", format="svg", **kwargs))
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
