"""The driver: everything that talks to the server on behalf of a ``RunMachine``.

It opens streams through the SDK's own HTTP layer (so auth, ``base_url``, Azure, timeouts and
retries of the initial response stay the SDK's), decodes the SSE itself (``runmachine._sse``),
feeds every event to the machine, runs each round of tool calls concurrently, submits every
output once per round and reads the new stream, and recovers by polling when a stream breaks.

Guarantees it keeps, whatever happens:
- every required tool call gets exactly one output (an error output when the tool could not run);
- one round is never submitted twice: a failed submit is retried only after ``runs.retrieve``
  shows the server still waits on that very round;
- a host cancellation cancels the tools, then the server run (shielded, bounded), then re-raises;
- a guard error or any other failure also cancels the server run before it propagates, so no
  thread is left locked by an abandoned run.

The lifecycle decisions themselves (which event may move the run where) are the table's
(``runmachine.lifecycle``); this module never changes ``machine.state`` except by feeding it.
"""

from __future__ import annotations

import inspect
import json
import math
import random
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import httpx2
import openai
from openai.types.beta.threads import Run

from runmachine import lifecycle
from runmachine._sse import SSEParser, StreamError, build_event
from runmachine._warnings import quiet_deprecation
from runmachine.errors import (
    DuplicateSubmission,
    HookError,
    RequiresActionLoop,
    RunAborted,
    RunMachineError,
    ToolFailed,
    TooManyRounds,
)
from runmachine.ledger import CallEntry, Ledger, RoundEntry, RunEntry, interrupted_message
from runmachine.result import RunResult, ToolCallRecord
from runmachine.tools import ToolError, ToolSpec, encode_output, error_output

if TYPE_CHECKING:
    from runmachine.machine import RunMachine

__all__ = ["DriverOptions", "EventStream"]

# The SDK warns on every Assistants call, at call time: silenced around each one.
_sdk_call = quiet_deprecation


_NO_RETRY: weakref.WeakKeyDictionary[openai.AsyncOpenAI, openai.AsyncOpenAI] = (
    weakref.WeakKeyDictionary()
)


def _no_retry_client(client: openai.AsyncOpenAI) -> openai.AsyncOpenAI:
    """``client.with_options(max_retries=0)``, made once per client.

    Every copy the SDK makes starts without its platform headers and fetches them in a worker
    thread on its first request (``asyncify(get_platform)``); a copy per run put that thread hop
    between ``requires_action`` and the submit request of every run's first round.
    """
    copy = _NO_RETRY.get(client)
    if copy is None:
        copy = _NO_RETRY[client] = client.with_options(max_retries=0)
    return copy


@attrs.frozen
class DriverOptions:
    """How a ``RunMachine`` drives its runs. Every field is a keyword of ``RunMachine(...)``."""

    tool_concurrency: int = 16
    """How many tool calls run at once."""
    deadline_margin: float = 5.0
    """Seconds before the run's ``expires_at`` by which the outputs must be submitted."""
    max_rounds: int = 20
    max_identical_rounds: int = 3
    stream: bool = True
    """False drives the run by polling alone (state hooks fire; delta hooks do not)."""
    poll_interval: float = 1.0
    """Seconds between polls when the server sends no ``openai-poll-after-ms``."""
    max_poll_interval: float = 8.0
    submit_attempts: int = 4
    """Attempts at one round's submission when the server did not take it."""
    cancel_timeout: float = 10.0
    """Bound on the shielded ``runs.cancel`` made when a run is abandoned."""


class _Lost(Exception):
    """The stream ended without a terminal or ``requires_action`` event (dropped, timed out,
    errored, undecodable)."""


