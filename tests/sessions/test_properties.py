"""Property test of the turn driver: generated turns and fault schedules, real SDK and HTTP.

The agent-sessions counterpart of ``tests/driver/test_properties.py``. Hypothesis generates what
the emulated agent does in one turn (text replies; tool rounds of one to four parallel calls
across known and unknown tools with good, malformed (not JSON) and mistyped arguments, tools
that raise and time out; loops of the same calls, ``times`` 1-3 or without end; MCP and
computer-use approvals; sometimes a failing end, of the turn or of the whole session), how the
machine answers approvals (an ``on_approval_request`` policy per kind: approve, deny, cancel, or
``None``, which leaves the turn waiting), the faults the wire injects (streams cut and events
sent twice at any index of the turn's events, lost answers to result POSTs, the ``Unknown
pending tool call`` race) and the machine's options (tool concurrency, round limits). Each
example creates a session with the raw SDK (strict response validation), drives one
``RunMachine.turn()`` against the emulator, on asyncio and on trio, and checks what the server
saw:

* every call the server asked for took at most one result (exactly one when the turn got past
  its round), no result was refused as a conflict, and every tool body ran at most once per call
  id (exactly once for a valid call whose round was answered, never for one that was not);
* ``turn()`` returned a ``RunResult`` that agrees with the server's turn (``completed``,
  ``failed``, or ``requires_action`` with ``pending_approvals`` exactly when the policy left an
  approval unanswered, the server's turn then ``waiting``), or raised one of the documented
  errors (``RequiresActionLoop``, ``TooManyRounds``) with the partial result and the server's
  turn cancelled;
* the result's text is the text the server holds in the turn's assistant messages (no text lost
  despite cut streams), and those messages are the scenario's replies (and the emulator's
  answer after a last round);
* the approvals the server took are the policy's decisions, and none it left unanswered;
* the outcome, the round count and the rounds the server asked are what a model of the
  scenario and of the guards predicts.

The bugs these checks found are kept as separate regression tests at the end (``xfail`` while
they stand).

Hypothesis does not drive async tests, so each example runs ``anyio.run(..., backend=...)``
inside a sync test parametrized over the backend, against one emulator served for the module.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import openai
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from runmachine import RunMachine, tool
from runmachine.errors import RequiresActionLoop, RunAborted, TooManyRounds
from runmachine.testing import Emulator, HTTPFault, TurnFaults, TurnScenario

from ..strategies import Call, calls_st

MAX_EXAMPLES = int(os.environ.get("RUNMACHINE_PROPERTY_EXAMPLES", "25"))
"""Per backend. The suite's default keeps the file under 40 s on two cores; explore more with
``HYPOTHESIS_PROFILE=explore RUNMACHINE_PROPERTY_EXAMPLES=200``."""

HANG_GUARD = 60.0
"""A turn that has not ended after this long is a hang (a failure), not a slow example."""

MCP = "mcp_approval_request"
COMPUTER = "computer_use_approval_request"
KIND_OF = {"mcp": MCP, "computer_use": COMPUTER}

# ---------------------------------------------------------------------------------------------
# The machine under test
# ---------------------------------------------------------------------------------------------

#: The call id whose tool is about to run, set by ``on_tool_started`` in the task (and copied
#: into the worker thread) that then runs the tool's body.
_CALL: ContextVar[str | None] = ContextVar("_CALL", default=None)


class PropMachine(RunMachine):
    """Tools of every kind (async, sync in a worker thread, raising, timing out), each counting
    the runs of its body per call id; approvals answered by a per-kind policy."""

    def __init__(
        self, client: openai.AsyncOpenAI, policy: Mapping[str, str | None], **options: Any
    ) -> None:
        super().__init__(client, **options)
        self.policy = dict(policy)
        self.bodies: Counter[str] = Counter()
        self.asked: list[str] = []  # approval request ids, as the hook was asked

    def _ran(self) -> None:
        call_id = _CALL.get()
        assert call_id is not None, "a tool body ran without on_tool_started"
        self.bodies[call_id] += 1

    @tool
    async def echo(self, text: str) -> str:
        """Echo a text."""
        self._ran()
        await anyio.lowlevel.checkpoint()
        return f"echo:{text}"

    @tool
    def add(self, a: int, b: int) -> int:
        """Add two integers (a plain function: runs in a worker thread)."""
        self._ran()
        return a + b

    @tool
    async def explode(self) -> str:
        """Always raises."""
        self._ran()
        raise ValueError("kaboom")

    @tool(timeout=0.05)
    async def slow(self) -> str:
        """Never finishes within its timeout."""
        self._ran()
        await anyio.sleep_forever()
        return "never"

    def on_tool_started(self, tool_call: Any) -> None:
        _CALL.set(tool_call.id)

    def on_approval_request(self, request: Any) -> Any:
        self.asked.append(request.request_id)
        return self.policy[request.type]


# ---------------------------------------------------------------------------------------------
# Generated cases
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class Op:
    """One step of the scripted agent: reply, round, loop, approval, fail or session_fail."""

    kind: str
    text: str = ""
    calls: tuple[Call, ...] = ()
    times: int | None = None
    approval: str = "mcp"
    name: str = "search_docs"  # the MCP tool an MCP approval asks for

    def __repr__(self) -> str:
        if self.kind == "reply":
            return f"reply({self.text!r})"
        if self.kind == "round":
            return f"tool_round({list(self.calls)!r})"
        if self.kind == "loop":
            return f"loop({list(self.calls)!r}, times={self.times})"
        if self.kind == "approval":
            if self.approval == "mcp":
                return f"approval('mcp', name={self.name!r})"
            return "approval('computer_use')"
        return f"{self.kind}()"


@attrs.frozen
class Case:
    ops: tuple[Op, ...]
    faults: TurnFaults
    options: dict[str, Any]
    policy: dict[str, str | None]  # approval kind -> what on_approval_request returns

    def scenario(self) -> TurnScenario:
        scenario = TurnScenario()
        for op in self.ops:
            if op.kind == "reply":
                scenario = scenario.reply(op.text)
            elif op.kind == "round":
                scenario = scenario.tool_round(op.calls)
            elif op.kind == "loop":
                scenario = scenario.loop(op.calls, times=op.times)
            elif op.kind == "approval":
                scenario = scenario.approval(op.approval, name=op.name)  # type: ignore[arg-type]
            elif op.kind == "fail":
                scenario = scenario.fail()
            else:
                scenario = scenario.session_fail()
        return scenario.with_faults(self.faults)


approval_st = st.builds(
    lambda k, n: Op("approval", approval=k, name=n),
    st.sampled_from(["mcp", "computer_use"]),
    st.sampled_from(["search_docs", "search_docs", "read_page"]),
)

reply_st = st.builds(
    lambda t: Op("reply", text=t), st.sampled_from(["Hi.", "Sunny, mild.", "Done!"])
)
round_st = st.builds(lambda c: Op("round", calls=c), calls_st)
loop_st = st.builds(
    lambda c, n: Op("loop", calls=c, times=n), calls_st, st.sampled_from([1, 2, 3, None])
)
# Approvals weigh twice, as above.
segment_st = st.sampled_from([reply_st, round_st, loop_st, approval_st, approval_st]).flatmap(
    lambda segment: segment
)

ending_st = st.sampled_from([(), (), (), (), (Op("fail"),), (Op("session_fail"),)])

ops_st = st.builds(
    lambda segments, ending: (*segments, *ending),
    st.lists(segment_st, max_size=4),
    ending_st,
)

options_st = st.fixed_dictionaries(
    {
        "tool_concurrency": st.integers(1, 4),
        "max_rounds": st.one_of(st.integers(1, 6), st.integers(4, 6)),
        "max_identical_rounds": st.integers(1, 4),
    }
)

decision_st = st.sampled_from(["approve", "approve", "deny", "cancel", None])
policy_st = st.fixed_dictionaries({MCP: decision_st, COMPUTER: decision_st})


def _indices(count: int, max_size: int) -> st.SearchStrategy[frozenset[int]]:
    # Early events (the turn's start, its first items and round) weigh more.
    index = st.one_of(st.integers(0, min(count, 12)), st.integers(0, count))
    return st.frozensets(index, max_size=max_size)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    ops = draw(ops_st)
    options = draw(options_st)
    policy = draw(policy_st)
    count = estimated_events(Case(ops, TurnFaults(), options, policy))
    faults = TurnFaults(
        drop_at=draw(_indices(count, 2)),
        duplicate=draw(_indices(count, 4)),
        lose_result_response=draw(st.frozensets(st.integers(1, 6), max_size=2)),
        pending_race=draw(st.sampled_from([0, 0, 0, 0, 1, 1, 2])),
    )
    return Case(ops, faults, options, policy)


# ---------------------------------------------------------------------------------------------
# A model of the turn: what the server asks, where the guards stop it, what it says
# ---------------------------------------------------------------------------------------------

AUTO = object()
"""Stands for the emulator's own answer after a last round or approval (quoting the outputs)."""


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return arguments


