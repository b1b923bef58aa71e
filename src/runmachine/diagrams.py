"""State diagrams drawn from the lifecycle table, so that the picture cannot drift from the code.

Everything here reads a table: ``runmachine.lifecycle.TRANSITIONS`` by default, or a machine
class's ``lifecycle_rows()`` (the shared table plus a subclass's ``extra_transitions``) and its
``hooks()``; it keeps no list of states or transitions of its own, and imports nothing above the
records layer (a machine class is read through the ``Drawable`` protocol). Two drawings share one
layout:

- ``draw_lifecycle(cls)``: every state and every row of ``cls``'s table, with the hooks ``cls``
  defines written on the states they run in, and the guards on the transitions they guard.
- ``draw_trace(history)``: the same drawing with the path one run took highlighted: visited states
  filled, taken transitions drawn bold and labelled ``×N``, the final state marked and, when the run
  stopped on an error, a note at the state where it stopped.

Formats: ``"mermaid"`` (``stateDiagram-v2`` text) and ``"dot"`` (Graphviz text) are pure Python;
``"svg"`` and ``"png"`` are rendered by Graphviz's ``dot`` program and raise ``GraphvizNotFound``
when it is not installed. This module never changes a machine, and does no I/O except running
``dot`` and, when run as ``python -m runmachine.diagrams [DIR]``, writing the repository's
``diagrams/`` folder.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, Protocol

import attrs

from runmachine import lifecycle
from runmachine.errors import GraphvizNotFound, RunMachineError
from runmachine.records import TransitionRecord

__all__ = [
    "FORMATS",
    "DiagramFormat",
    "Drawable",
    "GraphvizNotFound",
    "draw_lifecycle",
    "draw_trace",
    "example_history",
    "generated_files",
    "readme_block",
    "require_graphviz",
    "write_generated_files",
]

DiagramFormat = Literal["mermaid", "dot", "svg", "png"]
FORMATS: tuple[str, ...] = ("mermaid", "dot", "svg", "png")


class _Step(Protocol):
    """What a trace needs of a history entry (``runmachine.machine.TransitionRecord``)."""

    @property
    def source(self) -> str: ...

    @property
    def dest(self) -> str: ...

    @property
    def trigger(self) -> str: ...


# --------------------------------------------------------------------------------------------
# The model both formats are written from
# --------------------------------------------------------------------------------------------


@attrs.frozen
class _Edge:
    source: str
    dest: str
    trigger: str
    guards: tuple[str, ...]
    local: bool
    taken: int = 0
    in_table: bool = True


@attrs.frozen
class _Drawing:
    title: str
    states: tuple[str, ...]
    terminal: frozenset[str]
    state_hooks: dict[str, tuple[str, ...]]
    event_hooks: tuple[str, ...]
    edges: tuple[_Edge, ...]
    trace: bool = False
    visited: frozenset[str] = frozenset()
    final_state: str | None = None
    error: str | None = None


class Drawable(Protocol):
    """What a drawing reads of a machine class (``RunMachine`` and its subclasses); its title
    is the class's ``__name__``."""

    def lifecycle_rows(self) -> tuple[lifecycle.TransitionSpec, ...]: ...

    def hooks(self) -> frozenset[str]: ...


#: The title of a drawing of the shared table alone.
DEFAULT_TITLE = "RunMachine"


_SERVER_EVENTS = lifecycle.LIFECYCLE_EVENTS | lifecycle.TURN_LIFECYCLE_EVENTS

#: The tables a drawing may be of: an Assistants run's, an agent-session turn's.
Backend = Literal["assistants", "sessions"]
BACKENDS: tuple[str, ...] = ("assistants", "sessions")


