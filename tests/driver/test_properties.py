"""Property test of the run driver: generated scenarios and fault schedules, real SDK and HTTP.

Hypothesis generates what the emulated model does in a run (text, tool rounds of one to four
parallel calls across known and unknown tools with good, malformed and mistyped arguments,
failed/incomplete/expired outcomes, loops with new or the very same call ids), the faults the
server injects (dropped connections, ``event: error``, unknown events, undecodable data at any
event index of any stream; 5xx and 429 answers to the create and submit requests; lost submit
responses) and the machine's options (tool concurrency, round limits, streaming or polling,
failing the run on a tool error). Each example drives one run with ``RunMachine.run()`` against
the emulator, on asyncio and on trio, and checks what the server saw:

* the server never rejected a submission (the one allowed exception: a run the server expires
  at the very moment it asks for outputs, where the refusal is the server's verdict on a
  submission it had just invited);
* every round the server required got exactly one output per required call id, in one
  submission, matching what the tools produced; a required round without outputs only ends a
  run that was cancelled or expired;
* ``run()`` returned a terminal ``RunResult`` that agrees with the server (status, text), or
  raised one of the documented errors (``RunAborted`` and its subclasses) with the partial result
  and the server run cancelled (or already terminal);
* the outcome is the one a model of the scenario and of the guards predicts.

A bug found by these checks is kept as a separate regression test below.

Hypothesis does not drive async tests, so each example runs ``anyio.run(..., backend=...)``
inside a sync test parametrized over the backend, against one emulator served for the module.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import attrs
import openai
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from runmachine import RunMachine, tool
from runmachine.errors import (
    RequiresActionLoop,
    RunAborted,
    ToolFailed,
    TooManyRounds,
)
from runmachine.testing import Emulator, Faults, HTTPFault, Scenario

from ..strategies import Call, calls_st

MAX_EXAMPLES = int(os.environ.get("RUNMACHINE_PROPERTY_EXAMPLES", "30"))
"""Per backend. The suite's default keeps the file well under 40 s on two cores; explore more
with ``HYPOTHESIS_PROFILE=explore RUNMACHINE_PROPERTY_EXAMPLES=500``."""

HANG_GUARD = 60.0
"""A run that has not ended after this long is a hang (a failure), not a slow example."""

TERMINAL = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})

# ---------------------------------------------------------------------------------------------
# The machine under test
# ---------------------------------------------------------------------------------------------


class PropMachine(RunMachine):
    """Tools of every kind: async, sync (worker thread), raising, timing out."""

    strict = False

    @tool
    async def echo(self, text: str) -> str:
        """Echo a text."""
        await anyio.lowlevel.checkpoint()
        return f"echo:{text}"

    @tool
    def add(self, a: int, b: int) -> int:
        """Add two integers (a plain function: runs in a worker thread)."""
        return a + b

    @tool
    async def explode(self) -> str:
        """Always raises."""
        raise ValueError("kaboom")

    @tool(timeout=0.05)
    async def slow(self) -> str:
        """Never finishes within its timeout."""
        await anyio.sleep_forever()
        return "never"

    def on_tool_error(self, tool_call: Any, error: BaseException) -> bool:
        return self.strict


# ---------------------------------------------------------------------------------------------
# Generated cases
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class Op:
    """One step of the scripted model: reply, round, loop, fail, incomplete or expire."""

    kind: str
    text: str = ""
    calls: tuple[Call, ...] = ()
    times: int | None = None
    same_ids: bool = False

    def __repr__(self) -> str:
        if self.kind == "reply":
            return f"reply({self.text!r})"
        if self.kind == "round":
            return f"tool_round({list(self.calls)!r})"
        if self.kind == "loop":
            return f"loop({list(self.calls)!r}, times={self.times}, same_ids={self.same_ids})"
        return f"{self.kind}()"


@attrs.frozen
class Case:
    ops: tuple[Op, ...]
    faults: Faults
    options: dict[str, Any]
    strict: bool

    def scenario(self) -> Scenario:
        scenario = Scenario()
        for op in self.ops:
            if op.kind == "reply":
                scenario = scenario.reply(op.text)
            elif op.kind == "round":
                scenario = scenario.tool_round(op.calls)
            elif op.kind == "loop":
                scenario = scenario.loop(op.calls, times=op.times, same_ids=op.same_ids)
            elif op.kind == "fail":
                scenario = scenario.fail()
            elif op.kind == "incomplete":
                scenario = scenario.incomplete()
            else:
                scenario = scenario.expire()
        return scenario.with_faults(self.faults)


segment_st = st.one_of(
    st.builds(lambda t: Op("reply", text=t), st.sampled_from(["Hi.", "Sunny, mild.", "Done!"])),
    st.builds(lambda c: Op("round", calls=c), calls_st),
    st.builds(
        lambda c, n, s: Op("loop", calls=c, times=n, same_ids=s),
        calls_st,
        st.sampled_from([1, 2, 3, None]),
        st.booleans(),
    ),
)

ending_st = st.sampled_from([(), (Op("fail"),), (Op("incomplete"),), (Op("expire"),)])

ops_st = st.builds(
    lambda segments, ending: (*segments, *ending),
    st.lists(segment_st, max_size=3),
    ending_st,
)

# Which stream (0 creates the run, n follows the n-th accepted submission) and after how many of
# its events; early events (before and around the first message or call) weigh more.
stream_at = st.dictionaries(
    st.one_of(st.integers(0, 1), st.integers(0, 3)),
    st.one_of(st.integers(0, 8), st.integers(0, 40)),
    max_size=2,
)


def _http_fault(endpoint: str, nth: st.SearchStrategy[int]) -> st.SearchStrategy[HTTPFault]:
    server_error = st.builds(
        lambda n, s, r: HTTPFault(endpoint, nth=n, status=s, retry_after=r),
        nth,
        st.sampled_from([500, 502, 503]),
        # Without retry-after the back-off is the SDK's or the driver's own (0.25 s and up).
        st.sampled_from([None, 0.01, 0.02, 0.05]),
    )
    rate_limited = st.builds(
        lambda n, r: HTTPFault(endpoint, nth=n, status=429, retry_after=r),
        nth,
        st.sampled_from([0.01, 0.02]),
    )
    return st.one_of(server_error, rate_limited)


faults_st = st.builds(
    lambda drop, error, unknown, malformed, shape, submit, create, lost: Faults(
        drop_after=drop,
        error_event=error,
        unknown_event=unknown,
        malformed_data=malformed,
        error_shape=shape,
        # The SDK retries the create request twice (max_retries=2): at most two faults there.
        http_errors=(*submit, *create),
        lose_submit_response=lost,
    ),
    stream_at,
    stream_at,
    stream_at,
    stream_at,
    st.sampled_from([None, "bare", "wrapped"]),
    st.lists(_http_fault("submit_tool_outputs", st.integers(1, 6)), max_size=4),
    st.lists(_http_fault("create_run", st.integers(1, 2)), max_size=2),
    st.frozensets(st.integers(1, 5), max_size=2),
)

options_st = st.fixed_dictionaries(
    {
        "tool_concurrency": st.integers(1, 4),
        "max_rounds": st.integers(1, 6),
        "max_identical_rounds": st.integers(1, 4),
        "stream": st.booleans(),
        "submit_attempts": st.integers(1, 4),
    }
)

cases = st.builds(Case, ops_st, faults_st, options_st, st.sampled_from([False, False, True]))

# ---------------------------------------------------------------------------------------------
# A model of the outcome: the scenario's natural end, and where the guards stop it
# ---------------------------------------------------------------------------------------------

KNOWN_OK = {"echo", "add"}


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return arguments


def _call_fails(name: str, arguments: str) -> bool:
    """Whether a call becomes an error output (and so fails a strict run)."""
    if name not in KNOWN_OK:
        return True
    try:
        args = json.loads(arguments)
    except ValueError:
        return True
    if name == "echo":
        return set(args) != {"text"} or not isinstance(args["text"], str)
    return set(args) != {"a", "b"} or not all(type(v) is int for v in args.values())


class _Stop(Exception):
    def __init__(self, outcome: str) -> None:
        self.outcome = outcome


def _server_rounds(ops: tuple[Op, ...]) -> Iterator[tuple[tuple[Call, ...], object, bool] | str]:
    """The rounds the server asks for, as (calls, id key, expired at once), then the end."""
    for index, op in enumerate(ops):
        if op.kind == "round":
            following = ops[index + 1] if index + 1 < len(ops) else None
            yield op.calls, object(), following is not None and following.kind == "expire"
        elif op.kind == "loop":
            key = object()
            count = 0
            while op.times is None or count < op.times:
                count += 1
                yield op.calls, key if op.same_ids else object(), False
        elif op.kind in ("fail", "incomplete"):
            yield {"fail": "failed", "incomplete": "incomplete"}[op.kind]
            return
        elif op.kind == "expire":
            yield "expired"
            return
    yield "completed"


def predicted_outcome(case: Case) -> str:
    """The status of the returned result, or the name of the error ``run()`` raises."""
    opts = case.options
    submit_faults = {f.nth for f in case.faults.http_errors if f.endpoint == "submit_tool_outputs"}
    attempts = opts["submit_attempts"]
    requests = 0

    def submit(expired: bool) -> None:
        nonlocal requests
        for _ in range(attempts):
            requests += 1
            if expired or requests not in submit_faults:
                return  # taken, or refused because the run expired: either way, no retry
        raise _Stop("RunAborted")

    rounds = 0
    identical = 0
    last: Counter[tuple[str, str]] | None = None
    submitted: set[object] = set()
    resubmitted: set[object] = set()
    try:
        for item in _server_rounds(case.ops):
            if isinstance(item, str):
                return item
            calls, key, expired = item
            if key in submitted:
                if key in resubmitted:
                    raise _Stop("RequiresActionLoop")
                resubmitted.add(key)
                submit(expired)
                continue
            rounds += 1
            signature = Counter((name, _canonical(args)) for name, args in calls)
            identical = identical + 1 if signature == last else 1
            last = signature
            if rounds > opts["max_rounds"]:
                raise _Stop("TooManyRounds")
            if identical > opts["max_identical_rounds"]:
                raise _Stop("RequiresActionLoop")
            if case.strict and any(_call_fails(n, a) for n, a in calls):
                raise _Stop("ToolFailed")
            submitted.add(key)
            submit(expired)
            if expired:
                return "expired"
    except _Stop as stop:
        return stop.outcome
    raise AssertionError("unreachable: the rounds always end")  # pragma: no cover


def acceptable_outcomes(case: Case) -> set[str]:
    predicted = predicted_outcome(case)
    allowed = {predicted}
    expires_at_requires_action = any(
        op.kind == "round" and nxt.kind == "expire"
        for op, nxt in zip(case.ops, case.ops[1:], strict=False)
    )
    if expires_at_requires_action:
        # The round is required and expired in one instant: when the stream carrying
        # requires_action is cut or the run is polled, the driver only ever sees it expired.
        allowed.add("expired")
    same_ids = any(op.kind == "loop" and op.same_ids for op in case.ops)
    f = case.faults
    blind_after_submit = bool(f.lose_submit_response) or any(
        index >= 1 for faults in (f.drop_after, f.error_event, f.malformed_data) for index in faults
    )
    if same_ids and blind_after_submit:
        # A submission whose answer is lost, followed by the very same call ids again, cannot
        # be told apart from a submission that never arrived: the driver may take the repeat
        # for its own round still waiting, so where the loop guard trips can shift.
        allowed |= {"RequiresActionLoop", "TooManyRounds", "ToolFailed", "RunAborted"}
        allowed |= {_natural_end(case)}
    return allowed


def _natural_end(case: Case) -> str:
    """How the scenario ends when no guard stops it (a loop without end never ends)."""
    for op in case.ops:
        if op.kind == "loop" and op.times is None:
            return "RequiresActionLoop"
        if op.kind in ("fail", "incomplete", "expire"):
            return {"fail": "failed", "incomplete": "incomplete", "expire": "expired"}[op.kind]
    return "completed"


# ---------------------------------------------------------------------------------------------
# The emulator, one per module
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator()
    with emulator.serve() as base_url:
        yield emulator, base_url


def _server_text(messages: list[Any]) -> str:
    parts = []
    for message in messages:
        blocks = [c.text.value for c in message.content if c.type == "text"]
        if message.role == "assistant" and blocks:
            parts.append("\n".join(blocks))
    return "\n\n".join(parts)


async def drive(emulator: Emulator, base_url: str, case: Case) -> str:
    """Drive one generated case and check every property against what the server saw."""
    async with openai.AsyncOpenAI(base_url=base_url, api_key="test", max_retries=2) as client:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assistant = await client.beta.assistants.create(
                model="gpt-4o",
                tools=PropMachine.tool_definitions(),  # type: ignore[arg-type]
            )
            thread = await client.beta.threads.create(messages=[{"role": "user", "content": "go"}])
        emulator.enqueue(case.scenario())
        machine = PropMachine(
            client,
            poll_interval=0.01,
            max_poll_interval=0.05,
            cancel_timeout=5.0,
            **case.options,
        )
        machine.strict = case.strict

        outcome: str
        result: Any
        error: RunAborted | None = None
        with anyio.fail_after(HANG_GUARD):
            try:
                result = await machine.run(thread_id=thread.id, assistant_id=assistant.id)
                outcome = result.status
            except RunAborted as exc:  # the family of every error that ends a driven run
                error = exc
                result = exc.result
                outcome = type(exc).__name__
        if error is not None:
            # Exactly the documented ones (not, say, DuplicateSubmission: that is a bug).
            assert type(error) in (RunAborted, RequiresActionLoop, TooManyRounds, ToolFailed)
            assert result is not None, "an aborted run carries its partial result"

        run_id = machine.run_id
        assert run_id is not None
        assert result.run_id == run_id

        # Let a cancellation the driver requested land on the server (it does so at once).
        with anyio.fail_after(HANG_GUARD):
            while (stats := emulator.run_stats(run_id)).status == "cancelling":
                await anyio.sleep(0.01)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            steps = [
                s
                async for s in client.beta.threads.runs.steps.list(
                    run_id=run_id, thread_id=thread.id, order="asc", limit=100
                )
            ]
            messages = [
                m
                async for m in client.beta.threads.messages.list(
                    thread_id=thread.id, run_id=run_id, order="asc", limit=100
                )
            ]

    # 1. The server never rejected a submission.
    expired_on_arrival = stats.status == "expired" and any(
        op.kind == "round" and nxt.kind == "expire"
        for op, nxt in zip(case.ops, case.ops[1:], strict=False)
    )
    if expired_on_arrival:
        assert stats.submissions_rejected <= 1
    else:
        assert stats.submissions_rejected == 0, stats

    # 2. Every required round got exactly one output per required call, in one submission.
    tool_steps = [s for s in steps if s.type == "tool_calls"]
    required = [
        frozenset(c.id for c in s.step_details.tool_calls)  # type: ignore[union-attr]
        for s in tool_steps[: stats.rounds]
    ]
    accepted = list(stats.tool_outputs)
    assert stats.submissions_accepted == len(accepted)
    assert len(accepted) in (len(required), len(required) - 1), (required, accepted)
    for needed, outputs in zip(required, accepted, strict=False):
        assert frozenset(outputs) == needed
    if len(accepted) < len(required):
        assert stats.status in ("cancelled", "expired"), stats
    records = {r.id: r for r in result.tool_calls}
    assert len(records) == len(result.tool_calls), "a tool call was recorded twice"
    every_required = frozenset().union(*required)
    assert set(records) <= every_required
    for outputs in accepted:
        for call_id, output in outputs.items():
            assert records[call_id].output == output

    # 3. A terminal result that agrees with the server, or a documented error after the server
    # run was cancelled.
    if error is None:
        assert result.status in TERMINAL
        assert result.status != "cancelled"  # nothing here cancels a run but the driver
        assert stats.status == result.status
        assert stats.cancel_requests == 0
        assert result.text == _server_text(messages), (result.text, _server_text(messages))
    else:
        assert stats.cancel_requests >= 1
        assert stats.status in ("cancelled", "expired"), stats
        if stats.status == "expired":
            assert expired_on_arrival

    # 4. The outcome the scenario and the guards predict.
    assert outcome in acceptable_outcomes(case), (outcome, predicted_outcome(case))
    return outcome


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=cases)
def test_driver_properties(served: tuple[Emulator, str], backend: str, case: Case) -> None:
    emulator, base_url = served
    emulator.reset()
    note(f"scenario: {', '.join(map(repr, case.ops)) or '(empty)'}")
    note(f"faults: {case.faults!r}")
    note(f"options: {case.options!r}, strict={case.strict}")
    note(f"predicted: {sorted(acceptable_outcomes(case))}")
    outcome = anyio.run(drive, emulator, base_url, case, backend=backend)
    event(f"outcome: {outcome}")


def test_the_model_predicts_each_outcome() -> None:
    """The outcome model itself, on hand-written cases (so a wrong model cannot hide a bug)."""
    opts = {
        "tool_concurrency": 2,
        "max_rounds": 3,
        "max_identical_rounds": 2,
        "stream": True,
        "submit_attempts": 2,
    }
    rain = (("add", '{"a": 1, "b": 2}'),)
    boom = (("explode", "{}"),)

    def outcome(*ops: Op, strict: bool = False, faults: Faults | None = None) -> str:
        return predicted_outcome(Case(tuple(ops), faults or Faults(), opts, strict))

    assert outcome() == "completed"
    assert outcome(Op("reply", text="x"), Op("fail")) == "failed"
    assert outcome(Op("round", calls=rain), Op("incomplete")) == "incomplete"
    assert outcome(Op("round", calls=rain), Op("expire")) == "expired"
    assert outcome(Op("round", calls=boom)) == "completed"
    assert outcome(Op("round", calls=boom), strict=True) == "ToolFailed"
    assert outcome(Op("loop", calls=rain)) == "RequiresActionLoop"
    assert outcome(Op("loop", calls=rain, times=2)) == "completed"
    assert outcome(Op("loop", calls=rain, same_ids=True)) == "RequiresActionLoop"
    assert outcome(Op("loop", calls=rain, times=2, same_ids=True)) == "completed"
    distinct = [Op("round", calls=(("echo", json.dumps({"text": c})),)) for c in "abcd"]
    assert outcome(*distinct) == "TooManyRounds"
    assert outcome(*distinct[:3]) == "completed"
    two_faults = Faults(http_errors=[HTTPFault("submit_tool_outputs", nth=n) for n in (1, 2)])
    assert outcome(Op("round", calls=rain), faults=two_faults) == "RunAborted"
    one_fault = Faults(http_errors=[HTTPFault("submit_tool_outputs", nth=2)])
    assert outcome(*distinct[:2], faults=one_fault) == "completed"


LOST_FIRST_MESSAGE = Case(
    ops=(
        Op("reply", text="First words."),
        Op("round", calls=(("add", '{"a": 1, "b": 2}'),)),
        Op("reply", text="Second."),
    ),
    # The creating stream breaks after run.created and run.queued, before the first message.
    faults=Faults(drop_after={0: 2}),
    options={
        "tool_concurrency": 1,
        "max_rounds": 3,
        "max_identical_rounds": 2,
        "stream": True,
        "submit_attempts": 2,
    },
    strict=False,
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_text_lost_with_the_first_stream_keeps_its_place(
    served: tuple[Emulator, str], backend: str
) -> None:
    """Text lost with the creating stream comes back before the text a later stream showed
    (it once came back after it: 'Second.\n\nFirst words.')."""
    emulator, base_url = served
    emulator.reset()
    assert anyio.run(drive, emulator, base_url, LOST_FIRST_MESSAGE, backend=backend) == "completed"
