"""``runmachine demo``: watch a multi-round, parallel tool-calling conversation, live.

By default it starts the embedded emulator on a free loopback port, creates an assistant with
three example tools (one deliberately slow), and drives two user turns through the real openai
SDK. It shows, as they happen: the streamed text, each tool call with its arguments (a spinner
while it runs, then its output and duration), every state transition, and at the end the run's
trace on the lifecycle table and a one-line summary per run.

In a terminal the output is drawn with ``rich``; when stdout is not a terminal (a pipe, a log,
CI) it is plain text, one event per line.

``--base-url``/``--api-key``/``--assistant-id``/``--model`` (or ``--azure-endpoint`` and
``--api-version``) run the same conversation against a real OpenAI-compatible server;
``--scenario`` makes the emulator misbehave on purpose to show a guard at work.

``--backend sessions`` drives agent-session turns (``client.beta.agents.sessions``) instead, on
the embedded emulator: ``create_session`` with the same first turn (two parallel calls, then a
third in a second round, then the streamed answer), and a second ``turn`` on that session in
which the agent asks to use an MCP server first; the machine's ``on_approval_request`` answers
it (it approves the one server it knows), and the narration shows the request and the decision
as they happen, then the turn's trace on the turn lifecycle table.

Exit codes: 0 every run (or turn) completed; 1 a run or turn did not complete (a guard stopped
it, or it ended failed, expired, cancelled or incomplete, or waits on an approval); 2 bad
command-line options; 3 the server could not be reached or refused a request; 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

import anyio
import attrs

from runmachine import lifecycle
from runmachine.deprecation import quiet_deprecation
from runmachine.diagrams import require_graphviz
from runmachine.errors import GraphvizNotFound, RunAborted
from runmachine.lifecycle import Decision
from runmachine.machine import RunMachine
from runmachine.records import TransitionRecord
from runmachine.tools import ToolError, ToolSpec, encode_output, tool

if TYPE_CHECKING:
    import openai

    from runmachine.result import RunResult
    from runmachine.testing import Emulator, Scenario, TurnScenario

__all__ = [
    "BACKENDS",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_COMPLETED",
    "EXIT_OK",
    "EXIT_SERVER",
    "EXIT_USAGE",
    "KNOWN_MCP_SERVERS",
    "SCENARIOS",
    "DemoMachine",
    "add_arguments",
    "main",
    "run_demo",
]

EXIT_OK = 0
EXIT_NOT_COMPLETED = 1
EXIT_USAGE = 2
EXIT_SERVER = 3
EXIT_INTERRUPTED = 130

SCENARIOS: tuple[str, ...] = ("dropped-stream", "loop", "slow-tool", "submit-5xx")
#: What the demo drives: Assistants runs, or agent-session turns.
BACKENDS: tuple[str, ...] = ("assistants", "sessions")

TURNS = (
    "call get_current_temperature and get_rain_probability for Paris, then slow_forecast.",
    "and for Oslo? call get_current_temperature and get_rain_probability.",
)

#: The MCP server of the sessions demo's agent, the one its ``on_approval_request`` approves.
ARCHIVE = "weather-archive"
KNOWN_MCP_SERVERS: frozenset[str] = frozenset({ARCHIVE})
SESSION_TURNS = (
    TURNS[0],
    f"and for Oslo? ask {ARCHIVE} for past_weather, then call get_current_temperature and "
    "get_rain_probability.",
)

#: The events the server sends that move a run or a turn (any other trigger is the client's).
_SERVER_EVENTS = lifecycle.LIFECYCLE_EVENTS | lifecycle.TURN_LIFECYCLE_EVENTS

# The SDK warns on every Assistants call, at call time: silenced around each one.
_sdk_call = quiet_deprecation


# --------------------------------------------------------------------------------------------
# What the demo shows: one narrator interface, a plain and a rich implementation
# --------------------------------------------------------------------------------------------


@attrs.define
class ToolRow:
    """One tool call as the demo shows it."""

    name: str
    arguments: str
    state: Literal["waiting", "running", "done", "raised", "stopped"] = "waiting"
    output: str = ""
    started: float | None = None
    finished: float | None = None

    @property
    def duration_ms(self) -> float:
        if self.started is None:
            return 0.0
        return ((self.finished or time.monotonic()) - self.started) * 1000


class Narrator(Protocol):
    def note(self, text: str) -> None: ...
    def user(self, text: str) -> None: ...
    def text_delta(self, text: str) -> None: ...
    def text_done(self) -> None: ...
    def transition(self, record: TransitionRecord) -> None: ...
    def round_started(self, number: int, rows: list[ToolRow]) -> None: ...
    def tool_changed(self, row: ToolRow) -> None: ...
    def approval_requested(self, number: int, text: str) -> None: ...
    def approval_decided(self, decision: str, why: str) -> None: ...
    def round_done(self, answers: str | None = None) -> None: ...
    def trace(self, result: RunResult) -> None: ...
    def summary(self, text: str, ok: bool) -> None: ...
    def failure(self, text: str) -> None: ...
    def close(self) -> None: ...


def _call_text(row: ToolRow) -> str:
    return f"{row.name}({row.arguments})"


def _outcome_text(row: ToolRow) -> str:
    if row.state == "stopped":
        return f"stopped after {row.duration_ms:.0f} ms (its timeout or the run's deadline)"
    if row.state == "waiting":
        return "not run"
    return f"{row.output!r} ({row.duration_ms:.0f} ms)"


def trace_rows(transitions: Sequence[TransitionRecord]) -> list[tuple[str, str, str, int]]:
    """The transitions one run took, in order of first use, each with how often it was taken."""
    counts: dict[tuple[str, str, str], int] = {}
    for step in transitions:
        key = (step.source, step.dest, step.trigger)
        counts[key] = counts.get(key, 0) + 1
    return [(s, d, t, n) for (s, d, t), n in counts.items()]


def _is_turn(result: RunResult) -> bool:
    return result.session_id is not None


def _subject(result: RunResult) -> str:
    """``run run_...`` or ``turn turn_...``: what the result is of."""
    return f"turn {result.turn_id}" if _is_turn(result) else f"run {result.run_id}"


def _unvisited(result: RunResult) -> list[str]:
    seen: set[str] = {result.status}
    for step in result.transitions:
        seen.update((step.source, step.dest))
    states = lifecycle.TURN_STATES if _is_turn(result) else lifecycle.STATES
    return [s for s in states if s not in seen]


def _json_text(value: object) -> str:
    """Arguments as JSON text (the sessions wire may give an object)."""
    return value if isinstance(value, str) else json.dumps(value)


def _approval_text(request: Any) -> str:
    """One approval request, as the demo shows it."""
    ask = request.request
    if request.type == "mcp_approval_request":
        return f"{ask.server_label}: {ask.name}({_json_text(ask.arguments)})"
    return f"computer use: {ask.type} {getattr(ask, 'origin', '')}".rstrip()


class PlainNarrator:
    """One line per event, text as it streams; safe from worker threads."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self._lock = threading.Lock()
        self._in_text = False

    def _write(self, text: str) -> None:
        with self._lock:
            self.out.write(text)
            self.out.flush()

    def _line(self, text: str) -> None:
        if self._in_text:
            self._in_text = False
            text = "\n" + text
        self._write(text + "\n")

    def note(self, text: str) -> None:
        self._line(text)

    def user(self, text: str) -> None:
        self._line(f"\nuser: {text}")

    def text_delta(self, text: str) -> None:
        if not self._in_text:
            self._in_text = True
            self._write("assistant: ")
        self._write(text)

    def text_done(self) -> None:
        if self._in_text:
            self._in_text = False
            self._write("\n")

    def transition(self, record: TransitionRecord) -> None:
        self._line(f"  [{record.source} -> {record.dest}]  ({record.trigger})")

    def round_started(self, number: int, rows: list[ToolRow]) -> None:
        for row in rows:
            self._line(f"  round {number}: tool call {_call_text(row)} ...")

    def tool_changed(self, row: ToolRow) -> None:
        if row.state == "running":
            self._line(f"  running {row.name} ...")
        elif row.state != "waiting":
            mark = "->" if row.state == "done" else "!!"
            self._line(f"  {row.name} {mark} {_outcome_text(row)}")

    def approval_requested(self, number: int, text: str) -> None:
        self._line(f"  round {number}: approval request {text} ...")

    def approval_decided(self, decision: str, why: str) -> None:
        self._line(f"  on_approval_request -> {decision} ({why})")

    def round_done(self, answers: str | None = None) -> None:
        self._line(f"  {answers or 'submitting every output of the round in one request'}")

    def trace(self, result: RunResult) -> None:
        self._line(f"\ntrace of {_subject(result)} on the lifecycle table:")
        rows = trace_rows(result.transitions)
        width = max([28, *(len(trigger) + 1 for _, _, trigger, _ in rows)])
        for source, dest, trigger, count in rows:
            self._line(f"  {source:>15} -> {dest:<16} {trigger:<{width}} x{count}")
        final = "stopped in" if result.error else "ended in"
        self._line(f"  {final} {result.status}; never visited: {', '.join(_unvisited(result))}")

    def summary(self, text: str, ok: bool) -> None:
        self._line(text)

    def failure(self, text: str) -> None:
        self._line(f"\nFAILED: {text}")

    def close(self) -> None:
        self.text_done()


