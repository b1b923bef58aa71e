"""The lifecycle diagrams: drawn from the table, every state and row of it and nothing else.

This file checks the every-row view (``detail="full"``), what both views share (formats, hooks,
the command line) and the repository's ``diagrams/`` folder; ``test_readable.py`` checks the
readable statechart, ``test_trace.py`` the drawings of one run.
"""

from __future__ import annotations

import itertools
import json
import os
import re
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
    DETAILS,
    GraphvizNotFound,
    draw_lifecycle,
    draw_trace,
    example_history,
    generated_files,
    generated_images,
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
    png_size,
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
    diagram = parse_mermaid(str(draw_lifecycle(cls, format="mermaid", detail="full")))
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
    diagram = parse_mermaid(str(draw_lifecycle(format="mermaid", detail="full")))
    labels = {(s, d): label for s, label, d in diagram.transitions}
    assert labels[("in_progress", "requires_action")] == "thread.run.requires_action"
    assert labels[("requires_action", "submitting")] == (
        "submit_tool_outputs [outputs_match_required_calls] [round_not_submitted_before]"
    )


@pytest.mark.parametrize("detail", ["readable", "full"])
def test_a_state_name_that_is_no_mermaid_id_gets_an_alias(detail: Any) -> None:
    text = str(draw_lifecycle(Extended, format="mermaid", detail=detail))
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
        "    state b {\n    }\n    }",
        "    state b {\n    c\n    }",
        "    state b {\n        a\n    }",
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


# Mermaid's own parser and renderer. .ci/run installs them into .mermaid/ (ignored by git); in
# CI a missing one fails the test, elsewhere it is skipped with the line that installs it.
MERMAID_MODULES = ROOT / ".mermaid" / "node_modules"
MERMAID_INSTALL = (
    "PUPPETEER_SKIP_DOWNLOAD=1 npm install --prefix .mermaid mermaid@12.3.0 "
    "@mermaid-js/mermaid-cli@12.2.0 jsdom@29.1.1 (as .ci/run does), and Debian's chromium "
    "for the renderer"
)
PARSER = Path(__file__).with_name("mermaid_parse.mjs")


def _missing(what: str) -> None:
    message = f"{what}: {MERMAID_INSTALL}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run this test")
    pytest.skip(message)


def _mermaid_texts() -> dict[str, str]:
    """Every kind of mermaid drawing: both views of each machine and table, and traces."""
    history = example_history()
    texts: dict[str, str] = {}
    for detail in DETAILS:
        for cls in (*MACHINES, RunMachine):
            texts[f"{cls.__name__}, {detail}"] = str(cls.diagram(detail=detail))  # type: ignore[arg-type]
        texts[f"turn, {detail}"] = str(draw_lifecycle(backend="sessions", detail=detail))  # type: ignore[arg-type]
        texts[f"trace, {detail}"] = str(
            draw_trace(history, final_state="completed", detail=detail)  # type: ignore[arg-type]
        )
        texts[f"stopped trace, {detail}"] = str(
            draw_trace(
                history[:4],
                final_state="submitting",
                error="tool outputs for run run_1 were already submitted; refusing",
                detail=detail,  # type: ignore[arg-type]
            )
        )
    return texts


