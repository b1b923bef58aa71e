"""The emulated Assistants v2 server: state, run lifecycle, SSE framing and fault injection.

:class:`Emulator` owns every object (assistants, threads, messages, runs, steps) behind one
``threading.Lock``, because the HTTP server runs in another thread than the test that scripts it.
Its Starlette app serves the ``/v1`` routes; each answers JSON, or SSE when the body says
``"stream": true`` (never decided from the ``Accept`` header, which the SDK sets to JSON).

Runs advance in a background task on the server's event loop, independent of any stream: a
stream only *listens* to the run it started. That is how the real service behaves, and it is what
makes the faults meaningful: when a stream is dropped, cut by ``event: error`` or broken by a
malformed line, the run goes on server-side and a client can recover by polling. Every run
segment (from creation or from an accepted submission up to ``requires_action`` or a terminal
status) is one task; a task waits between deltas and, for ``hang()``, until the run is cancelled
or reaches its deadline. The app therefore needs an asyncio server (uvicorn, as ``serve()`` uses).

What the SDK (openai 3.54, httpx2) sees for each fault, probed against this server:

* ``drop_after`` - the connection is closed without the final chunk: iterating the stream
  raises ``httpx2.RemoteProtocolError`` ("peer closed connection without sending complete
  message body") through ``runs.stream()`` and ``submit_tool_outputs_stream()``, and
  ``openai.APIConnectionError`` through the raw ``runs.create(stream=True)`` iterator; such
  mid-stream failures are never retried. ``drop_after={i: 0}`` drops right after the headers.
* ``lose_submit_response`` - the submission is accepted (the run moves on), then the response
  is cut after its headers. Non-streamed: the SDK sees a connection error and retries the POST,
  which now hits a run that is no longer ``requires_action`` and gets the 400
  ``Runs in status "..." do not accept tool outputs.`` (a ``BadRequestError``). Streamed: the
  stream opens and the first read raises as for ``drop_after``.
* ``create_response_delay`` - the run is created and the answer to its request waits.
* ``lose_create_response`` - the run is created, then the answer is cut off (a stream ends before
  its first event; a JSON answer mid-body, which the SDK retries into a 400 "already has an
  active run").
* ``submit_response_delay`` - the submission is taken (the run moves on) and the answer waits:
  a client that dies meanwhile never learns that its outputs were accepted.
* ``http_errors`` - an error envelope with the chosen status; the SDK retries 408/409/429/5xx
  (``max_retries``, honouring ``retry-after`` up to 60 s) and raises the matching
  ``APIStatusError`` subclass when the attempts run out.
* ``error_event`` - ``event: error`` then the stream ends (no ``done``). With the bare shape
  (``{code, message, param, type}``, the spec's) the SDK yields an event and keeps going; with
  the wrapped shape (``{"error": {...}}``) it raises ``openai.APIError`` mid-stream.
* ``unknown_event`` - ``event: thread.run.step.frobnicated`` with a JSON object: never raises.
* ``malformed_data`` - ``event: thread.message.delta`` whose ``data:`` is not JSON: the SDK
  raises ``json.JSONDecodeError`` mid-stream.
* ``undecodable_data`` - ``event: thread.message.delta`` whose ``data:`` bytes are not UTF-8.
* ``null_data`` - the stream's latest run event again, with ``data: null``.
* ``hold_open`` - after its last event the stream sends keep-alives, never ``done``, and stays
  open for as long as the client listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import email.utils
import json
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs

from runmachine.testing import _objects as ob
from runmachine.testing._model import (
    AnswerOutputs,
    Expire,
    Fail,
    Faults,
    Hang,
    HTTPFault,
    Incomplete,
    Loop,
    Op,
    Pending,
    Program,
    Reply,
    Scenario,
    ToolRound,
    answer_from_outputs,
    toy_program,
)
from runmachine.testing._sessions import SessionsAPI, SessionsState, TurnStats
from runmachine.testing._turns import TurnFaults, TurnScenario

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

JSON = dict[str, Any]
Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]

ErrorShape = Literal["bare", "wrapped"]

_END = object()

_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"


@attrs.frozen
class RunStats:
    """What the server saw of one run. ``submissions_received`` counts every submit request
    that reached the run; each one is accepted (the run moved on), rejected (refused with a
    400), or faulted (answered by an injected fault)."""

    run_id: str
    status: str
    submissions_received: int
    submissions_accepted: int
    submissions_rejected: int
    submissions_faulted: int
    rounds: int
    cancel_requests: int
    tool_outputs: tuple[Mapping[str, str], ...]
    requests: Mapping[str, int]


class _Interrupted(Exception):
    def __init__(self, kind: Literal["cancel", "expire"]) -> None:
        super().__init__(kind)
        self.kind = kind


class _Run:
    """Mutable server-side record of one run (guarded by the emulator lock)."""

    def __init__(
        self, data: JSON, scenario: Scenario | None, program: Program[Op], deadline: float
    ) -> None:
        self.data = data
        self.scenario = scenario
        self.faults = scenario.faults if scenario is not None else Faults()
        self.program = program
        self.deadline = deadline
        self.steps: list[JSON] = []
        self.open_step: JSON | None = None
        self.open_message: JSON | None = None
        self.tool_step: JSON | None = None
        self.outputs: list[tuple[str, str]] = []
        self.last_op_was_tool_round = False
        self.listener: asyncio.Queue[Any] | None = None
        self.wake: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None
        self.cancel_requested = False
        self.received = 0
        self.accepted = 0
        self.rejected = 0
        self.faulted = 0
        self.rounds = 0
        self.cancel_requests = 0
        self.tool_outputs: list[dict[str, str]] = []
        self.requests: dict[str, int] = {}

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def status(self) -> str:
        return str(self.data["status"])


@attrs.frozen
class _StreamPlan:
    drop_after: int | None
    error_event: int | None
    unknown_event: int | None
    malformed_data: int | None
    undecodable_data: int | None
    null_data: int | None
    hold_open: bool
    error_shape: ErrorShape


class Emulator(SessionsAPI):
    """An in-process Assistants v2 server (see the module docstring and ``runmachine.testing``),
    which also serves the agent-sessions API (``runmachine.testing._sessions``).

    Options (all also settable as attributes; ``reset()`` restores the constructor's values):
    ``run_ttl`` seconds from creation to expiry (``expires_at = floor(created + ttl)``);
    ``delta_delay`` seconds between streamed deltas; ``error_shape`` of injected ``event: error``
    (``"bare"`` as in the spec, or ``"wrapped"`` in ``{"error": ...}``); ``stream_cancelling``
    whether ``thread.run.cancelling`` is pushed into an open stream; ``poll_after_ms`` sent as
    ``openai-poll-after-ms`` on run retrieval; ``keepalive_interval`` idle seconds before a
    ``: keep-alive`` comment on an open stream; ``clock_offset`` seconds the emulator's clock is
    ahead of this machine's (behind when negative): every timestamp it reports and its ``Date``
    header carry it, as a server on another host would; ``queue_delay`` seconds a run stays
    ``queued`` before ``in_progress`` (after creation and after each submission).
    """

    def __init__(
        self,
        run_ttl: float = 600.0,
        delta_delay: float = 0.0,
        error_shape: ErrorShape = "bare",
        stream_cancelling: bool = True,
        poll_after_ms: int | None = None,
        keepalive_interval: float = 1.0,
        queue_delay: float = 0.0,
        clock_offset: float = 0.0,
    ) -> None:
        if error_shape not in ("bare", "wrapped"):
            raise ValueError("error_shape must be 'bare' or 'wrapped'")
        self._config = {
            "run_ttl": run_ttl,
            "delta_delay": delta_delay,
            "error_shape": error_shape,
            "stream_cancelling": stream_cancelling,
            "poll_after_ms": poll_after_ms,
            "keepalive_interval": keepalive_interval,
            "queue_delay": queue_delay,
            "clock_offset": clock_offset,
        }
        self.run_ttl = run_ttl
        self.delta_delay = delta_delay
        self.error_shape: ErrorShape = error_shape
        self.stream_cancelling = stream_cancelling
        self.poll_after_ms = poll_after_ms
        self.keepalive_interval = keepalive_interval
        self.queue_delay = queue_delay
        self.clock_offset = clock_offset
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None  # the uvicorn.Server while served in a thread
        self._tasks: set[asyncio.Task[None]] = set()
        self._base_url: str | None = None
        self._app: Starlette | None = None
        self._clear()

    def _clear(self) -> None:
        self._assistants: dict[str, JSON] = {}
        self._threads: dict[str, JSON] = {}
        self._messages: dict[str, list[JSON]] = {}
        self._runs: dict[str, _Run] = {}
        self._thread_runs: dict[str, list[str]] = {}
        self._queue: deque[Pending[Scenario]] = deque()
        self._scripts: dict[str, Pending[Scenario]] = {}
        self._faults: list[HTTPFault] = []
        self._requests: dict[str, int] = {}
        self._agent_sessions = SessionsState()

    # --- public control surface (called from the test's thread) ------------------------------

    @property
    def app(self) -> Starlette:
        if self._app is None:
            self._app = self._build_app()
        return self._app

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the emulator is not being served; use `with emu.serve():`")
        return self._base_url

    def serve(self) -> contextlib.AbstractContextManager[str]:
        """Serve over real TCP on 127.0.0.1 (free port) in a background thread; yields base_url."""
        from runmachine.testing._serve import serve_in_thread

        return serve_in_thread(self)

    def enqueue(self, scenario: Scenario) -> None:
        """The next run created (on any thread, for any assistant) takes this scenario."""
        with self._lock:
            self._queue.append(Pending(scenario))

    def script(self, assistant_id: str, scenario: Scenario) -> None:
        """Every run of this assistant follows ``scenario`` (queued scenarios go first)."""
        with self._lock:
            self._scripts[assistant_id] = Pending(scenario)

    def inject(self, fault: HTTPFault) -> None:
        """An emulator-wide HTTP fault: ``nth`` counts requests to the endpoint across runs."""
        with self._lock:
            self._faults.append(fault)

    def run_stats(self, run_id: str) -> RunStats:
        with self._lock:
            run = self._runs[run_id]
            self._refresh(run)
            return RunStats(
                run_id=run.id,
                status=run.status,
                submissions_received=run.received,
                submissions_accepted=run.accepted,
                submissions_rejected=run.rejected,
                submissions_faulted=run.faulted,
                rounds=run.rounds,
                cancel_requests=run.cancel_requests,
                tool_outputs=tuple(dict(o) for o in run.tool_outputs),
                requests=dict(run.requests),
            )

    def runs_snapshot(self, run_id: str) -> JSON:
        with self._lock:
            run = self._runs[run_id]
            self._refresh(run)
            return copy.deepcopy(run.data)

    def enqueue_turn(self, scenario: TurnScenario) -> None:
        """The next agent-session turn started (in any session) takes this scenario (FIFO)."""
        self._enqueue_turn(scenario)

    def turn_stats(self, turn_id: str) -> TurnStats:
        """What the server saw of one agent-session turn."""
        return self._turn_stats(turn_id)

    def sessions_snapshot(self, session_id: str) -> JSON:
        """The agent session as ``GET /v1/agents/sessions/{id}`` would answer it now."""
        return self._session_snapshot(session_id)

    def reset(self) -> None:
        """Forget every object, scenario and fault, and restore the constructor's options."""
        with self._lock:
            runs = list(self._runs.values())
            sessions = self._agent_sessions
            self._clear()
            for key, value in self._config.items():
                setattr(self, key, value)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._abandon, runs)
        self._on_loop(sessions.abandon)

    @property
    def option_names(self) -> frozenset[str]:
        """The names of the options ``Emulator(...)`` takes (and the ``emulator`` marker)."""
        return frozenset(self._config)

    def _abandon(self, runs: list[_Run]) -> None:
        for run in runs:
            if run.task is not None:
                run.task.cancel()
            if run.listener is not None:
                run.listener.put_nowait(_END)
                run.listener = None

    def close_streams(self) -> None:
        """End every open stream (called on the server loop before it stops); agent-session
        streams are cut, and their turns stop where they are, like the runs."""
        with self._lock:
            runs = list(self._runs.values())
        self._abandon(runs)
        self._close_sessions()

    # --- state helpers (lock held) ------------------------------------------------------------

    def _refresh(self, run: _Run) -> None:
        """Expire a run left in ``requires_action`` past its deadline (nothing streams then)."""
        if run.status == "requires_action" and time.time() >= run.deadline:
            self._expire_now(run)

    def _refresh_thread(self, thread_id: str) -> None:
        for run_id in self._thread_runs.get(thread_id, []):
            self._refresh(self._runs[run_id])

    def _active_run(self, thread_id: str) -> _Run | None:
        self._refresh_thread(thread_id)
        for run_id in self._thread_runs.get(thread_id, []):
            run = self._runs[run_id]
            if run.status in ob.ACTIVE_STATUSES:
                return run
        return None

    def _emit(self, run: _Run, event: str, data: JSON) -> None:
        if run.listener is not None:
            run.listener.put_nowait((event, copy.deepcopy(data)))

    def _end_stream(self, run: _Run) -> None:
        if run.listener is not None:
            run.listener.put_nowait(_END)
            run.listener = None

    def _take_scenario(self, assistant_id: str) -> Pending[Scenario] | None:
        if self._queue:
            return self._queue[0]
        return self._scripts.get(assistant_id)

    def _add_message(self, thread_id: str, message: JSON) -> None:
        self._messages.setdefault(thread_id, []).append(message)

    def _last_user_text(self, thread_id: str) -> str:
        for message in reversed(self._messages.get(thread_id, [])):
            if message["role"] == "user":
                return " ".join(
                    str(part["text"]["value"])
                    for part in message["content"]
                    if part.get("type") == "text"
                )
        return ""

    def _new_run(self, thread_id: str, assistant: JSON, body: JSON) -> _Run:
        pending = self._take_scenario(assistant["id"])
        scenario = pending.scenario if pending is not None else None
        requests = dict(pending.requests) if pending is not None else {}
        if pending is not None and self._queue and self._queue[0] is pending:
            self._queue.popleft()
        elif pending is not None:
            pending.requests.clear()
        ttl = scenario.ttl if scenario is not None and scenario.ttl is not None else self.run_ttl
        started = time.time()
        data = ob.run_obj(
            thread_id=thread_id,
            assistant=assistant,
            body=body,
            created_at=ob.stamp(started),
            expires_at=math.floor(started + ob.CLOCK_OFFSET.get() + ttl),
        )
        if scenario is not None:
            program = Program(scenario.ops)
        else:
            text = self._last_user_text(thread_id)
            program = Program(toy_program(text, data["tools"], data["parallel_tool_calls"]))
        run = _Run(data, scenario, program, started + ttl)
        run.requests.update(requests)
        self._runs[run.id] = run
        self._thread_runs.setdefault(thread_id, []).append(run.id)
        return run

    def _expire_now(self, run: _Run) -> None:
        for step in (run.open_step, run.tool_step):
            if step is not None and step["status"] == "in_progress":
                step["status"] = "expired"
                self._emit(run, "thread.run.step.expired", step)
        if run.open_message is not None:
            self._close_message(run, "incomplete", "run_expired")
        run.open_step = run.tool_step = None
        run.data.update(status="expired", required_action=None)
        self._emit(run, "thread.run.expired", run.data)

    def _close_message(self, run: _Run, status: str, reason: str | None = None) -> None:
        message = run.open_message
        if message is None:
            return
        stamp = ob.now()
        message["status"] = status
        if status == "completed":
            message["completed_at"] = stamp
        else:
            message["incomplete_at"] = stamp
            message["incomplete_details"] = {"reason": reason}
        run.open_message = None
        self._emit(run, f"thread.message.{status}", message)

    def _finish_cancel(self, run: _Run) -> None:
        if self.stream_cancelling and run.listener is not None:
            self._emit(run, "thread.run.cancelling", run.data)
        stamp = ob.now()
        for step in (run.open_step, run.tool_step):
            if step is not None and step["status"] == "in_progress":
                step.update(status="cancelled", cancelled_at=stamp)
                self._emit(run, "thread.run.step.cancelled", step)
        if run.open_message is not None:
            self._close_message(run, "incomplete", "run_cancelled")
        run.open_step = run.tool_step = None
        run.data.update(
            status="cancelled", cancelled_at=stamp, required_action=None, expires_at=None
        )
        self._emit(run, "thread.run.cancelled", run.data)

    def _finish(self, run: _Run, status: str, **fields: Any) -> None:
        usages = [s["usage"] for s in run.steps if s["usage"] is not None]
        run.data.update(
            status=status,
            expires_at=None,
            required_action=None,
            usage=ob.sum_usage(usages) if usages else ob.usage_obj(0, 0),
            **fields,
        )
        self._emit(run, f"thread.run.{status}", run.data)

    # --- the run engine (server loop) ---------------------------------------------------------

    def _spawn(self, run: _Run, coro: Callable[[_Run], Awaitable[None]]) -> None:
        async def runner() -> None:
            await coro(run)

        task = asyncio.get_running_loop().create_task(runner())
        run.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _delay(self, run: _Run) -> float:
        if run.faults.delta_delay is not None:
            return run.faults.delta_delay
        return self.delta_delay

    async def _pause(self, run: _Run, delay: float) -> None:
        """Yield to the loop (waiting ``delay`` seconds, ``inf`` = until woken) and raise
        ``_Interrupted`` when the run was cancelled or passed its deadline meanwhile."""
        if run.wake is None:
            run.wake = asyncio.Event()
        end = time.monotonic() + delay if delay != math.inf else math.inf
        while True:
            if run.cancel_requested:
                raise _Interrupted("cancel")
            remaining_life = run.deadline - time.time()
            if remaining_life <= 0:
                raise _Interrupted("expire")
            wait = min(end - time.monotonic(), remaining_life)
            if wait <= 0:
                await asyncio.sleep(0)
                if run.cancel_requested:
                    raise _Interrupted("cancel")
                return
            run.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(run.wake.wait(), timeout=wait)

    async def _segment(self, run: _Run) -> None:
        try:
            await self._pause(run, self.queue_delay)
            with self._lock:
                run.data.update(status="in_progress", started_at=ob.now())
                self._emit(run, "thread.run.in_progress", run.data)
            while True:
                await self._pause(run, 0.0)
                with self._lock:
                    op = run.program.next(lambda n: [ob.new_id("call") for _ in range(n)])
                if op is None:
                    if run.last_op_was_tool_round:
                        await self._reply(run, answer_from_outputs(run.outputs), None)
                    with self._lock:
                        self._finish(run, "completed", completed_at=ob.now())
                    return
                if await self._step(run, op):
                    return
        except _Interrupted as why:
            with self._lock:
                if why.kind == "cancel":
                    self._finish_cancel(run)
                else:
                    self._expire_now(run)
        finally:
            with self._lock:
                self._end_stream(run)

    async def _step(self, run: _Run, op: Op) -> bool:
        """Run one operation; True when the segment is over."""
        run.last_op_was_tool_round = False
        if isinstance(op, Reply | AnswerOutputs):
            text = op.text if isinstance(op, Reply) else answer_from_outputs(run.outputs)
            with self._lock:
                nxt = run.program.peek()
            reason = nxt.reason if isinstance(nxt, Incomplete) else None
            await self._reply(run, text, reason)
            return False
        if isinstance(op, ToolRound):
            await self._tool_round(run, op)
            return True
        if isinstance(op, Fail):
            with self._lock:
                self._finish(
                    run,
                    "failed",
                    failed_at=ob.now(),
                    last_error={"code": op.code, "message": op.message},
                )
            return True
        if isinstance(op, Incomplete):
            with self._lock:
                self._finish(run, "incomplete", incomplete_details={"reason": op.reason})
            return True
        if isinstance(op, Expire):
            raise _Interrupted("expire")
        if isinstance(op, Hang):
            await self._pause(run, math.inf)
            return False  # pragma: no cover - _pause only leaves by raising
        assert not isinstance(op, Loop)  # Program expands loops
        return False  # pragma: no cover

    async def _reply(self, run: _Run, text: str, incomplete_reason: str | None) -> None:
        await self._pause(run, 0.0)
        with self._lock:
            message = ob.message_obj(
                thread_id=run.data["thread_id"],
                role="assistant",
                content=[],
                assistant_id=run.data["assistant_id"],
                run_id=run.id,
                status="in_progress",
            )
            step = ob.step_obj(run=run.data, step_type="message_creation", message_id=message["id"])
            run.steps.append(step)
            run.open_step = step
            self._emit(run, "thread.run.step.created", step)
            self._emit(run, "thread.run.step.in_progress", step)
            self._add_message(run.data["thread_id"], message)
            run.open_message = message
            self._emit(run, "thread.message.created", message)
            self._emit(run, "thread.message.in_progress", message)
        tokens = ob.tokenize(text)
        value = ""
        delay = self._delay(run)
        for index, token in enumerate(tokens):
            await self._pause(run, delay if index else 0.0)
            with self._lock:
                value += token
                text_part: JSON = {"value": token}
                if index == 0:
                    text_part["annotations"] = []
                message["content"] = [{"type": "text", "text": {"value": value, "annotations": []}}]
                self._emit(
                    run,
                    "thread.message.delta",
                    {
                        "id": message["id"],
                        "object": "thread.message.delta",
                        "delta": {"content": [{"index": 0, "type": "text", "text": text_part}]},
                    },
                )
        await self._pause(run, 0.0)
        with self._lock:
            message["content"] = [{"type": "text", "text": {"value": text, "annotations": []}}]
            if incomplete_reason is None:
                self._close_message(run, "completed")
            else:
                self._close_message(run, "incomplete", "max_tokens")
            step.update(
                status="completed",
                completed_at=ob.now(),
                usage=ob.usage_obj(self._prompt_tokens(run), len(tokens) + 2),
            )
            run.open_step = None
            self._emit(run, "thread.run.step.completed", step)

    def _prompt_tokens(self, run: _Run) -> int:
        chars = sum(
            len(str(part.get("text", {}).get("value", "")))
            for m in self._messages.get(run.data["thread_id"], [])
            for part in m["content"]
        )
        return 50 + chars // 4

    async def _tool_round(self, run: _Run, op: ToolRound) -> None:
        await self._pause(run, 0.0)
        with self._lock:
            step = ob.step_obj(run=run.data, step_type="tool_calls")
            run.steps.append(step)
            run.open_step = step
            self._emit(run, "thread.run.step.created", step)
            self._emit(run, "thread.run.step.in_progress", step)
        ids = list(op.fixed_ids) if op.fixed_ids else [ob.new_id("call") for _ in op.calls]
        delay = self._delay(run)
        calls: list[JSON] = []
        for index, ((name, arguments), call_id) in enumerate(zip(op.calls, ids, strict=True)):
            await self._pause(run, delay if index else 0.0)
            with self._lock:
                call: JSON = {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": "", "output": None},
                }
                calls.append(call)
                step["step_details"]["tool_calls"] = copy.deepcopy(calls)
                self._emit(
                    run, "thread.run.step.delta", _step_delta(step, {"index": index, **call})
                )
            for piece in ob.split_arguments(arguments):
                await self._pause(run, delay)
                with self._lock:
                    call["function"]["arguments"] += piece
                    step["step_details"]["tool_calls"] = copy.deepcopy(calls)
                    fragment = {
                        "index": index,
                        "type": "function",
                        "function": {"arguments": piece},
                    }
                    self._emit(run, "thread.run.step.delta", _step_delta(step, fragment))
        await self._pause(run, 0.0)
        with self._lock:
            run.open_step = None
            run.tool_step = step
            run.rounds += 1
            run.last_op_was_tool_round = True
            run.data.update(
                status="requires_action",
                required_action={
                    "type": "submit_tool_outputs",
                    "submit_tool_outputs": {
                        "tool_calls": [
                            {
                                "id": c["id"],
                                "type": "function",
                                "function": {
                                    "name": c["function"]["name"],
                                    "arguments": c["function"]["arguments"],
                                },
                            }
                            for c in calls
                        ]
                    },
                },
            )
            self._emit(run, "thread.run.requires_action", run.data)
            if isinstance(run.program.peek(), Expire):
                run.program.next(lambda n: [])
                # The stream has ended at requires_action; the run is expired right away so
                # that the next look (a GET or a late submit) finds it expired.
                run.deadline = time.time()
                self._end_stream(run)
                self._expire_now(run)

    async def _cancel_later(self, run: _Run) -> None:
        await asyncio.sleep(0)
        with self._lock:
            if run.status == "cancelling":
                self._finish_cancel(run)
                self._end_stream(run)

    # --- HTTP -------------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.middleware import Middleware
        from starlette.routing import Route

        t = "/v1/threads/{thread_id}"
        r = t + "/runs/{run_id}"
        a = "/v1/assistants/{assistant_id}"
        routes = [
            Route("/v1/assistants", self._h_create_assistant, methods=["POST"]),
            Route("/v1/assistants", self._h_list_assistants, methods=["GET"]),
            Route(a, self._h_get_assistant, methods=["GET"]),
            Route(a, self._h_modify_assistant, methods=["POST"]),
            Route(a, self._h_delete_assistant, methods=["DELETE"]),
            Route("/v1/models", self._h_list_models, methods=["GET"]),
            Route("/v1/models/{model}", self._h_get_model, methods=["GET"]),
            Route("/v1/threads", self._h_create_thread, methods=["POST"]),
            Route("/v1/threads/runs", self._h_create_thread_and_run, methods=["POST"]),
            Route(t + "/messages", self._h_create_message, methods=["POST"]),
            Route(t + "/messages", self._h_list_messages, methods=["GET"]),
            Route(t + "/runs", self._h_create_run, methods=["POST"]),
            Route(t + "/runs", self._h_list_runs, methods=["GET"]),
            Route(r, self._h_get_run, methods=["GET"]),
            Route(r + "/cancel", self._h_cancel_run, methods=["POST"]),
            Route(r + "/submit_tool_outputs", self._h_submit, methods=["POST"]),
            Route(r + "/steps", self._h_list_steps, methods=["GET"]),
            Route(r + "/steps/{step_id}", self._h_get_step, methods=["GET"]),
            *self._session_routes(),
        ]
        return Starlette(
            routes=routes,
            middleware=[Middleware(_Clock, emulator=self), Middleware(_QuietDisconnects)],
            exception_handlers={HTTPException: self._h_http_exception},
        )

    @staticmethod
    def _headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {
            "openai-version": "2020-10-01",
            "openai-processing-ms": "1",
            "x-request-id": "req_" + secrets.token_hex(16),
        }
        headers.update(extra or {})
        return headers

    def _json(self, data: Any, extra: Mapping[str, str] | None = None) -> Response:
        from starlette.responses import Response

        return Response(ob.dumps(data), media_type="application/json", headers=self._headers(extra))

    def _error(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> Response:
        from starlette.responses import Response

        body = ob.error_body(message, type=type, param=param, code=code)
        return Response(
            ob.dumps(body),
            status_code=status,
            media_type="application/json",
            headers=self._headers(extra),
        )

    def _event_stream(
        self, queue: asyncio.Queue[Any], on_item: OnItem, detach: Callable[[], None]
    ) -> Response:
        """An SSE answer fed from ``queue`` (see :class:`_EventStream`)."""
        stream = _EventStream(queue, self._headers(), self.keepalive_interval, on_item, detach)
        return stream  # type: ignore[return-value]

    def _aborted(self) -> Response:
        """An answer cut after its headers (see :class:`_AbortedResponse`)."""
        return _AbortedResponse(self._headers())  # type: ignore[return-value]

    def _fault_response(self, fault: HTTPFault) -> Response:
        extra: dict[str, str] = {}
        if fault.retry_after is not None:
            extra["retry-after"] = _number(fault.retry_after)
        if fault.status == 429:
            return self._error(
                429,
                "Rate limit reached for requests. Please try again later.",
                type="requests",
                code="rate_limit_exceeded",
                extra=extra,
            )
        if fault.status >= 500:
            return self._error(fault.status, _SERVER_ERROR, type="server_error", extra=extra)
        return self._error(fault.status, f"Injected error {fault.status}.", extra=extra)

    def _check_faults(
        self,
        endpoint: str,
        counters: dict[str, int] | None,
        faults: Faults | TurnFaults | None,
    ) -> Response | None:
        """Count the request (emulator-wide and, if given, per run/scenario) and answer it with
        an injected fault when one matches (lock held)."""
        total = self._requests[endpoint] = self._requests.get(endpoint, 0) + 1
        for fault in self._faults:
            if fault.endpoint == endpoint and fault.nth == total:
                return self._fault_response(fault)
        if counters is not None:
            nth = counters[endpoint] = counters.get(endpoint, 0) + 1
            for fault in faults.http_errors if faults is not None else ():
                if fault.endpoint == endpoint and fault.nth == nth:
                    return self._fault_response(fault)
        return None

    async def _body(self, request: Request) -> JSON | Response:
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            return self._error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                "but what was sent was not valid JSON. If you have trouble figuring out how to "
                "fix this, please contact us through our help center at help.openai.com.)",
            )
        if not isinstance(body, dict):
            return self._error(400, "Invalid type for request body: expected an object.")
        return body

    def _missing(self, param: str) -> Response:
        return self._error(400, f"Missing required parameter: '{param}'.", param=param, code=None)

    def _no_thread(self, thread_id: str) -> Response:
        return self._error(404, f"No thread found with id '{thread_id}'.")

    def _no_run(self, run_id: str) -> Response:
        return self._error(404, f"No run found with id '{run_id}'.")

    def _no_assistant(self, assistant_id: str) -> Response:
        return self._error(404, f"No assistant found with id '{assistant_id}'.")

    def _find_run(self, thread_id: str, run_id: str) -> _Run | Response:
        if thread_id not in self._threads:
            return self._no_thread(thread_id)
        run = self._runs.get(run_id)
        if run is None or run.data["thread_id"] != thread_id:
            return self._no_run(run_id)
        self._refresh(run)
        return run

    @staticmethod
    def _list_args(request: Request) -> tuple[int, str, str | None, str | None]:
        q = request.query_params
        try:
            limit = max(1, min(100, int(q.get("limit", "20"))))
        except ValueError:
            limit = 20
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            order = "desc"
        return limit, order, q.get("after"), q.get("before")

    def _message_from_request(self, thread_id: str, body: JSON) -> JSON | Response:
        role = body.get("role")
        if role is None:
            return self._missing("role")
        if role not in ("user", "assistant"):
            return self._error(
                400,
                f"Invalid value: '{role}'. Supported values are: 'user' and 'assistant'.",
                param="role",
                code="invalid_value",
            )
        if "content" not in body:
            return self._missing("content")
        return ob.message_obj(
            thread_id=thread_id,
            role=str(role),
            content=ob.text_content(body["content"]),
            attachments=body.get("attachments"),
            metadata=body.get("metadata"),
        )

    # handlers --------------------------------------------------------------------------------

    async def _h_create_assistant(self, request: Request) -> Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            return body
        with self._lock:
            fault = self._check_faults("create_assistant", None, None)
            if fault is not None:
                return fault
            if not body.get("model"):
                return self._missing("model")
            assistant = ob.assistant_obj(body)
            self._assistants[assistant["id"]] = assistant
            return self._json(assistant)

    async def _h_get_assistant(self, request: Request) -> Response:
        assistant_id = request.path_params["assistant_id"]
        with self._lock:
            fault = self._check_faults("retrieve_assistant", None, None)
            if fault is not None:
                return fault
            assistant = self._assistants.get(assistant_id)
            if assistant is None:
                return self._no_assistant(assistant_id)
            return self._json(assistant)

    async def _h_list_assistants(self, request: Request) -> Response:
        limit, order, after, before = self._list_args(request)
        with self._lock:
            fault = self._check_faults("list_assistants", None, None)
            if fault is not None:
                return fault
            items = copy.deepcopy(list(self._assistants.values()))
            return self._json(
                ob.list_envelope(items, limit=limit, order=order, after=after, before=before)
            )

    async def _h_modify_assistant(self, request: Request) -> Response:
        assistant_id = request.path_params["assistant_id"]
        body = await self._body(request)
        if not isinstance(body, dict):
            return body
        with self._lock:
            fault = self._check_faults("modify_assistant", None, None)
            if fault is not None:
                return fault
            assistant = self._assistants.get(assistant_id)
            if assistant is None:
                return self._no_assistant(assistant_id)
            unknown = sorted(body.keys() - ob.ASSISTANT_FIELDS)
            if unknown:
                return self._error(400, f"Unrecognized request argument supplied: {unknown[0]}")
            if "model" in body and not isinstance(body["model"], str):
                got = "null" if body["model"] is None else type(body["model"]).__name__
                return self._error(
                    400,
                    f"Invalid type for 'model': expected a string, but got {got} instead.",
                    param="model",
                    code="invalid_type",
                )
            assistant = ob.modified_assistant(assistant, body)
            self._assistants[assistant_id] = assistant
            return self._json(assistant)

    async def _h_delete_assistant(self, request: Request) -> Response:
        assistant_id = request.path_params["assistant_id"]
        with self._lock:
            fault = self._check_faults("delete_assistant", None, None)
            if fault is not None:
                return fault
            if self._assistants.pop(assistant_id, None) is None:
                return self._no_assistant(assistant_id)
            return self._json(ob.deleted_obj(assistant_id, "assistant"))

    async def _h_list_models(self, request: Request) -> Response:
        with self._lock:
            fault = self._check_faults("list_models", None, None)
            if fault is not None:
                return fault
        return self._json({"object": "list", "data": list(ob.MODELS)})

    async def _h_get_model(self, request: Request) -> Response:
        model = request.path_params["model"]
        with self._lock:
            fault = self._check_faults("retrieve_model", None, None)
            if fault is not None:
                return fault
        for candidate in ob.MODELS:
            if candidate["id"] == model:
                return self._json(candidate)
        return self._error(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )

    async def _h_http_exception(self, request: Request, exc: Exception) -> Response:
        """Any URL or method the emulator does not serve, answered with the API's error
        envelope (Starlette's own answer is plain text, which the SDK cannot read)."""
        from starlette.exceptions import HTTPException
        from starlette.routing import Match, Route

        assert isinstance(exc, HTTPException)
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            return self._error(
                404,
                f"Unknown request URL: {where}. Please check the URL for typos, or see the docs "
                "at https://platform.openai.com/docs/api-reference/.",
            )
        if exc.status_code == 405:
            # Starlette names the methods of the first route that matched the path only.
            methods: set[str] = set()
            for route in request.app.routes:
                if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
                    methods |= route.methods or set()
            allowed = ", ".join(sorted(methods))
            return self._error(
                405,
                f"Method not allowed: {where}. This URL accepts {allowed}.",
                extra={"allow": allowed},
            )
        return self._error(exc.status_code, str(exc.detail))  # pragma: no cover - none raised

    def _create_thread_locked(
        self, body: JSON, tool_resources: JSON | None = None
    ) -> JSON | Response:
        messages: list[JSON] = []
        thread = ob.thread_obj(body, tool_resources=tool_resources)
        raw_messages = body.get("messages") or []
        if not isinstance(raw_messages, list):
            return self._error(400, "Invalid type for 'messages': expected an array.")
        for raw in raw_messages:
            message = self._message_from_request(thread["id"], raw if isinstance(raw, dict) else {})
            if not isinstance(message, dict):
                return message
            messages.append(message)
        self._threads[thread["id"]] = thread
        self._messages[thread["id"]] = messages
        return thread

    async def _h_create_thread(self, request: Request) -> Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            return body
        with self._lock:
            fault = self._check_faults("create_thread", None, None)
            if fault is not None:
                return fault
            thread = self._create_thread_locked(body)
            if not isinstance(thread, dict):
                return thread
            return self._json(thread)

    async def _h_create_message(self, request: Request) -> Response:
        thread_id = request.path_params["thread_id"]
        body = await self._body(request)
        if not isinstance(body, dict):
            return body
        with self._lock:
            fault = self._check_faults("create_message", None, None)
            if fault is not None:
                return fault
            if thread_id not in self._threads:
                return self._no_thread(thread_id)
            message = self._message_from_request(thread_id, body)
            if not isinstance(message, dict):
                return message
            active = self._active_run(thread_id)
            if active is not None:
                return self._error(
                    400, f"Can't add messages to {thread_id} while a run {active.id} is active."
                )
            self._add_message(thread_id, message)
            return self._json(ob.rest_message(message))

    async def _h_list_messages(self, request: Request) -> Response:
        thread_id = request.path_params["thread_id"]
        limit, order, after, before = self._list_args(request)
        run_filter = request.query_params.get("run_id")
        with self._lock:
            fault = self._check_faults("list_messages", None, None)
            if fault is not None:
                return fault
            if thread_id not in self._threads:
                return self._no_thread(thread_id)
            self._refresh_thread(thread_id)
            items = [
                ob.rest_message(m)
                for m in self._messages.get(thread_id, [])
                if run_filter is None or m["run_id"] == run_filter
            ]
            return self._json(
                ob.list_envelope(items, limit=limit, order=order, after=after, before=before)
            )

    def _run_assistant_locked(self, body: JSON, endpoint: str) -> JSON | Response:
        """The assistant a run-creating request names, or the answer that refuses it (lock
        held). Faults are checked first, against the scenario the run would take."""
        assistant_id = body.get("assistant_id")
        pending = self._take_scenario(str(assistant_id)) if assistant_id else None
        fault = self._check_faults(
            endpoint,
            pending.requests if pending is not None else {},
            pending.scenario.faults if pending is not None else None,
        )
        if fault is not None:
            return fault
        if not assistant_id:
            return self._missing("assistant_id")
        assistant = self._assistants.get(str(assistant_id))
        if assistant is None:
            return self._no_assistant(str(assistant_id))
        return assistant

    async def _h_create_run(self, request: Request) -> Response:
        thread_id = request.path_params["thread_id"]
        body = await self._body(request)
        if not isinstance(body, dict):
            return body
        with self._lock:
            if thread_id not in self._threads:
                self._check_faults("create_run", None, None)
                return self._no_thread(thread_id)
            active = self._active_run(thread_id)
            extra_messages: list[JSON] = []
            for raw in body.get("additional_messages") or []:
                message = self._message_from_request(
                    thread_id, raw if isinstance(raw, dict) else {}
                )
                if not isinstance(message, dict):
                    return message
                extra_messages.append(message)
            if active is not None:
                self._check_faults("create_run", None, None)
                return self._error(
                    400, f"Thread {thread_id} already has an active run {active.id}."
                )
            for message in extra_messages:
                self._add_message(thread_id, message)
            assistant = self._run_assistant_locked(body, "create_run")
            if not isinstance(assistant, dict):
                return assistant
            run = self._new_run(thread_id, assistant, body)
            run.requests.setdefault("create_run", 1)
            events = [("thread.run.created", run.data), ("thread.run.queued", run.data)]
            lost = run.faults.lose_create_response
            delay = run.faults.create_response_delay
            response = self._launch(run, events, bool(body.get("stream")), index=0, lost=lost)
        if delay:
            await asyncio.sleep(delay)
        return response

    async def _h_create_thread_and_run(self, request: Request) -> Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            return body
        with self._lock:
            assistant = self._run_assistant_locked(body, "create_thread_and_run")
            if not isinstance(assistant, dict):
                return assistant
            thread_body = body.get("thread") or {}
            if not isinstance(thread_body, dict):
                return self._error(400, "Invalid type for 'thread': expected an object.")
            thread = self._create_thread_locked(
                thread_body, tool_resources={"code_interpreter": {"file_ids": []}}
            )
            if not isinstance(thread, dict):
                return thread
            run = self._new_run(thread["id"], assistant, body)
            run.requests.setdefault("create_thread_and_run", 1)
            events = [
                ("thread.created", thread),
                ("thread.run.created", run.data),
                ("thread.run.queued", run.data),
            ]
            return self._launch(run, events, bool(body.get("stream")), index=0, lost=False)

    def _launch(
        self,
        run: _Run,
        events: list[tuple[str, JSON]],
        stream: bool,
        *,
        index: int,
        lost: bool,
    ) -> Response:
        """Start the run's next segment and answer: the run as JSON, or an SSE stream that
        listens to the segment (lock held)."""
        snapshot = copy.deepcopy(run.data)
        if not stream:
            self._spawn(run, self._segment)
            if lost:
                return _AbortedResponse(self._headers())  # type: ignore[return-value]
            return self._json(snapshot)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for name, data in events:
            queue.put_nowait((name, copy.deepcopy(data)))
        run.listener = queue
        self._spawn(run, self._segment)
        faults = run.faults
        plan = _StreamPlan(
            drop_after=0 if lost else faults.drop_after.get(index),
            error_event=faults.error_event.get(index),
            unknown_event=faults.unknown_event.get(index),
            malformed_data=faults.malformed_data.get(index),
            undecodable_data=faults.undecodable_data.get(index),
            null_data=faults.null_data.get(index),
            hold_open=index in faults.hold_open,
            error_shape=faults.error_shape or self.error_shape,
        )

        def detach() -> None:
            with self._lock:
                if run.listener is queue:
                    run.listener = None

        return _SSEResponse(  # type: ignore[return-value]
            queue, plan, self._headers(), self.keepalive_interval, run.id, detach
        )

    async def _h_list_runs(self, request: Request) -> Response:
        thread_id = request.path_params["thread_id"]
        limit, order, after, before = self._list_args(request)
        with self._lock:
            fault = self._check_faults("list_runs", None, None)
            if fault is not None:
                return fault
            if thread_id not in self._threads:
                return self._no_thread(thread_id)
            self._refresh_thread(thread_id)
            items = [
                copy.deepcopy(self._runs[i].data) for i in self._thread_runs.get(thread_id, [])
            ]
            return self._json(
                ob.list_envelope(items, limit=limit, order=order, after=after, before=before)
            )

    def _run_request(self, request: Request, endpoint: str) -> _Run | Response:
        """Resolve the run of a run-scoped request and apply its faults (lock held)."""
        run = self._find_run(request.path_params["thread_id"], request.path_params["run_id"])
        if not isinstance(run, _Run):
            self._check_faults(endpoint, None, None)
            return run
        fault = self._check_faults(endpoint, run.requests, run.faults)
        if fault is not None:
            return fault
        return run

    async def _h_get_run(self, request: Request) -> Response:
        with self._lock:
            run = self._run_request(request, "retrieve_run")
            if not isinstance(run, _Run):
                return run
            extra = {}
            if self.poll_after_ms is not None:
                extra["openai-poll-after-ms"] = str(self.poll_after_ms)
            return self._json(run.data, extra)

    async def _h_cancel_run(self, request: Request) -> Response:
        with self._lock:
            run = self._run_request(request, "cancel_run")
            if not isinstance(run, _Run):
                return run
            run.cancel_requests += 1
            if run.status in ob.TERMINAL_STATUSES:
                return self._error(400, f"Cannot cancel run with status '{run.status}'.")
            if run.status == "cancelling":
                return self._json(run.data)
            run.cancel_requested = True
            run.data["status"] = "cancelling"
            snapshot = copy.deepcopy(run.data)
            if run.task is not None and not run.task.done():
                if run.wake is not None:
                    run.wake.set()
            else:
                self._spawn(run, self._cancel_later)
            return self._json(snapshot)

    async def _h_submit(self, request: Request) -> Response:
        body = await self._body(request)
        with self._lock:
            found = self._find_run(request.path_params["thread_id"], request.path_params["run_id"])
            if not isinstance(found, _Run):
                self._check_faults("submit_tool_outputs", None, None)
                return found
            run = found
            run.received += 1
            number = run.received
            fault = self._check_faults("submit_tool_outputs", run.requests, run.faults)
            if fault is not None:
                # An injected fault is the network's or the server's failure, not a refusal of
                # the submission: counted apart, so tests can assert "none rejected".
                run.faulted += 1
                return fault
            if not isinstance(body, dict):
                run.rejected += 1
                return body
            rejection = self._validate_submission(run, body)
            if rejection is not None:
                run.rejected += 1
                return rejection
            outputs = {
                str(o["tool_call_id"]): str(o.get("output", "")) for o in body["tool_outputs"]
            }
            run.accepted += 1
            run.tool_outputs.append(outputs)
            step = run.tool_step
            assert step is not None
            names = {}
            for call in step["step_details"]["tool_calls"]:
                call["function"]["output"] = outputs[call["id"]]
                names[call["id"]] = call["function"]["name"]
            for call_id, output in outputs.items():
                run.outputs.append((names[call_id], output))
            step.update(
                status="completed",
                completed_at=ob.now(),
                usage=ob.usage_obj(self._prompt_tokens(run), 10 + 2 * len(outputs)),
            )
            run.tool_step = None
            run.data.update(status="queued", required_action=None)
            events = [("thread.run.step.completed", step), ("thread.run.queued", run.data)]
            lost = number in run.faults.lose_submit_response
            delay = run.faults.submit_response_delay
            response = self._launch(
                run, events, bool(body.get("stream")), index=run.accepted, lost=lost
            )
        if delay:
            await asyncio.sleep(delay)
        return response

    def _validate_submission(self, run: _Run, body: JSON) -> Response | None:
        if run.status != "requires_action":
            return self._error(400, f'Runs in status "{run.status}" do not accept tool outputs.')
        raw = body.get("tool_outputs")
        if raw is None:
            return self._missing("tool_outputs")
        if not isinstance(raw, list) or not all(
            isinstance(o, dict) and isinstance(o.get("tool_call_id"), str) for o in raw
        ):
            return self._error(
                400,
                "Invalid type for 'tool_outputs': expected an array of objects.",
                param="tool_outputs",
            )
        required = run.data["required_action"]["submit_tool_outputs"]["tool_calls"]
        expected = [c["id"] for c in required]
        got = [o["tool_call_id"] for o in raw]
        if sorted(expected) != sorted(got):
            return self._error(400, f"Expected tool outputs for call_ids {expected}, got {got}")
        return None

    async def _h_list_steps(self, request: Request) -> Response:
        limit, order, after, before = self._list_args(request)
        with self._lock:
            run = self._run_request(request, "list_run_steps")
            if not isinstance(run, _Run):
                return run
            items = copy.deepcopy(run.steps)
            return self._json(
                ob.list_envelope(items, limit=limit, order=order, after=after, before=before)
            )

    async def _h_get_step(self, request: Request) -> Response:
        step_id = request.path_params["step_id"]
        with self._lock:
            run = self._run_request(request, "retrieve_run_step")
            if not isinstance(run, _Run):
                return run
            for step in run.steps:
                if step["id"] == step_id:
                    return self._json(step)
            return self._error(404, f"No run step found with id '{step_id}'.")


