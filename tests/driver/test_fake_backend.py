"""The driver against a scripted ``Backend``: the seam is all it needs to drive a run.

These tests talk to no server at all: ``ScriptedBackend`` implements ``runmachine.backends.base.
Backend`` from lists of SDK events, and records every request the driver makes, so the driver's
rules (one submission per round, a retry only after the server is read back, the server run
cancelled on the way out) are checked on the seam itself. The same rules are checked end to end
over HTTP against the emulator in ``test_run.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import openai
import pytest
from openai.types.beta.threads import Run

from runmachine import DuplicateSubmission, MemoryLedger, RunCore, RunMachineError, lifecycle, tool
from runmachine.backends import CreateRun, RequiredCall, RunRef, StreamLost
from runmachine.backends.base import Backend, SubmitMode
from runmachine.driver import Driver
from runmachine.options import DriverOptions
from runmachine.tools import as_spec
from tests.core.events import message_created, required_action, run_event, run_payload, text_delta

pytestmark = pytest.mark.anyio


def _run(status: str, **extra: Any) -> Run:
    return Run.construct(**run_payload(status, **extra))


class ScriptedBackend:
    """A server made of scripts: one list of events per stream, in the order they are opened."""

    name = "scripted"

    def __init__(self, streams: list[list[Any]], *, statuses: list[Run] | None = None) -> None:
        self.streams = list(streams)
        self.statuses = list(statuses or [])
        self.submissions: list[dict[str, str]] = []
        self.cancels: list[RunRef] = []
        self.retrieves = 0
        self.fail_next_submit: BaseException | None = None

    def submit_mode(self, streaming: bool) -> SubmitMode:
        return "new_stream" if streaming else "acknowledge"

    @asynccontextmanager
    async def _stream(self) -> AsyncIterator[AsyncIterator[Any]]:
        script = self.streams.pop(0)

        async def events() -> AsyncIterator[Any]:
            for item in script:
                if isinstance(item, BaseException):
                    raise item
                await anyio.lowlevel.checkpoint()
                yield item

        gen = events()
        try:
            yield gen
        finally:
            await gen.aclose()

    def open_run(self, request: Any) -> Any:
        return self._stream()

    async def create_run(self, request: Any) -> Run:
        raise AssertionError("streaming only")

    async def find_created(self, request: Any, since: float) -> Run | None:
        return None

    def ref(self, run: Run) -> RunRef:
        return RunRef(run.id, run.thread_id)

    def required_calls(self, run: Run) -> list[RequiredCall]:
        assert run.required_action is not None
        return [
            RequiredCall(c.id, c.function.name, c.function.arguments)
            for c in run.required_action.submit_tool_outputs.tool_calls
        ]

    def open_submission(self, ref: RunRef, outputs: Mapping[str, str]) -> Any:
        self.submissions.append(dict(outputs))
        failure, self.fail_next_submit = self.fail_next_submit, None
        if failure is not None:
            raise failure
        return self._stream()

    async def submit(self, ref: RunRef, outputs: Mapping[str, str]) -> Run:
        raise AssertionError("streaming only")

    async def retrieve(self, ref: RunRef) -> tuple[Run, float | None]:
        self.retrieves += 1
        if self.cancels and not self.statuses:
            return _run("cancelled"), 0.0  # the cancel has landed
        return self.statuses.pop(0), 0.0

    async def cancel(self, ref: RunRef) -> Run:
        self.cancels.append(ref)
        return _run("cancelling")

    async def messages(self, ref: RunRef) -> list[Any]:
        return []

    def server_time(self) -> None:
        return None


def _calls(*ids: str, name: str = "add") -> dict[str, Any]:
    action = required_action(*ids)
    for call in action["submit_tool_outputs"]["tool_calls"]:
        call["function"] = {"name": name, "arguments": '{"a": 1, "b": 2}'}
    return action


@tool
def add(a: int, b: int) -> int:
    return a + b


def _driver(backend: Backend, core: RunCore | None = None, **options: Any) -> Driver:
    return Driver(
        core or RunCore(),
        backend,
        options=DriverOptions(**options),
        tools={"add": as_spec(add)},
        owner=None,
        ledger=MemoryLedger(),
        machine_name="tests:Scripted",
    )


# No ``expires_at``: these runs have no deadline (deadlines are the emulator tests' business).
REQUIRES = [
    run_event("thread.run.created", expires_at=None),
    run_event("thread.run.in_progress", expires_at=None),
    run_event(
        "thread.run.requires_action",
        required_action=_calls("call_1", "call_2"),
        expires_at=None,
    ),
]
ANSWER = [
    run_event("thread.run.queued"),
    run_event("thread.run.in_progress"),
    message_created(),
    text_delta("3 and 3", first=True),
    run_event("thread.run.completed"),
]


async def test_the_driver_drives_a_run_through_the_seam_alone() -> None:
    backend = ScriptedBackend([REQUIRES, ANSWER])
    result = await _driver(backend).create(CreateRun("thread_test", "asst_test"))
    assert result.status == lifecycle.COMPLETED
    assert backend.submissions == [{"call_1": "3", "call_2": "3"}]
    assert result.text == "3 and 3"
    assert [r.output for r in result.tool_calls] == ["3", "3"]
    assert backend.cancels == []


async def test_a_lost_submission_is_sent_again_only_after_the_server_still_waits_on_it() -> None:
    waiting = _run("requires_action", required_action=_calls("call_1", "call_2"), expires_at=None)
    backend = ScriptedBackend([REQUIRES, ANSWER], statuses=[waiting])
    backend.fail_next_submit = openai.APIConnectionError(request=_request())
    result = await _driver(backend).create(CreateRun("thread_test", "asst_test"))
    assert result.status == lifecycle.COMPLETED
    assert backend.retrieves == 1
    assert backend.submissions == [{"call_1": "3", "call_2": "3"}] * 2


async def test_a_lost_submission_the_server_took_is_never_sent_again() -> None:
    moved_on = _run("completed")
    backend = ScriptedBackend([REQUIRES], statuses=[moved_on])
    backend.fail_next_submit = openai.APIConnectionError(request=_request())
    result = await _driver(backend).create(CreateRun("thread_test", "asst_test"))
    assert result.status == lifecycle.COMPLETED
    assert len(backend.submissions) == 1


async def test_a_stream_lost_mid_run_is_recovered_by_polling_the_backend() -> None:
    broken = [*REQUIRES[:2], StreamLost("dropped")]
    backend = ScriptedBackend([broken], statuses=[_run("completed")])
    core = RunCore()
    result = await _driver(backend, core).create(CreateRun("thread_test", "asst_test"))
    assert result.status == lifecycle.COMPLETED
    assert [type(e).__name__ for e in core.stream_errors] == ["StreamLost"]


async def _cancel_mid_tool(backend: ScriptedBackend) -> Driver:
    """Drive a run through ``backend`` and cancel the host while its tool runs."""
    started = anyio.Event()

    @tool(name="add")
    async def slow(a: int, b: int) -> int:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("never")

    driver = _driver(backend)
    driver.tools = {"add": as_spec(slow)}
    async with anyio.create_task_group() as tg:
        tg.start_soon(driver.create, CreateRun("thread_test", "asst_test"))
        await started.wait()
        tg.cancel_scope.cancel()
    return driver


async def test_a_host_cancel_mid_tool_cancels_the_server_run_through_the_seam() -> None:
    backend = ScriptedBackend([REQUIRES])
    driver = await _cancel_mid_tool(backend)
    assert backend.cancels == [RunRef("run_test", "thread_test")]
    assert backend.submissions == []
    assert driver.core.state == lifecycle.CANCELLED


def _request() -> Any:
    import httpx2

    return httpx2.Request("POST", "http://127.0.0.1/v1/threads/t/runs/r/submit_tool_outputs")


async def test_a_duplicate_submission_the_core_refuses_still_cancels_the_server_run() -> None:
    backend = ScriptedBackend([REQUIRES])
    core = RunCore()
    core.mark_submitted({"call_1", "call_2"})  # as a ledger that lost the round's entry would
    with pytest.raises(DuplicateSubmission) as info:
        await _driver(backend, core).create(CreateRun("thread_test", "asst_test"))
    assert info.value.result is not None
    assert backend.cancels == [RunRef("run_test", "thread_test")]
    assert backend.submissions == []


class RefusesCancel(ScriptedBackend):
    """The run expired meanwhile: the cancel is refused (400) and the run reads back expired."""

    async def cancel(self, ref: RunRef) -> Run:
        self.cancels.append(ref)
        raise openai.BadRequestError(
            "Cannot cancel run with status 'expired'.",
            response=httpx2.Response(400, request=_request()),
            body=None,
        )

    async def retrieve(self, ref: RunRef) -> tuple[Run, float | None]:
        self.retrieves += 1
        return _run("expired"), 0.0


async def test_a_refused_cancel_reads_back_the_state_the_run_reached() -> None:
    backend = RefusesCancel([REQUIRES])
    driver = await _cancel_mid_tool(backend)
    assert len(backend.cancels) == 1
    assert driver.core.state == lifecycle.EXPIRED


def test_a_request_token_is_added_when_metadata_is_not_given() -> None:
    for metadata in (openai.NOT_GIVEN, None, {"team": "x"}):
        request = CreateRun("thread_test", "asst_test", {"metadata": metadata})
        body = request.body()["metadata"]
        assert body["runmachine_request"] == request.token
    full = {f"k{i}": "v" for i in range(16)}
    assert CreateRun("t", "a", {"metadata": full}).body()["metadata"] == full


class CreatedNowhere(ScriptedBackend):
    """A server whose stream that creates the run breaks at once, and whose read-back of the
    thread's runs fails with ``failure`` (or finds nothing)."""

    def __init__(self, failure: BaseException | None) -> None:
        super().__init__([[StreamLost("ConnectTimeout: connect timed out")]])
        self.failure = failure

    async def find_created(self, request: Any, since: float) -> Run | None:
        if self.failure is not None:
            raise self.failure
        return None