def _model(cls: Drawable | None, omit: Iterable[str] = (), backend: str = "assistants") -> _Drawing:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    left_out = frozenset(omit)
    if backend == "sessions":
        table = lifecycle.TURN_TRANSITIONS
        base = lifecycle.TURN_STATES
    else:
        table = lifecycle.TRANSITIONS if cls is None else cls.lifecycle_rows()
        base = lifecycle.STATES
    rows = [row for row in table if row.trigger not in left_out]
    states = list(base)
    for row in rows:
        for name in (row.source, row.dest):
            if name not in states:
                states.append(name)
    hooks = frozenset() if cls is None else cls.hooks()
    state_hooks: dict[str, tuple[str, ...]] = {}
    for state in states:
        names = tuple(
            f"on_{edge}_{state}" for edge in ("enter", "exit") if f"on_{edge}_{state}" in hooks
        )
        if names:
            state_hooks[state] = names
    state_hook_names = {name for names in state_hooks.values() for name in names}
    event_hooks = tuple(sorted(h for h in hooks if h not in state_hook_names))
    edges = tuple(
        _Edge(
            row.source,
            row.dest,
            row.trigger,
            row.guards,
            local=row.trigger not in _SERVER_EVENTS,
        )
        for row in rows
    )
    return _Drawing(
        title=getattr(cls, "__name__", DEFAULT_TITLE)
        + (" (agent-session turn)" if backend == "sessions" else ""),
        states=tuple(states),
        terminal=frozenset(s for s in states if s in lifecycle.TERMINAL_STATES),
        state_hooks=state_hooks,
        event_hooks=event_hooks,
        edges=edges,
    )


def _with_trace(
    drawing: _Drawing,
    history: Iterable[_Step],
    final_state: str,
    error: str | None,
    noun: str = "run",
) -> _Drawing:
    taken = Counter((step.source, step.trigger, step.dest) for step in history)
    states = list(drawing.states)
    edges: list[_Edge] = []
    for edge in drawing.edges:
        key = (edge.source, edge.trigger, edge.dest)
        # Two rows with the same key cannot both have been taken apart; count the first one.
        edges.append(attrs.evolve(edge, taken=taken.pop(key, 0)))
    # A step the table does not have (a subclass's row drawn with the base table) is still shown.
    for (source, trigger, dest), count in taken.items():
        for name in (source, dest):
            if name not in states:
                states.append(name)
        edges.append(
            _Edge(
                source,
                dest,
                trigger,
                (),
                local=trigger not in lifecycle.LIFECYCLE_EVENTS,
                taken=count,
                in_table=False,
            )
        )
    if final_state not in states:
        states.append(final_state)
    visited = {e.source for e in edges if e.taken} | {e.dest for e in edges if e.taken}
    visited.add(final_state)
    return attrs.evolve(
        drawing,
        title=f"{drawing.title}, one {noun}",
        states=tuple(states),
        edges=tuple(edges),
        trace=True,
        visited=frozenset(visited),
        final_state=final_state,
        error=error,
    )


# --------------------------------------------------------------------------------------------
# Mermaid
# --------------------------------------------------------------------------------------------

_MERMAID_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words mermaid's state-diagram lexer reads as keywords when they stand alone as an id.
_MERMAID_RESERVED = frozenset(
    {"state", "note", "direction", "class", "classDef", "style", "end", "as", "left", "right", "of"}
)


def _mermaid_ids(states: Sequence[str]) -> dict[str, str]:
    ids: dict[str, str] = {}
    used: set[str] = set()
    for state in states:
        base = re.sub(r"[^A-Za-z0-9_]", "_", state)
        if not base or not (base[0].isalpha() or base[0] == "_") or base in _MERMAID_RESERVED:
            base = f"s_{base}"
        ident, n = base, 1
        while ident in used:
            n += 1
            ident = f"{base}_{n}"
        used.add(ident)
        ids[state] = ident
    return ids


def _mermaid_text(text: str) -> str:
    """Text that is safe on a mermaid label line: no line breaks, no statement separators, no
    entity or markup characters."""
    text = " ".join(text.split())
    return re.sub(r"[;:#{}<>\"`|%]", " ", text).strip() or "-"


def _edge_label(edge: _Edge, trace: bool) -> str:
    parts = [edge.trigger, *(f"[{g}]" for g in edge.guards)]
    if trace and edge.taken:
        parts.append(f"×{edge.taken}")
    return " ".join(parts)


