"""State diagrams drawn from the lifecycle table, so that the picture cannot drift from the code.

Everything here reads a table: ``runmachine.lifecycle.TRANSITIONS`` by default, or a machine
class's ``lifecycle_rows()`` (the shared table plus a subclass's ``extra_transitions``) and its
``hooks()``; it keeps no list of states or transitions of its own, and imports nothing above the
records layer (a machine class is read through the ``Drawable`` protocol). Two views:

- ``detail="readable"`` (the default): a statechart. The active states (``lifecycle.ACTIVE_STATES``)
  are drawn inside one composite state and the terminal states inside another; a rule the table
  has for every active state (``thread.run.failed`` to ``failed`` from each of them, say) is one
  arrow from the composite, and arrows between the same two states are one arrow listing their
  triggers. Rows of one trigger from one state into many (``adopt``, which ``resume()`` takes into
  whatever state the server reports) are one note on that state. All of it is derived from the
  rows: a new row lands in the right place without a change here.
- ``detail="full"``: every state and every row of the table, one arrow each.

Two drawings of each view:

- ``draw_lifecycle(cls)``: the lifecycle of ``cls``'s table, with the hooks ``cls`` defines
  written on the states they run in, and the guards on the transitions they guard.
- ``draw_trace(history)``: the same drawing with the path one run took: visited states filled,
  the states it never visited faded, taken transitions drawn bold and labelled with how often
  they were taken (``×N``; the readable view adds the step numbers, 1, 2, 3, ..., and which tool
  round each submission ended), the final state marked and, when the run stopped on an error, a
  note at the state where it stopped.

Formats: ``"mermaid"`` (``stateDiagram-v2`` text, composite states in the readable view) and
``"dot"`` (Graphviz text, clusters in the readable view) are pure Python; ``"svg"`` and ``"png"``
are rendered by Graphviz's ``dot`` program and raise ``GraphvizNotFound`` when it is not
installed. This module never changes a machine, and does no I/O except running ``dot`` and, when
run as ``python -m runmachine.diagrams [DIR]``, writing the repository's ``diagrams/`` folder.
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
    "DETAILS",
    "FORMATS",
    "Detail",
    "DiagramFormat",
    "Drawable",
    "GraphvizNotFound",
    "draw_lifecycle",
    "draw_trace",
    "example_history",
    "format_for_path",
    "generated_files",
    "generated_images",
    "readme_block",
    "require_graphviz",
    "write_generated_files",
]

DiagramFormat = Literal["mermaid", "dot", "svg", "png"]
FORMATS: tuple[str, ...] = ("mermaid", "dot", "svg", "png")
#: The views: ``"readable"``, a statechart (the default), and ``"full"``, one arrow per row.
Detail = Literal["readable", "full"]
DETAILS: tuple[str, ...] = ("readable", "full")
#: A file's extension and the format it holds (``format_for_path``).
EXTENSIONS: dict[str, str] = {
    ".mmd": "mermaid",
    ".mermaid": "mermaid",
    ".dot": "dot",
    ".gv": "dot",
    ".svg": "svg",
    ".png": "png",
}


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
class _Group:
    """States the readable view draws inside one composite state (a Graphviz cluster)."""

    name: str
    label: str
    members: tuple[str, ...]
    hint: str = ""
    """What an arrow from the composite means, written under its label."""


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
    groups: tuple[_Group, ...] = ()
    path: tuple[tuple[str, str, str], ...] = ()
    """A trace's steps in order, as (source, trigger, dest)."""


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
        active, terminal = lifecycle.TURN_ACTIVE_STATES, lifecycle.TURN_TERMINAL_STATES
    else:
        table = lifecycle.TRANSITIONS if cls is None else cls.lifecycle_rows()
        base = lifecycle.STATES
        active, terminal = lifecycle.ACTIVE_STATES, lifecycle.TERMINAL_STATES
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
        terminal=frozenset(s for s in states if s in terminal),
        state_hooks=state_hooks,
        event_hooks=event_hooks,
        edges=edges,
        groups=(
            _Group(
                "active",
                "active",
                tuple(s for s in active if s in states),
                hint="an arrow from this box leaves any of its states",
            ),
            _Group("terminal", "terminal states", tuple(s for s in states if s in terminal)),
        ),
    )