def _runs_body(name: str, arguments: str) -> bool:
    """Whether a call gets as far as its tool's body (a known tool, arguments that fit)."""
    try:
        args = json.loads(arguments)
    except ValueError:
        return False
    if name in ("explode", "slow"):
        return bool(args == {})
    if name == "echo":
        return set(args) == {"text"} and isinstance(args["text"], str)
    if name == "add":
        return set(args) == {"a", "b"} and all(type(v) is int for v in args.values())
    return False


@attrs.frozen
class Prediction:
    outcome: str  # a RunResult status, or the name of the error turn() raises
    rounds: int  # result.rounds: the required-action rounds the machine took on
    tool_rounds: int  # the function-call rounds the server asked (TurnStats.rounds)
    unanswered: int  # calls of the last round asked that the guards left without a result
    texts: tuple[object, ...]  # the turn's assistant messages: reply texts, AUTO
    decisions: tuple[str, ...]  # the approvals the server took, in order
    events: int  # about how many events the turn emits (to place stream faults)


def _steps(ops: tuple[Op, ...]) -> Iterator[Op]:
    """The scenario's operations as the server runs them: a loop as its rounds (a loop without
    end as many as asked for; the guards always stop it)."""
    for op in ops:
        if op.kind == "loop":
            count = 0
            while op.times is None or count < op.times:
                count += 1
                yield Op("round", calls=op.calls)
        else:
            yield op