def test_mermaid_itself_parses_every_drawing() -> None:
    """mermaid's own parser (the npm package, under Node with jsdom; no browser) accepts every
    drawing, and refuses a broken one (so that a pass means something)."""
    node = shutil.which("node")
    if node is None:
        _missing("Node is not installed (apt-get install nodejs npm)")
    if not all((MERMAID_MODULES / name).is_dir() for name in ("mermaid", "jsdom")):
        _missing(f"mermaid and jsdom are not installed in {MERMAID_MODULES}")
    assert node is not None
    texts = _mermaid_texts()
    broken = "stateDiagram-v2\n    state active {\n    a -> b\n"
    done = subprocess.run(
        [node, str(PARSER), str(MERMAID_MODULES)],
        input=json.dumps([*texts.values(), broken]),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    *results, refused = json.loads(done.stdout)
    assert dict(zip(texts, results, strict=True)) == {
        name: {"ok": True, "type": "stateDiagram"} for name in texts
    }
    assert refused["ok"] is False
    assert "error on line 3" in refused["error"]


def _mmdc(tmp: Path) -> list[str] | None:
    """The mermaid CLI: ``RUNMACHINE_MMDC``, ``mmdc`` on PATH, or the one in .mermaid/ run with
    Debian's Chromium (puppeteer's own browser download does not work here)."""
    configured = os.environ.get("RUNMACHINE_MMDC")
    if configured:
        return configured.split()
    found = shutil.which("mmdc")
    if found:
        return [found]
    installed = MERMAID_MODULES / ".bin" / "mmdc"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not installed.exists() or chromium is None:
        return None
    config = tmp / "puppeteer.json"
    config.write_text(
        json.dumps(
            {
                "executablePath": chromium,
                "args": ["--no-sandbox", "--headless", "--disable-gpu", "--disable-dev-shm-usage"],
            }
        )
    )
    return [str(installed), "-p", str(config)]


RENDERED = ["lifecycle.mmd", "trace-two-rounds.mmd", "turn-lifecycle.mmd", "lifecycle-full.mmd"]


@pytest.fixture(scope="module")
def mermaid_svgs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The diagrams/ folder's mermaid files rendered by the mermaid CLI, in one run (one
    browser start): a Markdown file holding them all renders to one SVG each."""
    tmp = tmp_path_factory.mktemp("mermaid")
    command = _mmdc(tmp)
    if command is None:
        _missing("no mermaid CLI (set RUNMACHINE_MMDC, put mmdc on PATH, or install it)")
    assert command is not None
    files = generated_files()
    source = tmp / "all.md"
    source.write_text("".join(f"```mermaid\n{files[name]}```\n\n" for name in RENDERED))
    done = subprocess.run(
        [*command, "-q", "-j", "2", "-i", str(source), "-o", str(tmp / "out.md"), "-e", "svg"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return {
        name: (tmp / f"out-{n}.svg").read_text(encoding="utf-8")
        for n, name in enumerate(RENDERED, start=1)
    }


@pytest.mark.parametrize("name", RENDERED)
def test_mermaid_cli_renders_the_diagrams(name: str, mermaid_svgs: dict[str, str]) -> None:
    """Rendered by mermaid itself: a state diagram, with the composite states the text has, a
    box for every state and a line for every transition (and the start and end markers)."""
    svg = ET.fromstring(mermaid_svgs[name])
    assert svg.get("aria-roledescription") == "stateDiagram"
    diagram = parse_mermaid(generated_files()[name])
    groups = list(svg.iter("{http://www.w3.org/2000/svg}g"))
    classes = {id(g): (g.get("class") or "").split() for g in groups}
    clusters = {g.get("data-id") for g in groups if "statediagram-cluster" in classes[id(g)]}
    assert clusters == set(diagram.composites)
    boxes = {
        match.group(1)
        for g in groups
        if "statediagram-state" in classes[id(g)]
        and "statediagram-cluster" not in classes[id(g)]
        and (match := re.fullmatch(r"my-svg-state-(.+)-[0-9]+", g.get("id") or ""))
    }
    assert boxes == set(diagram.names)
    lines = [
        p
        for p in svg.iter("{http://www.w3.org/2000/svg}path")
        if "transition" in (p.get("class") or "").split()
        and "note-edge" not in (p.get("class") or "")
    ]
    assert len(lines) == len(diagram.transitions) + len(diagram.initial) + len(diagram.final)


# --------------------------------------------------------------------------------------------
# Graphviz
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MACHINES, ids=lambda c: c.__name__)
def test_dot_has_every_state_and_row_and_nothing_else(cls: type[RunMachine]) -> None:
    graph = parse_dot(str(draw_lifecycle(cls, format="dot", detail="full")))
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
    svg = draw_lifecycle(cls, format="svg", detail="full")
    assert isinstance(svg, str)
    shape = read_svg(svg)
    assert shape.nodes == Counter(table_states(cls))
    assert shape.edges == Counter(f"{r.source}->{r.dest}" for r in cls.lifecycle_rows())


@needs_dot
@pytest.mark.parametrize("detail", ["readable", "full"])
def test_png_is_a_png_of_some_size(detail: Any) -> None:
    png = draw_lifecycle(format="png", detail=detail)
    assert isinstance(png, bytes)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 50_000


def test_the_full_view_is_the_every_row_drawing_of_before() -> None:
    """``detail="full"`` is the drawing this library made before the readable view: the
    committed ``diagrams/lifecycle-full.mmd`` is that text, and the Graphviz text keeps its
    layout attributes (left to right, the terminal states' cluster, ``adopt`` not ranking)."""
    full = str(draw_lifecycle(format="mermaid", detail="full"))
    assert full == (ROOT / "diagrams" / "lifecycle-full.mmd").read_text(encoding="utf-8")
    assert "    direction LR\n" in full and "state " not in full
    graph = parse_dot(str(draw_lifecycle(format="dot", detail="full")))
    assert graph.attrs["rankdir"] == "LR"
    assert graph.attrs["label"] == "RunMachine"
    adopt = [a for _, _, a in graph.edges if a["label"].startswith(lifecycle.ADOPT)]
    assert len(adopt) == len(lifecycle.ADOPTABLE_STATES)
    assert {a["constraint"] for a in adopt} == {"false"}


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


def test_an_unknown_format_or_detail_is_refused() -> None:
    with pytest.raises(ValueError, match="jpeg"):
        draw_lifecycle(format="jpeg")
    with pytest.raises(ValueError, match="jpeg"):
        RunMachine.diagram(format="jpeg")
    with pytest.raises(ValueError, match="'terse'; choose one of readable, full"):
        draw_lifecycle(detail="terse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="terse"):
        draw_trace(example_history(), final_state="completed", detail="terse")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Hooks and additions of a subclass
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("detail", ["readable", "full"])
def test_hooks_of_a_subclass_show_on_their_states_and_not_on_runmachine(detail: Any) -> None:
    mermaid = parse_mermaid(str(Hooked.diagram(format="mermaid", detail=detail)))
    assert mermaid.descriptions == {
        "requires_action": ["on_enter_requires_action"],
        "queued": ["on_exit_queued"],
    }
    hook_note = "event hooks, on stream content - on_text_delta"
    assert mermaid.notes["in_progress"] == [hook_note]
    graph = parse_dot(str(Hooked.diagram(format="dot", detail=detail)))
    assert graph.nodes["requires_action"]["label"] == "requires_action\n▸ on_enter_requires_action"
    assert graph.nodes["queued"]["label"] == "queued\n▸ on_exit_queued"
    assert "on_text_delta" in graph.attrs["label"]

    base_mermaid = parse_mermaid(str(RunMachine.diagram(format="mermaid", detail=detail)))
    assert base_mermaid.descriptions == {}
    assert "in_progress" not in base_mermaid.notes
    base = parse_dot(str(RunMachine.diagram(format="dot", detail=detail)))
    assert all(
        attributes["label"] == name
        for name, attributes in base.nodes.items()
        if name in lifecycle.STATES
    )
    assert "event hooks" not in base.attrs["label"]
    assert RunMachine.hooks() == frozenset()


@needs_dot
def test_hooks_show_in_the_rendered_svg() -> None:
    texts = read_svg(str(Hooked.diagram(format="svg"))).texts
    assert texts["▸ on_enter_requires_action"] == 1
    assert not any("on_enter" in t for t in read_svg(str(RunMachine.diagram(format="svg"))).texts)


def test_rows_a_subclass_adds_are_drawn_with_their_hooks() -> None:
    mermaid = parse_mermaid(str(Extended.diagram(format="mermaid", detail="full")))
    assert ("requires_action", "review [reviewer_present]", "reviewing") in mermaid.transitions
    assert ("reviewing", "escalate", "human review") in mermaid.transitions
    assert ("human review", "approve", "submitting") in mermaid.transitions
    assert mermaid.descriptions == {"reviewing": ["on_enter_reviewing"]}
    graph = parse_dot(str(Extended.diagram(format="dot", detail="full")))
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
    assert read_svg(out.read_text()).nodes == Counter([*lifecycle.STATES, "note_0"])


@needs_dot
@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("x.svg", lambda data: read_svg(data.decode()).nodes[lifecycle.PENDING] == 1),
        ("x.png", lambda data: png_size(data)[0] > 500),
        ("x.dot", lambda data: "cluster_active" in parse_dot(data.decode()).clusters),
        ("x.gv", lambda data: data.startswith(b'digraph "RunMachine"')),
        ("x.mmd", lambda data: parse_mermaid(data.decode()).composites != {}),
        ("x.mermaid", lambda data: data == str(draw_lifecycle()).encode()),
    ],
)
def test_cli_takes_the_format_from_the_output_file_name(
    name: str, check: Any, tmp_path: Path
) -> None:
    assert main(["diagram", "-o", str(tmp_path / name)]) == 0
    assert check((tmp_path / name).read_bytes())