def _with_trace(
    drawing: _Drawing,
    history: Iterable[_Step],
    final_state: str,
    error: str | None,
    noun: str = "run",
) -> _Drawing:
    path = tuple((step.source, step.trigger, step.dest) for step in history)
    taken = Counter(path)
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
        path=path,
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
    lines.extend(_mermaid_classes(d, ids))
    return "\n".join(lines) + "\n"


def _mermaid_classes(d: _Drawing, ids: dict[str, str], fade: bool = False) -> list[str]:
    """The ``classDef`` and ``class`` lines: terminal states, and a trace's visited, final or
    stopped state; with ``fade``, a trace's states never visited too."""
    lines = ["    classDef terminal fill:#f1f5f9,stroke:#475569"]
    if d.trace:
        lines.append("    classDef visited fill:#dbeafe,stroke:#1d4ed8,stroke-width:2px")
        lines.append("    classDef final fill:#bbf7d0,stroke:#15803d,stroke-width:4px")
        lines.append("    classDef stopped fill:#fee2e2,stroke:#b91c1c,stroke-width:4px")
        if fade:
            lines.append("    classDef unvisited fill:#ffffff,stroke:#cbd5e1,color:#94a3b8")
    classes: dict[str, list[str]] = {
        "terminal": [],
        "visited": [],
        "final": [],
        "stopped": [],
        "unvisited": [],
    }
    for state in d.states:
        if d.trace and state == d.final_state:
            classes["stopped" if d.error is not None else "final"].append(ids[state])
        elif d.trace and state in d.visited:
            classes["visited"].append(ids[state])
        elif d.trace and fade:
            classes["unvisited"].append(ids[state])
        elif state in d.terminal:
            classes["terminal"].append(ids[state])
    lines.extend(
        f"    class {','.join(members)} {name}" for name, members in classes.items() if members
    )
    return lines


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


def _dot_head(
    name: str,
    graph: dict[str, str],
    edge: dict[str, str],
    *,
    node_fontsize: str,
    node_color: str | None = None,
) -> list[str]:
    """A digraph's first lines: its graph attributes, and the defaults of its nodes (white
    rounded boxes) and edges."""
    node = {"shape": "box", "style": "rounded,filled", "fillcolor": "white"}
    if node_color is not None:
        node["color"] = node_color
    node.update(fontname="Helvetica", fontsize=node_fontsize)
    return [
        f"digraph {_dot_quote(name)} {{",
        f"    graph {_dot_attrs(**graph)};",
        f"    node {_dot_attrs(**node)};",
        f"    edge {_dot_attrs(**edge)};",
    ]


def _to_dot(d: _Drawing) -> str:
    title = d.title
    if d.event_hooks:
        title += "\nevent hooks, called on stream content: " + ", ".join(d.event_hooks)
    lines = _dot_head(
        d.title,
        {
            "rankdir": "LR",
            "label": title,
            "labelloc": "t",
            "fontname": "Helvetica",
            "fontsize": "16",
            "nodesep": "0.6",
            "newrank": "true",
            "ranksep": "0.9",
        },
        {"fontname": "Helvetica", "fontsize": "9", "arrowsize": "0.7"},
        node_fontsize="12",
    )
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


# --------------------------------------------------------------------------------------------
# The readable view: a statechart derived from the rows
# --------------------------------------------------------------------------------------------

#: Rows of one trigger from one state into at least this many states are one note, not arrows.
_FAN_OUT = 3


@attrs.frozen
class _Line:
    """One arrow of the readable view and the rows it stands for, in table order. With
    ``group``, the arrow leaves that composite state: the table has each of its rules from every
    member of the group."""

    source: str
    dest: str
    rows: tuple[_Edge, ...]
    group: _Group | None = None
    steps: tuple[int, ...] = ()
    """The numbers of a trace's steps that took this arrow (the first step is 1)."""

    @property
    def rules(self) -> tuple[_Edge, ...]:
        """One row per (trigger, guards): what the label lists."""
        rules: dict[tuple[str, tuple[str, ...]], _Edge] = {}
        for row in self.rows:
            rules.setdefault((row.trigger, row.guards), row)
        return tuple(rules.values())

    @property
    def local(self) -> bool:
        return all(row.local for row in self.rows)