class RichNarrator:
    """Permanent lines above a live region that holds the streaming text and the running tools."""

    def __init__(self, console: Any) -> None:
        from rich.live import Live

        self.console = console
        self._lock = threading.Lock()
        self._text = ""
        self._rows: list[ToolRow] = []
        self._round = 0
        self._live = Live(
            console=console,
            get_renderable=self._render,
            refresh_per_second=15,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        parts: list[Any] = []
        with self._lock:
            if self._text:
                parts.append(Text.assemble(("assistant: ", "bold green"), self._text))
            if self._rows:
                table = Table.grid(padding=(0, 1))
                for row in self._rows:
                    call = Text(_call_text(row), style="cyan")
                    if row.state == "running":
                        status: Any = Spinner(
                            "dots", text=Text(f"running {row.duration_ms / 1000:.1f} s")
                        )
                    elif row.state == "waiting":
                        status = Text("waiting", style="dim")
                    else:
                        status = self._outcome(row)
                    table.add_row(Text(f"round {self._round}", style="dim"), call, status)
                parts.append(table)
        return Group(*parts)

    @staticmethod
    def _outcome(row: ToolRow) -> Any:
        from rich.text import Text

        style = "green" if row.state == "done" else "red"
        mark = "✓" if row.state == "done" else "✗"
        return Text(f"{mark} {_outcome_text(row)}", style=style)

    def _print(self, *renderables: Any) -> None:
        self.console.print(*renderables)

    def note(self, text: str) -> None:
        from rich.text import Text

        self._print(Text(text, style="dim"))

    def user(self, text: str) -> None:
        from rich.text import Text

        self._print(Text.assemble("\n", ("user: ", "bold blue"), text))

    def text_delta(self, text: str) -> None:
        with self._lock:
            self._text += text

    def text_done(self) -> None:
        from rich.text import Text

        with self._lock:
            text, self._text = self._text, ""
        if text:
            self._live.refresh()
            self._print(Text.assemble(("assistant: ", "bold green"), text))

    def transition(self, record: TransitionRecord) -> None:
        from rich.text import Text

        local = record.trigger not in _SERVER_EVENTS
        dest_style = "bold green" if record.dest == lifecycle.COMPLETED else "bold"
        if record.dest in lifecycle.TERMINAL_STATES - {lifecycle.COMPLETED}:
            dest_style = "bold red"
        self._print(
            Text.assemble(
                "  ",
                (record.source, "magenta"),
                " → ",
                (record.dest, dest_style),
                "  ",
                (record.trigger, "italic yellow" if local else "dim"),
            )
        )

    def round_started(self, number: int, rows: list[ToolRow]) -> None:
        with self._lock:
            self._round = number
            self._rows = rows
        self._live.refresh()

    def tool_changed(self, row: ToolRow) -> None:
        """The live region re-renders on its own; nothing to print yet."""

    def approval_requested(self, number: int, text: str) -> None:
        from rich.text import Text

        self._print(
            Text.assemble((f"  round {number} ", "dim"), ("approval ", "bold"), (text, "cyan"))
        )

    def approval_decided(self, decision: str, why: str) -> None:
        from rich.text import Text

        mark, style = ("✓", "green") if decision == "approve" else ("✗", "red")
        self._print(
            Text.assemble(
                "  ", (f"{mark} {decision}", style), f" ({why})", (" on_approval_request", "dim")
            )
        )

    def round_done(self, answers: str | None = None) -> None:
        from rich.text import Text

        self._commit_rows()
        self._print(
            Text(f"  {answers or 'every output of the round goes in one submission'}", style="dim")
        )

    def _commit_rows(self) -> None:
        from rich.text import Text

        with self._lock:
            rows, self._rows = self._rows, []
        self._live.refresh()
        for row in rows:
            self._print(
                Text.assemble(
                    (f"  round {self._round} ", "dim"),
                    (_call_text(row), "cyan"),
                    " ",
                    self._outcome(row),
                )
            )

    def trace(self, result: RunResult) -> None:
        from rich.table import Table

        table = Table(
            title=f"trace of {_subject(result)} on the lifecycle table",
            title_justify="left",
            show_edge=False,
        )
        table.add_column("from", style="magenta", justify="right")
        table.add_column("to", style="bold")
        table.add_column("trigger", style="dim")
        table.add_column("taken", justify="right")
        for source, dest, trigger, count in trace_rows(result.transitions):
            table.add_row(source, dest, trigger, f"×{count}")
        self._print("")
        self._print(table)
        final = "stopped in" if result.error else "ended in"
        self.note(f"  {final} {result.status}; never visited: {', '.join(_unvisited(result))}")

    def summary(self, text: str, ok: bool) -> None:
        from rich.text import Text

        self._print(Text(text, style="bold green" if ok else "bold red"))

    def failure(self, text: str) -> None:
        from rich.panel import Panel

        self.text_done()
        self._commit_rows()
        self._print(Panel(text, title="stopped", border_style="red", expand=False))

    def close(self) -> None:
        self.text_done()
        self._live.stop()


# --------------------------------------------------------------------------------------------
# The machine: example tools, and hooks that narrate the run
# --------------------------------------------------------------------------------------------


class DemoMachine(RunMachine):
    """Example tools, and hooks that report every transition, text delta, tool call and (for an
    agent-session turn) approval request. One machine drives one run or one turn."""

    slow_seconds: float = 1.0

    @tool
    async def get_current_temperature(self, location: str, unit: Literal["c", "f"] = "c") -> str:
        """Current temperature at a location."""
        await anyio.sleep(0.2)
        return f"18 degrees {unit.upper()} in {location}"

    @tool(name="get_rain_probability", timeout=5.0)
    def rain(self, location: str) -> float:
        """Probability of rain at a location (a plain function: runs in a worker thread)."""
        time.sleep(0.3)
        return 0.2

    @tool(timeout=5.0)
    async def slow_forecast(self, location: str) -> str:
        """A week's forecast for a location (deliberately slow)."""
        await anyio.sleep(self.slow_seconds)
        return f"dry all week in {location}"

    def __init__(self, client: Any, narrator: Narrator, **options: Any) -> None:
        super().__init__(client, **options)
        self.narrator = narrator
        self.streamed = ""
        self._rows: list[ToolRow] = []
        self._rounds_seen = 0
        self._errors_seen = 0
        #: The approval requests of the current round, then the decisions taken on them.
        self._asked = 0
        self.decisions: dict[str, str] = {}

    # Every transition, reported by the state machine before the on_enter hooks run.
    def on_transition(self, record: TransitionRecord) -> None:
        narrator = self.narrator
        turn = self.turn_core
        core = turn if turn is not None else self.core
        if turn is not None and record.source == lifecycle.PENDING:
            narrator.note(f"session {self.session_id}, turn {self.turn_id}")
        if len(core.stream_errors) > self._errors_seen:
            self._errors_seen = len(core.stream_errors)
            narrator.text_done()
            narrator.note(
                f"  the stream broke ({type(core.stream_errors[-1]).__name__}); "
                + (
                    "the driver reconnects and reads back what it missed"
                    if turn is not None
                    else "the driver polls runs.retrieve and carries on"
                )
            )
        if record.trigger == lifecycle.SUBMIT and (self._rows or self._asked):
            narrator.round_done(
                "sending every answer of the round: one input event each, idempotency-keyed"
                if turn is not None
                else None
            )
            self._rows = []
            self._asked = 0
        narrator.text_done()
        narrator.transition(record)
        if record.trigger == lifecycle.NOT_ACCEPTED:
            narrator.note(
                "  the server did not take the submission; it still waits on this very round, "
                "so the same outputs go again"
            )

    def on_enter_requires_action(self, subject: Any) -> None:
        """``subject`` is the ``Run`` (its calls in ``required_action``) or the ``Turn`` (what it
        waits on is the session's: ``turn_core.actions()``)."""
        if self.history and self.history[-1].trigger == lifecycle.NOT_ACCEPTED:
            return
        self._rounds_seen += 1
        if self.turn_core is None:
            calls = subject.required_action.submit_tool_outputs.tool_calls
            self._rows = [ToolRow(c.function.name, c.function.arguments) for c in calls]
            approvals: list[Any] = []
        else:
            actions = self.turn_core.actions()
            self._rows = [
                ToolRow(a.name, _json_text(a.arguments))
                for a in actions
                if a.type == "function_call"
            ]
            approvals = [a for a in actions if a.type != "function_call"]
        self.narrator.round_started(self._rounds_seen, self._rows)
        self._asked = len(approvals)
        for request in approvals:
            self.narrator.approval_requested(self._rounds_seen, _approval_text(request))

    def on_approval_request(self, request: Any) -> Decision:
        """Approve an MCP tool call on a server the demo knows; deny anything else."""
        label = getattr(request.request, "server_label", None)
        if request.type == "mcp_approval_request" and label in KNOWN_MCP_SERVERS:
            decision: Decision = "approve"
            why = f"{label} is a known MCP server"
        else:
            decision = "deny"
            why = "not an MCP server the demo knows"
        self.decisions[request.request_id] = decision
        self.narrator.approval_decided(decision, why)
        return decision

    async def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        value = delta.value or ""
        self.streamed += value
        self.narrator.text_delta(value)

    async def on_text_done(self, text: Any) -> None:
        self.narrator.text_done()

    # Each tool is wrapped so that the display sees it start and finish.
    def tool_specs(self) -> dict[str, ToolSpec]:
        return {
            name: attrs.evolve(spec, func=self._watched(spec))
            for name, spec in super().tool_specs().items()
        }

    def _row_for(self, spec: ToolSpec, kwargs: dict[str, Any]) -> ToolRow | None:
        candidates = [r for r in self._rows if r.name == spec.name and r.state == "waiting"]
        for row in candidates:
            try:
                if spec.parse_arguments(row.arguments) == kwargs:
                    return row
            except ToolError:
                continue
        return candidates[0] if candidates else None

    def _started(self, spec: ToolSpec, kwargs: dict[str, Any]) -> ToolRow:
        row = self._row_for(spec, kwargs) or ToolRow(spec.name, json.dumps(kwargs))
        row.state = "running"
        row.started = time.monotonic()
        self.narrator.tool_changed(row)
        return row

    def _finished(self, row: ToolRow, state: Any, output: str) -> None:
        row.finished = time.monotonic()
        row.state = state
        row.output = output
        self.narrator.tool_changed(row)

    def _watched(self, spec: ToolSpec) -> Callable[..., Any]:
        func = spec.func
        if spec.is_async:

            async def run_async(*args: Any, **kwargs: Any) -> Any:
                row = self._started(spec, kwargs)
                try:
                    value = await func(*args, **kwargs)
                except Exception as exc:
                    self._finished(row, "raised", f"{type(exc).__name__}: {exc}")
                    raise
                except BaseException:
                    self._finished(row, "stopped", "")
                    raise
                self._finished(row, "done", encode_output(value))
                return value

            return run_async

        def run_sync(*args: Any, **kwargs: Any) -> Any:
            row = self._started(spec, kwargs)
            try:
                value = func(*args, **kwargs)
            except Exception as exc:
                self._finished(row, "raised", f"{type(exc).__name__}: {exc}")
                raise
            self._finished(row, "done", encode_output(value))
            return value

        return run_sync


# --------------------------------------------------------------------------------------------
# Options and scenarios
# --------------------------------------------------------------------------------------------


@attrs.frozen
class DemoOptions:
    base_url: str | None = None
    api_key: str | None = None
    assistant_id: str | None = None
    model: str = "gpt-4o"
    azure_endpoint: str | None = None
    api_version: str | None = None
    scenario: str | None = None
    diagram: str | None = None
    output: Literal["auto", "rich", "plain"] = "auto"
    backend: Literal["assistants", "sessions"] = "assistants"

    @property
    def remote(self) -> bool:
        return self.base_url is not None or self.azure_endpoint is not None


class UsageError(Exception):
    """Options that do not go together."""


def _check(options: DemoOptions) -> None:
    if options.backend not in BACKENDS:
        raise UsageError(f"unknown backend {options.backend!r}; one of {', '.join(BACKENDS)}")
    if options.backend == "sessions":
        _check_sessions(options)
    if options.base_url is not None and options.azure_endpoint is not None:
        raise UsageError("give --base-url or --azure-endpoint, not both")
    if options.scenario is not None and options.remote:
        raise UsageError(
            "--scenario makes the embedded emulator misbehave; it cannot be used "
            "with --base-url or --azure-endpoint"
        )
    if options.scenario is not None and options.scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {options.scenario!r}; one of {', '.join(SCENARIOS)}")
    if (
        options.azure_endpoint is not None
        and options.api_version is None
        and not os.environ.get("OPENAI_API_VERSION")
    ):
        raise UsageError("--azure-endpoint needs --api-version (or OPENAI_API_VERSION)")
    if options.output == "rich" or (options.output == "auto" and sys.stdout.isatty()):
        _require("rich", "the live output (--output rich)")
    if options.base_url is None and options.azure_endpoint is None:
        for module in ("starlette", "uvicorn"):
            _require(module, "the embedded emulator (or give --base-url)")
    if options.diagram is not None:
        suffix = options.diagram.rsplit(".", 1)[-1]
        if suffix not in ("mmd", "mermaid", "dot", "gv", "svg", "png"):
            raise UsageError("--diagram FILE must end in .mmd, .dot, .svg or .png")
        if suffix in ("svg", "png"):
            try:
                require_graphviz(suffix)
            except GraphvizNotFound as exc:
                raise UsageError(f"--diagram {options.diagram}: {exc}") from None


def _check_sessions(options: DemoOptions) -> None:
    """What ``--backend sessions`` cannot take: it runs on the embedded emulator only."""
    if options.remote:
        raise UsageError(
            "--backend sessions runs on the embedded emulator only (the agent's MCP server and "
            "its approval are the emulator's); drop --base-url and --azure-endpoint"
        )
    if options.assistant_id is not None:
        raise UsageError(
            "--assistant-id is for --backend assistants; a session's agent is given with the "
            "session"
        )
    if options.scenario is not None:
        raise UsageError(
            "--scenario scripts the Assistants emulator's misbehaviour; it cannot be used with "
            "--backend sessions"
        )


def _require(module: str, what: str) -> None:
    """``module`` is importable, or a one-line ``UsageError`` names the extra to install."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise UsageError(
            f"{what} needs {module!r}, which is not installed: pip install 'runmachine[cli]'"
        ) from None


_PARIS = {"location": "Paris"}


@attrs.frozen
class _Plan:
    """One scenario: the user's message, the emulator's script, options for the machine, and what
    the narration should explain."""

    turn: str
    scenario: Scenario
    machine_options: dict[str, Any]
    explain: str
    slow_seconds: float = 1.0


def _plan(name: str) -> _Plan:
    from runmachine.testing import Faults, HTTPFault, Scenario

    two = [("get_current_temperature", _PARIS), ("get_rain_probability", _PARIS)]
    if name == "dropped-stream":
        return _Plan(
            "call get_current_temperature and get_rain_probability for Paris.",
            Scenario().tool_round(two).with_faults(Faults(drop_after={1: 10})),
            {},
            "the emulator drops the stream that follows the submission in the middle of the "
            "answer; the driver recovers by polling, and re-reads the lost text with "
            "messages.list",
        )
    if name == "loop":
        return _Plan(
            "call get_current_temperature for Paris.",
            Scenario().loop([("get_current_temperature", _PARIS)]),
            {},
            "the emulator asks for the same tool call round after round; past "
            "max_identical_rounds=3 the run is cancelled and RequiresActionLoop is raised",
        )
    if name == "slow-tool":
        return _Plan(
            "call get_current_temperature and slow_forecast for Paris.",
            Scenario(ttl=6.0).tool_round(
                [("get_current_temperature", _PARIS), ("slow_forecast", _PARIS)]
            ),
            {"deadline_margin": 3.0},
            "the run expires 6 s after it starts and slow_forecast would take 60 s; with "
            "deadline_margin=3 the tool is cancelled in time, gets an error output, and the run "
            "completes instead of expiring",
            slow_seconds=60.0,
        )
    assert name == "submit-5xx"
    # The emulator names the endpoint as the table names the trigger that calls it.
    first_submit_fails = HTTPFault(lifecycle.SUBMIT, nth=1, status=500)
    # attrs' converter=tuple leaves mypy an unsolved type variable for this field.
    faults = Faults(http_errors=[first_submit_fails])
    return _Plan(
        "call get_current_temperature and get_rain_probability for Paris.",
        Scenario().tool_round(two).with_faults(faults),
        {},
        "the emulator answers the first submit_tool_outputs with a 500; the driver re-reads the "
        "run, sees it still waits on that round, and submits the same outputs once more",
    )


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------


def _client(options: DemoOptions, base_url: str | None) -> openai.AsyncOpenAI:
    import openai

    if options.azure_endpoint is not None:
        return openai.AsyncAzureOpenAI(
            azure_endpoint=options.azure_endpoint,
            api_version=options.api_version,
            api_key=options.api_key,
        )
    if base_url is not None:
        # The emulator takes any key; a local compatible server often needs none.
        key = options.api_key or os.environ.get("OPENAI_API_KEY") or "demo"
        return openai.AsyncOpenAI(base_url=base_url, api_key=key)
    return openai.AsyncOpenAI(api_key=options.api_key)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _summary(result: RunResult, elapsed: float, approvals: int | None = None) -> str:
    answered = "" if approvals is None else f"{_plural(approvals, 'approval')}, "
    return (
        f"{_subject(result)}: {result.status}, {_plural(result.rounds, 'round')}, "
        f"{_plural(len(result.tool_calls), 'tool call')}, {answered}{elapsed:.2f} s"
    )


def _write_diagram(result: RunResult, path: str, narrator: Narrator) -> None:
    suffix = path.rsplit(".", 1)[-1]
    fmt = {"mmd": "mermaid", "mermaid": "mermaid", "gv": "dot"}.get(suffix, suffix)
    drawing = result.diagram(fmt)
    with open(path, "wb") as out:
        out.write(drawing if isinstance(drawing, bytes) else drawing.encode())
    narrator.note(f"trace diagram ({fmt}) written to {path}")


def _server_view(emulator: Emulator, machine: DemoMachine, narrator: Narrator) -> None:
    if machine.turn_core is not None:
        _turn_view(emulator, machine.turn_id, narrator)
        return
    run_id = machine.run_id
    if run_id is None:
        return
    stats = emulator.run_stats(run_id)
    narrator.note(
        f"the emulator saw: run {stats.status}, {_plural(stats.rounds, 'tool round')}, "
        f"{_plural(stats.submissions_received, 'submission')} "
        f"({stats.submissions_accepted} accepted, {stats.submissions_rejected} rejected, "
        f"{stats.submissions_faulted} faulted), "
        f"{_plural(stats.cancel_requests, 'cancel request')}, "
        f"{_plural(stats.requests.get('retrieve_run', 0), 'runs.retrieve poll')}"
    )


def _turn_view(emulator: Emulator, turn_id: str | None, narrator: Narrator) -> None:
    if turn_id is None:
        return
    stats = emulator.turn_stats(turn_id)
    decided = ", ".join(f"{request}: {d}" for request, d in stats.approvals.items())
    narrator.note(
        f"the emulator saw: turn {stats.status}, {_plural(stats.rounds, 'tool round')}, "
        f"{_plural(sum(stats.results_applied.values()), 'tool result')} applied "
        f"({_plural(stats.result_posts, 'POST')}, {stats.replays} replayed), "
        f"{_plural(len(stats.approvals), 'approval')}{f' ({decided})' if decided else ''}, "
        f"{_plural(stats.cancels, 'cancel input')}"
    )


#: What a turn of the demo is, once prepared: the machine that drives it, and the call that does.
_Prepared: TypeAlias = tuple[DemoMachine, Callable[[], Awaitable["RunResult"]]]


async def _drive_turns(
    turns: Sequence[str],
    prepare: Callable[[str, RunResult | None], Awaitable[_Prepared]],
    options: DemoOptions,
    narrator: Narrator,
    emulator: Emulator | None,
    server_view: bool,
) -> int:
    """Drive the user's ``turns`` one after the other (each a run, or a session's turn) and
    narrate how each ended; ``prepare`` readies one (given the previous result)."""
    code = EXIT_OK
    result: RunResult | None = None
    for turn in turns:
        narrator.user(turn)
        machine, drive = await prepare(turn, result)
        started = time.monotonic()
        try:
            result = await drive()
        except RunAborted as exc:
            narrator.failure(f"{type(exc).__name__}: {exc}")
            if exc.result is not None:
                narrator.trace(exc.result)
                elapsed = time.monotonic() - started
                narrator.summary(_summary(exc.result, elapsed, _answered(machine)), False)
            if emulator is not None:
                _server_view(emulator, machine, narrator)
            return EXIT_NOT_COMPLETED
        elapsed = time.monotonic() - started
        narrator.text_done()
        if result.text.strip() != machine.streamed.strip():
            if _is_turn(result):
                narrator.note("text of the turn, re-read from its items after the stream broke:")
            else:
                narrator.note("text of the run, re-read with messages.list after the stream broke:")
            narrator.note(f"assistant: {result.text}")
        if emulator is not None and server_view:
            _server_view(emulator, machine, narrator)
        ok = result.status == lifecycle.COMPLETED
        if not ok:
            code = EXIT_NOT_COMPLETED
            narrator.failure(f"{_subject(result)} ended {result.status}{_why(result)}")
        if turn is turns[-1] or not ok:
            narrator.trace(result)
        narrator.summary(_summary(result, elapsed, _answered(machine)), ok)
        if not ok:
            break
    if result is not None and options.diagram is not None:
        _write_diagram(result, options.diagram, narrator)
    return code


def _answered(machine: DemoMachine) -> int | None:
    """How many approvals a turn's machine answered (None for a run: runs have none)."""
    return len(machine.decisions) if machine.turn_core is not None else None


