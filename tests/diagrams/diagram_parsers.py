"""Readers of the diagrams runmachine draws, for tests: a grammar check and parser of the
``stateDiagram-v2`` subset the mermaid output uses, a parser of the Graphviz text, and what an
SVG rendered by ``dot`` holds.

They read the text as a renderer would, so that the tests compare what a reader sees with the
lifecycle table, instead of searching the text for a few names.
"""

from __future__ import annotations

import re
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

    @property
    def states(self) -> set[str]:
        return set(self.names.values())


def parse_mermaid(text: str) -> MermaidDiagram:
    """Check ``text`` against the ``stateDiagram-v2`` grammar subset and read it.

    Raises ``MermaidSyntaxError`` on the first line that is not a statement of the subset, on a
    class used before its ``classDef``, on an id that is a keyword, and on a note or class naming
    a state that appears nowhere.
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

    def state(ident: str) -> str:
        if ident in _KEYWORDS:
            raise MermaidSyntaxError(f"{ident!r} is a keyword, not a state id")
        return diagram.names.setdefault(ident, ident)

    for number, raw in enumerate(body[1:], start=2):
        if not raw.startswith("    ") or raw != raw.rstrip():
            raise MermaidSyntaxError(f"line {number}: bad indentation or trailing space: {raw!r}")
        line = raw.strip()
        found = next(
            ((k, m) for k, p in _STATEMENTS.items() if (m := p.fullmatch(line)) is not None),
            None,
        )
        if found is None:
            raise MermaidSyntaxError(f"line {number}: not a stateDiagram-v2 statement: {line!r}")
        kind, match = found
        if kind == "direction":
            diagram.direction = match.group("dir")
        elif kind == "alias":
            ident = match.group("id")
            if ident in diagram.names:
                raise MermaidSyntaxError(f"line {number}: {ident!r} aliased after use")
            diagram.names[ident] = match.group("name")
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
    for ident in pending_refs:
        if ident not in diagram.names:
            raise MermaidSyntaxError(f"{ident!r} is referenced but is not a state")
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
                r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1]
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
