"""Readers of the diagrams runmachine draws, for tests: a grammar check and parser of the
``stateDiagram-v2`` subset the mermaid output uses, a parser of the Graphviz text, and what an
SVG rendered by ``dot`` holds.

They read the text as a renderer would, so that the tests compare what a reader sees with the
lifecycle table, instead of searching the text for a few names.
"""

from __future__ import annotations

import json
import re
import struct
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field

# --------------------------------------------------------------------------------------------
# Mermaid
# --------------------------------------------------------------------------------------------

_ID = r"[A-Za-z_][A-Za-z0-9_]*"
# Label text: anything on one line except the characters that end a statement, open an entity
# (``#59;``), or read as markup in mermaid's labels.
_TEXT = r"[^;#:{}<>\"`|%\n]+"
_STATEMENTS: dict[str, re.Pattern[str]] = {
    "direction": re.compile(r"direction (?P<dir>LR|RL|TB|BT)"),
    "composite": re.compile(rf'state (?:"(?P<name>[^"\n]+)" as )?(?P<id>{_ID}) \{{'),
    "close": re.compile(r"\}"),
    "alias": re.compile(rf'state "(?P<name>[^"\n]+)" as (?P<id>{_ID})'),
    "transition": re.compile(
        rf"(?P<src>\[\*\]|{_ID}) --> (?P<dst>\[\*\]|{_ID})(?: : (?P<label>{_TEXT}))?"
    ),
    "note": re.compile(rf"note (?P<side>left|right) of (?P<id>{_ID}) : (?P<text>{_TEXT})"),
    "classdef": re.compile(
        rf"classDef (?P<name>{_ID}) (?P<props>[a-z-]+:[#A-Za-z0-9.]+(?:,[a-z-]+:[#A-Za-z0-9.]+)*)"
    ),
    "class": re.compile(rf"class (?P<ids>{_ID}(?:,{_ID})*) (?P<name>{_ID})"),
    "description": re.compile(rf"(?P<id>{_ID}) : (?P<text>{_TEXT})"),
    "declaration": re.compile(rf"(?P<id>{_ID})"),
}
_KEYWORDS = frozenset({"state", "note", "direction", "class", "classDef", "end", "as"})


class MermaidSyntaxError(ValueError):
    pass


@dataclass
class MermaidDiagram:
    title: str | None = None
    direction: str | None = None
    names: dict[str, str] = field(default_factory=dict)
    """mermaid id -> state name (the id itself unless ``state "name" as id``)."""
    transitions: list[tuple[str, str, str]] = field(default_factory=list)
    """(source, label, dest) by state name; ``[*]`` markers are kept apart."""
    initial: list[str] = field(default_factory=list)
    final: list[str] = field(default_factory=list)
    descriptions: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    classes: dict[str, set[str]] = field(default_factory=dict)
    composites: dict[str, set[str]] = field(default_factory=dict)
    """composite id -> the names of the states declared inside it."""
    composite_labels: dict[str, str] = field(default_factory=dict)

    @property
    def states(self) -> set[str]:
        return set(self.names.values())

    def members(self, end: str) -> set[str]:
        """The states an end of a transition stands for: a composite's members, or itself."""
        return self.composites.get(end, {end})