class Driver:
    """Drives one run of one machine from creation (or adoption) to its end."""

    def __init__(self, machine: RunMachine, sink: Callable[[Any], Awaitable[None]] | None) -> None:
        self.m = machine
        self.options: DriverOptions = machine.options
        client = machine.client
        if client is None:
            raise RunMachineError(
                "this RunMachine has no client: create it as RunMachine(client) to drive runs"
            )
        self.client = client
        self._no_retry = _no_retry_client(client)
        self.sink = sink
        self.tools: dict[str, ToolSpec] = machine.tool_specs()
        self.records: list[ToolCallRecord] = []
        self.ledger: Ledger = machine.ledger
        self.machine_name = f"{type(machine).__module__}:{type(machine).__qualname__}"
        self.sent_here: set[int] = set()
        self.resubmitted: Counter[frozenset[str]] = Counter()
        self.rounds = 0
        self.identical = 0
        self.last_signature: Counter[tuple[str, str]] | None = None
        self.lost_content = False
        self.error: str | None = None
        self.limiter = anyio.CapacityLimiter(self.options.tool_concurrency)
        self.failing: ToolCallRecord | None = None
        self.hook_failed: HookError | None = None
        self.round_scope: anyio.CancelScope | None = None

    # ----------------------------------------------------------------------------------------
    # Entry points
    # ----------------------------------------------------------------------------------------

    async def create_run(
        self, thread_id: str, assistant_id: str, params: Mapping[str, Any]
    ) -> RunResult:
        runs = self.client.beta.threads.runs
        if not self.options.stream:

            async def create() -> Run:
                with _sdk_call():
                    request = runs.create(thread_id=thread_id, assistant_id=assistant_id, **params)
                run: Run = await request
                return run

            return await self._guarded(self._poll_path(create))

        def opener() -> Any:
            with _sdk_call():
                return runs.with_streaming_response.create(
                    thread_id=thread_id, assistant_id=assistant_id, stream=True, **params
                )

        return await self._guarded(self._stream_path(opener, thread_id, time.time()))

    async def create_thread_and_run(
        self, assistant_id: str, params: Mapping[str, Any]
    ) -> RunResult:
        threads = self.client.beta.threads
        if not self.options.stream:

            async def create() -> Run:
                with _sdk_call():
                    request = threads.create_and_run(assistant_id=assistant_id, **params)
                run: Run = await request
                return run

            return await self._guarded(self._poll_path(create))

        def opener() -> Any:
            with _sdk_call():
                return threads.with_streaming_response.create_and_run(
                    assistant_id=assistant_id, stream=True, **params
                )

        return await self._guarded(self._stream_path(opener))

    async def resume(self, thread_id: str | None, run_id: str) -> RunResult:
        async def adopt() -> None:
            entry = await self.ledger.load(run_id)
            thread = thread_id or (entry.thread_id if entry is not None else None)
            if not thread:
                raise RunMachineError(
                    f"resume(run_id={run_id!r}) needs thread_id: the ledger "
                    f"{self.ledger!r} has no record of that run"
                )
            run, _ = await self._retrieve(thread, run_id)
            # Whatever the run said before now was not seen here: re-read it at the end.
            self.lost_content = True
            if entry is not None:
                await self._take_over(entry, run)
            await self.m.adopt(run)
            await self._continue()

        return await self._guarded(adopt())

    # ----------------------------------------------------------------------------------------
    # The main loop
    # ----------------------------------------------------------------------------------------

    async def _stream_path(
        self, opener: Callable[[], Any], thread_id: str | None = None, started: float = 0.0
    ) -> None:
        try:
            await self._read_stream(opener)
        except _Lost:
            self.lost_content = True
            if self.m.run_id is None:
                await self._find_created_run(thread_id, started)
        await self._continue()

    async def _find_created_run(self, thread_id: str | None, started: float) -> None:
        """The creating stream broke before it named the run: find the run on its thread."""
        if thread_id is not None:
            with _sdk_call():
                page = await self.client.beta.threads.runs.list(
                    thread_id=thread_id, order="desc", limit=1
                )
            # Second-resolution timestamps: a run created within the request's second is ours.
            if page.data and page.data[0].created_at >= int(started) - 1:
                await self.m.observe_status(page.data[0])
                return
        raise RunMachineError(
            "the stream that creates the run broke before the server named the run"
            + ("" if thread_id else " (and create-thread-and-run gives no thread to look in)")
        )

    async def _poll_path(self, create: Callable[[], Awaitable[Run]]) -> None:
        run = await create()
        await self.m.observe_status(run)
        await self._continue()

    async def _continue(self) -> None:
        """From whatever state the machine is in, go on until the run ends."""
        m = self.m
        while not m.is_finished:
            if m.state == lifecycle.REQUIRES_ACTION:
                await self._round()
            else:
                await self._poll_until_actionable()
        if self.lost_content or not self.options.stream:
            await self._recover_content()

    async def _take_over(self, entry: RunEntry, run: Run) -> None:
        """Resume from the ledger: earlier rounds, their records, what the server took."""
        m = self.m
        self.rounds = entry.last_round
        waiting = _required_ids(run) if run.status == "requires_action" else frozenset()
        for past in entry.rounds:
            if past.call_ids == waiting:
                continue
            if not past.accepted and run.status not in _NOT_PROOF_OF_ACCEPTANCE:
                # The run went past this round, so the server took it: the process that sent
                # it stopped before it could say so.
                await self.ledger.round_accepted(run.id, past.round)
            m.submitted_rounds.add(past.call_ids)
            self.records.extend(
                _record_from(entry.calls[cid])
                for cid in sorted(past.call_ids)
                if cid in entry.calls and entry.calls[cid].finished
            )

    async def _round(self) -> None:
        """One ``requires_action`` round: guards, tools, one submission, the next stream."""
        m = self.m
        run = m.current_run()
        assert run is not None and run.required_action is not None
        calls = list(run.required_action.submit_tool_outputs.tool_calls)
        call_ids = frozenset(c.id for c in calls)

        await self.ledger.record_run(run.id, run.thread_id, run.status, self.machine_name)
        entry = await self.ledger.load(run.id)
        assert entry is not None
        sent = entry.round_for(call_ids)
        if sent is not None and (sent.accepted or sent.round in self.sent_here):
            # The same calls again after their round was accepted: never run them again.
            await self._same_round_again(run, sent, entry)
            return
        if sent is not None:
            # Sent by a process that stopped before it learned the outcome. The server presents
            # the round again, so it never took it: send the recorded outputs, running nothing.
            self.records.extend(_record_from(entry.calls[c.id]) for c in calls)
            await self._submit(run, sent.round, call_ids, _recorded_outputs(entry, calls))
            return

        # Calls recorded before a restart keep their round's number.
        recorded = [entry.calls[c.id].round for c in calls if c.id in entry.calls]
        self.rounds = recorded[0] if recorded else max(self.rounds, entry.last_round) + 1
        signature = Counter((c.function.name, _canonical(c.function.arguments)) for c in calls)
        self.identical = self.identical + 1 if signature == self.last_signature else 1
        self.last_signature = signature
        if self.rounds > self.options.max_rounds:
            self.rounds -= 1
            await self._abort(
                TooManyRounds,
                f"run {run.id} asked for tool round {self.rounds + 1}, past max_rounds="
                f"{self.options.max_rounds}; the run was cancelled",
            )
        if self.identical > self.options.max_identical_rounds:
            self.rounds -= 1
            await self._abort(
                RequiresActionLoop,
                f"run {run.id} asked for the same tool calls "
                f"({', '.join(sorted(n for n, _ in signature))}) in {self.identical} rounds in a "
                f"row, past max_identical_rounds={self.options.max_identical_rounds}; "
                "the run was cancelled",
            )

        outputs = await self._run_tools(run, calls, self.rounds, entry)
        await self._submit(run, self.rounds, call_ids, outputs)

    async def _same_round_again(self, run: Run, sent: RoundEntry, entry: RunEntry) -> None:
        """The server presents a round whose outputs were already submitted."""
        call_ids = sent.call_ids
        confirmed, _ = await self._retrieve(run.thread_id, run.id)
        if confirmed.status != "requires_action" or _required_ids(confirmed) != call_ids:
            await self.m.observe_status(confirmed)
            return
        if self.resubmitted[call_ids] >= 1:
            await self._abort(
                RequiresActionLoop,
                f"run {run.id} presented calls {sorted(call_ids)} again after their outputs "
                "were submitted twice; the run was cancelled",
            )
        self.resubmitted[call_ids] += 1
        self.m.submitted_rounds.discard(call_ids)
        calls = list(confirmed.required_action.submit_tool_outputs.tool_calls)  # type: ignore[union-attr]
        await self._submit(run, sent.round, call_ids, _recorded_outputs(entry, calls))

    # ----------------------------------------------------------------------------------------
    # Tools
    # ----------------------------------------------------------------------------------------

    async def _run_tools(
        self, run: Run, calls: list[Any], round_no: int, entry: RunEntry
    ) -> dict[str, str]:
        results: dict[str, ToolCallRecord] = {}
        starts: dict[str, float] = {}
        deadline = self._round_deadline(run)
        ledger = self.ledger

        async def one(call: Any) -> None:
            try:
                await attempt(call)
            except HookError as exc:
                # A hook's failure stops the round (no exception group); raised after it.
                if self.hook_failed is None:
                    self.hook_failed = exc
                assert self.round_scope is not None
                self.round_scope.cancel()

        async def attempt(call: Any) -> None:
            name = call.function.name
            arguments = call.function.arguments
            spec = self.tools.get(name)
            started: float | None = None
            known = entry.calls.get(call.id)
            if known is not None and known.finished:
                # Recorded by an earlier process: never run again.
                results[call.id] = _record_from(known)
                await self._tool_hook("on_tool_finished", results[call.id])
                return
            try:
                if known is not None and spec is not None and not spec.idempotent:
                    raise ToolError("interrupted", interrupted_message(name))
                if spec is None:
                    raise ToolError(
                        "unknown_tool",
                        f"no tool named {name!r}; known tools: {sorted(self.tools)}",
                    )
                kwargs = spec.parse_arguments(arguments)
                func = spec.bind(self.m)
                async with limiter:
                    await self._tool_hook("on_tool_started", call)
                    await ledger.call_started(run.id, call.id, round_no, name, arguments)
                    started = starts[call.id] = time.monotonic()
                    with anyio.fail_after(spec.timeout) if spec.timeout else _nothing():
                        if spec.is_async:
                            value = await func(**kwargs)
                        else:
                            value = await anyio.to_thread.run_sync(
                                lambda: func(**kwargs), abandon_on_cancel=True
                            )
                output = encode_output(value)
                finished = time.monotonic()
                await ledger.call_finished(run.id, call.id, round_no, name, arguments, output, None)
                results[call.id] = ToolCallRecord(
                    call.id, name, arguments, output, None, round_no, started, finished
                )
                await self._tool_hook("on_tool_finished", results[call.id])
            except HookError:
                raise
            except ToolError as exc:
                await self._tool_failed(
                    run, call, exc.kind, exc.message, exc, round_no, started, results
                )
            except TimeoutError as exc:
                timeout = spec.timeout if spec else None
                await self._tool_failed(
                    run,
                    call,
                    "timeout",
                    f"tool {name!r} did not finish within {timeout} s",
                    exc,
                    round_no,
                    started,
                    results,
                )
            except Exception as exc:
                await self._tool_failed(
                    run,
                    call,
                    "tool_raised",
                    f"tool {name!r} raised {type(exc).__name__}: {exc}",
                    exc,
                    round_no,
                    started,
                    results,
                )

        # The limit binds only when the round has more calls than it allows.
        limiter = self.limiter if len(calls) > self.options.tool_concurrency else _NO_LIMIT
        with anyio.CancelScope(deadline=deadline) as self.round_scope:
            if len(calls) == 1:
                await one(calls[0])
            else:
                async with anyio.create_task_group() as tg:
                    for call in calls:
                        tg.start_soon(one, call)
        self.round_scope = None
        if self.hook_failed is not None:
            raise self.hook_failed
        if self.failing is not None:
            record = self.failing
            self.records.extend(r for r in results.values() if r is not record)
            self.records.append(record)
            await self._abort(
                ToolFailed,
                f"on_tool_error failed the run because of tool call {record.id} "
                f"({record.name}): {record.error}",
            )
        now = time.monotonic()
        for call in calls:
            if call.id not in results:
                message = (
                    f"tool {call.function.name!r} was still running {self.options.deadline_margin}"
                    " s before the run's expires_at and was cancelled so the run does not expire"
                )
                record = ToolCallRecord(
                    call.id,
                    call.function.name,
                    call.function.arguments,
                    error_output("deadline", message, call.function.name),
                    message,
                    round_no,
                    starts.get(call.id),
                    now,
                )
                results[call.id] = record
                await self._finished(run, record)
                await self._maybe_fail_run(record, TimeoutError(message))
        ordered = [results[c.id] for c in calls]
        self.records.extend(ordered)
        return {r.id: r.output for r in ordered}

    async def _tool_failed(
        self,
        run: Run,
        call: Any,
        kind: str,
        message: str,
        exc: BaseException,
        round_no: int,
        started: float | None,
        results: dict[str, ToolCallRecord],
    ) -> None:
        record = ToolCallRecord(
            call.id,
            call.function.name,
            call.function.arguments,
            error_output(kind, message, call.function.name),
            message,
            round_no,
            started,
            time.monotonic(),
        )
        results[call.id] = record
        await self._finished(run, record)
        await self._maybe_fail_run(record, exc)

    async def _tool_hook(self, name: str, arg: Any) -> None:
        if name in self.m._overridden:
            await self.m._hook(name, arg)

    async def _finished(self, run: Run, record: ToolCallRecord) -> None:
        await self.ledger.call_finished(
            run.id,
            record.id,
            record.round,
            record.name,
            record.arguments,
            record.output,
            record.error,
        )
        await self._tool_hook("on_tool_finished", record)

    async def _maybe_fail_run(self, record: ToolCallRecord, exc: BaseException) -> None:
        decision: Any = self.m.on_tool_error(record, exc)
        if inspect.isawaitable(decision):
            decision = await decision
        if decision and self.failing is None:
            # Raised after the round's task group, not inside it (no exception groups).
            self.failing = record
            if self.round_scope is not None:
                self.round_scope.cancel()

    def _round_deadline(self, run: Run) -> float:
        if run.expires_at is None:
            return math.inf
        remaining = run.expires_at - time.time() - self.options.deadline_margin
        # anyio's clock, not time.monotonic(): trio keeps its own.
        return anyio.current_time() + max(remaining, 0.0)

    # ----------------------------------------------------------------------------------------
    # Submission
    # ----------------------------------------------------------------------------------------

    async def _submit(
        self, run: Run, round_no: int, call_ids: frozenset[str], outputs: dict[str, str]
    ) -> None:
        m = self.m
        ledger = self.ledger
        await ledger.round_submitted(run.id, round_no, call_ids)
        self.sent_here.add(round_no)

        async def accepted() -> None:
            await ledger.round_accepted(run.id, round_no)

        async def moved_on(confirmed: Run) -> None:
            # The run is past this round: the server took it, unless it ended for other reasons.
            if confirmed.status not in _NOT_PROOF_OF_ACCEPTANCE:
                await accepted()
            await m.observe_status(confirmed)

        tool_outputs = [{"tool_call_id": cid, "output": out} for cid, out in outputs.items()]
        runs = self._no_retry.beta.threads.runs
        delay = 0.25
        for attempt in range(1, self.options.submit_attempts + 1):
            await m.hand_over_outputs(call_ids)
            try:
                if self.options.stream:

                    def opener() -> Any:
                        with _sdk_call():
                            return runs.with_streaming_response.submit_tool_outputs(
                                run_id=run.id,
                                thread_id=run.thread_id,
                                tool_outputs=tool_outputs,  # type: ignore[arg-type]
                                stream=True,
                            )

                    await self._read_stream(opener, accepted)
                else:
                    with _sdk_call():
                        request = runs.submit_tool_outputs(
                            run_id=run.id,
                            thread_id=run.thread_id,
                            tool_outputs=tool_outputs,  # type: ignore[arg-type]
                        )
                    taken = await request
                    await accepted()
                    await m.observe_status(taken)
                return
            except openai.BadRequestError:
                # Refused: most often the run moved on meanwhile (expired, cancelled, failed).
                confirmed, _ = await self._retrieve(run.thread_id, run.id)
                if confirmed.status == "requires_action" and _required_ids(confirmed) == call_ids:
                    raise
                await moved_on(confirmed)
                return
            except (
                openai.APIConnectionError,
                openai.InternalServerError,
                openai.RateLimitError,
                _Lost,
            ) as exc:
                retry_after = _retry_after(exc)
            if m.state != lifecycle.SUBMITTING:
                # Events of the new stream arrived before it broke: the round was accepted.
                await accepted()
                self.lost_content = True
                return
            confirmed, _ = await self._retrieve(run.thread_id, run.id)
            if confirmed.status == "requires_action" and _required_ids(confirmed) == call_ids:
                # The server still waits on this very round: it never took the submission.
                await m.submission_not_accepted(confirmed)
                if attempt == self.options.submit_attempts:
                    break
                await anyio.sleep(retry_after if retry_after is not None else delay)
                delay = min(delay * 2, 8.0)
                continue
            self.lost_content = True
            await moved_on(confirmed)
            return
        await self._abort(
            RunAborted,
            f"the server did not accept the tool outputs of run {run.id} after "
            f"{self.options.submit_attempts} attempts",
        )

    # ----------------------------------------------------------------------------------------
    # Streams
    # ----------------------------------------------------------------------------------------

    async def _read_stream(
        self, opener: Callable[[], Any], opened: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Read one stream to its end, feeding the machine. Raises ``_Lost`` if it ends before a
        terminal or ``requires_action`` event; HTTP errors before the first byte propagate.
        ``opened`` is awaited once the server has answered 2xx, before the first event."""
        m = self.m
        parser = SSEParser()
        feed = m.feed
        sink = self.sink
        try:
            async with opener() as response:
                if opened is not None:
                    await opened()
                async for chunk in response.http_response.aiter_bytes():
                    for name, data in parser.feed(chunk):
                        event = build_event(name, data)
                        if event is None:
                            continue  # [DONE]: keep reading so the connection can be reused
                        await feed(event)
                        if sink is not None:
                            await sink(event)
                for name, data in parser.close():
                    event = build_event(name, data)
                    if event is not None:
                        await feed(event)
                        if sink is not None:
                            await sink(event)
        except openai.APIStatusError:
            raise
        except (StreamError, openai.APIConnectionError, httpx2.TransportError) as exc:
            m.stream_errors.append(exc)
            raise _Lost(f"{type(exc).__name__}: {exc}") from exc
        if m.state not in lifecycle.TERMINAL_STATES and m.state != lifecycle.REQUIRES_ACTION:
            raise _Lost(f"the stream ended in state {m.state!r}")

    # ----------------------------------------------------------------------------------------
    # Polling and recovery
    # ----------------------------------------------------------------------------------------

    async def _retrieve(self, thread_id: str, run_id: str) -> tuple[Run, float | None]:
        runs = self.client.beta.threads.runs
        with _sdk_call():
            request = runs.with_raw_response.retrieve(run_id=run_id, thread_id=thread_id)
        raw = await request
        poll_after = raw.headers.get("openai-poll-after-ms")
        return raw.parse(), (float(poll_after) / 1000 if poll_after else None)

    async def _poll_until_actionable(self) -> None:
        m = self.m
        assert m.run_id is not None and m.thread_id is not None
        interval = self.options.poll_interval
        while True:
            run, poll_after = await self._retrieve(m.thread_id, m.run_id)
            await m.observe_status(run)
            if m.is_finished or m.state == lifecycle.REQUIRES_ACTION:
                return
            await anyio.sleep(poll_after if poll_after is not None else interval)
            if poll_after is None:
                interval = min(interval * 1.5, self.options.max_poll_interval)

    async def _recover_content(self) -> None:
        """Text lost with a stream (or never streamed) comes back from ``messages.list``."""
        m = self.m
        if m.thread_id is None or m.run_id is None:
            return
        messages = self.client.beta.threads.messages
        with _sdk_call():
            pages = messages.list(thread_id=m.thread_id, run_id=m.run_id, order="asc", limit=100)
        collected = [message async for message in pages]
        m.replace_messages(collected)

    # ----------------------------------------------------------------------------------------
    # Ending: results, aborts, cancellation
    # ----------------------------------------------------------------------------------------

    def result(self) -> RunResult:
        m = self.m
        run = m.current_run()
        return RunResult(
            status=m.state,
            run=run,
            text=m.text(),
            messages=tuple(m.final_messages()),
            run_steps=tuple(m.final_run_steps()),
            tool_calls=tuple(self.records),
            rounds=self.rounds,
            transitions=tuple(m.history),
            usage=run.usage if run is not None else None,
            error=self.error,
        )

    async def _abort(self, kind: type[RunAborted], message: str) -> None:
        self.error = message
        await self._cancel_server_run()
        raise kind(message, self.result())

    async def _guarded(self, work: Awaitable[None]) -> RunResult:
        """Run ``work``; whatever ends it early, cancel the server run before propagating. The
        ledger gets the run's last status either way."""
        try:
            await work
        except RunAborted:
            with anyio.CancelScope(shield=True), suppress(Exception):
                await self._record_status()
            raise
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._cancel_server_run()
                # The ledger's own failure must not mask the run's.
                with suppress(Exception):
                    await self._record_status()
            if isinstance(exc, DuplicateSubmission) and exc.result is None:
                exc.result = self.result()
            raise
        finally:
            self.m.detach()
        await self._record_status()
        return self.result()

    async def _record_status(self) -> None:
        m = self.m
        if m.run_id is not None and m.thread_id is not None:
            await self.ledger.record_run(m.run_id, m.thread_id, m.state, self.machine_name)

    async def _cancel_server_run(self) -> None:
        m = self.m
        if m.run_id is None or m.thread_id is None or m.is_finished:
            return
        with anyio.move_on_after(self.options.cancel_timeout, shield=True):
            with suppress(RunMachineError):
                await m.request_cancel()
            try:
                with _sdk_call():
                    request = self._no_retry.beta.threads.runs.cancel(
                        run_id=m.run_id, thread_id=m.thread_id
                    )
                m._remember_run(await request)
            except openai.APIError:
                # Already finished, or unreachable: nothing more can be done from here.
                return


#: Statuses a run can reach without ever taking a pending submission.
_NOT_PROOF_OF_ACCEPTANCE = frozenset({"expired", "cancelled", "cancelling", "failed"})


def _record_from(call: CallEntry) -> ToolCallRecord:
    """A call's record rebuilt from the ledger (its tool did not run in this process)."""
    assert call.output is not None
    return ToolCallRecord(
        call.call_id, call.name, call.arguments, call.output, call.error, call.round, None, None
    )


def _recorded_outputs(entry: RunEntry, calls: Iterable[Any]) -> dict[str, str]:
    outputs: dict[str, str] = {}
    for c in calls:
        known = entry.calls.get(c.id)
        if known is None or known.output is None:
            raise RunMachineError(
                f"the ledger {entry.run_id!r} has no recorded output for call {c.id} of a round it "
                "says was submitted; the ledger is inconsistent"
            )
        outputs[c.id] = known.output
    return outputs


def _required_ids(run: Run) -> frozenset[str]:
    if run.required_action is None:
        return frozenset()
    return frozenset(c.id for c in run.required_action.submit_tool_outputs.tool_calls)


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return arguments


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                seconds = float(value) * scale
            except ValueError:
                continue
            if 0 < seconds <= 60:
                return seconds + random.uniform(0, 0.05)
    return None


@contextmanager
def _nothing() -> Iterator[None]:
    yield


class _NoLimit:
    """Stands in for the limiter when a round is within ``tool_concurrency``."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_LIMIT = _NoLimit()


class EventStream:
    """The SDK events of a driven run, across every handoff; ``result`` once it has ended."""

    def __init__(self, receive: Any) -> None:
        self._receive = receive
        self.result: RunResult | None = None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._receive.__aiter__()  # type: ignore[no-any-return]
