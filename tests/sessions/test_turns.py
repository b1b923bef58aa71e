"""The machine drives agent-session turns: the real SDK, real HTTP, the emulator, both anyio
backends. Each test names the rule of the sessions backend it holds to."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import openai
import pytest
from openai.types.beta.threads import RequiredActionFunctionToolCall, Text, TextDelta

from runmachine import (
    HookError,
    RequiresActionLoop,
    ResultConflict,
    RunMachine,
    ToolCallRecord,
    TooManyRounds,
    TransitionRecord,
    TurnTimedOut,
    tool,
)
from runmachine.testing import Emulator, TurnFaults, TurnScenario

pytestmark = pytest.mark.anyio

NewSession = Callable[..., Awaitable[str]]


class Weather(RunMachine):
    calls: list[tuple[str, str]]

    def __init__(self, client: openai.AsyncOpenAI, **options: Any) -> None:
        super().__init__(client, **options)
        self.calls = []
        self.deltas: list[tuple[str, str]] = []

    @tool
    async def get_weather(self, city: str) -> str:
        """Current weather for a city."""
        self.calls.append(("get_weather", city))
        return f"sunny in {city}"

    @tool
    async def get_rain(self, city: str) -> str:
        """Chance of rain."""
        self.calls.append(("get_rain", city))
        return "10%"

    def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        self.deltas.append((delta.value or "", snapshot.value))


TWO_ROUNDS = (
    TurnScenario()
    .tool_round([("get_weather", {"city": "Oslo"})])
    .tool_round([("get_rain", {"city": "Oslo"})])
    .reply("Sunny.")
)


async def test_a_turn_runs_its_rounds_and_ends_completed(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    session_id = await new_session(Weather)
    emulator.enqueue_turn(TWO_ROUNDS)
    machine = Weather(client)
    result = await machine.turn(session_id=session_id, input="Weather in Oslo?")

    assert result.status == "completed"
    assert result.session_id == session_id and result.turn_id is not None
    assert result.run is None and result.run_id is None
    assert result.rounds == 2
    assert result.text == "Sunny."
    assert [r.output for r in result.tool_calls] == ["sunny in Oslo", "10%"]
    assert machine.calls == [("get_weather", "Oslo"), ("get_rain", "Oslo")]
    assert [t.dest for t in result.transitions] == [
        "queued",
        "in_progress",
        "requires_action",
        "submitting",
        "in_progress",
        "requires_action",
        "submitting",
        "in_progress",
        "completed",
    ]
    # The text hooks get the SDK's Text/TextDelta, as for an Assistants run.
    assert machine.deltas[-1][1] == "Sunny."
    assert "".join(d for d, _ in machine.deltas) == "Sunny."
    stats = emulator.turn_stats(result.turn_id)
    assert stats.status == "completed"
    assert all(n == 1 for n in stats.results_applied.values()) and len(stats.results_applied) == 2
    assert result.turn is not None and result.turn.status == "completed"
    assert result.turn.usage is not None


async def test_create_session_drives_its_first_turn_with_the_class_tools(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    machine = Weather(client)
    result = await machine.create_session(
        environment={"type": "none"},
        agent={"model": "gpt-test"},
        input="get_weather in Paris then get_rain in Paris",
    )
    assert result.status == "completed"
    assert machine.calls == [("get_weather", "Paris"), ("get_rain", "Paris")]
    snapshot = emulator.sessions_snapshot(result.session_id or "")
    assert {t["name"] for t in snapshot["agent"]["tools"]} == {"get_weather", "get_rain"}
    # The session stays usable: a second turn on it.
    again = await machine.turn(session_id=result.session_id or "", input="hello")
    assert again.status == "completed" and again.turn_id != result.turn_id
    assert again.text.startswith("You said:")


async def test_parallel_calls_run_concurrently_proven_by_a_barrier(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    class Barrier(RunMachine):
        arrived = 0
        both = anyio.Event()

        @tool
        async def meet(self, who: str) -> str:
            type(self).arrived += 1
            if type(self).arrived == 2:
                type(self).both.set()
            await type(self).both.wait()  # neither returns until both have started
            return who

    Barrier.both = anyio.Event()
    session_id = await new_session(Barrier)
    emulator.enqueue_turn(
        TurnScenario().tool_round([("meet", {"who": "a"}), ("meet", {"who": "b"})])
    )
    with anyio.fail_after(20):
        result = await Barrier(client).turn(session_id=session_id, input="meet")
    assert result.status == "completed"
    assert sorted(r.output for r in result.tool_calls) == ["a", "b"]


async def test_the_concurrency_limit_is_exact(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    class Limited(RunMachine):
        running = 0
        most = 0
        gate = anyio.Event()

        @tool
        async def work(self, n: int) -> str:
            cls = type(self)
            cls.running += 1
            cls.most = max(cls.most, cls.running)
            if cls.running == 2:
                cls.gate.set()  # the limit is reached: let everyone through
            await cls.gate.wait()
            await anyio.lowlevel.checkpoint()
            cls.running -= 1
            return str(n)

    Limited.gate = anyio.Event()
    session_id = await new_session(Limited)
    emulator.enqueue_turn(TurnScenario().tool_round([("work", {"n": i}) for i in range(5)]))
    result = await Limited(client, tool_concurrency=2).turn(session_id=session_id, input="go")
    assert result.status == "completed"
    assert Limited.most == 2
    assert sorted(r.output for r in result.tool_calls) == ["0", "1", "2", "3", "4"]


class Faulty(RunMachine):
    @tool
    async def strict(self, count: int) -> str:
        return str(count)

    @tool
    async def explode(self) -> str:
        raise ValueError("the database password is hunter2")

    @tool(timeout=0.05)
    async def slow(self) -> str:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (("strict", "{not json"), "not valid JSON"),
        (("strict", {"count": "many"}), "count"),
        (("missing_tool", {}), "no tool named 'missing_tool'"),
        (("explode", {}), "raised ValueError"),
        (("slow", {}), "did not finish within 0.05 s"),
    ],
    ids=["bad-json", "schema", "unknown-tool", "raising", "timeout"],
)
async def test_bad_input_gets_a_failed_result_that_names_the_problem(
    client: openai.AsyncOpenAI,
    emulator: Emulator,
    new_session: NewSession,
    call: tuple[str, Any],
    expected: str,
) -> None:
    session_id = await new_session(Faulty)
    emulator.enqueue_turn(TurnScenario().tool_round([call]))
    result = await Faulty(client).turn(session_id=session_id, input="go")
    assert result.status == "completed"
    (record,) = result.tool_calls
    assert record.error is not None and expected in record.error
    sent = next(iter(emulator.turn_stats(result.turn_id or "").outputs.values()))
    assert sent["success"] is False
    assert "output" not in sent or sent["output"] is None
    assert sent["error"]
    # A tool's exception text stays with the application.
    assert "hunter2" not in json.dumps(sent)
    if call[0] != "explode":
        assert expected in sent["error"]


async def test_on_tool_error_may_choose_the_error_text_sent(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    class Chatty(Faulty):
        def on_tool_error(self, tool_call: ToolCallRecord, error: BaseException) -> str:
            return f"{tool_call.name} failed: {error}"

    session_id = await new_session(Chatty)
    emulator.enqueue_turn(TurnScenario().tool_round([("explode", {})]))
    result = await Chatty(client).turn(session_id=session_id, input="go")
    sent = next(iter(emulator.turn_stats(result.turn_id or "").outputs.values()))
    assert sent["error"] == "explode failed: the database password is hunter2"
    assert result.tool_calls[0].error is not None


async def test_duplicated_events_are_dropped_and_no_call_runs_twice(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    session_id = await new_session(Weather)
    emulator.enqueue_turn(TWO_ROUNDS.with_faults(TurnFaults(duplicate=frozenset(range(22)))))
    machine = Weather(client)
    result = await machine.turn(session_id=session_id, input="go")
    assert result.status == "completed"
    assert result.text == "Sunny."
    assert machine.calls == [("get_weather", "Oslo"), ("get_rain", "Oslo")]
    assert any(t.kind == "repeat" for t in machine.tolerated)


async def test_the_pending_call_race_is_retried_and_applied_once(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    session_id = await new_session(Weather)
    emulator.enqueue_turn(TWO_ROUNDS.with_faults(TurnFaults(pending_race=2)))
    machine = Weather(client)
    result = await machine.turn(session_id=session_id, input="go")
    assert result.status == "completed"
    stats = emulator.turn_stats(result.turn_id or "")
    assert stats.races == 4  # two per call
    assert list(stats.results_applied.values()) == [1, 1]
    # Every try of one result carries the same idempotency key.
    assert len(set(stats.keys)) == 2


async def test_a_lost_result_response_applies_exactly_one_result(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    session_id = await new_session(Weather)
    emulator.enqueue_turn(TWO_ROUNDS.with_faults(TurnFaults(lose_result_response=frozenset({1}))))
    machine = Weather(client)
    result = await machine.turn(session_id=session_id, input="go")
    assert result.status == "completed"
    stats = emulator.turn_stats(result.turn_id or "")
    assert list(stats.results_applied.values()) == [1, 1]
    assert stats.replays >= 1
    assert stats.keys[0] == stats.keys[1]  # the retry was the same request
    assert machine.calls == [("get_weather", "Oslo"), ("get_rain", "Oslo")]


#: Events of TWO_ROUNDS: 3 to start, 5 per one-call round, 7 for "Sunny." (2 deltas), 2 to end.
TWO_ROUND_EVENTS = 3 + 5 + 5 + 7 + 2


@pytest.mark.parametrize("index", range(TWO_ROUND_EVENTS))
async def test_a_dropped_stream_at_any_event_loses_nothing_and_repeats_nothing(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession, index: int
) -> None:
    session_id = await new_session(Weather)
    emulator.enqueue_turn(TWO_ROUNDS.with_faults(TurnFaults(drop_at=frozenset({index}))))
    machine = Weather(client)
    with anyio.fail_after(30):
        result = await machine.turn(session_id=session_id, input="go")
    assert result.status == "completed"
    assert result.text == "Sunny."
    assert machine.calls == [("get_weather", "Oslo"), ("get_rain", "Oslo")]
    assert list(emulator.turn_stats(result.turn_id or "").results_applied.values()) == [1, 1]
    assert result.tool_calls and [r.output for r in result.tool_calls] == ["sunny in Oslo", "10%"]


async def test_the_dropped_stream_cases_cover_every_event_of_the_turn(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    # The parametrization above must reach the turn's last event: counted on the wire.
    session_id = await new_session(Weather)
    emulator.enqueue_turn(TWO_ROUNDS)
    seen: list[str] = []
    async with Weather(client).stream(session_id=session_id, input="go") as events:
        async for event in events:
            if seen or event.type == "agent.session.turn.created":
                seen.append(event.type)
    assert seen[-1] == "agent.session.turn.completed"
    assert len(seen) + 1 == TWO_ROUND_EVENTS  # and the session's idle after it


class Approver(Weather):
    decision: str | None = "approve"
    seen: list[Any]

    def on_approval_request(self, request: Any) -> Any:
        self.seen = [*getattr(self, "seen", []), request]
        return type(self).decision


@pytest.mark.parametrize("decision", ["approve", "deny", "cancel"])
async def test_an_approval_is_answered_as_the_hook_decides(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession, decision: str
) -> None:
    class Decides(Approver):
        pass

    Decides.decision = decision
    session_id = await new_session(Decides)
    emulator.enqueue_turn(TurnScenario().approval("mcp").reply("Done."))
    machine = Decides(client)
    result = await machine.turn(session_id=session_id, input="search the docs")
    assert result.status == "completed"
    assert result.pending_approvals == ()
    (request,) = machine.seen
    assert request.type == "mcp_approval_request"
    stats = emulator.turn_stats(result.turn_id or "")
    assert stats.approvals == {request.request_id: decision}


async def test_a_computer_use_approval_is_answered(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    session_id = await new_session(Approver)
    emulator.enqueue_turn(TurnScenario().approval("computer_use").reply("Done."))
    machine = Approver(client)
    result = await machine.turn(session_id=session_id, input="open the page")
    assert result.status == "completed"
    assert machine.seen[0].type == "computer_use_approval_request"
    assert list(emulator.turn_stats(result.turn_id or "").approvals.values()) == ["approve"]


async def test_an_approval_nobody_answers_is_never_approved_and_left_pending(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    session_id = await new_session(Weather)
    emulator.enqueue_turn(TurnScenario().approval("mcp").reply("Done."))
    machine = Weather(client)  # no on_approval_request: the default leaves it waiting
    result = await machine.turn(session_id=session_id, input="search the docs")
    assert result.status == "requires_action"
    (pending,) = result.pending_approvals
    assert pending.type == "mcp_approval_request"
    stats = emulator.turn_stats(result.turn_id or "")
    assert stats.approvals == {} and stats.cancels == 0
    assert stats.status == "waiting"

    # Later (any process): answered by resume, and the turn goes on to its end.
    later = await Weather(client).resume(
        session_id=session_id,
        turn_id=result.turn_id or "",
        approvals={pending.request_id: "approve"},
    )
    assert later.status == "completed"
    assert later.text == "Done."
    assert emulator.turn_stats(result.turn_id or "").approvals == {pending.request_id: "approve"}


async def test_resume_refuses_a_decision_that_is_not_one(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(ValueError, match="'maybe'; it must be 'approve', 'deny' or 'cancel'"):
        await Weather(client).resume(
            session_id="sess_x",
            turn_id="turn_x",
            approvals={"apr_1": "maybe"},  # type: ignore[dict-item]
        )


async def test_an_approval_hook_that_returns_nonsense_is_a_hook_error(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    class Nonsense(Approver):
        decision = "yes please"

    session_id = await new_session(Nonsense)
    emulator.enqueue_turn(TurnScenario().approval("mcp").reply("Done."))
    with pytest.raises(HookError, match="it must return 'approve', 'deny', 'cancel' or None"):
        await Nonsense(client).turn(session_id=session_id, input="go")
    # A failure of our own cancels the turn on the server; nothing was approved.
    (turn,) = [t for t in (await client.beta.agents.sessions.turns.list(session_id)).data]
    stats = emulator.turn_stats(turn.id)
    assert stats.status == "cancelled" and stats.approvals == {}


async def test_a_host_cancel_mid_tool_cancels_the_turn_on_the_server(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    started = anyio.Event()

    class Stuck(RunMachine):
        @tool
        async def wait(self) -> str:
            started.set()
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

    session_id = await new_session(Stuck)
    emulator.enqueue_turn(TurnScenario().tool_round([("wait", {})]))
    machine = Stuck(client)

    async def drive() -> None:
        await machine.turn(session_id=session_id, input="go")

    async with anyio.create_task_group() as tg:
        tg.start_soon(drive)
        await started.wait()
        tg.cancel_scope.cancel()
    assert machine.state == "cancelled"
    stats = emulator.turn_stats(machine.turn_id or "")
    assert stats.status == "cancelled" and stats.cancels == 1
    assert set(stats.results_applied.values()) == {0}  # asked, never answered


async def test_a_host_cancel_mid_stream_cancels_the_turn_on_the_server(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    working = anyio.Event()

    class Watcher(RunMachine):
        def on_enter_in_progress(self, turn: Any) -> None:
            working.set()

    session_id = await new_session(Watcher)
    emulator.enqueue_turn(TurnScenario().hang())
    machine = Watcher(client)

    async def drive() -> None:
        await machine.turn(session_id=session_id, input="go")

    async with anyio.create_task_group() as tg:
        tg.start_soon(drive)
        await working.wait()
        tg.cancel_scope.cancel()
    assert machine.state == "cancelled"
    assert emulator.turn_stats(machine.turn_id or "").status == "cancelled"


async def test_a_loop_is_stopped_by_the_guard_and_the_turn_cancelled(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    session_id = await new_session(Weather)
    emulator.enqueue_turn(TurnScenario().loop([("get_weather", {"city": "Oslo"})]))
    machine = Weather(client, max_identical_rounds=2)
    with pytest.raises(RequiresActionLoop, match="in 3 rounds in a row") as info:
        await machine.turn(session_id=session_id, input="go")
    assert info.value.result is not None and info.value.result.status == "cancelled"
    assert len(machine.calls) == 2  # the third round's tools never ran
    assert emulator.turn_stats(machine.turn_id or "").status == "cancelled"


async def test_max_rounds_cancels_the_turn(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    session_id = await new_session(Weather)
    emulator.enqueue_turn(TWO_ROUNDS)
    with pytest.raises(TooManyRounds, match="past max_rounds=1; the turn was cancelled"):
        await Weather(client, max_rounds=1).turn(session_id=session_id, input="go")


async def test_a_conflicting_result_is_a_clear_error_never_a_second_effect(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    class Raced(RunMachine):
        @tool
        async def answer(self) -> str:
            # Another writer answers the same call first, with another result.
            session = await client.beta.agents.sessions.retrieve(self.session_id or "")
            (action,) = session.required_actions
            await client.beta.agents.sessions.events.create(
                session.id,
                events=[
                    {
                        "type": "agent.session.input.tool_result",
                        "turn_id": action.turn_id,  # type: ignore[union-attr]
                        "call_id": action.call_id,  # type: ignore[union-attr]
                        "success": True,
                        "output": "theirs",
                    }
                ],
            )
            return "ours"

    session_id = await new_session(Raced)
    emulator.enqueue_turn(TurnScenario().tool_round([("answer", {})]).hang())
    with pytest.raises(ResultConflict, match=r"already holds a different answer.*\(409\)"):
        await Raced(client).turn(session_id=session_id, input="go")
    (turn,) = (await client.beta.agents.sessions.turns.list(session_id)).data
    stats = emulator.turn_stats(turn.id)
    assert list(stats.results_applied.values()) == [1]
    assert next(iter(stats.outputs.values()))["output"] == "theirs"
    assert stats.conflicts == 1


async def test_turn_timeout_cancels_the_turn(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    session_id = await new_session(Weather)
    emulator.enqueue_turn(TurnScenario().hang())
    with pytest.raises(TurnTimedOut, match=r"took longer than turn_timeout=0\.2 s"):
        await Weather(client, turn_timeout=0.2).turn(session_id=session_id, input="go")
    (turn,) = (await client.beta.agents.sessions.turns.list(session_id)).data
    assert emulator.turn_stats(turn.id).status == "cancelled"


async def test_a_failed_turn_is_a_result(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    session_id = await new_session(Weather)
    emulator.enqueue_turn(TurnScenario().fail("server_error", "boom"))
    result = await Weather(client).turn(session_id=session_id, input="go")
    assert result.status == "failed"
    assert result.turn is not None and result.turn.error is not None
    assert result.turn.error.message == "boom"


async def test_a_busy_session_is_refused_with_the_way_to_resume(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    session_id = await new_session(Weather)
    emulator.enqueue_turn(TurnScenario().hang())
    await client.beta.agents.sessions.events.create(
        session_id,
        events=[
            {
                "type": "agent.session.input.message",
                "input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}]}],
            }
        ],
    )
    with pytest.raises(Exception, match=r"not idle.*resume\(session_id=\.\.\., turn_id=\.\.\.\)"):
        await Weather(client).turn(session_id=session_id, input="go")


async def test_resume_picks_up_a_turn_under_way(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    session_id = await new_session(Weather)
    emulator.enqueue_turn(TWO_ROUNDS)
    sessions = client.beta.agents.sessions
    async with await sessions.events.stream(session_id) as events:
        await sessions.events.create(
            session_id,
            events=[
                {
                    "type": "agent.session.input.message",
                    "input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}]}],
                }
            ],
        )
        async for event in events:
            if event.type == "agent.session.requires_action":
                break
    (turn,) = (await sessions.turns.list(session_id)).data
    machine = Weather(client)
    result = await machine.resume(session_id=session_id, turn_id=turn.id)
    assert result.status == "completed"
    assert result.text == "Sunny."
    assert machine.calls == [("get_weather", "Oslo"), ("get_rain", "Oslo")]


async def test_stream_yields_the_sdk_events_and_places_transitions(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    session_id = await new_session(Weather)
    emulator.enqueue_turn(TWO_ROUNDS)
    items: list[Any] = []
    async with Weather(client).stream(
        session_id=session_id, input="go", transitions=True
    ) as events:
        async for item in events:
            items.append(item)
    assert events.result.status == "completed"
    records = [i for i in items if isinstance(i, TransitionRecord)]
    assert [r.dest for r in records][-1] == "completed"
    sdk_events = [i for i in items if not isinstance(i, TransitionRecord)]
    assert all(hasattr(e, "event_id") for e in sdk_events)
    # Each server transition comes right after the event that caused it.
    for index, item in enumerate(items):
        if isinstance(item, TransitionRecord) and item.trigger.startswith("agent.session"):
            assert items[index - 1].type == item.trigger


async def test_on_tool_started_gets_the_sdk_call_type(
    client: openai.AsyncOpenAI, emulator: Emulator, new_session: NewSession
) -> None:
    class Started(Weather):
        started: ClassVar[list[RequiredActionFunctionToolCall]] = []

        def on_tool_started(self, tool_call: RequiredActionFunctionToolCall) -> None:
            self.started.append(tool_call)

    session_id = await new_session(Started)
    emulator.enqueue_turn(TWO_ROUNDS)
    await Started(client).turn(session_id=session_id, input="go")
    assert [c.function.name for c in Started.started] == ["get_weather", "get_rain"]
    assert json.loads(Started.started[0].function.arguments) == {"city": "Oslo"}


async def test_a_host_cancel_before_the_turn_was_seen_still_cancels_it(
    emulator: Emulator, emulator_url: str, new_session: NewSession, anyio_backend: str
) -> None:
    # The host is cancelled the moment the server has answered the input, before the stream
    # has named the turn: the turn the input started is found and cancelled.
    scope = anyio.CancelScope()

    async def on_response(response: Any) -> None:
        request = response.request
        if request.method == "POST" and b"agent.session.input.message" in request.content:
            scope.cancel()

    http = openai.DefaultAsyncHttpxClient(event_hooks={"response": [on_response]})
    async with openai.AsyncOpenAI(
        base_url=emulator_url, api_key="test", http_client=http, _strict_response_validation=True
    ) as client:
        session_id = await new_session(Weather)
        emulator.enqueue_turn(TurnScenario().hang())
        machine = Weather(client)
        with scope:
            await machine.turn(session_id=session_id, input="go")
        (turn,) = (await client.beta.agents.sessions.turns.list(session_id)).data
    assert scope.cancelled_caught
    stats = emulator.turn_stats(turn.id)
    assert stats.status == "cancelled" and stats.cancels == 1
    assert machine.state == "cancelled"


async def test_an_input_the_server_refused_cancels_nobody_elses_turn(
    client: openai.AsyncOpenAI,
    emulator: Emulator,
    emulator_url: str,
    new_session: NewSession,
    anyio_backend: str,
) -> None:
    # Between this machine's idle check and its input, another writer starts a turn: the
    # input is refused, and the other writer's turn must not be taken for ours and cancelled.
    session_id = await new_session(Weather)
    emulator.enqueue_turn(TurnScenario().hang())
    started = False

    async def other_writer_first(request: Any) -> None:
        nonlocal started
        if (
            request.method == "POST"
            and b"agent.session.input.message" in request.content
            and not started
        ):
            started = True
            await client.beta.agents.sessions.events.create(
                session_id,
                events=[
                    {
                        "type": "agent.session.input.message",
                        "input": [
                            {"role": "user", "content": [{"type": "input_text", "text": "x"}]}
                        ],
                    }
                ],
            )

    http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [other_writer_first]})
    async with openai.AsyncOpenAI(
        base_url=emulator_url, api_key="test", http_client=http, max_retries=0
    ) as mine:
        with pytest.raises(openai.BadRequestError):
            await Weather(mine).turn(session_id=session_id, input="go")
    (theirs,) = (await client.beta.agents.sessions.turns.list(session_id)).data
    stats = emulator.turn_stats(theirs.id)
    assert stats.cancels == 0 and stats.status == "in_progress"