def predict(case: Case) -> Prediction:
    """How the turn ends. A round is each time the session requires action of the turn (a
    function-call round or one approval), counted against ``max_rounds``; rounds are identical
    when they ask the same calls (names and arguments, whatever the ids) or the same approval.

    (The emulator asks an MCP approval for the tool named, on the same server with the same
    arguments, and every computer-use approval for the same origin.)"""
    opts = case.options
    rounds = identical = tool_rounds = 0
    last: Counter[tuple[str, str]] | None = None
    texts: list[object] = []
    decisions: list[str] = []
    answer_due = False
    events = 3  # turn.created, session.in_progress, turn.in_progress
    auto_tokens = 0

    def stop(outcome: str, unanswered: int = 0) -> Prediction:
        return Prediction(
            outcome,
            rounds,
            tool_rounds,
            unanswered,
            tuple(texts),
            tuple(decisions),
            events + 2,
        )

    for op in _steps(case.ops):
        if op.kind == "reply":
            texts.append(op.text)
            answer_due = False
            events += 5 + len(op.text.split()) * 2
            continue
        if op.kind in ("fail", "session_fail"):
            return stop("failed")
        signature: Counter[tuple[str, str]]
        if op.kind == "round":
            tool_rounds += 1
            signature = Counter((name, _canonical(args)) for name, args in op.calls)
            events += 2 * len(op.calls) + 1
        else:
            kind = KIND_OF[op.approval]
            request = op.name if op.approval == "mcp" else ""
            signature = Counter({(f"approval:{kind}", request): 1})
            events += 1
        rounds += 1
        identical = identical + 1 if signature == last else 1
        last = signature
        unanswered = len(op.calls)
        if rounds > opts["max_rounds"]:
            rounds -= 1
            return stop("TooManyRounds", unanswered)
        if identical > opts["max_identical_rounds"]:
            rounds -= 1
            return stop("RequiresActionLoop", unanswered)
        answer_due = True
        if op.kind == "round":
            events += len(op.calls) + 1
            auto_tokens += 20 * len(op.calls)
            continue
        decision = case.policy[KIND_OF[op.approval]]
        if decision is None:
            return stop("requires_action")
        decisions.append(decision)
        events += 1 + (2 if op.approval == "mcp" and decision == "approve" else 0)
        auto_tokens += 8
    if answer_due:
        texts.append(AUTO)
        events += 5 + auto_tokens
    return stop("completed")


def estimated_events(case: Case) -> int:
    return predict(case).events


# ---------------------------------------------------------------------------------------------
# The emulator, one per module
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator()
    with emulator.serve() as base_url:
        yield emulator, base_url


def _message_text(item: Any) -> str:
    return "".join(part.text for part in item.content if part.type == "output_text")