def _why(result: RunResult) -> str:
    """What the server said of a run or turn that did not complete (or what it waits on)."""
    if result.pending_approvals:
        waiting = ", ".join(_approval_text(a) for a in result.pending_approvals)
        return f", waiting on approval of {waiting}"
    error: Any = result.turn.error if result.turn is not None else None
    if error is None and result.run is not None:
        error = result.run.last_error
    return f": {error.code}: {error.message}" if error is not None else ""


async def _conversation(
    client: openai.AsyncOpenAI,
    options: DemoOptions,
    narrator: Narrator,
    emulator: Emulator | None,
) -> int:
    import openai

    created_assistant = False
    if options.assistant_id is not None:
        assistant_id = options.assistant_id
    else:
        with _sdk_call():
            request = client.beta.assistants.create(
                model=options.model,
                name="runmachine demo",
                instructions="You are a weather assistant. Use the tools you are asked to use.",
                tools=DemoMachine.tool_definitions(),
            )
        assistant_id = (await request).id
        created_assistant = True
    with _sdk_call():
        request_thread = client.beta.threads.create()
    thread_id = (await request_thread).id
    narrator.note(f"assistant {assistant_id}, thread {thread_id}")

    plan = _plan(options.scenario) if options.scenario is not None else None
    turns: Sequence[str] = (plan.turn,) if plan is not None else TURNS
    if plan is not None:
        assert emulator is not None
        emulator.enqueue(plan.scenario)
        narrator.note(f"scenario {options.scenario}: {plan.explain}")

    async def prepare(turn: str, previous: RunResult | None) -> _Prepared:
        with _sdk_call():
            request_message = client.beta.threads.messages.create(
                thread_id=thread_id, role="user", content=turn
            )
        await request_message
        machine = DemoMachine(client, narrator, **(plan.machine_options if plan else {}))
        if plan is not None:
            machine.slow_seconds = plan.slow_seconds
        return machine, lambda: machine.run(thread_id=thread_id, assistant_id=assistant_id)

    try:
        return await _drive_turns(turns, prepare, options, narrator, emulator, plan is not None)
    finally:
        if created_assistant and options.remote:
            with _sdk_call():
                delete = client.beta.assistants.delete(assistant_id)
            with anyio.CancelScope(shield=True), anyio.move_on_after(10), suppress(openai.APIError):
                await delete


