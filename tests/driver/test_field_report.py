"""Failures users met in the field, each reproduced end to end against the emulator and fixed.

The item numbers are those of the field report (the issue tracker's "Field report" issue).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from typing import Any

import anyio
import httpx2
import openai
import pytest

from runmachine import (
    HookError,
    LedgerError,
    MachineBusy,
    MemoryLedger,
    RequiresActionLoop,
    RunAborted,
    RunMachine,
    ToolFailed,
    quiet_deprecation,
    tool,
)
from runmachine.testing import Emulator, Faults, HTTPFault, Scenario

pytestmark = pytest.mark.anyio


class Tools(RunMachine):
    @tool
    def explode(self) -> str:
        raise ValueError("kaboom")

    @tool
    def other(self) -> str:
        raise KeyError("other")

    @tool
    def nan(self) -> float:
        return float("nan")

    @tool
    def surrogate(self) -> str:
        return "x\ud800y"

    @tool
    def charge(self) -> str:
        return "charged card 4242"

    @tool
    def echo(self, value: Any = None) -> str:
        return "seen"


class PolicyRaises(Tools):
    def on_tool_error(self, tool_call: Any, error: BaseException) -> bool:
        raise RuntimeError("policy is broken")


@pytest.mark.parametrize("calls", [1, 2])
async def test_3_an_on_tool_error_that_raises_is_a_hook_error_for_any_round_size(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any, calls: int
) -> None:
    emulator.enqueue(Scenario().tool_round([("explode", {}), ("other", {})][:calls]))
    thread_id, assistant_id = await thread_and_assistant(PolicyRaises)
    machine = PolicyRaises(openai_client)
    with pytest.raises(HookError, match="hook on_tool_error raised RuntimeError") as info:
        await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert machine.run_id is not None
    assert emulator.run_stats(machine.run_id).submissions_received == 0


class FailsOnExplode(Tools):
    def on_tool_error(self, tool_call: Any, error: BaseException) -> bool:
        return True


async def test_3_tool_failed_chains_the_tools_own_exception(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(Scenario().tool_round([("explode", {})]))
    thread_id, assistant_id = await thread_and_assistant(FailsOnExplode)
    with pytest.raises(ToolFailed) as info:
        await FailsOnExplode(openai_client).run(thread_id=thread_id, assistant_id=assistant_id)
    cause = info.value.__cause__
    assert isinstance(cause, ValueError) and str(cause) == "kaboom"


class DiskFull(MemoryLedger):
    """A ledger whose disk fills up just as a tool's output is recorded."""

    async def call_finished(self, *args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")


async def test_30_a_failed_ledger_write_is_never_passed_off_as_the_tools_failure(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(Scenario().tool_round([("charge", {})]).reply("never"))
    thread_id, assistant_id = await thread_and_assistant(Tools)
    machine = Tools(openai_client, ledger=DiskFull())
    with pytest.raises(LedgerError) as info:
        await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    error = info.value
    assert "failed to record the output of call" in str(error)
    assert "OperationalError: disk I/O error" in str(error)
    assert error.output == "charged card 4242"
    assert isinstance(error.__cause__, sqlite3.OperationalError)
    assert machine.run_id is not None
    stats = emulator.run_stats(machine.run_id)
    # Nothing was sent to the model as the tool's result; the run was cancelled.
    assert stats.submissions_received == 0
    assert stats.cancel_requests == 1


async def test_31_outputs_that_cannot_be_sent_get_a_clear_error_output(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    deep = "[" * 3000 + "]" * 3000
    emulator.enqueue(
        Scenario()
        .tool_round([("nan", {}), ("surrogate", {}), ("echo", f'{{"value": {deep}}}')])
        .reply("Coped.")
    )
    thread_id, assistant_id = await thread_and_assistant(Tools)
    result = await Tools(openai_client).run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed"
    errors = [json.loads(c.output)["error"] for c in result.tool_calls]
    assert [e["type"] for e in errors] == ["invalid_output", "invalid_output", "invalid_json"]
    assert "not JSON" in errors[0]["message"]
    assert "surrogates not allowed" in errors[1]["message"]
    assert "nested too deeply" in errors[2]["message"]
    stats = emulator.run_stats(result.run.id)
    assert stats.submissions_accepted == 1 and stats.submissions_rejected == 0


class Slow(Tools):
    @tool
    async def wait(self) -> str:
        await anyio.sleep_forever()
        return "never"


async def test_14_a_second_concurrent_run_on_one_machine_says_what_to_do(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(Scenario().tool_round([("wait", {})]))
    thread_id, assistant_id = await thread_and_assistant(Slow)
    other_thread, _ = await thread_and_assistant(Slow)
    started = anyio.Event()

    class Watch(Slow):
        async def on_tool_started(self, tool_call: Any) -> None:
            started.set()

    machine = Watch(openai_client)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: machine.run(thread_id=thread_id, assistant_id=assistant_id))
        await started.wait()
        with pytest.raises(MachineBusy, match=r"already driving run run_\w+; a RunMachine drives"):
            await machine.run(thread_id=other_thread, assistant_id=assistant_id)
        tg.cancel_scope.cancel()


class Clocked(RunMachine):
    @tool
    async def instant(self) -> str:
        await anyio.lowlevel.checkpoint()  # as any real async tool awaits something
        return "at once"

    @tool
    async def hang(self) -> str:
        # Long past the run's five seconds of life; returns (too late) only if never cut.
        await anyio.sleep(15)
        return "too late"


@pytest.mark.parametrize("skew", [-3600.0, -3.0])
async def test_1_a_server_clock_behind_ours_does_not_cut_tools_at_once(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any, skew: float
) -> None:
    # On this machine's clock the run has already expired (by an hour, or nearly so): a
    # deadline measured on it would cut even an instant tool before it ran.
    emulator.clock_offset = skew
    emulator.enqueue(Scenario(ttl=5.0).tool_round([("instant", {})]).reply("Done."))
    thread_id, assistant_id = await thread_and_assistant(Clocked)
    machine = Clocked(openai_client, deadline_margin=2.0)
    result = await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed"
    assert [c.output for c in result.tool_calls] == ["at once"]


@pytest.mark.parametrize("skew", [3600.0, 3.0])
async def test_1_a_server_clock_ahead_of_ours_still_cuts_a_slow_tool_in_time(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any, skew: float
) -> None:
    # On this machine's clock the run has an hour (or seconds) more than it has: a deadline
    # measured on it would let the hanging tool run until the server expired the run.
    emulator.clock_offset = skew
    emulator.enqueue(Scenario(ttl=5.0).tool_round([("hang", {})]).reply("Done."))
    thread_id, assistant_id = await thread_and_assistant(Clocked)
    machine = Clocked(openai_client, deadline_margin=2.0)
    result = await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed"
    (call,) = result.tool_calls
    assert json.loads(call.output)["error"]["type"] == "deadline"
    assert emulator.run_stats(result.run.id).submissions_accepted == 1


class Looping(RunMachine):
    @tool
    def get_rain(self, city: str) -> float:
        return 0.25


async def test_2_a_guards_cancel_reports_the_state_the_run_reached(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    emulator.enqueue(Scenario().loop([("get_rain", {"city": "Oslo"})]))
    thread_id, assistant_id = await thread_and_assistant(Looping)
    machine = Looping(openai_client, max_identical_rounds=1)
    with pytest.raises(RequiresActionLoop) as info:
        await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    partial = info.value.result
    assert partial is not None
    assert partial.status == "cancelled" == emulator.run_stats(partial.run_id).status
    assert machine.state == "cancelled"


async def test_27_a_5xx_on_the_cancel_is_retried_within_the_bound(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    # The SDK's own retries are off for the cancel; two failures in a row are runmachine's to
    # retry.
    emulator.inject(HTTPFault("cancel_run", nth=1, status=503))
    emulator.inject(HTTPFault("cancel_run", nth=2, status=500))
    emulator.enqueue(Scenario().loop([("get_rain", {"city": "Oslo"})]))
    thread_id, assistant_id = await thread_and_assistant(Looping)
    machine = Looping(openai_client, max_identical_rounds=1)
    with pytest.raises(RequiresActionLoop):
        await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert machine.run_id is not None
    assert emulator.run_stats(machine.run_id).status == "cancelled"
    # The thread is free: a new run starts on it.
    emulator.enqueue(Scenario.text("again"))
    again = await Looping(openai_client).run(thread_id=thread_id, assistant_id=assistant_id)
    assert again.status == "completed"


def _outage(emulator: Emulator, failed_reads: int) -> None:
    """The stream of the answer drops, then the next reads of the run answer 503."""
    emulator.enqueue(
        Scenario()
        .tool_round([("get_rain", {"city": "Oslo"})])
        .reply("Dry in Oslo.")
        .with_faults(
            Faults(
                drop_after={1: 2},
                http_errors=[
                    HTTPFault("retrieve_run", nth=n, status=503) for n in range(1, failed_reads + 1)
                ],
            )
        )
    )


async def test_28_a_short_polling_outage_does_not_turn_a_completed_run_into_an_error(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    # Three failed reads, the SDK's own two retries included: the read is tried again, and the
    # run is seen completed.
    _outage(emulator, 3)
    thread_id, assistant_id = await thread_and_assistant(Looping)
    result = await Looping(openai_client, poll_interval=0.02, max_poll_interval=0.05).run(
        thread_id=thread_id, assistant_id=assistant_id
    )
    assert result.status == "completed"
    assert result.text == "Dry in Oslo."


async def test_28_an_outage_that_lasts_is_given_up_with_an_error_that_says_so(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    _outage(emulator, 30)
    thread_id, assistant_id = await thread_and_assistant(Looping)
    machine = Looping(openai_client.with_options(max_retries=0), recovery_attempts=2)
    with pytest.raises(
        RunAborted, match=r"gave up reading run run_\w+ back after 2 failed"
    ) as info:
        await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert isinstance(info.value.__cause__, openai.InternalServerError)


@pytest.mark.parametrize(
    "faults",
    [
        Faults(undecodable_data={0: 4}),
        Faults(null_data={0: 3}),
        Faults(null_data={1: 3}),
    ],
    ids=["invalid-utf8", "null-run-event", "null-after-submit"],
)
async def test_29_undecodable_data_falls_back_to_polling(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any, faults: Faults
) -> None:
    emulator.enqueue(
        Scenario()
        .tool_round([("get_rain", {"city": "Oslo"})])
        .reply("Dry in Oslo.")
        .with_faults(faults)
    )
    thread_id, assistant_id = await thread_and_assistant(Looping)
    machine = Looping(openai_client, poll_interval=0.02, max_poll_interval=0.05)
    result = await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed"
    assert result.text == "Dry in Oslo."
    assert [type(e).__name__ for e in machine.core.stream_errors] == ["StreamError"]
    assert emulator.run_stats(result.run.id).submissions_accepted == 1


async def test_26_a_server_that_keeps_the_stream_open_stalls_nothing(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    # Both streams stay open after their last event (keep-alives, never ``done``). The read
    # timeout is the SDK's: without acting on the deciding event, run() would wait it out.
    emulator.enqueue(
        Scenario()
        .tool_round([("get_rain", {"city": "Oslo"})])
        .reply("Dry in Oslo.")
        .with_faults(Faults(hold_open={0, 1}))
    )
    thread_id, assistant_id = await thread_and_assistant(Looping)
    machine = Looping(openai_client.with_options(timeout=5.0))
    # Keep-alives reset the read timeout, so without the fix this would wait for ever: the bound
    # turns that hang into a failure (it is no measure of speed; the run takes about a second).
    with anyio.fail_after(120):
        result = await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed"
    assert result.text == "Dry in Oslo."
    assert result.tool_calls[0].output == "0.25"
    # Read as it came: no stream was lost to the read timeout (and polled back instead).
    assert machine.core.stream_errors == []


async def _runs_of(client: Any, thread_id: str) -> list[Any]:
    with quiet_deprecation():
        page = await client.beta.threads.runs.list(thread_id=thread_id)
    return list(page.data)


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "polling"])
async def test_25_a_cancel_before_the_run_is_named_leaves_no_orphan(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any, stream: bool
) -> None:
    # The server creates the run and takes its time to answer: the host cancels in between.
    emulator.enqueue(
        Scenario()
        .tool_round([("get_rain", {"city": "Oslo"})])
        .with_faults(Faults(create_response_delay=5.0))
    )
    thread_id, assistant_id = await thread_and_assistant(Looping)
    machine = Looping(openai_client, stream=stream)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: machine.run(thread_id=thread_id, assistant_id=assistant_id))
        while not await _runs_of(openai_client, thread_id):
            await anyio.sleep(0.01)  # until the server has created the run
        assert machine.run_id is None  # ... and before runmachine has heard of it
        tg.cancel_scope.cancel()
    (run,) = await _runs_of(openai_client, thread_id)
    assert run.status == "cancelled"
    assert emulator.run_stats(run.id).cancel_requests == 1
    emulator.enqueue(Scenario.text("again"))
    again = await Looping(openai_client).run(thread_id=thread_id, assistant_id=assistant_id)
    assert again.status == "completed"


async def test_25_a_lost_create_answer_retried_by_the_sdk_leaves_no_orphan(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    # Polling mode creates the run with a plain request: its answer is cut off, the SDK tries
    # again and is told the thread already has an active run (the one the first try made).
    emulator.enqueue(
        Scenario()
        .tool_round([("get_rain", {"city": "Oslo"})])
        .with_faults(Faults(lose_create_response=True))
    )
    thread_id, assistant_id = await thread_and_assistant(Looping)
    machine = Looping(openai_client, stream=False)
    with pytest.raises(openai.BadRequestError, match="already has an active run") as info:
        await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    (run,) = await _runs_of(openai_client, thread_id)
    assert run.status == "cancelled"
    notes = getattr(info.value, "__notes__", [])
    assert any(f"({run.id})" in note and "cancelled" in note for note in notes), notes


class Exits(RunMachine):
    @tool
    async def leave(self) -> str:
        raise SystemExit(3)

    @tool
    async def stay(self) -> str:
        await anyio.sleep_forever()
        return "never"


@pytest.mark.parametrize("calls", [1, 2])
async def test_32_a_tools_system_exit_comes_out_as_itself_with_its_code(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any, calls: int
) -> None:
    emulator.enqueue(Scenario().tool_round([("leave", {}), ("stay", {})][:calls]))
    thread_id, assistant_id = await thread_and_assistant(Exits)
    machine = Exits(openai_client)
    with pytest.raises(SystemExit) as info:
        await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert info.value.code == 3
    assert machine.run_id is not None
    assert emulator.run_stats(machine.run_id).status == "cancelled"


class Threads(RunMachine):
    release = threading.Event()
    finished = threading.Event()

    @tool(timeout=0.2)
    def blocking(self) -> str:
        # A plain function: it runs in a worker thread, which a timeout cannot stop.
        Threads.release.wait(30)
        Threads.finished.set()
        return "late"

    @tool(timeout=0.2)
    async def cancellable(self) -> str:
        await anyio.sleep_forever()
        return "never"


async def test_4_a_cut_plain_function_is_recorded_as_abandoned_and_goes_on(
    emulator: Emulator, openai_client: Any, thread_and_assistant: Any
) -> None:
    Threads.release.clear()
    Threads.finished.clear()
    emulator.enqueue(Scenario().tool_round([("blocking", {}), ("cancellable", {})]).reply("Ok."))
    thread_id, assistant_id = await thread_and_assistant(Threads)
    result = await Threads(openai_client).run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed"
    blocking, cancellable = result.tool_calls
    assert blocking.abandoned and not cancellable.abandoned
    assert "abandoned and may still finish" in json.loads(blocking.output)["error"]["message"]
    assert "abandoned" not in cancellable.output
    # The function really did go on in its thread, after its error output was sent.
    assert not Threads.finished.is_set()
    Threads.release.set()
    await anyio.to_thread.run_sync(Threads.finished.wait, 30)
    assert Threads.finished.is_set()


class CancelsInProgress(Looping):
    async def on_enter_in_progress(self, run: Any) -> None:
        await self.request_cancel()


class CancelsFromATool(Looping):
    async def on_tool_started(self, tool_call: Any) -> None:
        await self.request_cancel()


@pytest.mark.parametrize("machine_class", [CancelsInProgress, CancelsFromATool])
async def test_a_cancel_a_hook_requests_reaches_the_server(
    emulator: Emulator,
    openai_client: Any,
    thread_and_assistant: Any,
    machine_class: type[Looping],
) -> None:
    emulator.enqueue(Scenario().tool_round([("get_rain", {"city": "Oslo"})]).reply("never"))
    thread_id, assistant_id = await thread_and_assistant(machine_class)
    machine = machine_class(openai_client, poll_interval=0.02, max_poll_interval=0.05)
    # A bound against a hang (a cancel never sent leaves the run waiting), not a measure of
    # speed: the run ends in well under a second.
    with anyio.fail_after(120):
        result = await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "cancelled"
    stats = emulator.run_stats(result.run.id)
    assert stats.status == "cancelled"
    assert stats.cancel_requests == 1
    assert stats.submissions_received == 0


@pytest.mark.parametrize("reuse", [True, False], ids=["reuse_connection", "alongside"])
@pytest.mark.parametrize("runs", [1, 3])
async def test_a_pool_of_one_connection_is_enough(
    emulator: Emulator, emulator_url: str, thread_and_assistant: Any, runs: int, reuse: bool
) -> None:
    # The stream that stopped at requires_action is read to its end beside the round, not after
    # the submission is answered: its connection goes back to the pool, so a submission that
    # needs it never waits on a connection its own run holds (the pool wait would end this test
    # with PoolTimeout instead of hanging; it is no measure of speed).
    http = openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_connections=1))
    client = openai.AsyncOpenAI(
        base_url=emulator_url,
        api_key="test",
        max_retries=0,
        timeout=httpx2.Timeout(120, pool=60),
        http_client=http,
    )
    try:
        for _ in range(runs):
            emulator.enqueue(
                Scenario().tool_round([("get_rain", {"city": "Oslo"})]).reply("Dry in Oslo.")
            )
        threads = [await thread_and_assistant(Looping) for _ in range(runs)]
        results: list[Any] = []

        async def one(thread_id: str, assistant_id: str) -> None:
            machine = Looping(client, reuse_connection=reuse)
            results.append(await machine.run(thread_id=thread_id, assistant_id=assistant_id))

        async with anyio.create_task_group() as tg:
            for thread_id, assistant_id in threads:
                tg.start_soon(one, thread_id, assistant_id)
        assert [r.status for r in results] == ["completed"] * runs
        assert all(r.text == "Dry in Oslo." and r.tool_calls[0].output == "0.25" for r in results)
    finally:
        await client.close()


class Streams:
    """What the HTTP layer says of a client's connections (httpcore's ``trace`` extension):
    how many were opened, and how many streamed responses were closed."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.changed = anyio.Event()

    async def on_request(self, request: httpx2.Request) -> None:
        streamed = request.url.path.endswith(("/runs", "/submit_tool_outputs"))

        async def trace(name: str, info: Any) -> None:
            if name == "connection.connect_tcp.complete":
                self.opened += 1
            elif name == "http11.response_closed.complete" and streamed:
                self.closed += 1
                self.changed.set()
                self.changed = anyio.Event()

        request.extensions["trace"] = trace

    async def until_closed(self, count: int) -> None:
        while self.closed < count:
            await self.changed.wait()


async def test_with_reuse_connection_a_run_holds_one_connection_round_after_round(
    emulator: Emulator, emulator_url: str, thread_and_assistant: Any
) -> None:
    """The end of the stream that stopped at ``requires_action`` is read alongside the tools,
    so the submission takes the connection it gives back: however many rounds, one connection
    (the pool has room for more). The tool returns only once that stream is closed, so what
    is checked is the reuse, not how fast the stream's end arrives."""
    streams = Streams()

    class Patient(RunMachine):
        rounds = 0

        @tool
        async def get_rain(self, city: str) -> float:
            Patient.rounds += 1
            await streams.until_closed(Patient.rounds)
            return 0.25

    emulator.enqueue(
        Scenario()
        .tool_round([("get_rain", {"city": "Oslo"})])
        .tool_round([("get_rain", {"city": "Bergen"})])
        .reply("Dry in both.")
    )
    thread_id, assistant_id = await thread_and_assistant(Patient)
    http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [streams.on_request]})
    async with openai.AsyncOpenAI(
        base_url=emulator_url, api_key="test", max_retries=0, http_client=http
    ) as client:
        # A bound against a hang (a stream's end that is never read before the submission
        # leaves the tool waiting), not a measure of speed.
        with anyio.fail_after(60):
            result = await Patient(client).run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed" and result.text == "Dry in both."
    assert [r.output for r in result.tool_calls] == ["0.25", "0.25"]
    assert streams.closed == 3  # the create stream and both submission streams
    assert streams.opened == 1