async def new_session(client: openai.AsyncOpenAI) -> str:
    """An idle session whose agent has the machine's tools, made with the raw SDK."""
    agent: Any = {"model": "gpt-test", "tools": PropMachine.agent_tool_definitions()}
    session = await client.beta.agents.sessions.create(environment={"type": "none"}, agent=agent)
    return session.id


STATUS_OF = {"completed": "completed", "failed": "failed", "requires_action": "waiting"}


async def drive(emulator: Emulator, base_url: str, case: Case) -> str:
    """Drive one generated case and check every property against what the server saw."""
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key="test", max_retries=2, _strict_response_validation=True
    ) as client:
        session_id = await new_session(client)
        emulator.enqueue_turn(case.scenario())
        machine = PropMachine(client, case.policy, cancel_timeout=5.0, **case.options)

        outcome: str
        result: Any
        error: RunAborted | None = None
        with anyio.fail_after(HANG_GUARD):
            try:
                result = await machine.turn(session_id=session_id, input="go")
                outcome = result.status
            except RunAborted as exc:  # the family of every error that ends a driven turn
                error = exc
                result = exc.result
                outcome = type(exc).__name__
        if error is not None:
            # Exactly the documented ones (not, say, a ResultConflict: that is a bug here).
            assert type(error) in (RequiresActionLoop, TooManyRounds), repr(error)
            assert result is not None, "an aborted turn carries its partial result"

        turn_id = machine.turn_id
        assert turn_id is not None
        assert result.turn_id == turn_id and result.session_id == session_id
        stats = emulator.turn_stats(turn_id)
        items = [
            item
            async for item in client.beta.agents.sessions.turns.items.list(
                turn_id, session_id=session_id, order="asc", limit=100
            )
        ]
        after = await client.beta.agents.sessions.retrieve(session_id)

    unanswered = [call for call, n in stats.results_applied.items() if n == 0]
    seen = (outcome, result.rounds, stats.rounds, len(unanswered), tuple(stats.approvals.values()))
    # The outcome, the rounds taken and asked, the calls left unanswered and the approvals the
    # server took are what the model predicts.
    model = predict(case)
    assert seen == (
        model.outcome,
        model.rounds,
        model.tool_rounds,
        model.unanswered,
        model.decisions,
    ), (seen, model)

    # 1. Every call asked took at most one result, exactly one once its round was answered; no
    # conflict; each tool body ran at most once per call id, and only for a call answered.
    asked = {item.call_id: item for item in items if item.type == "function_call"}
    assert set(stats.results_applied) == set(asked)
    assert all(n <= 1 for n in stats.results_applied.values()), stats.results_applied
    assert stats.conflicts == 0, stats
    if error is None:
        assert not unanswered
    else:
        # The guards stop the last round asked, before any of its tools run.
        assert set(unanswered) == set(list(asked)[len(asked) - len(unanswered) :])
    for call_id, item in asked.items():
        expected = int(
            stats.results_applied[call_id] == 1 and _runs_body(item.name, str(item.arguments))
        )
        assert machine.bodies[call_id] == expected, (call_id, item.name, machine.bodies)
    assert set(machine.bodies) <= set(asked)
    records = {r.id: r for r in result.tool_calls}
    assert len(records) == len(result.tool_calls), "a tool call was recorded twice"
    assert set(records) == {c for c, n in stats.results_applied.items() if n == 1}
    for call_id, sent in stats.outputs.items():
        record = records[call_id]
        assert sent["success"] is (record.error is None)
        if sent["success"]:
            assert sent["output"] == record.output

    # 2. A result that agrees with the server's turn, or a documented error after the server's
    # turn was cancelled.
    if error is None:
        assert stats.status == STATUS_OF[result.status], (stats.status, result.status)
        assert result.turn is not None
        if result.status != "requires_action":  # see test_a_turn_left_waiting_reports_it_so
            assert result.turn.status == stats.status, (result.turn.status, stats.status)
        assert stats.cancels == 0
        assert (result.status == "requires_action") == bool(result.pending_approvals)
        pending = {a.request_id for a in result.pending_approvals}
        assert not pending & set(stats.approvals), "an approval nobody answered was answered"
        listed = {getattr(a, "request_id", None) for a in after.required_actions}
        assert pending <= listed
    else:
        assert result.status == "cancelled"
        assert stats.status == "cancelled", stats
        assert stats.cancels >= 1
        assert result.pending_approvals == ()

    # 3. The approvals the server took are the policy's (checked above); the hook was asked
    # about each approval the turn reached, once.
    assert len(machine.asked) == len(set(machine.asked)), "the hook was asked twice"
    assert set(machine.asked) == set(stats.approvals) | {
        a.request_id for a in result.pending_approvals
    }

    # 4. No text lost: the result's text is what the server holds, and that is the scenario's.
    messages = [i for i in items if i.type == "message" and i.role == "assistant"]
    texts = [_message_text(m) for m in messages]
    if error is None:
        assert result.text == "\n\n".join(t for t in texts if t), (result.text, texts)
        assert len(texts) == len(model.texts), (texts, model.texts)
        for said, scripted in zip(texts, model.texts, strict=True):
            if scripted is AUTO:
                assert said, texts  # the emulator's answer about the last round
            else:
                assert said == scripted, (texts, model.texts)
    return outcome


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=cases())
def test_turn_driver_properties(served: tuple[Emulator, str], backend: str, case: Case) -> None:
    emulator, base_url = served
    emulator.reset()
    note(f"scenario: {', '.join(map(repr, case.ops)) or '(empty)'}")
    note(f"faults: {case.faults!r}")
    note(f"options: {case.options!r}, policy={case.policy!r}")
    note(f"predicted: {predict(case)!r}")
    outcome = anyio.run(drive, emulator, base_url, case, backend=backend)
    event(f"outcome: {outcome}")