def _archive_turn() -> TurnScenario:
    """The emulator's script for the second turn of the sessions demo: the agent asks to run
    ``past_weather`` on the MCP server (an approval), then calls two tools at once."""
    from runmachine.testing import TurnScenario

    oslo = {"location": "Oslo"}
    return (
        TurnScenario()
        .approval("mcp", server_label=ARCHIVE, name="past_weather", arguments=oslo)
        .tool_round([("get_current_temperature", oslo), ("get_rain_probability", oslo)])
    )


async def _session_conversation(
    client: openai.AsyncOpenAI,
    options: DemoOptions,
    narrator: Narrator,
    emulator: Emulator | None,
) -> int:
    """The sessions demo: ``create_session`` with the first turn, then a ``turn`` on it."""
    assert emulator is not None  # _check: the sessions demo needs the embedded emulator
    archive = {
        "type": "mcp",
        "server_label": ARCHIVE,
        "transport": {"type": "http", "server_url": "https://weather-archive.example/mcp"},
    }
    agent = {"model": options.model, "tools": [*DemoMachine.agent_tool_definitions(), archive]}
    narrator.note(
        f"an agent with the demo's three tools and one MCP server, {ARCHIVE}; the first turn "
        "creates the session"
    )

    async def prepare(turn: str, previous: RunResult | None) -> _Prepared:
        machine = DemoMachine(client, narrator)
        if previous is None:
            return machine, lambda: machine.create_session(
                environment={"type": "none"}, agent=agent, input=turn
            )
        emulator.enqueue_turn(_archive_turn())
        narrator.note(
            f"scripted on the emulator: the agent asks to run past_weather on {ARCHIVE} (an "
            "MCP approval request), then calls two tools at once"
        )
        session_id = previous.session_id
        assert session_id is not None
        return machine, lambda: machine.turn(session_id=session_id, input=turn)

    return await _drive_turns(SESSION_TURNS, prepare, options, narrator, emulator, True)