async def test_a_creation_stream_lost_before_the_run_was_named_says_what_broke_it() -> None:
    backend = CreatedNowhere(None)
    with pytest.raises(RunMachineError, match=r"before the server named the run") as raised:
        await _driver(backend).create(CreateRun("thread_test", "asst_test"))
    assert "ConnectTimeout: connect timed out" in str(raised.value)
    assert isinstance(raised.value.__cause__, StreamLost)


async def test_a_read_back_the_sdk_cannot_parse_is_not_passed_off_as_its_own_failure() -> None:
    """A server that answers the list of runs with something else (the SDK then fails inside
    its own parsing, as an ``AttributeError``): the error says the stream broke, why, and that
    reading back failed."""
    garbled = AttributeError("'str' object has no attribute '_set_private_attributes'")
    with pytest.raises(
        RunMachineError, match=r"reading back the runs it may have created"
    ) as raised:
        await _driver(CreatedNowhere(garbled)).create(CreateRun("thread_test", "asst_test"))
    assert "ConnectTimeout" in str(raised.value) and "AttributeError" in str(raised.value)
    assert raised.value.__cause__ is garbled


async def test_a_read_back_the_server_refused_is_raised_as_the_server_said_it() -> None:
    refused = openai.APIConnectionError(request=_request())
    with pytest.raises(openai.APIConnectionError):
        await _driver(CreatedNowhere(refused)).create(CreateRun("thread_test", "asst_test"))