@attrs.frozen
class _Fan:
    """The rows of one trigger from one state into many others: one note on ``source``."""

    source: str
    trigger: str
    rows: tuple[_Edge, ...]


def _chart(d: _Drawing) -> tuple[list[_Line], list[_Fan]]:
    """The arrows and notes of the readable view, derived from ``d``'s rows alone."""
    taken = set(d.path)
    per_trigger = Counter((e.source, e.trigger) for e in d.edges if e.in_table)
    fans: dict[tuple[str, str], list[_Edge]] = {}
    rows: list[_Edge] = []
    for edge in d.edges:
        if edge.in_table and per_trigger[(edge.source, edge.trigger)] >= _FAN_OUT:
            fans.setdefault((edge.source, edge.trigger), []).append(edge)
            # A trace still draws the one row of the fan it took.
            if (edge.source, edge.trigger, edge.dest) not in taken:
                continue
        rows.append(edge)
    # A rule (trigger and guards, to a state outside the group) that the table has from every
    # state of a group is drawn once, from the group.
    from_group: dict[int, _Group] = {}
    for group in d.groups:
        members = set(group.members)
        if len(members) < 2:
            continue
        rules: dict[tuple[str, tuple[str, ...], str], list[int]] = {}
        for index, row in enumerate(rows):
            if index in from_group or not row.in_table:
                continue
            if row.source in members and row.dest not in members:
                rules.setdefault((row.trigger, row.guards, row.dest), []).append(index)
        for indices in rules.values():
            if {rows[i].source for i in indices} == members:
                from_group.update(dict.fromkeys(indices, group))
    # Rows between the same two ends are one arrow; the server's events and the client's own
    # triggers stay apart (solid and dashed).
    merged: dict[tuple[str, str, bool, bool], list[_Edge]] = {}
    group_of: dict[tuple[str, str, bool, bool], _Group] = {}
    where: dict[tuple[str, str, str], tuple[str, str, bool, bool]] = {}
    for index, row in enumerate(rows):
        owner = from_group.get(index)
        source = row.source if owner is None else owner.name
        key = (source, row.dest, owner is not None, row.local)
        merged.setdefault(key, []).append(row)
        if owner is not None:
            group_of[key] = owner
        where.setdefault((row.source, row.trigger, row.dest), key)
    steps: dict[tuple[str, str, bool, bool], list[int]] = {}
    for number, step in enumerate(d.path, start=1):
        steps.setdefault(where[step], []).append(number)
    lines = [
        _Line(key[0], key[1], tuple(members), group_of.get(key), tuple(steps.get(key, ())))
        for key, members in merged.items()
    ]
    return lines, [_Fan(source, trigger, tuple(e)) for (source, trigger), e in fans.items()]


def _fan_text(d: _Drawing, fan: _Fan) -> str:
    """``adopt [run status is ‹state›] - resume() enters the state the server reports (queued,
    in_progress, requires_action, cancelling or any of the terminal states)``."""
    dests = [row.dest for row in fan.rows]
    whole = [g for g in d.groups if len(g.members) > 1 and set(g.members) <= set(dests)]
    covered = {member for group in whole for member in group.members}
    listed = [dest for dest in dests if dest not in covered]
    listed += [
        "any of the " + (g.label if g.label.endswith(" states") else f"{g.label} states")
        for g in whole
    ]
    into = ", ".join(listed[:-1]) + (" or " if len(listed) > 1 else "") + listed[-1]
    guards = [row.guards for row in fan.rows]
    prefix = _shared_parts([g[0] for g in guards], "_") if all(len(g) == 1 for g in guards) else ""
    if prefix and all(g[0] == prefix + dest for g, dest in zip(guards, dests, strict=True)):
        guard = " " + _guard_text([f"{prefix}‹state›"])
    else:
        guard = " [guarded]" if any(guards) else ""
    return f"{fan.trigger}{guard} - {_FAN_CALLER.get(fan.trigger, 'into one of')} ({into})"