# ---------------------------------------------------------------------------------------------
# The model itself, on hand-written cases (so a wrong model cannot hide a bug)
# ---------------------------------------------------------------------------------------------

OPTS = {"tool_concurrency": 2, "max_rounds": 3, "max_identical_rounds": 2}
APPROVE_ALL: dict[str, str | None] = {MCP: "approve", COMPUTER: "approve"}
RAIN = (("add", '{"a": 1, "b": 2}'),)


def _predict(*ops: Op, policy: dict[str, str | None] | None = None, **opts: int) -> Prediction:
    case = Case(tuple(ops), TurnFaults(), {**OPTS, **opts}, policy or APPROVE_ALL)
    return predict(case)


def test_the_model_predicts_each_outcome() -> None:
    assert _predict().outcome == "completed" and _predict().texts == ()
    reply = Op("reply", text="Hi.")
    assert _predict(reply).texts == ("Hi.",)
    assert _predict(Op("round", calls=RAIN)).texts == (AUTO,)
    assert _predict(Op("round", calls=RAIN), reply).texts == ("Hi.",)
    assert _predict(reply, Op("fail")).outcome == "failed"
    assert _predict(Op("round", calls=RAIN), Op("session_fail")).texts == ()
    loop = _predict(Op("loop", calls=RAIN))
    assert (loop.outcome, loop.rounds, loop.tool_rounds, loop.unanswered) == (
        "RequiresActionLoop",
        2,
        3,
        1,
    )
    assert _predict(Op("loop", calls=RAIN, times=2)).outcome == "completed"
    assert _predict(Op("loop", calls=RAIN, times=3)).outcome == "RequiresActionLoop"
    # The same calls in a round before the loop count with it.
    assert _predict(Op("round", calls=RAIN), Op("loop", calls=RAIN, times=2)).outcome == (
        "RequiresActionLoop"
    )
    # Arguments compare as JSON values, not as text.
    spaced = (("add", '{"b": 2, "a": 1}'),)
    assert _predict(
        Op("round", calls=RAIN), Op("round", calls=spaced), Op("round", calls=RAIN)
    ).outcome == ("RequiresActionLoop")
    distinct = [Op("round", calls=(("echo", json.dumps({"text": c})),)) for c in "abcd"]
    too_many = _predict(*distinct)
    assert (too_many.outcome, too_many.rounds, too_many.tool_rounds) == ("TooManyRounds", 3, 4)
    assert _predict(*distinct[:3]).outcome == "completed"
    # Approvals are rounds too, against max_rounds.
    mcp, browser = Op("approval", approval="mcp"), Op("approval", approval="computer_use")
    assert _predict(*distinct[:3], mcp).outcome == "TooManyRounds"
    assert _predict(mcp, mcp, mcp).outcome == "RequiresActionLoop"
    assert _predict(mcp, browser, mcp).outcome == "completed"
    other = Op("approval", approval="mcp", name="read_page")
    assert _predict(mcp, other, mcp).outcome == "completed"
    pending = _predict(mcp, browser, policy={MCP: "deny", COMPUTER: None})
    assert (pending.outcome, pending.decisions, pending.rounds) == ("requires_action", ("deny",), 2)


