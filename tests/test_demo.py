"""``runmachine demo`` in a subprocess: the conversation, each ``--scenario``, the rich output, a
real ``--base-url``, the readable failures with their exit codes, and ``--backend sessions`` (with
``runmachine diagram --backend sessions``)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runmachine.cli import main
from runmachine.demo import EXIT_NOT_COMPLETED, EXIT_OK, EXIT_SERVER, EXIT_USAGE
from runmachine.diagrams import draw_lifecycle
from runmachine.testing import Emulator

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
_RUN_LINE = re.compile(r"^run (run_\w+): (\w+), (\d+) rounds?, (\d+) tool calls?, ", re.M)
_TURN_LINE = re.compile(
    r"^turn (turn_\w+): (\w+), (\d+) rounds?, (\d+) tool calls?, (\d+) approvals?, ", re.M
)


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runmachine.cli", "demo", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
        # Wide enough that rich does not wrap the lines asserted on.
        env={**os.environ, "COLUMNS": "200"},
    )


def test_demo_runs_a_two_turn_conversation_in_plain_text() -> None:
    done = demo()
    assert done.returncode == EXIT_OK, done.stderr
    out = done.stdout
    # Two user turns, each its own run; the first takes two rounds, the second one.
    runs = _RUN_LINE.findall(out)
    assert [(status, rounds, calls) for _, status, rounds, calls in runs] == [
        ("completed", "2", "3"),
        ("completed", "1", "2"),
    ]
    # The tool calls with their arguments, parallel in round 1, then their outputs.
    assert 'round 1: tool call get_current_temperature({"location": "Paris"}) ...' in out
    assert 'round 1: tool call get_rain_probability({"location": "Paris"}) ...' in out
    assert 'round 2: tool call slow_forecast({"location": "Paris"}) ...' in out
    assert "get_current_temperature -> '18 degrees C in Paris' (" in out
    assert "slow_forecast -> 'dry all week in Paris' (" in out
    assert 'round 1: tool call get_rain_probability({"location": "Oslo"}) ...' in out
    # Every transition as it happens, in order, for the first run.
    first = out[: out.index("user: and for Oslo?")]
    transitions = re.findall(r"\[(\w+) -> (\w+)\]", first)
    assert transitions == [
        ("pending", "queued"),
        ("queued", "in_progress"),
        ("in_progress", "requires_action"),
        ("requires_action", "submitting"),
        ("submitting", "queued"),
        ("queued", "in_progress"),
        ("in_progress", "requires_action"),
        ("requires_action", "submitting"),
        ("submitting", "queued"),
        ("queued", "in_progress"),
        ("in_progress", "completed"),
    ]
    # The streamed text, and the trace of the last run.
    assert (
        'assistant: get_current_temperature returned "18 degrees C in Paris". '
        'get_rain_probability returned "0.2". slow_forecast returned "dry all week in Paris".'
    ) in out
    assert f"trace of run {runs[1][0]} on the lifecycle table:" in out
    assert re.search(r"in_progress -> completed +thread\.run\.completed +x1", out)
    assert "ended in completed; never visited: cancelling, failed" in out


def test_scenario_dropped_stream_recovers_by_polling() -> None:
    done = demo("--scenario", "dropped-stream")
    assert done.returncode == EXIT_OK, done.stderr
    out = done.stdout
    assert "the stream broke (" in out
    # Only part of the answer streamed; the rest came back from messages.list.
    assert "re-read with messages.list after the stream broke" in out
    assert (
        'assistant: get_current_temperature returned "18 degrees C in Paris". '
        'get_rain_probability returned "0.2".'
    ) in out
    polls = re.search(
        r"the emulator saw: run completed, 1 tool round, .* (\d+) runs\.retrieve", out
    )
    assert polls is not None and int(polls.group(1)) >= 1, out


def test_scenario_loop_is_stopped_by_the_guard_and_exits_1() -> None:
    done = demo("--scenario", "loop")
    assert done.returncode == EXIT_NOT_COMPLETED, done.stderr
    out = done.stdout
    assert "FAILED: RequiresActionLoop: run run_" in out
    assert "past max_identical_rounds=3; the run was cancelled" in out
    assert "[requires_action -> cancelling]  (cancel)" in out
    assert "round 4: tool call get_current_temperature" in out
    # The server's view: three rounds were taken, then the run was cancelled.
    assert re.search(
        r"the emulator saw: run cancel(led|ling), 4 tool rounds, 3 submissions \(3 accepted", out
    ), out
    assert "stopped in cancelled" in out


def test_scenario_slow_tool_is_cut_before_the_run_expires() -> None:
    done = demo("--scenario", "slow-tool")
    assert done.returncode == EXIT_OK, done.stderr
    out = done.stdout
    assert "slow_forecast !! stopped after" in out
    assert "get_current_temperature -> '18 degrees C in Paris'" in out
    # The model saw the deadline error output, and the run completed instead of expiring.
    assert "was still running 3.0 s before the run's expires_at" in out
    assert "the emulator saw: run completed, 1 tool round, 1 submission (1 accepted" in out


def test_scenario_submit_5xx_in_rich_output() -> None:
    done = demo("--scenario", "submit-5xx", "--output", "rich")
    assert done.returncode == EXIT_OK, done.stderr
    out = _ANSI.sub("", done.stdout)
    assert "requires_action → submitting  submit_tool_outputs" in out
    assert "submitting → requires_action  submission_not_accepted" in out
    assert "so the same outputs go again" in out
    assert 'get_current_temperature({"location": "Paris"}) ✓ \'18 degrees C in Paris\'' in out
    assert 'get_rain_probability({"location": "Paris"}) ✓ \'0.2\'' in out
    assert 'get_rain_probability returned "0.2".' in out
    assert "2 submissions (1 accepted, 0 rejected, 1 faulted)" in out
    assert "trace of run run_" in out
    assert re.search(
        r"submitting\s*│\s*requires_action\s*│\s*submission_not_accepted\s*│\s*×1", out
    )


def test_base_url_runs_the_demo_against_a_served_emulator(tmp_path: Path) -> None:
    emulator = Emulator()
    diagram = tmp_path / "trace.mmd"
    with emulator.serve() as base_url:
        done = demo("--base-url", base_url, "--api-key", "k", "--diagram", str(diagram))
        assert done.returncode == EXIT_OK, done.stderr
        runs = _RUN_LINE.findall(done.stdout)
        assert len(runs) == 2
        stats = [emulator.run_stats(run_id) for run_id, *_ in runs]
    assert [(s.status, s.submissions_accepted) for s in stats] == [
        ("completed", 2),
        ("completed", 1),
    ]
    text = diagram.read_text()
    assert text.startswith("---\ntitle: RunMachine, one run\n---\nstateDiagram-v2")
    assert "in_progress --> completed : thread.run.completed ×1" in text


def test_unreachable_base_url_is_a_readable_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more.
    done = demo("--base-url", f"http://127.0.0.1:{port}/v1")
    assert done.returncode == EXIT_SERVER
    assert f"runmachine demo failed: could not connect to http://127.0.0.1:{port}/v1" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "loop", "--base-url", "http://127.0.0.1:1/v1"], "--scenario makes"),
        (["--diagram", "trace.txt"], "--diagram FILE must end in"),
        (["--backend", "sessions", "--scenario", "loop"], "it cannot be used with --backend"),
        (
            ["--backend", "sessions", "--base-url", "http://127.0.0.1:1/v1"],
            "--backend sessions runs on the embedded emulator only",
        ),
        (["--backend", "sessions", "--assistant-id", "asst_1"], "--assistant-id is for"),
        (["--backend", "sessions", "--diagram", "trace.txt"], "--diagram FILE must end in"),
        (["--backend", "threads"], "invalid choice: 'threads'"),
    ],
)
def test_bad_options_exit_2(args: list[str], message: str) -> None:
    done = demo(*args)
    assert done.returncode == EXIT_USAGE
    assert message in done.stderr
    assert done.stdout == ""


def test_12_a_missing_graphviz_is_reported_before_the_demo_starts(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runmachine.cli", "demo", "--diagram", str(tmp_path / "t.svg")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PATH": str(tmp_path)},  # no Graphviz on this PATH
    )
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "needs Graphviz's 'dot' program" in done.stderr
    assert "apt-get install graphviz" in done.stderr
    assert "user:" not in done.stdout  # nothing ran


@pytest.mark.parametrize(
    ("missing", "args", "says"),
    [
        ("rich", ["--output", "rich"], "the live output (--output rich) needs 'rich'"),
        ("uvicorn", ["--output", "plain"], "the embedded emulator (or give --base-url) needs"),
    ],
)
def test_10_a_missing_extra_is_one_line_that_names_it(
    missing: str, args: list[str], says: str
) -> None:
    # As on a bare `pip install runmachine`: the module cannot be imported.
    code = (
        f"import sys; sys.modules[{missing!r}] = None; from runmachine.cli import main; "
        f"sys.exit(main(['demo', *{args!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert says in done.stderr
    assert "pip install 'runmachine[cli]'" in done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------------------------
# --backend sessions: agent-session turns, with an approval
# --------------------------------------------------------------------------------------------


def test_sessions_demo_shows_rounds_parallel_calls_an_approval_and_the_turn_trace(
    tmp_path: Path,
) -> None:
    diagram = tmp_path / "turn.mmd"
    done = demo("--backend", "sessions", "--output", "plain", "--diagram", str(diagram))
    assert done.returncode == EXIT_OK, done.stderr
    out = done.stdout
    assert "the embedded emulator serves the agent-sessions API at http://127.0.0.1:" in out
    # Two turns on one session: create_session with the first, then a turn on it.
    named = re.findall(r"^session (sess_\w+), turn (turn_\w+)$", out, re.M)
    assert len(named) == 2 and named[0][0] == named[1][0]
    turns = _TURN_LINE.findall(out)
    assert [t[0] for t in turns] == [turn for _, turn in named]
    assert [
        (status, rounds, calls, approvals) for _, status, rounds, calls, approvals in turns
    ] == [
        ("completed", "2", "3", "0"),
        ("completed", "2", "2", "1"),
    ]
    first, second = out.split("user: and for Oslo?")
    # The first turn: two parallel calls in round 1 (one required action lists both), then a
    # third in round 2, then the streamed answer; every transition as it happens, in order.
    round_1 = first[: first.index("[requires_action -> submitting]")]
    assert 'round 1: tool call get_current_temperature({"location": "Paris"}) ...' in round_1
    assert 'round 1: tool call get_rain_probability({"location": "Paris"}) ...' in round_1
    assert 'round 2: tool call slow_forecast({"location": "Paris"}) ...' in first
    assert "get_current_temperature -> '18 degrees C in Paris' (" in first
    assert "slow_forecast -> 'dry all week in Paris' (" in first
    assert re.findall(r"\[(\w+) -> (\w+)\]  \(([\w.]+)\)", first) == [
        ("pending", "queued", "agent.session.turn.created"),
        ("queued", "in_progress", "agent.session.in_progress"),
        ("in_progress", "requires_action", "agent.session.requires_action"),
        ("requires_action", "submitting", "submit_tool_outputs"),
        ("submitting", "in_progress", "agent.session.in_progress"),
        ("in_progress", "requires_action", "agent.session.requires_action"),
        ("requires_action", "submitting", "submit_tool_outputs"),
        ("submitting", "in_progress", "agent.session.in_progress"),
        ("in_progress", "completed", "agent.session.turn.completed"),
    ]
    assert (
        'assistant: get_current_temperature returned "18 degrees C in Paris". '
        'get_rain_probability returned "0.2". slow_forecast returned "dry all week in Paris".'
    ) in first
    # The second turn: an MCP approval request, answered by on_approval_request as it comes,
    # before the round is answered; then two parallel calls.
    request = 'round 1: approval request weather-archive: past_weather({"location": "Oslo"}) ...'
    decided = "on_approval_request -> approve (weather-archive is a known MCP server)"
    answered = second.index("[requires_action -> submitting]")
    assert second.index(request) < second.index(decided) < answered
    assert 'round 2: tool call get_current_temperature({"location": "Oslo"}) ...' in second
    assert 'round 2: tool call get_rain_probability({"location": "Oslo"}) ...' in second
    assert (
        'assistant: past_weather returned "past_weather ran on weather-archive.". '
        'get_current_temperature returned "18 degrees C in Oslo". '
        'get_rain_probability returned "0.2".'
    ) in second
    # What the server saw: the approval applied as decided, each result applied once.
    assert re.search(
        r"the emulator saw: turn completed, 1 tool round, 2 tool results applied "
        r"\(2 POSTs, 0 replayed\), 1 approval \(apr_\w+: approve\), 0 cancel inputs",
        second,
    ), second
    # The last turn's trace on the turn table, and its diagram.
    assert f"trace of turn {turns[1][0]} on the lifecycle table:" in second
    assert re.search(r"in_progress -> requires_action +agent\.session\.requires_action +x2", out)
    assert "ended in completed; never visited: cancelling, failed, cancelled" in second
    assert f"trace diagram (mermaid) written to {diagram}" in out
    text = diagram.read_text()
    assert "stateDiagram-v2" in text
    assert (
        "in_progress --> requires_action : agent.session.requires_action [requires a new round]"
        " ×2" in text
    )
    assert "in_progress --> completed : agent.session.turn.completed ×1" in text
    assert "thread.run." not in text


def test_sessions_demo_in_rich_output() -> None:
    done = demo("--backend", "sessions", "--output", "rich")
    assert done.returncode == EXIT_OK, done.stderr
    out = _ANSI.sub("", done.stdout)
    shown = [
        'round 1 approval weather-archive: past_weather({"location": "Oslo"})',
        "✓ approve (weather-archive is a known MCP server) on_approval_request",
        "in_progress → requires_action  agent.session.requires_action",
        "requires_action → submitting  submit_tool_outputs",
        'get_rain_probability({"location": "Oslo"}) ✓ \'0.2\'',
    ]
    assert [line for line in shown if line not in out] == []
    assert re.search(r"in_progress\s*│\s*completed\s*│\s*agent\.session\.turn\.completed", out)
    assert len(_TURN_LINE.findall(out)) == 2


# --------------------------------------------------------------------------------------------
# runmachine diagram --backend
# --------------------------------------------------------------------------------------------


def test_diagram_backend_sessions_draws_the_turn_lifecycle(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["diagram", "--backend", "sessions"]) == 0
    drawn = capsys.readouterr().out
    assert drawn == draw_lifecycle(format="mermaid", backend="sessions")
    assert "agent.session.turn.created" in drawn and "thread.run." not in drawn
    # The default is unchanged: an Assistants run's table.
    assert main(["diagram", "--backend", "assistants"]) == 0
    assert capsys.readouterr().out == draw_lifecycle(format="mermaid")


def test_diagram_backend_sessions_of_a_class_writes_its_hooks_on_the_turn_states(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "turn_machines.py").write_text(
        "from runmachine import RunMachine\n\n"
        "class Reviewer(RunMachine):\n"
        "    def on_enter_requires_action(self, turn):\n"
        "        pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "reviewer.dot"
    args = ["diagram", "turn_machines:Reviewer", "--backend", "sessions", "--format", "dot"]
    assert main([*args, "-o", str(out)]) == 0
    text = out.read_text()
    assert "on_enter_requires_action" in text
    assert "agent.session.requires_action" in text and "thread.run." not in text


def test_diagram_backend_must_be_one_of_the_two(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["diagram", "--backend", "threads"])
    assert exit_.value.code == 2
    assert "invalid choice: 'threads'" in capsys.readouterr().err