def _guard_text(guards: Sequence[str]) -> str:
    """``[outputs match required calls and round not submitted before]``: a UML guard, in words."""
    return "[" + " and ".join(g.replace("_", " ") for g in guards) + "]"


#: What a fan-out trigger does, as its note says it.
_FAN_CALLER: dict[str, str] = {lifecycle.ADOPT: "resume() enters the state the server reports"}


def _rounds(d: _Drawing) -> dict[int, int]:
    """Step number -> tool round, for the steps of a trace that submitted a round's outputs."""
    rounds: dict[int, int] = {}
    for number, (_, trigger, _) in enumerate(d.path, start=1):
        if trigger == lifecycle.SUBMIT:
            rounds[number] = len(rounds) + 1
    return rounds


def _steps_text(steps: Sequence[int], rounds: dict[int, int]) -> str:
    """``×3 (steps 2, 6, 10)``; a submission says which round it ended."""
    if any(n in rounds for n in steps):
        listed = ", ".join(
            f"round {rounds[n]} at step {n}" if n in rounds else f"step {n}" for n in steps
        )
    else:
        listed = ("step " if len(steps) == 1 else "steps ") + ", ".join(str(n) for n in steps)
    return f"×{len(steps)} ({listed})"


def _end_text(d: _Drawing, rounds: dict[int, int], where: bool = True) -> str:
    """``final state, after 11 steps and 2 tool rounds``; without ``where``, ``11 steps and 2
    tool rounds, ended in completed``."""
    steps = len(d.path)
    count = f"{steps} step{'s' if steps != 1 else ''}"
    if rounds:
        count += f" and {len(rounds)} tool round{'s' if len(rounds) != 1 else ''}"
    if not where:
        verb = "stopped in" if d.error is not None else "ended in"
        return f"{count}, {verb} {d.final_state}"
    if d.error is not None:
        return f"stopped here after {count}: {d.error}"
    return f"final state, after {count}"


def _chart_mermaid(d: _Drawing) -> str:
    lines_, fans = _chart(d)
    rounds = _rounds(d)
    ids = _mermaid_ids(d.states)
    used = set(ids.values())
    group_ids: dict[str, str] = {}
    for group in d.groups:
        ident, n = f"{group.name}_states", 1
        while ident in used:
            n += 1
            ident = f"{group.name}_states_{n}"
        used.add(ident)
        group_ids[group.name] = ident
    shown = [group for group in d.groups if group.members]
    home = {member: group.name for group in shown for member in group.members}

    def label(line: _Line) -> str:
        text = " or ".join(
            " ".join([rule.trigger, *([_guard_text(rule.guards)] if rule.guards else [])])
            for rule in line.rules
        )
        if d.trace and line.steps:
            text += " " + _steps_text(line.steps, rounds)
        return _mermaid_text(text)

    def inside(line: _Line) -> str | None:
        if line.group is None and home.get(line.source) == home.get(line.dest):
            return home.get(line.source)
        return None

    notes: list[tuple[str, str, str]] = [(fan.source, "right", _fan_text(d, fan)) for fan in fans]
    if d.event_hooks:
        notes.append(
            (
                lifecycle.IN_PROGRESS,
                "right",
                "event hooks, on stream content - " + ", ".join(d.event_hooks),
            )
        )
    if d.trace and d.final_state is not None:
        notes.append((d.final_state, "left", _end_text(d, rounds)))

    def state_lines(state: str, indent: str) -> list[str]:
        found = (
            [f'{indent}state "{_mermaid_text(state)}" as {ids[state]}']
            if ids[state] != state
            else []
        )
        if home.get(state) is not None and not found:
            found.append(f"{indent}{ids[state]}")
        found.extend(f"{indent}{ids[state]} : {hook}" for hook in d.state_hooks.get(state, ()))
        return found

    out = ["---", f"title: {_mermaid_text(d.title)}", "---", "stateDiagram-v2", "    direction TB"]
    for state in d.states:
        if state not in home:
            out.extend(state_lines(state, "    "))
    out.append(f"    [*] --> {ids[lifecycle.INITIAL_STATE]}")
    for group in shown:
        label_text = group.label + (f" - {group.hint}" if group.hint else "")
        out.append(f'    state "{_mermaid_text(label_text)}" as {group_ids[group.name]} {{')
        for member in group.members:
            out.extend(state_lines(member, "        "))
        for line in lines_:
            if inside(line) == group.name:
                out.append(f"        {ids[line.source]} --> {ids[line.dest]} : {label(line)}")
        for anchor, side, text in notes:
            if home.get(anchor) == group.name:
                out.append(f"        note {side} of {ids[anchor]} : {_mermaid_text(text)}")
        out.append("    }")
    for line in lines_:
        if inside(line) is None:
            source = group_ids[line.group.name] if line.group is not None else ids[line.source]
            out.append(f"    {source} --> {ids[line.dest]} : {label(line)}")
    for group in shown:
        if all(member in d.terminal for member in group.members):
            out.append(f"    {group_ids[group.name]} --> [*]")
    for state in d.states:
        if state in d.terminal and state not in home:
            out.append(f"    {ids[state]} --> [*]")
    for anchor, side, text in notes:
        if anchor not in home:
            out.append(f"    note {side} of {ids[anchor]} : {_mermaid_text(text)}")
    out.extend(_mermaid_classes(d, ids, fade=True))
    return "\n".join(out) + "\n"