def test_cli_refuses_a_file_name_it_cannot_read_or_that_contradicts_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["diagram", "-o", str(tmp_path / "x.txt")]) == 2
    assert "cannot tell the diagram format from" in capsys.readouterr().err
    # An explicit --format names the format of any other file.
    assert main(["diagram", "--format", "dot", "-o", str(tmp_path / "x.txt")]) == 0
    assert (tmp_path / "x.txt").read_text() == draw_lifecycle(format="dot")
    assert main(["diagram", "--format", "png", "-o", str(tmp_path / "x.svg")]) == 2
    assert "--format png but" in capsys.readouterr().err
    assert not (tmp_path / "x.svg").exists()
    # --detail full is the every-row drawing.
    assert main(["diagram", "--detail", "full", "-o", str(tmp_path / "full.mmd")]) == 0
    assert (tmp_path / "full.mmd").read_text() == draw_lifecycle(detail="full")


def test_cli_reports_a_missing_graphviz_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without dot, ``-o x.png`` says how to install Graphviz before it imports the class
    (a class that cannot be imported would otherwise be reported first) or draws anything."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["diagram", "no_such_module:Machine", "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "needs Graphviz's 'dot' program" in err and "apt-get install graphviz" in err
    assert not (tmp_path / "x.png").exists()
    # Text formats need no Graphviz: the same bad class is then the error.
    assert main(["diagram", "no_such_module:Machine", "-o", str(tmp_path / "x.mmd")]) == 2