def _to_mermaid(d: _Drawing) -> str:
    ids = _mermaid_ids(d.states)
    lines = [
        "---",
        f"title: {_mermaid_text(d.title)}",
        "---",
        "stateDiagram-v2",
        "    direction LR",
    ]
    for state in d.states:
        if ids[state] != state:
            lines.append(f'    state "{_mermaid_text(state)}" as {ids[state]}')
    for state in d.states:
        for hook in d.state_hooks.get(state, ()):
            lines.append(f"    {ids[state]} : {hook}")
    lines.append(f"    [*] --> {ids[lifecycle.INITIAL_STATE]}")
    for edge in d.edges:
        lines.append(
            f"    {ids[edge.source]} --> {ids[edge.dest]} : "
            f"{_mermaid_text(_edge_label(edge, d.trace))}"
        )
    for state in d.states:
        if state in d.terminal:
            lines.append(f"    {ids[state]} --> [*]")
    if d.event_hooks:
        anchor = ids[lifecycle.IN_PROGRESS]
        lines.append(
            f"    note right of {anchor} : event hooks, on stream content - "
            + _mermaid_text(", ".join(d.event_hooks))
        )
    if d.trace and d.error is not None and d.final_state is not None:
        lines.append(
            f"    note left of {ids[d.final_state]} : stopped here - {_mermaid_text(d.error)}"
        )
    lines.append("    classDef terminal fill:#f1f5f9,stroke:#475569")
    if d.trace:
        lines.append("    classDef visited fill:#dbeafe,stroke:#1d4ed8,stroke-width:2px")
        lines.append("    classDef final fill:#bbf7d0,stroke:#15803d,stroke-width:4px")
        lines.append("    classDef stopped fill:#fee2e2,stroke:#b91c1c,stroke-width:4px")
    classes: dict[str, list[str]] = {"terminal": [], "visited": [], "final": [], "stopped": []}
    for state in d.states:
        if d.trace and state == d.final_state:
            classes["stopped" if d.error is not None else "final"].append(ids[state])
        elif d.trace and state in d.visited:
            classes["visited"].append(ids[state])
        elif state in d.terminal:
            classes["terminal"].append(ids[state])
    for name, members in classes.items():
        if members:
            lines.append(f"    class {','.join(members)} {name}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Graphviz
# --------------------------------------------------------------------------------------------


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_attrs(**attributes: str) -> str:
    return "[" + ", ".join(f"{k}={_dot_quote(v)}" for k, v in attributes.items()) + "]"


_SERVER_COLOR = "#334155"
_LOCAL_COLOR = "#7c3aed"
_FAINT = "#cbd5e1"
_TAKEN = "#1d4ed8"


def _node_attrs(d: _Drawing, state: str) -> dict[str, str]:
    label_lines = [state, *(f"▸ {hook}" for hook in d.state_hooks.get(state, ()))]
    a: dict[str, str] = {"label": "\n".join(label_lines), "id": f"state_{state}"}
    if state == lifecycle.INITIAL_STATE:
        a["penwidth"] = "2"
    if state in d.terminal:
        a["fillcolor"] = "#f1f5f9"
        a["peripheries"] = "2"
    if d.trace:
        # Marks of a trace go in ``xlabel``s, which Graphviz places after the layout, so that
        # a trace keeps the lifecycle's layout exactly.
        if state == d.final_state:
            stopped = d.error is not None
            a["fillcolor"] = "#fee2e2" if stopped else "#bbf7d0"
            a["color"] = "#b91c1c" if stopped else "#15803d"
            a["penwidth"] = "3"
            a["xlabel"] = (
                "\n".join(textwrap.wrap(f"stopped here: {d.error}", 40))
                if d.error is not None
                else "final state"
            )
            a["fontcolor"] = "#7f1d1d" if stopped else "#14532d"
        elif state in d.visited:
            a["fillcolor"] = "#dbeafe"
            a["color"] = _TAKEN
            a["penwidth"] = "2"
        else:
            a["color"] = _FAINT
            a["fontcolor"] = "#94a3b8"
    return a


def _edge_attrs(d: _Drawing, index: int, edge: _Edge) -> dict[str, str]:
    label = "\n".join([edge.trigger, *(f"[{g}]" for g in edge.guards)])
    color = _LOCAL_COLOR if edge.local else _SERVER_COLOR
    a: dict[str, str] = {"label": label, "id": f"edge_{index}", "color": color, "fontcolor": color}
    if edge.local:
        a["style"] = "dashed"
    if edge.trigger == lifecycle.ADOPT:
        # ``adopt`` leaves ``pending`` for almost every state; those rows must not rank the
        # layout, and leaving from below keeps their fan apart from the run's ordinary path.
        a["constraint"] = "false"
        a["tailport"] = "s"
        a["color"] = a["fontcolor"] = "#a78bfa"
    if d.trace:
        if edge.taken:
            a["headlabel"] = f"×{edge.taken}"
            a["labelfontcolor"] = _TAKEN
            a["labelfontsize"] = "13"
            a["color"] = a["fontcolor"] = _TAKEN
            a["penwidth"] = "3"
        else:
            a["color"] = a["fontcolor"] = _FAINT
    return a


def _to_dot(d: _Drawing) -> str:
    title = d.title
    if d.event_hooks:
        title += "\nevent hooks, called on stream content: " + ", ".join(d.event_hooks)
    lines = [
        f"digraph {_dot_quote(d.title)} {{",
        "    "
        + "graph "
        + _dot_attrs(
            rankdir="LR",
            label=title,
            labelloc="t",
            fontname="Helvetica",
            fontsize="16",
            nodesep="0.6",
            newrank="true",
            ranksep="0.9",
        )
        + ";",
        "    node "
        + _dot_attrs(
            shape="box",
            style="rounded,filled",
            fillcolor="white",
            fontname="Helvetica",
            fontsize="12",
        )
        + ";",
        "    edge " + _dot_attrs(fontname="Helvetica", fontsize="9", arrowsize="0.7") + ";",
    ]
    live = [s for s in d.states if s not in d.terminal]
    for state in live:
        lines.append(f"    {_dot_quote(state)} {_dot_attrs(**_node_attrs(d, state))};")
    lines.append("    subgraph cluster_terminal {")
    lines.append(
        "        graph "
        + _dot_attrs(label="terminal states", style="rounded,dashed", color="#94a3b8")
        + ";"
    )
    for state in d.states:
        if state in d.terminal:
            lines.append(f"        {_dot_quote(state)} {_dot_attrs(**_node_attrs(d, state))};")
    lines.append("    }")
    for index, edge in enumerate(d.edges):
        lines.append(
            f"    {_dot_quote(edge.source)} -> {_dot_quote(edge.dest)} "
            f"{_dot_attrs(**_edge_attrs(d, index, edge))};"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def require_graphviz(format: str) -> str:
    """The path of Graphviz's ``dot`` program, which ``format`` needs; ``GraphvizNotFound``
    (with the install command) when it is not on ``PATH``. Callers check this before any work,
    so a missing Graphviz is reported first, not after a run."""
    executable = shutil.which("dot")
    if executable is None:
        raise GraphvizNotFound(format)
    return executable


def _render(dot_text: str, format: str) -> bytes:
    executable = require_graphviz(format)
    done = subprocess.run(
        [executable, f"-T{format}"], input=dot_text.encode(), capture_output=True, check=False
    )
    if done.returncode != 0:
        raise RunMachineError(
            f"Graphviz's dot failed to render {format!r}: {done.stderr.decode(errors='replace')}"
        )
    return done.stdout


def _output(d: _Drawing, format: str) -> str | bytes:
    if format == "mermaid":
        return _to_mermaid(d)
    if format == "dot":
        return _to_dot(d)
    if format == "svg":
        return _render(_to_dot(d), "svg").decode()
    if format == "png":
        return _render(_to_dot(d), "png")
    raise ValueError(f"unknown diagram format {format!r}; choose one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------------------------
# Public
# --------------------------------------------------------------------------------------------


def draw_lifecycle(
    cls: Drawable | None = None,
    format: str = "mermaid",
    *,
    omit: Iterable[str] = (),
    backend: Backend = "assistants",
) -> str | bytes:
    """Draw the lifecycle of ``cls`` (``RunMachine`` when omitted) from its table.

    Every state and every row of ``cls.lifecycle_rows()`` appears once: server lifecycle events
    as solid edges, local triggers (``submit_tool_outputs``, ``cancel``, ``adopt``) dashed, each
    labelled with its trigger and its guards in brackets. The hooks ``cls`` defines are written on
    the states they run in; event hooks (``on_text_delta`` and friends) in the title.

    ``omit`` leaves out the rows of the named triggers, e.g. ``omit=("adopt",)`` for a smaller
    picture without the edges a resumed run may take from ``pending`` into any state.
    ``backend="sessions"`` draws an agent-session turn's table instead of a run's.

    Returns text for ``"mermaid"``, ``"dot"`` and ``"svg"``, bytes for ``"png"``. SVG and PNG need
    Graphviz's ``dot`` program and raise ``GraphvizNotFound`` without it.
    """
    _check_format(format)
    return _output(_model(cls, omit, backend), format)


def draw_trace(
    transitions: Iterable[_Step],
    *,
    final_state: str,
    error: str | None = None,
    format: str = "mermaid",
    machine: Drawable | None = None,
    backend: Backend = "assistants",
) -> str | bytes:
    """Draw the path one run took on the lifecycle diagram of ``machine`` (``RunMachine``).

    ``transitions`` is the run's history (``RunMachine.history`` or ``RunResult.transitions``).
    Visited states are filled, taken transitions drawn bold with how many times each was taken
    (``×2``), the final state marked; with ``error``, a note at ``final_state`` says why the run
    stopped there.
    """
    _check_format(format)
    noun = "turn" if backend == "sessions" else "run"
    drawing = _with_trace(_model(machine, (), backend), transitions, final_state, error, noun)
    return _output(drawing, format)


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"unknown diagram format {format!r}; choose one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------------------------
# The repository's diagrams/ folder
# --------------------------------------------------------------------------------------------


#: The lifecycle events and local triggers of a run with two tool rounds, in order.
_TWO_ROUNDS: tuple[str, ...] = (
    lifecycle.RUN_CREATED,
    lifecycle.RUN_IN_PROGRESS,
    lifecycle.RUN_REQUIRES_ACTION,
    lifecycle.SUBMIT,
    lifecycle.RUN_QUEUED,
    lifecycle.RUN_IN_PROGRESS,
    lifecycle.RUN_REQUIRES_ACTION,
    lifecycle.SUBMIT,
    lifecycle.RUN_QUEUED,
    lifecycle.RUN_IN_PROGRESS,
    lifecycle.RUN_COMPLETED,
)


def example_history(triggers: Sequence[str] = _TWO_ROUNDS) -> tuple[TransitionRecord, ...]:
    """Walk the table from the initial state through ``triggers`` (a run with two tool rounds
    by default); raises ``ValueError`` if the table does not allow a step. The records carry no
    run id and time 0, so that drawings made from them never change."""
    state = lifecycle.INITIAL_STATE
    steps = []
    for trigger in triggers:
        dests = [
            r.dest for r in lifecycle.TRANSITIONS if r.source == state and r.trigger == trigger
        ]
        if len(dests) != 1:
            raise ValueError(f"the table has no single {trigger!r} transition from {state!r}")
        steps.append(TransitionRecord(state, dests[0], trigger, run_id=None, at=0.0))
        state = dests[0]
    return tuple(steps)


def generated_files() -> dict[str, str]:
    """The files of the repository's ``diagrams/`` folder, by name, as this code draws them."""
    history = example_history()
    final = history[-1].dest
    return {
        "lifecycle.mmd": str(draw_lifecycle(format="mermaid")),
        "lifecycle.dot": str(draw_lifecycle(format="dot")),
        "lifecycle.svg": str(draw_lifecycle(format="svg")),
        "trace-two-rounds.mmd": str(draw_trace(history, final_state=final, format="mermaid")),
        "trace-two-rounds.svg": str(draw_trace(history, final_state=final, format="svg")),
        "turn-lifecycle.mmd": str(draw_lifecycle(format="mermaid", backend="sessions")),
        "turn-lifecycle.svg": str(draw_lifecycle(format="svg", backend="sessions")),
    }


README_START = "<!-- lifecycle-diagram:start -->"
README_END = "<!-- lifecycle-diagram:end -->"


def readme_block(mermaid: str | None = None) -> str:
    """The README's text between its lifecycle-diagram markers, markers included."""
    text = mermaid if mermaid is not None else str(draw_lifecycle(format="mermaid"))
    return f"{README_START}\n```mermaid\n{text}```\n{README_END}"


def write_generated_files(directory: Path, readme: Path | None = None) -> list[Path]:
    """Write ``generated_files()`` into ``directory`` and, if given, refresh ``readme``'s block."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    files = generated_files()
    for name, text in files.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    if readme is not None:
        content = readme.read_text(encoding="utf-8")
        block = readme_block(files["lifecycle.mmd"])
        start, end = content.find(README_START), content.find(README_END)
        if start == -1 or end == -1:
            content = content.rstrip("\n") + "\n\n" + block + "\n"
        else:
            content = content[:start] + block + content[end + len(README_END) :]
        readme.write_text(content, encoding="utf-8")
        written.append(readme)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m runmachine.diagrams [DIR] [--readme README.md]``: regenerate ``diagrams/``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m runmachine.diagrams")
    parser.add_argument("directory", nargs="?", default="diagrams", type=Path)
    parser.add_argument("--readme", type=Path, default=None)
    args = parser.parse_args(argv)
    for path in write_generated_files(args.directory, args.readme):
        print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