_NOTE_FILL = "#fef9c3"
_NOTE_LINE = "#a16207"


def _chart_node_attrs(d: _Drawing, state: str) -> dict[str, str]:
    a = _node_attrs(d, state)
    if d.trace and state == d.final_state:
        a["penwidth"] = "4"
    elif d.trace and state not in d.visited:
        a["fillcolor"] = "white"
        a["style"] = "rounded,filled,dashed"
    return a


def _event_scope(d: _Drawing) -> str:
    """The dotted prefix that every server event of the drawing shares (``thread.run.``)."""
    return _shared_parts([edge.trigger for edge in d.edges if not edge.local], ".")


def _shared_parts(names: Sequence[str], sep: str) -> str:
    """The leading ``sep``-separated parts all ``names`` share, each followed by ``sep``:
    ``thread.run.`` of ``thread.run.failed`` and ``thread.run.queued``."""
    split = [name.split(sep)[:-1] for name in names]
    shared = split[0] if split else []
    for parts in split[1:]:
        size = 0
        while size < min(len(shared), len(parts)) and shared[size] == parts[size]:
            size += 1
        shared = shared[:size]
    return "".join(f"{part}{sep}" for part in shared)


def _chart_label(
    d: _Drawing, rules: Sequence[_Edge], steps: Sequence[int], rounds: dict[int, int], scope: str
) -> str:
    parts: list[str] = []
    for number, rule in enumerate(rules):
        # The prefix every server event shares (``thread.run.``) is written once, in the title.
        name = rule.trigger if rule.local else rule.trigger.removeprefix(scope)
        parts.append(("or " if number else "") + name)
        if rule.guards:
            parts.extend(textwrap.wrap(_guard_text(rule.guards), 24))
    if d.trace and steps:
        parts.extend(textwrap.wrap(_steps_text(steps, rounds), 22))
    return "\n".join(parts)


def _chart_tooltip(line: _Line) -> str:
    source = f"any {line.group.label} state" if line.group is not None else line.source
    rules = " or ".join(
        " ".join([rule.trigger, *([_guard_text(rule.guards)] if rule.guards else [])])
        for rule in line.rules
    )
    return f"{source} -> {line.dest}: {rules}"


def _line_attrs(d: _Drawing, local: bool, taken: bool) -> dict[str, str]:
    color = _LOCAL_COLOR if local else _SERVER_COLOR
    a = {"color": color, "fontcolor": color}
    if local:
        a["style"] = "dashed"
    if d.trace:
        if taken:
            a["color"] = a["fontcolor"] = _TAKEN
            a["penwidth"] = "3"
        else:
            a["color"] = _FAINT
            a["fontcolor"] = "#94a3b8"
    return a