# ---------------------------------------------------------------------------------------------
# Regression tests: bugs found by the property test
# ---------------------------------------------------------------------------------------------

APPROVALS_IN_A_ROW = Case(
    ops=(Op("approval", approval="mcp"), Op("approval", approval="computer_use")),
    faults=TurnFaults(),
    options={"tool_concurrency": 1, "max_rounds": 6, "max_identical_rounds": 1},
    policy={MCP: "approve", COMPUTER: "approve"},
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_different_approvals_in_a_row_are_not_a_loop(
    served: tuple[Emulator, str], backend: str
) -> None:
    """Found by this property test: a round was signed by its function calls only, so every
    approval-only round had the empty signature and any two approvals in a row (an MCP
    approval, then a computer-use one) were 'the same tool calls ()': past
    max_identical_rounds=1 the turn was cancelled with RequiresActionLoop. (Fixed since:
    ``TurnDriver._round`` signs approvals by their kind and request.)"""
    emulator, base_url = served
    emulator.reset()
    assert predict(APPROVALS_IN_A_ROW).outcome == "completed"
    assert anyio.run(drive, emulator, base_url, APPROVALS_IN_A_ROW, backend=backend) == (
        "completed"
    )


PENDING_APPROVAL = Case(
    ops=(Op("approval", approval="computer_use"),),
    faults=TurnFaults(),
    options={"tool_concurrency": 1, "max_rounds": 6, "max_identical_rounds": 3},
    policy={MCP: None, COMPUTER: None},
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_turn_left_waiting_reports_it_so(served: tuple[Emulator, str], backend: str) -> None:
    """Found by this property test: the result of a turn left waiting holds a stale ``turn``."""
    emulator, base_url = served
    emulator.reset()

    async def main() -> None:
        async with openai.AsyncOpenAI(
            base_url=base_url, api_key="test", _strict_response_validation=True
        ) as client:
            session = await client.beta.agents.sessions.create(
                environment={"type": "none"}, agent={"model": "gpt-test"}
            )
            emulator.enqueue_turn(PENDING_APPROVAL.scenario())
            machine = PropMachine(client, PENDING_APPROVAL.policy)
            result = await machine.turn(session_id=session.id, input="go")
            assert result.status == "requires_action" and result.pending_approvals
            assert emulator.turn_stats(result.turn_id or "").status == "waiting"
            assert result.turn is not None
            assert result.turn.status == "waiting"

    anyio.run(main, backend=backend)


ANSWERED_DURING_RECONNECT = Case(
    ops=(
        Op("reply", text="one two three four five six"),
        Op("round", calls=(("echo", '{"text": "y"}'),)),
        Op("reply", text="Done!"),
    ),
    # The stream is cut at turn.created and reconnects while the reply streams; the read-back
    # that follows waits out a 503 (retry-after 0.5 s), by when the turn waits on its call.
    faults=TurnFaults(
        drop_at=frozenset({0}),
        delta_delay=0.02,
        http_errors=(HTTPFault("list_turns", nth=1, status=503, retry_after=0.5),),
    ),
    options={"tool_concurrency": 1, "max_rounds": 6, "max_identical_rounds": 3},
    policy={MCP: None, COMPUTER: None},
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_round_answered_during_a_reconnect_is_recorded_once(
    served: tuple[Emulator, str], backend: str
) -> None:
    """Found by this property test (``drop_at={0}`` with a reply before the round, about one
    time in three); the 503 and the delays here make it happen every time."""
    emulator, base_url = served
    emulator.reset()
    assert predict(ANSWERED_DURING_RECONNECT).outcome == "completed"

    async def main() -> None:
        async with openai.AsyncOpenAI(
            base_url=base_url, api_key="test", _strict_response_validation=True
        ) as client:
            session_id = await new_session(client)
            emulator.enqueue_turn(ANSWERED_DURING_RECONNECT.scenario())
            machine = PropMachine(client, ANSWERED_DURING_RECONNECT.policy)
            result = await machine.turn(session_id=session_id, input="go")
            assert result.status == "completed"
            stats = emulator.turn_stats(result.turn_id or "")
            assert list(stats.results_applied.values()) == [1]
            assert list(machine.bodies.values()) == [1]  # the tool itself ran once
            assert [r.id for r in result.tool_calls] == list(stats.results_applied)
            assert stats.result_posts == 1  # nothing answered again

    anyio.run(main, backend=backend)