async def run_demo(options: DemoOptions, narrator: Narrator) -> int:
    """Run the demo with ``options``, reporting through ``narrator``; returns the exit code."""
    if options.remote:
        where = options.azure_endpoint or options.base_url
        narrator.note(f"runmachine demo against {where}")
        async with _client(options, options.base_url) as client:
            return await _conversation(client, options, narrator, None)

    from runmachine.testing import Emulator

    sessions = options.backend == "sessions"
    api = "agent-sessions" if sessions else "Assistants"
    conversation = _session_conversation if sessions else _conversation
    emulator = Emulator(delta_delay=0.02, poll_after_ms=200)
    with emulator.serve() as base_url:
        narrator.note(f"runmachine demo: the embedded emulator serves the {api} API at {base_url}")
        async with _client(options, base_url) as client:
            return await conversation(client, options, narrator, emulator)


def _narrator(output: str) -> Narrator:
    if output == "plain":
        return PlainNarrator(sys.stdout)
    try:
        from rich.console import Console
    except ImportError:  # auto, not on a terminal: plain lines need no rich
        return PlainNarrator(sys.stdout)

    console = Console(force_terminal=True) if output == "rich" else Console()
    if output == "auto" and not console.is_terminal:
        return PlainNarrator(sys.stdout)
    return RichNarrator(console)