#: Arrows with one label into one state from at least this many states meet in a junction.
_JUNCTION = 3


def _junctions(d: _Drawing, lines: Sequence[_Line]) -> dict[int, int]:
    """Line index -> junction: arrows with the same label into the same state, from several
    states, meet in one point (a UML junction) and go on as one labelled arrow."""
    home = {member: group.name for group in d.groups for member in group.members}

    def inside(line: _Line) -> str | None:
        return line.group.name if line.group is not None else home.get(line.source)

    together: dict[tuple[str, bool, tuple[tuple[str, tuple[str, ...]], ...]], list[int]] = {}
    for index, line in enumerate(lines):
        rules = tuple((rule.trigger, rule.guards) for rule in line.rules)
        together.setdefault((line.dest, line.local, rules), []).append(index)
    found: dict[int, int] = {}
    for indices in together.values():
        dest_home = home.get(lines[indices[0]].dest)
        if len(indices) < _JUNCTION or all(inside(lines[i]) == dest_home for i in indices):
            continue
        found.update(dict.fromkeys(indices, len(set(found.values()))))
    return found


def _chart_dot(d: _Drawing) -> str:
    lines_, fans = _chart(d)
    rounds = _rounds(d)
    scope = _event_scope(d)
    title = d.title
    if d.trace:
        title += "\n" + _end_text(d, rounds, where=False)
    title += f"\nsolid arrows: the server's events{f', {scope}‹event›' if scope else ''}"
    title += "\ndashed: the client's own triggers"
    if d.event_hooks:
        title += "\nevent hooks, called on stream content: " + ", ".join(d.event_hooks)
    out = _dot_head(
        d.title,
        {
            "rankdir": "TB",
            "compound": "true",
            "newrank": "true",
            "label": title,
            "labelloc": "t",
            "fontname": "Helvetica",
            "fontsize": "18",
            "nodesep": "0.2",
            "ranksep": "0.45",
        },
        {"fontname": "Helvetica", "fontsize": "16", "arrowsize": "0.8"},
        node_fontsize="16",
        node_color=_SERVER_COLOR,
    )
    home = {member for group in d.groups for member in group.members}
    for state in d.states:
        if state not in home:
            out.append(f"    {_dot_quote(state)} {_dot_attrs(**_chart_node_attrs(d, state))};")
    for index, fan in enumerate(fans):
        note = _dot_attrs(
            label="\n".join(textwrap.wrap(_fan_text(d, fan), 34)),
            id=f"note_{index}",
            shape="note",
            style="filled",
            fillcolor=_NOTE_FILL,
            color=_NOTE_LINE,
            fontcolor="#422006",
            fontsize="16",
        )
        out.append(f"    {_dot_quote(f'note_{index}')} {note};")
    for group in d.groups:
        if not group.members:
            continue
        terminal = all(member in d.terminal for member in group.members)
        out.append(f"    subgraph {_dot_quote(f'cluster_{group.name}')} {{")
        # Lines ended by ``\l``: the label stands at the box's left, clear of arrows entering it.
        text = [group.label, *textwrap.wrap(f"({group.hint})", 26)] if group.hint else [group.label]
        label = _dot_quote("\n".join(text))
        label = label[:-1].replace("\\n", "\\l") + '\\l"'
        cluster = (
            "[label="
            + label
            + ", "
            + _dot_attrs(
                id=f"group_{group.name}",
                style="rounded,dashed" if terminal else "rounded,filled",
                fillcolor="white" if terminal else "#eff6ff",
                color="#94a3b8" if terminal else "#60a5fa",
                fontcolor="#475569" if terminal else "#1e3a8a",
                fontname="Helvetica",
                fontsize="16",
                labeljust="l",
                **({"rank": "same", "labelloc": "b"} if terminal else {}),
            ).removeprefix("[")
        )
        out.append(f"        graph {cluster};")
        for member in group.members:
            out.append(
                f"        {_dot_quote(member)} {_dot_attrs(**_chart_node_attrs(d, member))};"
            )
        out.append("    }")
    # A fan's note stands above its state, tied to it by a dotted line.
    for index, fan in enumerate(fans):
        out.append(
            f"    {_dot_quote(f'note_{index}')} -> {_dot_quote(fan.source)} "
            + _dot_attrs(id=f"note_edge_{index}", style="dotted", dir="none", color=_NOTE_LINE)
            + ";"
        )
    junctions = _junctions(d, lines_)
    for number in sorted(set(junctions.values())):
        members = [lines_[i] for i, n in junctions.items() if n == number]
        steps = sorted(step for line in members for step in line.steps)
        first = members[0]
        point = f"junction_{number}"
        attrs_ = _line_attrs(d, first.local, bool(steps))
        out.append(
            f"    {_dot_quote(point)} "
            + _dot_attrs(
                shape="point",
                width="0.12",
                label="",
                id=point,
                style="filled",
                color=attrs_["color"],
                fillcolor=attrs_["color"],
            )
            + ";"
        )
        out.append(
            f"    {_dot_quote(point)} -> {_dot_quote(first.dest)} "
            + _dot_attrs(
                label=_chart_label(d, first.rules, steps, rounds, scope),
                id=f"{point}_out",
                tooltip=f"-> {first.dest}",
                **attrs_,
            )
            + ";"
        )
    for index, line in enumerate(lines_):
        tail = line.group.members[-1] if line.group is not None else line.source
        a = _line_attrs(d, line.local, bool(line.steps))
        a["id"] = f"edge_{index}"
        a["tooltip"] = _chart_tooltip(line)
        if line.group is not None:
            a["ltail"] = f"cluster_{line.group.name}"
        if index in junctions:
            head = f"junction_{junctions[index]}"
            a["arrowhead"] = "none"
        else:
            head = line.dest
            a["label"] = _chart_label(d, line.rules, line.steps, rounds, scope)
        out.append(f"    {_dot_quote(tail)} -> {_dot_quote(head)} {_dot_attrs(**a)};")
    out.append("}")
    return "\n".join(out) + "\n"


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