def _step_delta(step: JSON, call: JSON) -> JSON:
    return {
        "id": step["id"],
        "object": "thread.run.step.delta",
        "delta": {"step_details": {"type": "tool_calls", "tool_calls": [call]}},
    }


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _frame(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


def _raw_headers(headers: Mapping[str, str], content_type: str) -> list[tuple[bytes, bytes]]:
    out = [(b"content-type", content_type.encode())]
    out.extend((k.encode(), v.encode()) for k, v in headers.items())
    return out


class _AbortedResponse:
    """A response whose headers go out and whose body never does: the connection is closed
    (the ASGI server aborts a response that the app leaves incomplete)."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    *_raw_headers(self._headers, "application/json"),
                    (b"content-length", b"4096"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"{", "more_body": True})


Out = Callable[[bytes], Awaitable[None]]
#: What an :class:`_EventStream` does with one queued item: None to go on, True to end the
#: body, False to cut the connection.
OnItem = Callable[[Any, Out, asyncio.Event], Awaitable["bool | None"]]


class _EventStream:
    """A server-sent-events response fed from a queue: the headers, then whatever ``on_item``
    writes for each queued item, with a ``: keep-alive`` comment after ``keepalive`` idle
    seconds. It ends when ``on_item`` says so (``False`` cuts the connection: no final chunk)
    or the client goes away; ``detach`` runs then."""

    def __init__(
        self,
        queue: asyncio.Queue[Any],
        headers: Mapping[str, str],
        keepalive: float,
        on_item: OnItem,
        detach: Callable[[], None],
    ) -> None:
        self._queue = queue
        self._headers = headers
        self._keepalive = keepalive
        self._on_item = on_item
        self._detach = detach

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": _raw_headers(self._headers, "text/event-stream; charset=utf-8"),
            }
        )
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            complete = await self._pump(send, gone)
        except OSError:
            complete = False
        finally:
            watcher.cancel()
            self._detach()
        if complete and not gone.is_set():
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, send: Send, gone: asyncio.Event) -> bool:
        async def out(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        while not gone.is_set():
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout=self._keepalive)
            except asyncio.TimeoutError:
                await out(b": keep-alive\n\n")
                continue
            verdict = await self._on_item(item, out, gone)
            if verdict is not None:
                return verdict
        return False


class _SSEResponse(_EventStream):
    """Server-sent events listening to one run segment, with the stream faults applied."""

    def __init__(
        self,
        queue: asyncio.Queue[Any],
        plan: _StreamPlan,
        headers: Mapping[str, str],
        keepalive: float,
        run_id: str,
        detach: Callable[[], None],
    ) -> None:
        super().__init__(queue, headers, keepalive, self._run_item, detach)
        self._plan = plan
        self._run_id = run_id
        self._sent = 0
        self._last_run_event: str | None = None

    async def _run_item(self, item: Any, out: Out, gone: asyncio.Event) -> bool | None:
        """Send one event of the segment (None), or end the stream after the last one (True)
        or where a fault cuts the connection (False)."""
        plan = self._plan
        sent = self._sent
        if plan.drop_after == sent:
            return False
        if plan.error_event == sent:
            error = {
                "code": "server_error",
                "message": _SERVER_ERROR,
                "param": None,
                "type": "server_error",
            }
            data = error if plan.error_shape == "bare" else {"error": error}
            await out(_frame("error", ob.dumps(data)))
            return True
        if plan.unknown_event == sent:
            await out(
                _frame(
                    "thread.run.step.frobnicated",
                    ob.dumps({"id": self._run_id, "object": "thread.run.step.frobnicated"}),
                )
            )
        if plan.malformed_data == sent:
            await out(_frame("thread.message.delta", '{"id": "msg_broken", "delta": {'))
        if plan.undecodable_data == sent:
            await out(b'event: thread.message.delta\ndata: {"id": "\xff\xfe"}\n\n')
        if plan.null_data == sent and self._last_run_event is not None:
            await out(_frame(self._last_run_event, "null"))
        if item is _END:
            if plan.hold_open:
                while not gone.is_set():
                    await out(b": keep-alive\n\n")
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(gone.wait(), timeout=self._keepalive)
                return False
            await out(_frame("done", "[DONE]"))
            return True
        name, data = item
        await out(_frame(name, ob.dumps(data)))
        if name.startswith("thread.run.") and not name.startswith("thread.run.step."):
            self._last_run_event = name
        self._sent += 1
        return None


class _Clock:
    """ASGI middleware: serves each request on the emulator's clock (``clock_offset``), and sends
    that clock's ``Date`` header, as a server on another host would."""

    def __init__(self, app: Any, emulator: Emulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ob.CLOCK_OFFSET.set(self.emulator.clock_offset)

        async def dated(message: Any) -> None:
            if message["type"] == "http.response.start":
                date = email.utils.formatdate(ob.clock(), usegmt=True).encode()
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                message = {**message, "headers": [*headers, (b"date", date)]}
            await send(message)

        await self.app(scope, receive, dated)


class _QuietDisconnects:
    """ASGI middleware: a client that goes away while its request is read (Starlette raises
    ``ClientDisconnect`` from ``request.body()``) ends the request quietly, as the normal end it
    is: there is nobody left to answer, and the request did not happen (nothing was counted or
    changed, since every handler reads the body before touching any state). The ASGI server
    sends nothing when the app returns after a disconnect, and logs nothing."""

    def __init__(self, app: Any) -> None:
        from starlette.requests import ClientDisconnect

        self.app = app
        self._disconnect = ClientDisconnect

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except self._disconnect:
            return