def parse_mermaid(text: str) -> MermaidDiagram:
    """Check ``text`` against the ``stateDiagram-v2`` grammar subset and read it.

    Raises ``MermaidSyntaxError`` on the first line that is not a statement of the subset, on a
    class used before its ``classDef``, on an id that is a keyword, on a note or class naming
    a state that appears nowhere, on a composite state that is not closed (or a ``}`` that
    closes none), and on a state declared in two composites. Composite states (``state X {``
    ... ``}``) nest their statements four more spaces in; a transition may leave or enter a
    composite by its id.
    """
    diagram = MermaidDiagram()
    lines = text.split("\n")
    if lines and lines[0] == "---":
        try:
            end = lines.index("---", 1)
        except ValueError:
            raise MermaidSyntaxError("front matter is not closed") from None
        for line in lines[1:end]:
            match = re.fullmatch(r"title: (.+)", line)
            if match is None:
                raise MermaidSyntaxError(f"front matter line not understood: {line!r}")
            diagram.title = match.group(1)
        lines = lines[end + 1 :]
    body = [line for line in lines if line.strip()]
    if not body or body[0] != "stateDiagram-v2":
        raise MermaidSyntaxError("the diagram does not start with 'stateDiagram-v2'")
    defined_classes: set[str] = set()
    pending_refs: list[str] = []
    open_composites: list[str] = []

    def state(ident: str) -> str:
        if ident in _KEYWORDS:
            raise MermaidSyntaxError(f"{ident!r} is a keyword, not a state id")
        if ident in diagram.composites:
            return ident
        if open_composites and ident not in diagram.names:
            diagram.composites[open_composites[-1]].add(ident)
        return diagram.names.setdefault(ident, ident)

    for number, raw in enumerate(body[1:], start=2):
        indent = "    " * (len(open_composites) + (0 if raw.strip() == "}" else 1))
        if not raw.startswith(indent) or raw[len(indent)] == " " or raw != raw.rstrip():
            raise MermaidSyntaxError(f"line {number}: bad indentation or trailing space: {raw!r}")
        line = raw.strip()
        found = next(
            ((k, m) for k, p in _STATEMENTS.items() if (m := p.fullmatch(line)) is not None),
            None,
        )
        if found is None:
            raise MermaidSyntaxError(f"line {number}: not a stateDiagram-v2 statement: {line!r}")
        kind, match = found
        if kind == "composite":
            ident = match.group("id")
            if ident in diagram.names or ident in diagram.composites or ident in _KEYWORDS:
                raise MermaidSyntaxError(f"line {number}: composite {ident!r} is already a state")
            diagram.composites[ident] = set()
            diagram.composite_labels[ident] = match.group("name") or ident
            open_composites.append(ident)
        elif kind == "close":
            if not open_composites:
                raise MermaidSyntaxError(f"line {number}: '}}' closes no composite state")
            open_composites.pop()
        elif kind == "declaration":
            ident = match.group("id")
            if open_composites and ident in diagram.names:
                raise MermaidSyntaxError(f"line {number}: {ident!r} put in a composite after use")
            state(ident)
        elif kind == "direction":
            diagram.direction = match.group("dir")
        elif kind == "alias":
            ident = match.group("id")
            if ident in diagram.names:
                raise MermaidSyntaxError(f"line {number}: {ident!r} aliased after use")
            diagram.names[ident] = match.group("name")
            if open_composites:
                diagram.composites[open_composites[-1]].add(ident)
        elif kind == "transition":
            src, dst, label = match.group("src"), match.group("dst"), match.group("label")
            if src == "[*]" and dst == "[*]":
                raise MermaidSyntaxError(f"line {number}: [*] --> [*]")
            if src == "[*]":
                diagram.initial.append(state(dst))
            elif dst == "[*]":
                diagram.final.append(state(src))
            else:
                if label is None:
                    raise MermaidSyntaxError(f"line {number}: a transition without a label")
                diagram.transitions.append((state(src), label.strip(), state(dst)))
        elif kind == "note":
            pending_refs.append(match.group("id"))
            diagram.notes.setdefault(match.group("id"), []).append(match.group("text").strip())
        elif kind == "classdef":
            defined_classes.add(match.group("name"))
        elif kind == "class":
            name = match.group("name")
            if name not in defined_classes:
                raise MermaidSyntaxError(f"line {number}: class {name!r} used before classDef")
            for ident in match.group("ids").split(","):
                pending_refs.append(ident)
                diagram.classes.setdefault(name, set()).add(ident)
        elif kind == "description":
            text_ = match.group("text").strip()
            diagram.descriptions.setdefault(state(match.group("id")), []).append(text_)
    if open_composites:
        raise MermaidSyntaxError(f"composite state {open_composites[-1]!r} is not closed")
    for ident in pending_refs:
        if ident not in diagram.names:
            raise MermaidSyntaxError(f"{ident!r} is referenced but is not a state")
    diagram.composites = {
        name: {diagram.names[i] for i in ids} for name, ids in diagram.composites.items()
    }
    # Classes and notes are keyed by id; report them by state name.
    diagram.classes = {
        name: {diagram.names[i] for i in ids} for name, ids in diagram.classes.items()
    }
    diagram.notes = {diagram.names[i]: texts for i, texts in diagram.notes.items()}
    return diagram


@dataclass(frozen=True)
class Label:
    trigger: str
    guards: tuple[str, ...]
    count: int | None


def parse_label(text: str) -> Label:
    """``"submit_tool_outputs [a] [b] ×2"`` (or the same over several lines)."""
    words = text.split()
    count = None
    if words and words[-1].startswith("×"):
        count = int(words.pop()[1:])
    guards = tuple(w[1:-1] for w in words[1:] if w.startswith("[") and w.endswith("]"))
    if len(guards) != len(words) - 1:
        raise ValueError(f"label not understood: {text!r}")
    return Label(words[0], guards, count)