def _output(d: _Drawing, format: str, detail: str = "readable") -> str | bytes:
    full = detail == "full"
    if format == "mermaid":
        return _to_mermaid(d) if full else _chart_mermaid(d)
    dot = _to_dot(d) if full else _chart_dot(d)
    if format == "dot":
        return dot
    if format == "svg":
        return _render(dot, "svg").decode()
    if format == "png":
        return _render(dot, "png")
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
    detail: Detail = "readable",
) -> str | bytes:
    """Draw the lifecycle of ``cls`` (``RunMachine`` when omitted) from its table.

    Every state and every row of ``cls.lifecycle_rows()`` is drawn: server lifecycle events as
    solid edges, local triggers (``submit_tool_outputs``, ``cancel``, ``adopt``) dashed, each
    labelled with its trigger and its guards in brackets. The hooks ``cls`` defines are written on
    the states they run in; event hooks (``on_text_delta`` and friends) in the title.

    ``detail="readable"`` (the default) draws a statechart: the active states in one composite
    state, with each rule the table has for all of them (``failed``, ``expired``, ``cancelling``)
    one arrow from it; the terminal states in another; rows between the same two states one arrow
    listing their triggers; and the ``adopt`` rows one note on ``pending``. ``detail="full"``
    draws one arrow per row.

    ``omit`` leaves out the rows of the named triggers, e.g. ``omit=("adopt",)`` for a picture
    without what a resumed run may do. ``backend="sessions"`` draws an agent-session turn's table
    instead of a run's.

    Returns text for ``"mermaid"``, ``"dot"`` and ``"svg"``, bytes for ``"png"``. SVG and PNG need
    Graphviz's ``dot`` program and raise ``GraphvizNotFound`` without it.
    """
    _check_format(format, detail)
    return _output(_model(cls, omit, backend), format, detail)


