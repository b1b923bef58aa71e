"""The driver: runs the tools, hands over the outputs, and talks to the server through a backend.

It is written against the core's public API (``runmachine.core.RunCore``) and the backend seam
(``runmachine.backends.base.Backend``) only: it opens a run's event stream, feeds every event to
the core, runs each round of tool calls concurrently, submits every output once per round and
reads what follows, and recovers by polling when a stream breaks.

Guarantees it keeps, whatever happens:
- every required tool call gets exactly one output (an error output when the tool could not run);
- one round is never submitted twice: a failed submit is retried only after the run, read back,
  shows the server still waits on that very round;
- a host cancellation cancels the tools, then the server run (shielded, bounded), then re-raises;
- a guard error or any other failure also cancels the server run before it propagates, so no
  thread is left locked by an abandoned run.

The lifecycle decisions themselves (which event may move the run where) are the table's
(``runmachine.lifecycle``); the driver never changes the core's state except through it.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, nullcontext, suppress
from typing import Any, ClassVar, Generic, TypeVar, cast

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream
from openai.types.beta import AssistantStreamEvent
from openai.types.beta.threads import Run

from runmachine import lifecycle

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from runmachine.backends.base import (
    Backend,
    EventSource,
    RequiredCall,
    RunRef,
    ServerTime,
    StreamLost,
    is_refusal,
    is_server_answer,
    is_transient,
    retry_after,
)
from runmachine.core import CoreBase, RunCore, required_call_ids
from runmachine.errors import (
    HandedOff,
    HookError,
    LeaseLost,
    LedgerError,
    RequiresActionLoop,
    RunAborted,
    RunHeld,
    RunMachineError,
    ToolError,
    ToolFailed,
    TooManyRounds,
)
from runmachine.ledger import (
    CallEntry,
    Lease,
    LeasedLedger,
    Ledger,
    RoundEntry,
    RunEntry,
    default_holder,
    interrupted_message,
)
from runmachine.options import DriverOptions
from runmachine.records import ToolCallRecord
from runmachine.result import RunResult
from runmachine.tools import ToolSpec, encode_output, error_output

__all__ = ["Driver", "DriverBase", "EventStream", "ToolErrorPolicy", "record_from"]

T = TypeVar("T")

#: What an error output adds when a plain-function tool was cut: its thread goes on.
_ABANDONED = (
    " (a plain function, running in a worker thread that cannot be stopped: it was abandoned "
    "and may still finish)"
)

#: Seconds to wait, after the event that decides a stream, for the rest of it (its end).
TAIL_WAIT = 0.5

#: ``on_tool_error(record, error)``: True fails the whole run instead of sending the error output.
#: A string is the error text the model gets instead of the error output's own message.
ToolErrorPolicy = Callable[
    [ToolCallRecord, BaseException], "Awaitable[bool | str | None] | bool | str | None"
]
Sink = Callable[[AssistantStreamEvent], Awaitable[None]]
#: A round's submission: where, its number, the calls it answers and their outputs.
_Submission = tuple[RunRef, int, frozenset[str], dict[str, str]]


class DriverBase:
    """What drives any run-shaped subject to its end, whatever its server: its tools (one round
    at a time, concurrently), the ledger, the loop guards, and the way out (a failure or a
    cancel of the host cancels the subject on the server, shielded and bounded, before it
    propagates). ``Driver`` drives an Assistants run; ``TurnDriver`` an agent-session turn.

    ``tools`` are the tools the run may call (methods bound to ``owner``); ``machine_name`` is how
    the ledger names the machine class (``module:Class``) so that ``runmachine resume`` finds it.
    """

    #: What is driven, in messages ("run", "turn").
    noun: ClassVar[str] = "run"

    # Slots: one driver per run, and more attributes than an instance dict shares keys for.
    __slots__ = (
        "bound",
        "cancel_sent",
        "core",
        "error",
        "failing",
        "handing_off",
        "holder",
        "identical",
        "inner_ledger",
        "last_calls",
        "lease",
        "lease_lost",
        "leased",
        "ledger",
        "local_leases",
        "lost_content",
        "machine_name",
        "on_tool_error",
        "options",
        "orphan",
        "owner",
        "records",
        "renewed_at",
        "resubmitted",
        "round_failed",
        "round_scope",
        "rounds",
        "scope",
        "sent_here",
        "sink",
        "tools",
    )

    def __init__(
        self,
        core: CoreBase,
        *,
        options: DriverOptions,
        tools: Mapping[str, ToolSpec],
        owner: object,
        ledger: Ledger,
        machine_name: str,
        on_tool_error: ToolErrorPolicy | None = None,
        sink: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        self.options = options
        self.tools = dict(tools)
        self.owner = owner
        #: Each tool bound to ``owner``, made at its first call.
        self.bound: dict[str, Callable[..., Any]] = {}
        #: Whether the ledger coordinates holders; then every run is driven under a lease.
        self.leased = isinstance(ledger, LeasedLedger)
        #: The ledger lives and dies with this process (``MemoryLedger``): its leases need no
        #: expiry and no renewal, since no other process can take a run over.
        self.local_leases = bool(getattr(ledger, "process_local", False))
        self.lease: Lease | None = None
        self.lease_lost: LeaseLost | None = None
        self.renewed_at = 0.0
        self.holder = options.lease_holder or default_holder()
        #: ``hand_off()`` was called: stop driving, leave the run to another holder.
        self.handing_off = False
        self.scope: anyio.CancelScope | None = None
        self.inner_ledger = ledger
        self.ledger = cast(Ledger, _Checked(ledger, lambda: self.lease))
        self.machine_name = machine_name
        self.on_tool_error = on_tool_error
        self.sink = sink
        self.records: list[ToolCallRecord] = []
        self.sent_here: set[int] = set()
        self.resubmitted: Counter[frozenset[str]] = Counter()
        self.rounds = 0
        self.identical = 0
        #: The calls of the round before (the loop guard compares the next one with them).
        self.last_calls: list[RequiredCall] = []
        self.lost_content = False
        self.error: str | None = None
        self.failing: tuple[ToolCallRecord, BaseException] | None = None
        self.round_failed: BaseException | None = None
        self.round_scope: anyio.CancelScope | None = None
        #: The id of a subject the create request made although its answer never came, found
        #: and cancelled.
        self.orphan: str | None = None
        #: The local cancel request has been sent to the server.
        self.cancel_sent = False
        self.core = core

    def result(self) -> RunResult:
        """What the driven subject came to (so far)."""
        raise NotImplementedError

    async def _cancel_server_run(self) -> None:
        """Cancel the subject on the server and wait for the cancel to land (shielded, within
        ``cancel_timeout``)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------
    # Rounds
    # ----------------------------------------------------------------------------------------

    async def _next_round(
        self, subject_id: str, calls: list[RequiredCall], entry: RunEntry
    ) -> None:
        """Number the round ``calls`` make (calls recorded before a restart keep their round's
        number) and stop the run if it is one round too many, or the same calls once too often
        (``max_rounds``, ``max_identical_rounds``)."""
        noun = self.noun
        recorded = [entry.calls[c.id].round for c in calls if c.id in entry.calls]
        self.rounds = recorded[0] if recorded else max(self.rounds, entry.last_round) + 1
        last, self.last_calls = self.last_calls, calls
        self.identical = self.identical + 1 if last and _same_calls(last, calls) else 1
        if self.rounds > self.options.max_rounds:
            self.rounds -= 1
            await self._abort(
                TooManyRounds,
                f"{noun} {subject_id} asked for tool round {self.rounds + 1}, past max_rounds="
                f"{self.options.max_rounds}; the {noun} was cancelled",
            )
        if self.identical > self.options.max_identical_rounds:
            self.rounds -= 1
            await self._abort(
                RequiresActionLoop,
                f"{noun} {subject_id} asked for the same tool calls "
                f"({', '.join(sorted(c.name for c in calls))}) in {self.identical} rounds in a "
                f"row, past max_identical_rounds={self.options.max_identical_rounds}; "
                f"the {noun} was cancelled",
            )

    # ----------------------------------------------------------------------------------------
    # Tools
    # ----------------------------------------------------------------------------------------

    async def _run_tools(
        self,
        run_id: str,
        calls: list[RequiredCall],
        round_no: int,
        entry: RunEntry,
        deadline: float,
        started_arg: Callable[[RequiredCall], Any],
        deadline_reason: tuple[str, str],
    ) -> dict[str, str]:
        """Run one round's tools concurrently (within ``tool_concurrency``, each within its
        ``timeout``, all before ``deadline``), each call's start and output in the ledger under
        ``run_id``; ``on_tool_started`` gets ``started_arg(call)``. Returns one output per call.
        A call still running at ``deadline`` is stopped with an error output that says it was
        ``deadline_reason`` (when, and why: ``("5.0 s before ...", " so ...")``)."""
        results: dict[str, ToolCallRecord] = {}
        starts: dict[str, float] = {}
        #: Calls whose plain-function tool is running in a worker thread right now.
        in_threads: set[str] = set()
        ledger = self.ledger
        core = self.core

        async def one(call: RequiredCall) -> None:
            try:
                await attempt(call)
            except (HookError, LedgerError, SystemExit, KeyboardInterrupt) as exc:
                # A hook's or the ledger's failure, or an exit a tool let through, stops the
                # round and is raised after it, as itself (no exception group; SystemExit keeps
                # its code), never passed off as the tool's error.
                if self.round_failed is None:
                    self.round_failed = exc
                assert self.round_scope is not None
                self.round_scope.cancel()

        async def attempt(call: RequiredCall) -> None:
            name = call.name
            arguments = call.arguments
            spec = self.tools.get(name)
            started: float | None = None
            known = entry.calls.get(call.id)
            if known is not None and known.finished:
                # Recorded by an earlier process: never run again.
                results[call.id] = record_from(known)
                await core.call_hook("on_tool_finished", results[call.id])
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
                func = self.bound.get(name)
                if func is None:
                    func = self.bound[name] = spec.bind(self.owner)
                await core.call_hook("on_tool_started", started_arg(call))
                await ledger.call_started(run_id, call.id, round_no, name, arguments)
                started = starts[call.id] = time.monotonic()
                with anyio.fail_after(spec.timeout) if spec.timeout else _NO_LIMIT:
                    if spec.is_async:
                        value = await func(**kwargs)
                    else:
                        in_threads.add(call.id)
                        value = await anyio.to_thread.run_sync(
                            lambda: func(**kwargs), abandon_on_cancel=True
                        )
                        in_threads.discard(call.id)
                output = encode_output(value)
                finished = time.monotonic()
                try:
                    await ledger.call_finished(
                        run_id, call.id, round_no, name, arguments, output, None
                    )
                except LedgerError as exc:
                    # The tool ran (its effect happened): what it returned is kept in the error.
                    exc.call_id, exc.output = call.id, output
                    raise
                results[call.id] = ToolCallRecord(
                    call.id, name, arguments, output, None, round_no, started, finished
                )
                await core.call_hook("on_tool_finished", results[call.id])
            except (HookError, LedgerError):
                raise
            except ToolError as exc:
                await self._tool_failed(
                    run_id, call, exc.kind, exc.message, exc, round_no, started, results
                )
            except TimeoutError as exc:
                timeout = spec.timeout if spec else None
                if timeout is None:  # the tool's own TimeoutError, not its limit
                    await self._tool_failed(
                        run_id,
                        call,
                        "tool_raised",
                        f"tool {name!r} raised TimeoutError: {exc}",
                        exc,
                        round_no,
                        started,
                        results,
                    )
                    return
                abandoned = call.id in in_threads
                await self._tool_failed(
                    run_id,
                    call,
                    "timeout",
                    f"tool {name!r} did not finish within {timeout} s"
                    + (_ABANDONED if abandoned else ""),
                    exc,
                    round_no,
                    started,
                    results,
                    abandoned=abandoned,
                )
            except Exception as exc:
                await self._tool_failed(
                    run_id,
                    call,
                    "tool_raised",
                    f"tool {name!r} raised {type(exc).__name__}: {exc}",
                    exc,
                    round_no,
                    started,
                    results,
                )

        with anyio.CancelScope(deadline=deadline) as self.round_scope:
            if len(calls) == 1:
                await one(calls[0])
            else:
                await _fan_out(calls, one, self.options.tool_concurrency)
        self.round_scope = None
        if self.round_failed is not None:
            raise self.round_failed
        if self.failing is not None:
            record, cause = self.failing
            self.records.extend(r for r in results.values() if r is not record)
            self.records.append(record)
            await self._abort(
                ToolFailed,
                f"on_tool_error failed the run because of tool call {record.id} "
                f"({record.name}): {record.error}",
                cause,
            )
        for call in calls:
            if call.id not in results:
                abandoned = call.id in in_threads
                message = (
                    f"tool {call.name!r} was still running {deadline_reason[0]} and was "
                    + ("cut" + _ABANDONED if abandoned else "stopped")
                    + deadline_reason[1]
                )
                await self._tool_failed(
                    run_id,
                    call,
                    "deadline",
                    message,
                    TimeoutError(message),
                    round_no,
                    starts.get(call.id),
                    results,
                    abandoned=abandoned,
                )
        ordered = [results[c.id] for c in calls]
        self.records.extend(ordered)
        return {r.id: r.output for r in ordered}

    async def _tool_failed(
        self,
        run_id: str,
        call: RequiredCall,
        kind: str,
        message: str,
        exc: BaseException,
        round_no: int,
        started: float | None,
        results: dict[str, ToolCallRecord],
        *,
        abandoned: bool = False,
    ) -> None:
        record = ToolCallRecord(
            call.id,
            call.name,
            call.arguments,
            error_output(kind, self._sent_error(kind, message, call.name, exc), call.name),
            message,
            round_no,
            started,
            time.monotonic(),
            abandoned=abandoned,
        )
        # The policy first: the text it chooses is what the ledger records and the model gets.
        text = await self._maybe_fail_run(record, exc)
        if text is not None:
            record = attrs.evolve(record, output=error_output(kind, text, call.name))
        results[call.id] = record
        await self._finished(run_id, record)

    def _sent_error(self, kind: str, message: str, name: str, exc: BaseException) -> str:
        """The error text the model gets for a call of tool ``name`` that failed (``kind``,
        ``message``, ``exc``), unless ``on_tool_error`` chooses one: the whole message here."""
        return message

    async def _finished(self, run_id: str, record: ToolCallRecord) -> None:
        await self.ledger.call_finished(
            run_id,
            record.id,
            record.round,
            record.name,
            record.arguments,
            record.output,
            record.error,
        )
        await self.core.call_hook("on_tool_finished", record)

    async def _maybe_fail_run(self, record: ToolCallRecord, exc: BaseException) -> str | None:
        """Ask ``on_tool_error``: True fails the run (after the round), a string is the error
        text to send instead (returned here), anything else sends the error output as it is."""
        if self.on_tool_error is None:
            return None
        try:
            decision: Any = self.on_tool_error(record, exc)
            if inspect.isawaitable(decision):
                decision = await decision
        except Exception as error:
            core = self.core
            raise HookError("on_tool_error", core.state, core.run_id, error) from error
        if isinstance(decision, str):
            return decision
        if decision and self.failing is None:
            # Raised after the round's task group, not inside it (no exception groups).
            self.failing = (record, exc)
            if self.round_scope is not None:
                self.round_scope.cancel()
        return None

    # ----------------------------------------------------------------------------------------
    # Ending: aborts, cleanup
    # ----------------------------------------------------------------------------------------

    async def _abort(
        self, kind: type[RunAborted], message: str, cause: BaseException | None = None
    ) -> None:
        self.error = message
        await self._cancel_server_run()
        raise kind(message, self.result()) from cause

    async def _guarded(self, work: Awaitable[None]) -> RunResult:
        """Run ``work``; whatever ends it early, cancel the server run before propagating. The
        ledger gets the run's last status either way, and the run's lease is released.

        Two endings leave the server run alone: the run is not this driver's (held by another
        holder, or its lease was taken over: ``RunHeld``, ``LeaseLost``), or ``hand_off()``
        gave it up for another holder to take over. A run that failed unfinished (it could not
        be cancelled, or was never found) is handed off too, so that a worker takes it over."""
        try:
            await self._under_lease(work)
        except (RunHeld, LeaseLost):
            raise
        except HandedOff:
            await self._release(handoff=True)
            raise
        except RunAborted as exc:
            try:
                if exc.result is None:
                    # Not through ``_abort`` (a DuplicateSubmission the core refused): the
                    # server run has not been cancelled yet.
                    with anyio.CancelScope(shield=True):
                        await self._cleanup(exc)
                    exc.result = self.result()
                else:
                    with anyio.CancelScope(shield=True):
                        await self._bounded_record_status()
            finally:
                await self._release(handoff=not self.core.is_finished)
            raise
        except BaseException as exc:
            try:
                with anyio.CancelScope(shield=True):
                    await self._cleanup(exc)
                if self.orphan is not None:
                    _add_note(
                        exc,
                        f"runmachine: the run this request created ({self.orphan}) was never "
                        f"answered for; it was found on its thread and cancelled (now "
                        f"{self.core.state})",
                    )
            finally:
                await self._release(handoff=not self.core.is_finished)
            raise
        try:
            await self._record_status()
        finally:
            await self._release()
        return self.result()

    # ----------------------------------------------------------------------------------------
    # Leases
    # ----------------------------------------------------------------------------------------

    async def _under_lease(self, work: Awaitable[None]) -> None:
        """``work``, within a scope ``hand_off()`` cancels, with the lease renewed beside it
        while it runs (when the ledger keeps leases). A lease that is lost stops the work and
        raises ``LeaseLost``, whatever the work was doing (its own error is chained)."""
        scope = self.scope = anyio.CancelScope()
        with scope:
            if not self.leased or self.local_leases:
                await work
            else:
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._keep_lease, tg.cancel_scope)
                        try:
                            await work
                        finally:
                            tg.cancel_scope.cancel()
                except BaseExceptionGroup as group:
                    if len(group.exceptions) != 1:
                        raise
                    inner = group.exceptions[0]
                    if self.lease_lost is not None:
                        raise self.lease_lost from inner
                    raise inner from inner.__cause__
                except BaseException as exc:
                    if self.lease_lost is not None and exc is not self.lease_lost:
                        raise self.lease_lost from exc
                    raise
        if self.lease_lost is not None:
            raise self.lease_lost
        if self.handing_off and scope.cancelled_caught and not self.core.is_finished:
            core = self.core
            raise HandedOff(
                f"{self.noun} {core.run_id or '(not created yet)'} was handed off in state "
                f"{core.state}: it was not cancelled, and its lease is released for another "
                "holder to take it over"
            )

    async def _still_ours(self) -> bool:
        """Whether the lease can still be shown to hold (renewed now, within a bound): before a
        cleanup cancels the server run, since a holder whose lease ran out must not cancel the
        run another holder drives now."""
        if not self.leased or self.local_leases or self.lease is None:
            return self.lease_lost is None
        if self.lease_lost is not None:
            return False
        ledger = cast(LeasedLedger, self.inner_ledger)
        ttl = self.options.lease_ttl
        with anyio.move_on_after(min(ttl, self.options.cancel_timeout), shield=True):
            try:
                self.lease = await ledger.renew(self.lease, ttl)
                self.renewed_at = anyio.current_time()
                return True
            except LeaseLost as exc:
                self.lease_lost = exc
                return False
            except Exception:
                return anyio.current_time() - self.renewed_at < ttl
        return False

    async def _claim(self, run_id: str | None, scope_id: str | None) -> None:
        """Take the lease on ``run_id`` once it is known (``RunHeld`` if another holder has it)."""
        if not self.leased or self.lease is not None or run_id is None:
            return
        self.lease = await self.ledger.claim(  # type: ignore[attr-defined]
            run_id,
            self.holder,
            math.inf if self.local_leases else self.options.lease_ttl,
            thread_id=scope_id or "",
            machine=self.machine_name,
        )
        self.renewed_at = anyio.current_time()

    async def _keep_lease(self, work: anyio.CancelScope) -> None:
        """Renew the lease every third of its time to live, each renewal bounded by the time
        the lease has left. Taken over (``LeaseLost``), or not confirmed before it runs out (the
        ledger unreachable, or stalled): stop the work. The lost lease is kept, so every later
        write is refused by its fence rather than sent unfenced."""
        ttl = self.options.lease_ttl
        ledger = cast(LeasedLedger, self.inner_ledger)
        while True:
            await anyio.sleep(ttl / 3)
            lease = self.lease
            if lease is None:
                continue
            sent = anyio.current_time()
            left = ttl - (sent - self.renewed_at)
            error: BaseException | None = None
            with anyio.move_on_after(max(left, 0.0)):
                try:
                    self.lease = await ledger.renew(lease, ttl)
                    self.renewed_at = sent
                    continue
                except LeaseLost as exc:
                    self.lease_lost = exc
                except Exception as exc:
                    error = exc
                    if anyio.current_time() - self.renewed_at < ttl:
                        continue  # a short outage: try again; the lease still holds
            if self.lease_lost is None:
                cause = f"{type(error).__name__}: {error}" if error else "the ledger did not answer"
                self.lease_lost = LeaseLost(
                    f"the lease of {lease.holder} on run {lease.run_id} could not be renewed "
                    f"within its {ttl} s ({cause}); another holder may have taken the run over, "
                    "so nothing more is done here"
                )
            work.cancel()
            return

    async def _release(self, *, handoff: bool = False) -> None:
        """Give the lease up (shielded, bounded); a failure here only lets the lease expire."""
        lease, self.lease = self.lease, None
        if lease is None:
            return
        ledger = cast(LeasedLedger, self.inner_ledger)
        with anyio.move_on_after(self.options.cancel_timeout, shield=True), suppress(Exception):
            await ledger.release(lease, handoff=handoff)

    def hand_off(self) -> None:
        """Stop driving now and leave the run to another holder: the server run is not
        cancelled, and its lease is released for any other holder to take over at once."""
        self.handing_off = True
        if self.scope is not None:
            self.scope.cancel()

    async def _cleanup(self, error: BaseException) -> None:
        """Cancel the server run and record its last status, without ever masking ``error``:
        a failure of the cleanup itself becomes a note on it. A run whose lease cannot be shown
        to hold any more is left alone: it may be another holder's now."""
        if not await self._still_ours():
            _add_note(
                error,
                "runmachine: the server run was not cancelled: this process's lease on it could "
                "not be confirmed, so another holder may be driving it",
            )
            return
        try:
            await self._cancel_server_run()
        except Exception as exc:
            _add_note(
                error,
                f"runmachine: cancelling the server run failed too ({type(exc).__name__}: {exc})",
            )
        await self._bounded_record_status()

    async def _bounded_record_status(self) -> None:
        """The ledger's last word on the run, bounded by ``cancel_timeout``; its own failure must
        not mask the run's."""
        with anyio.move_on_after(self.options.cancel_timeout), suppress(Exception):
            await self._record_status()

    async def _record_status(self) -> None:
        core = self.core
        if core.run_id is not None and core.thread_id is not None:
            await self.ledger.record_run(core.run_id, core.thread_id, core.state, self.machine_name)

    async def _read_through(self, read: Callable[[], Awaitable[T]], doing: str) -> T:
        """``read()`` (``doing`` says what it does: ``"reading run X back"``) through a short
        outage: a
        transient failure (a 5xx, a 429, a dropped connection; the SDK's own retries spent) is
        tried again with back-off, ``recovery_attempts`` times in a row at most, then the run
        is given up with a ``RunAborted`` that says so (the server run cancelled on the way
        out)."""
        delay = 0.25
        for attempt in range(1, self.options.recovery_attempts + 1):
            try:
                return await read()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if attempt == self.options.recovery_attempts:
                    self.error = (
                        f"gave up {doing} after "
                        f"{self.options.recovery_attempts} failed attempts in a row "
                        f"(last: {type(exc).__name__}: {exc})"
                    )
                    with anyio.CancelScope(shield=True):
                        await self._cancel_server_run()
                    raise RunAborted(self.error, self.result()) from exc
                wait = retry_after(exc)
            await anyio.sleep(wait if wait is not None else delay)
            delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")

    async def _retrying(self, request: Callable[[], Awaitable[T]]) -> T | None:
        """``request()``, tried again while it fails transiently (inside the caller's bound);
        ``None`` when the server refuses it (the run has already ended, say)."""
        delay = 0.1
        while True:
            try:
                return await request()
            except Exception as exc:
                if is_refusal(exc) or (is_server_answer(exc) and not is_transient(exc)):
                    return None
                if not is_transient(exc):
                    raise
                wait = retry_after(exc)
            await anyio.sleep(wait if wait is not None else delay)
            delay = min(delay * 2, 2.0)