@dataclass(frozen=True)
class ChartLabel:
    """A label of the readable view: ``A [g and h] or B ×3 (steps 2, 6, 10)``."""

    rules: tuple[tuple[str, tuple[str, ...]], ...]
    """(trigger, guards) per rule; guards as identifiers (the drawing writes them in words)."""
    count: int | None = None
    steps: tuple[int, ...] = ()
    rounds: dict[int, int] = field(default_factory=dict)
    """step -> the tool round a submission at that step ended."""


_CHART_STEPS = re.compile(r" ×(?P<count>[0-9]+) \((?P<steps>[^()]*)\)$")
_CHART_RULE = re.compile(r"(?P<trigger>[^\s\[\]]+)(?: \[(?P<guards>[^\]]+)\])?")


def parse_chart_label(text: str) -> ChartLabel:
    """Read a readable-view label, in mermaid (one line) or Graphviz (wrapped) form."""
    text = " ".join(text.split())
    count: int | None = None
    steps: list[int] = []
    rounds: dict[int, int] = {}
    found = _CHART_STEPS.search(text)
    if found is not None:
        text = text[: found.start()]
        count = int(found.group("count"))
        for item in found.group("steps").split(", "):
            match = re.fullmatch(r"(?:round (?P<round>[0-9]+) at )?(?:steps? )?(?P<n>[0-9]+)", item)
            if match is None:
                raise ValueError(f"step list not understood: {found.group('steps')!r}")
            steps.append(int(match.group("n")))
            if match.group("round"):
                rounds[int(match.group("n"))] = int(match.group("round"))
        if len(steps) != count:
            raise ValueError(f"×{count} but {len(steps)} steps listed")
    rules = []
    for part in text.split(" or "):
        match = _CHART_RULE.fullmatch(part)
        if match is None:
            raise ValueError(f"label not understood: {part!r} in {text!r}")
        guards = match.group("guards")
        rules.append(
            (
                match.group("trigger"),
                tuple(g.replace(" ", "_") for g in guards.split(" and ")) if guards else (),
            )
        )
    return ChartLabel(tuple(rules), count, tuple(steps), rounds)


# --------------------------------------------------------------------------------------------
# Graphviz text
# --------------------------------------------------------------------------------------------

_DOT_TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<arrow>->)|(?P<punct>[\[\]{}=,;])'
    r"|(?P<id>[A-Za-z_][A-Za-z0-9_.]*|-?[0-9.]+))"
)


@dataclass
class DotGraph:
    name: str
    attrs: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    edges: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    clusters: dict[str, set[str]] = field(default_factory=dict)
    node_order: list[str] = field(default_factory=list)
    cluster_attrs: dict[str, dict[str, str]] = field(default_factory=dict)


def _dot_tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _DOT_TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"DOT text not understood at {text[position : position + 40]!r}")
        kind = match.lastgroup
        assert kind is not None
        value = match.group(kind)
        if kind == "string":
            value = re.sub(
                r"\\(.)", lambda m: "\n" if m.group(1) in "nlr" else m.group(1), value[1:-1]
            )
        tokens.append((kind, value))
        position = match.end()
    return tokens


def parse_dot(text: str) -> DotGraph:
    """Read the DOT subset runmachine writes: one ``digraph``, default attribute statements,
    node and edge statements with attribute lists, and clusters (one level)."""
    tokens = _dot_tokens(text)
    pos = 0

    def take(kind: str | None = None, value: str | None = None) -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError("DOT text ends early")
        k, v = tokens[pos]
        if (kind is not None and k != kind) or (value is not None and v != value):
            raise ValueError(f"expected {value or kind}, found {v!r}")
        pos += 1
        return v

    def peek() -> str | None:
        return tokens[pos][1] if pos < len(tokens) else None

    def name() -> str:
        kind, value = tokens[pos]
        if kind not in ("id", "string"):
            raise ValueError(f"expected a name, found {value!r}")
        return take()

    def attr_list() -> dict[str, str]:
        found: dict[str, str] = {}
        if peek() != "[":
            return found
        take(value="[")
        while peek() != "]":
            key = name()
            take(value="=")
            found[key] = name()
            if peek() == ",":
                take(value=",")
        take(value="]")
        return found

    take("id", "digraph")
    graph = DotGraph(name())
    take(value="{")

    def statements(cluster: str | None) -> None:
        while peek() != "}":
            word = name()
            if word in ("graph", "node", "edge") and peek() == "[":
                found = attr_list()
                if word == "graph" and cluster is None:
                    graph.attrs.update(found)
                elif word == "graph" and cluster is not None:
                    graph.cluster_attrs.setdefault(cluster, {}).update(found)
            elif word == "subgraph":
                sub = name()
                take(value="{")
                graph.clusters.setdefault(sub, set())
                statements(sub)
                take(value="}")
            elif peek() == "->":
                take(value="->")
                dest = name()
                graph.edges.append((word, dest, attr_list()))
            else:
                if word in graph.nodes:
                    raise ValueError(f"node {word!r} declared twice")
                graph.nodes[word] = attr_list()
                graph.node_order.append(word)
                if cluster is not None:
                    graph.clusters[cluster].add(word)
            if peek() == ";":
                take(value=";")

    statements(None)
    take(value="}")
    if pos != len(tokens):
        raise ValueError("text after the graph")
    for source, dest, _ in graph.edges:
        for node in (source, dest):
            if node not in graph.nodes:
                raise ValueError(f"edge names undeclared node {node!r}")
    return graph