def _describe(exc: BaseException, options: DemoOptions) -> tuple[int, str]:
    import openai

    where = options.azure_endpoint or options.base_url or "the embedded emulator"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        reason = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        return EXIT_SERVER, f"could not connect to {where}: {exc}{reason}"
    if isinstance(exc, openai.APIStatusError):
        return EXIT_SERVER, f"{where} answered {exc.status_code}: {exc.message}"
    if isinstance(exc, openai.OpenAIError):
        return EXIT_SERVER, f"{type(exc).__name__}: {exc}"
    return EXIT_NOT_COMPLETED, f"{type(exc).__name__}: {exc}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``runmachine demo`` options."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="assistants",
        help="assistants: Assistants runs (the default); sessions: agent-session turns, with an "
        "MCP approval answered by on_approval_request (embedded emulator only)",
    )
    real = parser.add_argument_group("a real endpoint instead of the embedded emulator")
    real.add_argument("--base-url", help="an OpenAI-compatible API, e.g. https://api.openai.com/v1")
    real.add_argument("--api-key", help="default: OPENAI_API_KEY (AZURE_OPENAI_API_KEY for Azure)")
    real.add_argument(
        "--assistant-id",
        help="use this assistant (it must have the demo's tools) instead of creating one",
    )
    real.add_argument(
        "--model",
        default="gpt-4o",
        help="model (Azure: deployment) of the assistant the demo creates (default: gpt-4o)",
    )
    real.add_argument("--azure-endpoint", help="use AsyncAzureOpenAI with this endpoint")
    real.add_argument("--api-version", help="Azure API version (default: OPENAI_API_VERSION)")
    parser.add_argument(
        "--scenario",
        choices=SCENARIOS,
        help="make the emulator misbehave to watch a guard: a dropped stream, a requires_action "
        "loop, a slow tool near the run's expiry, a 5xx on submit",
    )
    parser.add_argument(
        "--diagram",
        metavar="FILE",
        help="also write the last run's (or turn's) trace diagram (.mmd, .dot, .svg or .png)",
    )
    parser.add_argument(
        "--output",
        choices=("auto", "rich", "plain"),
        default="auto",
        help="rich in a terminal, plain text otherwise (default: auto)",
    )


def options_from(args: argparse.Namespace) -> DemoOptions:
    return DemoOptions(
        base_url=args.base_url,
        api_key=args.api_key,
        assistant_id=args.assistant_id,
        model=args.model,
        azure_endpoint=args.azure_endpoint,
        api_version=args.api_version,
        scenario=args.scenario,
        diagram=args.diagram,
        output=args.output,
        backend=args.backend,
    )


def main(options: DemoOptions | None = None) -> int:
    """Run the demo; print any failure readably and return the exit code (see the module)."""
    options = options or DemoOptions()
    try:
        _check(options)
    except UsageError as exc:
        print(f"runmachine demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    narrator = _narrator(options.output)
    try:
        return anyio.run(run_demo, options, narrator)
    except KeyboardInterrupt:
        narrator.close()
        print("runmachine demo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the demo reports any failure readably
        code, message = _describe(exc, options)
        narrator.close()
        print(f"runmachine demo failed: {message}", file=sys.stderr)
        return code
    finally:
        narrator.close()