class Driver(DriverBase):
    """Drives one Assistants run, fed into ``core``, from creation (or adoption) to its end,
    talking to the server through ``backend``."""

    __slots__ = (
        "_tail",
        "_tail_read",
        "_tails",
        "backend",
        "request",
        "requested_at",
        "run_clock",
    )
    core: RunCore

    def __init__(
        self,
        core: RunCore,
        backend: Backend,
        *,
        options: DriverOptions,
        tools: Mapping[str, ToolSpec],
        owner: object,
        ledger: Ledger,
        machine_name: str,
        on_tool_error: ToolErrorPolicy | None = None,
        sink: Sink | None = None,
    ) -> None:
        super().__init__(
            core,
            options=options,
            tools=tools,
            owner=owner,
            ledger=ledger,
            machine_name=machine_name,
            on_tool_error=on_tool_error,
            sink=cast("Callable[[Any], Awaitable[None]] | None", sink),
        )
        self.core = core
        self.backend = backend
        #: The request that creates the run, and when it was sent (to find the run it created
        #: when its answer never came).
        self.request: Any = None
        self.requested_at = 0.0
        #: The latest server timestamp of the run seen live (``created_at``, ``started_at``).
        self.run_clock: ServerTime | None = None
        #: The stream that stopped at ``requires_action`` (its context and its events), until
        #: the next request lets it go (``_let_tail_go``), and where such ends are read.
        self._tail: tuple[AsyncExitStack, AsyncIterator[Any]] | None = None
        self._tails: anyio.abc.TaskGroup | None = None
        #: With ``reuse_connection``: set once the end of the stream that stopped at
        #: ``requires_action`` has been read (in a task of ``_tails`` since then) and closed.
        self._tail_read: anyio.Event | None = None

    # ----------------------------------------------------------------------------------------
    # Entry points
    # ----------------------------------------------------------------------------------------

    async def create(self, request: Any) -> RunResult:
        """Create the run ``request`` describes (a backend request record) and drive it."""
        self.request, self.requested_at = request, time.time()
        if not self.options.stream:
            return await self._guarded(self._poll_path(request))
        return await self._guarded(self._closing_tail(self._stream_path(request, time.time())))

    async def resume(self, scope_id: str | None, run_id: str) -> RunResult:
        """Pick up run ``run_id`` (in ``scope_id``, or where the ledger says) and drive it."""

        async def adopt() -> None:
            entry = await self.ledger.load(run_id)
            scope = scope_id or (entry.thread_id if entry is not None else None)
            if not scope:
                raise RunMachineError(
                    f"resume(run_id={run_id!r}) needs thread_id: the ledger "
                    f"{self.ledger!r} has no record of that run"
                )
            await self._claim(run_id, scope)  # RunHeld, and nothing done, if it is held
            run, _ = await self._read_back(RunRef(run_id, scope))
            # Whatever the run said before now was not seen here: re-read it at the end.
            self.lost_content = True
            if entry is not None:
                await self._take_over(entry, run)
            await self.core.adopt(run)
            await self._continue()

        return await self._guarded(self._closing_tail(adopt()))

    async def _closing_tail(self, work: Awaitable[None]) -> None:
        """``work``, with a task group for the ends of the streams that stopped at
        ``requires_action`` (``_read``). Whatever ends ``work`` is raised as it is (not in an
        exception group); if it fails, what is left of those streams is closed unread."""
        failure: BaseException | None = None
        async with anyio.create_task_group() as tails:
            self._tails = tails
            try:
                await work
            except BaseException as exc:
                failure = exc
                tails.cancel_scope.cancel()
            finally:
                self._tails = self._tail_read = None
                tail, self._tail = self._tail, None
            if tail is not None and failure is None:
                await _finish_tail(*tail)
            elif tail is not None:  # closed unread: the run did not end well
                with anyio.CancelScope(shield=True), suppress(Exception):
                    await tail[0].aclose()
        if failure is not None:
            raise failure

    async def _tail_reused(self) -> None:
        """With ``reuse_connection``, before the submission: wait until the end of the stream
        that stopped at ``requires_action`` is read (read since then, alongside the tools), so
        that its connection is back in the pool for the submission to take. A server that has
        sent that end takes microseconds; one that keeps the stream open is waited for
        ``TAIL_WAIT`` at most, once per round (the stream is then closed unread, its connection
        with it). No timer of its own: under load, the read may take a while to be scheduled,
        and a timer would then cost the connection it waits for."""
        read, self._tail_read = self._tail_read, None
        if read is not None:
            await read.wait()

    def _let_tail_go(self) -> None:
        """Before the next request: read the end of the stream that stopped at
        ``requires_action`` in a task of its own, so that its connection goes back to the pool
        whatever the request waits for. Started here, not at ``requires_action``, so that the
        round's own work (the tools, the submission's request) never shares the CPU with it."""
        tail, self._tail = self._tail, None
        if tail is not None and self._tails is not None:
            self._tails.start_soon(_finish_tail, *tail)
        elif tail is not None:  # pragma: no cover (every stream is read within _closing_tail)
            raise AssertionError("a stream was left open outside _closing_tail")

    # ----------------------------------------------------------------------------------------
    # The main loop
    # ----------------------------------------------------------------------------------------

    async def _stream_path(self, request: Any, started: float) -> None:
        try:
            await self._read(self.backend.open_run(request))
        except StreamLost as lost:
            self.lost_content = True
            if self.core.run_id is None:
                broke = (
                    "the stream that creates the run broke before the server named the run "
                    f"({lost})"
                )
                try:
                    found = await self.backend.find_created(request, started)
                except Exception as exc:
                    if is_server_answer(exc):
                        raise
                    # Not an answer the SDK could read (a list that is no list): said as such,
                    # with what broke the stream, never as the SDK's own parsing failure.
                    raise RunMachineError(
                        f"{broke}, and reading back the runs it may have created failed: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                if found is None:
                    raise RunMachineError(broke) from lost
                await self.core.observe_status(found)
        await self._continue()

    async def _poll_path(self, request: Any) -> None:
        run = await self.backend.create_run(request)
        await self.core.observe_status(run)
        await self._continue()

    async def _continue(self) -> None:
        """From whatever state the core is in, go on until the run ends."""
        core = self.core
        await self._claim(core.run_id, core.thread_id)
        while not core.is_finished:
            if core.cancel_requested and not self.cancel_sent:
                await self._send_cancel()
            if core.state == lifecycle.REQUIRES_ACTION:
                await self._round()
            else:
                await self._poll_until_actionable()
        if self.lost_content or not self.options.stream:
            await self._recover_content()

    def _ref(self) -> RunRef:
        run = self.core.current_run()
        assert run is not None
        return self.backend.ref(run)

    async def _take_over(self, entry: RunEntry, run: Run) -> None:
        """Resume from the ledger: earlier rounds, their records, what the server took."""
        self.rounds = entry.last_round
        waiting = required_call_ids(run) if run.status == lifecycle.REQUIRES_ACTION else frozenset()
        for past in entry.rounds:
            if past.call_ids == waiting:
                continue
            if not past.accepted and run.status not in lifecycle.NOT_PROOF_OF_ACCEPTANCE:
                # The run went past this round, so the server took it: the process that sent
                # it stopped before it could say so.
                await self.ledger.round_accepted(run.id, past.round)
            self.core.mark_submitted(past.call_ids)
            self.records.extend(
                record_from(entry.calls[cid])
                for cid in sorted(past.call_ids)
                if cid in entry.calls and entry.calls[cid].finished
            )

    async def _round(self) -> None:
        """One ``requires_action`` round: guards, tools, one submission, what follows. The
        submission streams from here, so that nothing of the round (the run it answers, its
        calls) is held while it does: the core holds the run as it is now."""
        submission = await self._prepare_round()
        if submission is not None:
            await self._submit(*submission)

    async def _prepare_round(self) -> _Submission | None:
        """The round's guards and tools: what to submit, or None (nothing to submit here)."""
        run = self.core.current_run()
        assert run is not None
        calls = self.backend.required_calls(run)
        call_ids = frozenset(c.id for c in calls)

        await self.ledger.record_run(run.id, run.thread_id, run.status, self.machine_name)
        entry = await self.ledger.load(run.id)
        assert entry is not None
        sent = entry.round_for(call_ids)
        if sent is not None and (sent.accepted or sent.round in self.sent_here):
            # The same calls again after their round was accepted: never run them again.
            return await self._same_round_again(run, sent, entry)
        if sent is not None:
            # Sent by a process that stopped before it learned the outcome. The server presents
            # the round again, so it never took it: send the recorded outputs, running nothing.
            self.records.extend(record_from(entry.calls[c.id]) for c in calls)
            ref = self.backend.ref(run)
            return ref, sent.round, call_ids, _recorded_outputs(entry, calls)

        await self._next_round(run.id, calls, entry)
        outputs = await self._run_tools(
            run.id,
            calls,
            self.rounds,
            entry,
            self._round_deadline(run),
            lambda call: _sdk_call(run, call.id),
            (
                f"{self.options.deadline_margin} s before the run's expires_at",
                " so the run does not expire",
            ),
        )
        if self.core.state != lifecycle.REQUIRES_ACTION:
            return None  # cancelled while the tools ran (a hook asked): nothing is submitted
        return self.backend.ref(run), self.rounds, call_ids, outputs

    async def _same_round_again(
        self, run: Run, sent: RoundEntry, entry: RunEntry
    ) -> _Submission | None:
        """The server presents a round whose outputs were already submitted: what to submit
        again (once), or None (it did not, after all)."""
        call_ids = sent.call_ids
        confirmed, _ = await self._read_back(self.backend.ref(run))
        if (
            confirmed.status != lifecycle.REQUIRES_ACTION
            or required_call_ids(confirmed) != call_ids
        ):
            await self.core.observe_status(confirmed)
            return None
        if self.resubmitted[call_ids] >= 1:
            await self._abort(
                RequiresActionLoop,
                f"run {run.id} presented calls {sorted(call_ids)} again after their outputs "
                "were submitted twice; the run was cancelled",
            )
        self.resubmitted[call_ids] += 1
        self.core.forget_submission(call_ids)
        calls = self.backend.required_calls(confirmed)
        return self.backend.ref(run), sent.round, call_ids, _recorded_outputs(entry, calls)

    def _round_deadline(self, run: Run) -> float:
        """When this round's outputs must be submitted, on the local monotonic clock.

        ``expires_at`` is the server's time, so the time left is measured on the server's clock,
        never this machine's (which may be hours off): the server's time now is estimated from
        what it said of it (its ``Date`` header, the run's own timestamps seen as they
        happened), then carried forward on the local monotonic clock (anyio's: trio keeps its
        own). Both readings are whole seconds, so the estimate is at most about a second early,
        which ``deadline_margin`` covers.
        """
        if run.expires_at is None:
            return math.inf
        now = anyio.current_time()
        server_now = self._server_now(now)
        if server_now is None:
            # The server never said its time: this machine's clock is all there is.
            server_now = time.time()
        remaining = run.expires_at - server_now - self.options.deadline_margin
        return now + max(remaining, 0.0)

    def _server_now(self, now: float) -> float | None:
        readings = [self.backend.server_time(), self.run_clock]
        known = [r.seconds + (now - r.local) for r in readings if r is not None]
        return max(known) if known else None

    # ----------------------------------------------------------------------------------------
    # Submission
    # ----------------------------------------------------------------------------------------

    async def _submit(
        self, ref: RunRef, round_no: int, call_ids: frozenset[str], outputs: dict[str, str]
    ) -> None:
        core = self.core
        ledger = self.ledger
        backend = self.backend
        run_id = ref.run_id
        await ledger.round_submitted(run_id, round_no, call_ids)
        self.sent_here.add(round_no)

        answered = False

        async def accepted() -> None:
            nonlocal answered
            answered = True
            await ledger.round_accepted(run_id, round_no)

        async def moved_on(confirmed: Run) -> None:
            # The run is past this round: the server took it, unless it ended for other reasons.
            if confirmed.status not in lifecycle.NOT_PROOF_OF_ACCEPTANCE:
                await accepted()
            await core.observe_status(confirmed)

        streaming = backend.submit_mode(self.options.stream) == "new_stream"
        await self._tail_reused()
        self._let_tail_go()
        delay = 0.25
        for attempt in range(1, self.options.submit_attempts + 1):
            await core.hand_over_outputs(call_ids)
            try:
                if streaming:
                    await self._read(backend.open_submission(ref, outputs), accepted)
                else:
                    taken = await backend.submit(ref, outputs)
                    await accepted()
                    await core.observe_status(taken)
                return
            except Exception as exc:
                if is_refusal(exc):
                    # Refused: most often the run moved on meanwhile (expired, cancelled, ...).
                    confirmed, _ = await self._read_back(ref)
                    if _waits_on(confirmed, call_ids):
                        raise
                    await moved_on(confirmed)
                    return
                if not is_transient(exc):
                    raise
                wait = retry_after(exc)
            if core.state != lifecycle.SUBMITTING or answered:
                # The server answered 2xx (or events of the new stream came before it broke):
                # the round was accepted, and is never sent again; polling goes on from here.
                if not answered:
                    await accepted()
                self.lost_content = True
                return
            confirmed, _ = await self._read_back(ref)
            if _waits_on(confirmed, call_ids):
                # The server still waits on this very round: it never took the submission.
                await core.submission_not_accepted(confirmed)
                if attempt == self.options.submit_attempts:
                    break
                await anyio.sleep(wait if wait is not None else delay)
                delay = min(delay * 2, 8.0)
                continue
            self.lost_content = True
            await moved_on(confirmed)
            return
        await self._abort(
            RunAborted,
            f"the server did not accept the tool outputs of run {run_id} after "
            f"{self.options.submit_attempts} attempts",
        )

    # ----------------------------------------------------------------------------------------
    # Streams
    # ----------------------------------------------------------------------------------------

    async def _read(
        self, source: EventSource, opened: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Read one stream, feeding the core. Raises ``StreamLost`` if it ends before a terminal
        or ``requires_action`` event; HTTP errors before the first byte propagate. ``opened``
        is awaited once the server has answered 2xx, before the first event.

        The event that decides (the run ended, or waits on tools) is acted on at once. What
        follows it (``[DONE]`` and the end of the body, read so that the connection can be
        reused) is waited for ``TAIL_WAIT`` seconds at most, so that a server that keeps the
        connection open neither stalls a finished run nor delays a round: after a terminal
        event, here; after ``requires_action``, in a task of its own, so that the round's
        tools do not wait for it. With ``reuse_connection`` (the default) that task starts at
        once and the submission waits for it (``_tail_reused``), to take the connection it
        gives back; without, it starts as the next request is made
        (``_let_tail_go``), which takes a connection of its own. Either way the connection goes
        back to the pool as soon as the end has been read, for any request that needs it.
        """
        core = self.core
        feed = core.feed
        sink = self.sink
        stack: AsyncExitStack | None = AsyncExitStack()
        assert stack is not None
        try:
            events = await stack.enter_async_context(source)
            if opened is not None:
                await opened()
            iterator = events.__aiter__()
            while True:
                if core.state in lifecycle.STREAM_MAY_END:
                    if core.is_finished:
                        await _drain(iterator)
                        break
                    # Waiting on tools: the stream's end is read in a task of its own, from
                    # now on (alongside the tools: ``reuse_connection``) or from the next
                    # request on.
                    if self.options.reuse_connection and self._tails is not None:
                        read = self._tail_read = anyio.Event()
                        self._tails.start_soon(_finish_tail, stack, iterator, read)
                    else:
                        self._tail = (stack, iterator)
                    stack = None
                    return
                try:
                    event = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                await feed(event)
                if self.lease is None and self.leased:
                    await self._claim(core.run_id, core.thread_id)
                if core.cancel_requested and not self.cancel_sent:
                    await self._send_cancel()
                if event.event in lifecycle.LIFECYCLE_EVENTS:
                    self._saw_run_time(event.data)
                if sink is not None:
                    await sink(event)
                del event  # not held while the next one is awaited
        except StreamLost as exc:
            core.record_stream_error(exc.__cause__ if exc.__cause__ is not None else exc)
            raise
        finally:
            if stack is not None:
                with anyio.CancelScope(shield=True):
                    await stack.aclose()
        if core.state not in lifecycle.STREAM_MAY_END:
            raise StreamLost(f"the stream ended in state {core.state!r}")

    def _saw_run_time(self, run: Run) -> None:
        """A lifecycle event arrives as it happens: the run's newest timestamp is (to the second)
        the server's time now."""
        stamps = [t for t in (run.created_at, run.started_at) if isinstance(t, (int, float))]
        if not stamps:
            return
        reading = ServerTime(float(max(stamps)), anyio.current_time())
        known = self.run_clock
        # Each reading is a lower bound of the server's time; keep the highest, carried forward.
        if known is None or reading.seconds > known.seconds + (reading.local - known.local):
            self.run_clock = reading

    # ----------------------------------------------------------------------------------------
    # Polling and recovery
    # ----------------------------------------------------------------------------------------

    async def _poll_until_actionable(self) -> None:
        core = self.core
        ref = self._ref()
        interval = self.options.poll_interval
        while True:
            run, poll_after = await self._read_back(ref)
            await core.observe_status(run)
            if core.is_finished or core.state == lifecycle.REQUIRES_ACTION:
                return
            await anyio.sleep(poll_after if poll_after is not None else interval)
            if poll_after is None:
                interval = min(interval * 1.5, self.options.max_poll_interval)

    async def _read_back(self, ref: RunRef) -> tuple[Run, float | None]:
        """The run as the server has it, read through a short outage (``_read_through``)."""
        self._let_tail_go()
        return await self._read_through(
            lambda: self.backend.retrieve(ref), f"reading run {ref.run_id} back"
        )

    async def _recover_content(self) -> None:
        """Text lost with a stream (or never streamed) comes back from the server."""
        if self.core.current_run() is None:
            return
        self._let_tail_go()
        self.core.replace_messages(await self.backend.messages(self._ref()))

    # ----------------------------------------------------------------------------------------
    # Ending: results, cancellation
    # ----------------------------------------------------------------------------------------

    def result(self) -> RunResult:
        core = self.core
        run = core.current_run()
        return RunResult(
            status=core.state,  # type: ignore[arg-type]
            run=run,
            text=core.text(),
            messages=tuple(core.final_messages()),
            run_steps=tuple(core.final_run_steps()),
            tool_calls=tuple(self.records),
            rounds=self.rounds,
            transitions=tuple(core.history),
            usage=run.usage if run is not None else None,
            error=self.error,
        )

    async def _cancel_server_run(self) -> None:
        """Cancel the server run and wait for the cancel to land, all within ``cancel_timeout``
        (shielded): the request is retried while the server cannot take it (a 5xx, a 429, a
        dropped connection), then the run is read back until it has ended, so the core reports
        the state the run reached (``cancelled``, or however else it ended), not ``cancelling``.
        """
        core = self.core
        if core.is_finished:
            return
        self._let_tail_go()
        with anyio.move_on_after(self.options.cancel_timeout, shield=True):
            if core.current_run() is None:
                found = await self._find_orphan()
                if found is None:
                    return
                with suppress(RunMachineError):
                    await core.observe_status(found)
                if core.is_finished:
                    return
            ref = self._ref()
            with suppress(RunMachineError):
                await core.request_cancel()
            run = await self._retrying(lambda: self.backend.cancel(ref))
            if run is None:
                # Refused (the run has ended meanwhile, say): read back the state it reached.
                read = await self._retrying(lambda: self.backend.retrieve(ref))
                run = read[0] if read is not None else None
            delay = 0.05
            while run is not None:
                # A failing hook must not stop the run from being cancelled.
                with suppress(RunMachineError):
                    await core.observe_status(run)
                if core.is_finished or run.status in lifecycle.TERMINAL_STATES:
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)
                read = await self._retrying(lambda: self.backend.retrieve(ref))
                run = read[0] if read is not None else None

    async def _send_cancel(self) -> None:
        """A cancel recorded locally (``request_cancel``, from a hook or another task) goes to
        the server, once; the run's events (or polls) then bring its end."""
        self.cancel_sent = True
        self._let_tail_go()
        with anyio.move_on_after(self.options.cancel_timeout, shield=True):
            run = await self._retrying(lambda: self.backend.cancel(self._ref()))
            if run is not None:
                await self.core.observe_status(run)

    async def _find_orphan(self) -> Run | None:
        """The run the create request made although its answer never came (the host cancelled
        first, or the answer was lost and the SDK's retry was refused): looked for a few times
        over about a second, since a request cut off in flight may still be served."""
        if self.request is None:
            return None
        for wait in (0.0, 0.1, 0.3, 0.6):
            await anyio.sleep(wait)
            found: Run | None = await self._retrying(
                lambda: self.backend.find_created(self.request, self.requested_at)
            )
            if found is not None:
                self.orphan = found.id
                return found
        return None


class _Checked:
    """The ledger as the driver uses it: a failure of the ledger itself (a full disk, a lost
    database) is a ``LedgerError`` naming the operation, never mistaken for a tool's error."""

    #: What each ``Ledger`` method records, from its positional arguments.
    _WHAT: ClassVar[Mapping[str, str]] = {
        "record_run": "run {0}",
        "call_started": "the start of call {1} ({3})",
        "call_finished": "the output of call {1} ({3})",
        "round_submitted": "round {1} of run {0} as submitted",
        "round_accepted": "round {1} of run {0} as accepted",
        "load": "run {0} (load)",
        "runs": "the runs (list)",
        "claim": "a claim of run {0} by {1}",
    }

    #: The writes a lease fences.
    _FENCED: ClassVar[frozenset[str]] = frozenset(
        {"record_run", "call_started", "call_finished", "round_submitted", "round_accepted"}
    )

    def __init__(self, ledger: Ledger, lease: Callable[[], Lease | None] = lambda: None) -> None:
        self.inner = ledger
        self._lease = lease

    def __repr__(self) -> str:
        return repr(self.inner)

    def __getattr__(self, name: str) -> Any:
        """The ledger's method ``name``, checked; made once per name (then found directly)."""
        method = getattr(self.inner, name)
        what = self._WHAT.get(name)
        if what is None:
            return method
        fenced = name in self._FENCED
        lease_of = self._lease

        async def checked(*args: Any, **kwargs: Any) -> Any:
            lease = lease_of() if fenced else None
            try:
                if lease is not None:
                    return await method(*args, lease=lease, **kwargs)
                return await method(*args, **kwargs)
            except LedgerError:
                raise
            except Exception as exc:
                raise LedgerError(
                    f"the ledger {self.inner!r} failed to record {what.format(*args)} "
                    f"({type(exc).__name__}: {exc}); the run was cancelled, since what it "
                    "guarantees no longer holds"
                ) from exc

        setattr(self, name, checked)
        return checked


def _add_note(error: BaseException, note: str) -> None:
    """PEP 678's ``add_note`` (by hand before Python 3.11, where tracebacks show it too)."""
    if sys.version_info >= (3, 11):
        error.add_note(note)
    else:  # pragma: no cover
        setattr(error, "__notes__", [*getattr(error, "__notes__", []), note])  # noqa: B010


def _waits_on(run: Run, call_ids: frozenset[str]) -> bool:
    """The server still waits on the very round made of ``call_ids``."""
    return run.status == lifecycle.REQUIRES_ACTION and required_call_ids(run) == call_ids


def _sdk_call(run: Run, call_id: str) -> Any:
    """The SDK's ``RequiredActionFunctionToolCall`` for ``call_id`` (what ``on_tool_started``
    receives)."""
    assert run.required_action is not None
    for call in run.required_action.submit_tool_outputs.tool_calls:
        if call.id == call_id:
            return call
    raise AssertionError(call_id)


def record_from(call: CallEntry) -> ToolCallRecord:
    """A call's record rebuilt from the ledger (its tool did not run in this process)."""
    assert call.output is not None
    return ToolCallRecord(
        call.call_id, call.name, call.arguments, call.output, call.error, call.round, None, None
    )


def _recorded_outputs(entry: RunEntry, calls: Iterable[RequiredCall]) -> dict[str, str]:
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


def _same_calls(one: list[RequiredCall], other: list[RequiredCall]) -> bool:
    """Whether two rounds ask for the same calls (tools and arguments, in any order): spelled
    the same (the usual case, no decoding), or equal once their arguments are decoded."""
    if len(one) != len(other):
        return False
    spelled = Counter((c.name, c.arguments) for c in one)
    if spelled == Counter((c.name, c.arguments) for c in other):
        return True
    return Counter((c.name, _canonical(c.arguments)) for c in one) == Counter(
        (c.name, _canonical(c.arguments)) for c in other
    )


def _canonical(arguments: str) -> str:
    """The arguments in one spelling, so that a loop guard sees equal calls as equal; arguments
    that cannot be decoded (or are nested too deeply) compare as the text they are."""
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"))
    except (ValueError, RecursionError):
        return arguments


#: What a tool without a ``timeout`` runs within.
_NO_LIMIT = nullcontext()


async def _finish_tail(
    stack: AsyncExitStack, events: AsyncIterator[Any], read: anyio.Event | None = None
) -> None:
    """Read the end of a stream that stopped at ``requires_action`` (``TAIL_WAIT`` at most),
    then close it (and set ``read``): its work is done, so nothing it does now is of
    consequence."""
    try:
        await _drain(events)
    except Exception:  # a stream that breaks now has told all it had to tell
        pass
    finally:
        with anyio.CancelScope(shield=True), suppress(Exception):
            await stack.aclose()
        if read is not None:
            read.set()


async def _drain(events: AsyncIterator[Any]) -> None:
    """Read what is left of a stream after its deciding event (its end), ``TAIL_WAIT`` at most."""
    with anyio.move_on_after(TAIL_WAIT):
        async for _ in events:
            pass  # nothing comes after the deciding event but its end


async def _fan_out(items: Iterable[T], work: Callable[[T], Awaitable[None]], limit: int) -> None:
    """``work(item)`` for every item, ``limit`` at most at once, in as few tasks as the work
    lets: each worker task takes the items one after another, and another worker is started only
    once the ones started so far are all waiting (the starter runs again only then), up to
    ``limit``. Work that never waits (a tool that returns at once) runs in one task; work that
    waits has ``limit`` items under way after as many turns of the event loop."""
    remaining = deque(items)

    async def worker() -> None:
        while remaining:
            await work(remaining.popleft())

    async with anyio.create_task_group() as tg:
        workers = 0
        while remaining and workers < limit:
            tg.start_soon(worker)
            workers += 1
            await anyio.lowlevel.checkpoint()  # the new worker runs until it waits


class EventStream(Generic[T]):
    """The SDK events of a driven run, across every handoff (and, when asked, its transitions);
    ``result`` once it has ended. An error that ended the run is raised by the iteration, once
    every item before it has been read."""

    def __init__(self, receive: MemoryObjectReceiveStream[Any]) -> None:
        self._receive = receive
        self._result: RunResult | None = None
        self._error: Exception | None = None
        self._error_seen = False

    @property
    def result(self) -> RunResult:
        """The run's ``RunResult``; ``RuntimeError`` before the run has ended."""
        if self._result is None:
            raise RuntimeError("the run has not ended yet: read the events to their end first")
        return self._result

    @property
    def finished(self) -> bool:
        """The run has ended, with a result or with an error."""
        return self._result is not None or self._error is not None

    def set_result(self, result: RunResult) -> None:
        self._result = result

    def set_error(self, error: Exception) -> None:
        self._error = error

    def raise_unseen_error(self) -> None:
        """Raise the run's error if the iteration has not raised it already."""
        if self._error is not None and not self._error_seen:
            self._error_seen = True
            raise self._error

    def __aiter__(self) -> EventStream[T]:
        return self

    async def __anext__(self) -> T:
        try:
            item: T = await self._receive.receive()
        except anyio.EndOfStream:
            self.raise_unseen_error()
            raise StopAsyncIteration from None
        return item