# --------------------------------------------------------------------------------------------
# The repository's diagrams/ folder and the README
# --------------------------------------------------------------------------------------------


@needs_dot
def test_the_committed_diagrams_are_fresh() -> None:
    """If this fails, run ``python -m runmachine.diagrams diagrams --readme README.md``."""
    fresh = generated_files()
    committed = {p.name for p in (ROOT / "diagrams").iterdir() if p.is_file()}
    assert set(fresh) <= committed
    # PNG bytes depend on the Graphviz build and its fonts: each image is there, a PNG, and of
    # the size a fresh drawing has (within a few per cent).
    for name, data in generated_images().items():
        assert name in committed
        width, height = png_size(data)
        old_width, old_height = png_size((ROOT / "diagrams" / name).read_bytes())
        assert abs(old_width - width) <= 0.05 * width, name
        assert abs(old_height - height) <= 0.05 * height, name
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
    full = str(draw_lifecycle(RunMachine, format="dot", detail="full"))
    small = str(draw_lifecycle(RunMachine, format="dot", omit=("adopt",), detail="full"))
    assert "adopt" in full and "adopt" not in small
    # Every other row stays, and every state.
    assert small.count("->") == full.count("->") - sum(
        1 for row in RunMachine.lifecycle_rows() if row.trigger == "adopt"
    )
    for state in lifecycle.STATES:
        assert state in small
    assert RunMachine.diagram("dot", omit=("adopt",), detail="full") == small
    # In the readable view the adopt rows are one note, and omit leaves the note out.
    assert "adopt" in str(RunMachine.diagram("mermaid"))
    assert "adopt" not in str(RunMachine.diagram("mermaid", omit=("adopt",)))
    assert "adopt" not in str(RunMachine.diagram("dot", omit=("adopt",)))