def draw_trace(
    transitions: Iterable[_Step],
    *,
    final_state: str,
    error: str | None = None,
    format: str = "mermaid",
    machine: Drawable | None = None,
    backend: Backend = "assistants",
    detail: Detail = "readable",
) -> str | bytes:
    """Draw the path one run took on the lifecycle diagram of ``machine`` (``RunMachine``).

    ``transitions`` is the run's history (``RunMachine.history`` or ``RunResult.transitions``).
    Visited states are filled and the others faded, taken transitions drawn bold with how many
    times each was taken (``×2``), the final state marked; with ``error``, a note at
    ``final_state`` says why the run stopped there. The readable view (the default) also numbers
    the steps on the arrows in the order the run took them (``×2 (steps 3, 7)``), says which tool
    round each submission ended, and how many steps and rounds the run took in all.
    """
    _check_format(format, detail)
    noun = "turn" if backend == "sessions" else "run"
    drawing = _with_trace(_model(machine, (), backend), transitions, final_state, error, noun)
    return _output(drawing, format, detail)


def _check_format(format: str, detail: str = "readable") -> None:
    if format not in FORMATS:
        raise ValueError(f"unknown diagram format {format!r}; choose one of {', '.join(FORMATS)}")
    if detail not in DETAILS:
        raise ValueError(f"unknown diagram detail {detail!r}; choose one of {', '.join(DETAILS)}")


def format_for_path(path: str | Path) -> str:
    """The format a file's extension names (``.mmd``/``.mermaid``, ``.dot``/``.gv``, ``.svg``,
    ``.png``); ``ValueError`` for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        raise ValueError(
            f"cannot tell the diagram format from {str(path)!r}: "
            f"give a file ending in {', '.join(EXTENSIONS)}, or --format"
        )
    return EXTENSIONS[suffix]


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
    """The text files of the repository's ``diagrams/`` folder, by name, as this code draws them
    (the readable view; ``lifecycle-full.mmd`` is the every-row one)."""
    history = example_history()
    final = history[-1].dest
    return {
        "lifecycle.mmd": str(draw_lifecycle(format="mermaid")),
        "lifecycle.dot": str(draw_lifecycle(format="dot")),
        "lifecycle.svg": str(draw_lifecycle(format="svg")),
        "lifecycle-full.mmd": str(draw_lifecycle(format="mermaid", detail="full")),
        "trace-two-rounds.mmd": str(draw_trace(history, final_state=final, format="mermaid")),
        "trace-two-rounds.svg": str(draw_trace(history, final_state=final, format="svg")),
        "turn-lifecycle.mmd": str(draw_lifecycle(format="mermaid", backend="sessions")),
        "turn-lifecycle.svg": str(draw_lifecycle(format="svg", backend="sessions")),
    }


def generated_images() -> dict[str, bytes]:
    """The PNG files of ``diagrams/``: the readable lifecycle, trace and turn lifecycle. Their
    bytes depend on the Graphviz build and its fonts, so they are written by ``main`` but not
    compared byte for byte."""
    history = example_history()
    drawings = {
        "lifecycle.png": draw_lifecycle(format="png"),
        "trace-two-rounds.png": draw_trace(history, final_state=history[-1].dest, format="png"),
        "turn-lifecycle.png": draw_lifecycle(format="png", backend="sessions"),
    }
    return {name: data for name, data in drawings.items() if isinstance(data, bytes)}


README_START = "<!-- lifecycle-diagram:start -->"
README_END = "<!-- lifecycle-diagram:end -->"


def readme_block(mermaid: str | None = None) -> str:
    """The README's text between its lifecycle-diagram markers, markers included."""
    text = mermaid if mermaid is not None else str(draw_lifecycle(format="mermaid"))
    return f"{README_START}\n```mermaid\n{text}```\n{README_END}"


def write_generated_files(
    directory: Path, readme: Path | None = None, *, images: bool = True
) -> list[Path]:
    """Write ``generated_files()`` (and ``generated_images()`` unless ``images=False``) into
    ``directory`` and, if given, refresh ``readme``'s block."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    files = generated_files()
    for name, text in files.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for name, data in (generated_images() if images else {}).items():
        path = directory / name
        path.write_bytes(data)
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