# --------------------------------------------------------------------------------------------
# SVG from dot
# --------------------------------------------------------------------------------------------

SVG = "{http://www.w3.org/2000/svg}"


@dataclass
class SvgShape:
    nodes: Counter[str]
    edges: Counter[str]
    texts: Counter[str]
    node_outlines: dict[str, str | None]


def read_svg(svg: str) -> SvgShape:
    """The titles of the node and edge groups, every text, and each node's outline path."""
    root = ET.fromstring(svg)
    if root.tag != f"{SVG}svg":
        raise ValueError("not an SVG document")
    nodes: Counter[str] = Counter()
    edges: Counter[str] = Counter()
    outlines: dict[str, str | None] = {}
    for group in root.iter(f"{SVG}g"):
        title = group.find(f"{SVG}title")
        if title is None or title.text is None:
            continue
        if group.get("class") == "node":
            nodes[title.text] += 1
            path = group.find(f"{SVG}path")
            outlines[title.text] = path.get("d") if path is not None else None
        elif group.get("class") == "edge":
            # ``pending:s->queued``: the port an edge leaves from is layout, not the edge.
            edges[re.sub(r":(?:[nsew]{1,2}|c|_)(?=->|$)", "", title.text)] += 1
    texts = Counter((t.text or "") for t in root.iter(f"{SVG}text"))
    return SvgShape(nodes, edges, texts, outlines)


# --------------------------------------------------------------------------------------------
# A layout by dot (``dot -Tjson``) and a PNG's size
# --------------------------------------------------------------------------------------------


@dataclass
class DotLayout:
    """What ``dot -Tjson`` laid out: the bounding box in points, clusters, nodes and edges with
    their attributes, and the font size (points) of every text drawn on each edge and node."""

    width: float
    height: float
    clusters: dict[str, set[str]]
    cluster_attrs: dict[str, dict[str, str]]
    nodes: dict[str, dict[str, str]]
    edges: list[tuple[str, str, dict[str, str]]]
    edge_text_sizes: list[float]
    node_text_sizes: list[float]


def _text_sizes(item: dict[str, object]) -> list[float]:
    sizes = []
    for key in ("_ldraw_", "_hldraw_", "_tldraw_"):
        size = None
        for op in item.get(key, []) or []:  # type: ignore[attr-defined]
            if op["op"] == "F":
                size = float(op["size"])
            elif op["op"] == "T" and size is not None:
                sizes.append(size)
    return sizes


def read_dot_json(text: str) -> DotLayout:
    data = json.loads(text)
    _, _, width, height = (float(v) for v in data["bb"].split(","))
    objects = data.get("objects", [])
    nodes = {o["name"]: o for o in objects if "nodes" not in o}
    by_id = {o["_gvid"]: o["name"] for o in objects if "nodes" not in o}
    clusters = {
        o["name"]: {by_id[i] for i in o.get("nodes", [])}
        for o in objects
        if "nodes" in o and o["name"].startswith("cluster")
    }
    cluster_attrs = {
        o["name"]: {k: v for k, v in o.items() if isinstance(v, str)}
        for o in objects
        if "nodes" in o
    }
    edges = [
        (by_id[e["tail"]], by_id[e["head"]], {k: v for k, v in e.items() if isinstance(v, str)})
        for e in data.get("edges", [])
    ]
    return DotLayout(
        width=width,
        height=height,
        clusters=clusters,
        cluster_attrs=cluster_attrs,
        nodes={n: {k: v for k, v in o.items() if isinstance(v, str)} for n, o in nodes.items()},
        edges=edges,
        edge_text_sizes=[s for e in data.get("edges", []) for s in _text_sizes(e)],
        node_text_sizes=[s for o in nodes.values() for s in _text_sizes(o)],
    )


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height
