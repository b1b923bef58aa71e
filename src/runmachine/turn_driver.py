"""The driver of an agent-session turn: the same guarantees as for an Assistants run, on the
sessions wire (``runmachine.backends.sessions``).

It subscribes to the session's event stream before it sends the input, feeds every event to the
turn's core, and, each time the session requires action of the turn, answers all of it at once:
the function calls (run concurrently, with the same rules as for a run: timeouts, bad input,
``tool_concurrency``, the ledger) and the approvals (``on_approval_request``, or the decisions
given to ``resume``). Then it reads on, on the same stream.

Guarantees it keeps:
- every required call gets exactly one result: a call whose output the ledger holds is never
  run again, and every result is sent under an idempotency key derived from what the ledger
  holds (session, turn, call, output), so a retry after a lost answer, or a resend by another
  process after a restart, is the same request and the server applies it once; a ``409`` (the
  server holds a different result) is a ``ResultConflict``, never a second effect;
- the ``Unknown pending tool call`` race (a result that arrives before the server registered its
  call) is retried with back-off;
- an approval nobody answered is never approved: the turn is left waiting, the result says on
  what (``pending_approvals``), and ``resume(..., approvals=...)`` answers it later;
- a dropped stream is reconnected and what it missed is read back (the turn, the session's
  required actions, the turn's items for text), so no call runs twice and no text is lost;
- a host cancellation, a failure, or ``turn_timeout`` cancels the turn on the server
  (``agent.session.input.cancel``, shielded, bounded by ``cancel_timeout``) before propagating.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, suppress
from typing import Any, ClassVar, TypeAlias

import anyio
from openai.types.beta.threads import RequiredActionFunctionToolCall

from runmachine import lifecycle
from runmachine.backends.base import (
    RequiredCall,
    StreamLost,
    is_refusal,
    is_server_answer,
    is_transient,
    retry_after,
)
from runmachine.backends.sessions import SessionsBackend, is_conflict, is_pending_call_race
from runmachine.driver import DriverBase, ToolErrorPolicy, record_from
from runmachine.errors import (
    HookError,
    OptionError,
    RequiresActionLoop,
    ResultConflict,
    RunAborted,
    RunMachineError,
    TurnTimedOut,
)
from runmachine.ledger import Ledger, RunEntry
from runmachine.options import DriverOptions
from runmachine.result import RunResult
from runmachine.tools import ToolSpec
from runmachine.turn_core import TurnCore, action_id

__all__ = ["APPROVAL_KINDS", "DECISIONS", "Decision", "TurnDriver", "input_messages"]

Decision = lifecycle.Decision
DECISIONS = lifecycle.DECISIONS
#: The required actions that are approvals, and the input event that answers each.
APPROVAL_KINDS: Mapping[str, str] = {
    "mcp_approval_request": "agent.session.input.mcp_approval_request_result",
    "computer_use_approval_request": "agent.session.input.computer_use_approval_request_result",
}
#: Waits between tries of a result the server does not know the call of yet.
RACE_WAITS: tuple[float, ...] = (0.1, 0.3, 0.6, 1.2, 2.4)
#: What a result for a failed tool says when the tool raised: its exception text is not sent.
REDACTED = "tool {name!r} failed (it raised {kind}; the details stay with the application)"

ApprovalPolicy: TypeAlias = Callable[[Any], "Awaitable[Decision | None] | Decision | None"]


def input_messages(input: str | Iterable[Any]) -> list[Any]:
    """The ``input`` of an ``agent.session.input.message``: a string is one user message."""
    if isinstance(input, str):
        if not input:
            raise OptionError("input must not be empty")
        return [{"role": "user", "content": [{"type": "input_text", "text": input}]}]
    messages = list(input)
    if not messages:
        raise OptionError("input must not be empty")
    return messages


def _key(*parts: str) -> str:
    """An idempotency key made of what it stands for: the same answer, the same key."""
    digest = hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return f"runmachine-{digest[:40]}"


def _arguments(value: object) -> str:
    """A function call's arguments as the JSON text the tools parse (the wire may give an
    object)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


class TurnDriver(DriverBase):
    """Drives one agent-session turn, fed into ``core``, to its end (or to where it waits on
    approvals nobody has answered), talking to the server through ``backend``."""

    noun: ClassVar[str] = "turn"
    __slots__ = (
        "_events",
        "_source",
        "backend",
        "before_turn",
        "given",
        "input_sent",
        "on_approval",
        "unanswered",
    )
    core: TurnCore

    def __init__(
        self,
        core: TurnCore,
        backend: SessionsBackend,
        *,
        options: DriverOptions,
        tools: Mapping[str, ToolSpec],
        owner: object,
        ledger: Ledger,
        machine_name: str,
        on_tool_error: ToolErrorPolicy | None = None,
        on_approval: ApprovalPolicy | None = None,
        approvals: Mapping[str, str] | None = None,
        sink: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(
            core,
            options=options,
            tools=tools,
            owner=owner,
            ledger=ledger,
            machine_name=machine_name,
            on_tool_error=on_tool_error,
            sink=sink,
        )
        self.core = core
        self.backend = backend
        self.on_approval = on_approval
        self.given: dict[str, str] = dict(approvals or {})
        #: Approval requests the turn was left waiting on.
        self.unanswered: list[Any] = []
        #: The newest turn of the session before the input was sent (to know ours by).
        self.before_turn: str | None = None
        self.input_sent = False
        self._source: AbstractAsyncContextManager[AsyncIterator[Any]] | None = None
        self._events: AsyncIterator[Any] | None = None

    @property
    def session_id(self) -> str:
        return self.core.session_id

    # ----------------------------------------------------------------------------------------
    # Entry points
    # ----------------------------------------------------------------------------------------

    async def turn(self, input: str | Iterable[Any]) -> RunResult:
        """Start a turn on the (idle) session with ``input`` and drive it."""
        messages = input_messages(input)
        return await self._drive(self._start_turn(messages))

    async def create_session(self, params: Mapping[str, Any]) -> RunResult:
        """Create a session with its first turn (``params`` go to ``sessions.create``)."""
        return await self._drive(self._start_session(params))

    async def resume(self, turn_id: str) -> RunResult:
        """Pick up turn ``turn_id`` of the session, in whatever status the server has it."""
        return await self._drive(self._adopt(turn_id))

    async def _drive(self, work: Awaitable[None]) -> RunResult:
        timeout = self.options.turn_timeout

        async def timed() -> None:
            try:
                if timeout is None:
                    await work
                    return
                with anyio.move_on_after(timeout) as scope:
                    await work
                if scope.cancelled_caught and not self.core.is_finished:
                    self.error = (
                        f"turn {self.core.turn_id or '(not started)'} of session "
                        f"{self.core.thread_id} took longer than turn_timeout={timeout} s; "
                        "it was cancelled"
                    )
                    await self._cancel_server_run()
                    raise TurnTimedOut(self.error, self.result())
            finally:
                await self._close_stream()

        return await self._guarded(timed())

    async def _start_turn(self, messages: list[Any]) -> None:
        backend, sid = self.backend, self.session_id
        session = await self._read_through(
            lambda: backend.retrieve_session(sid), f"reading session {sid} back"
        )
        if session.status != "idle":
            raise RunMachineError(
                f"session {sid} is {session.status}, not idle: a turn starts on an idle session "
                "(resume(session_id=..., turn_id=...) picks up the turn under way)"
            )
        # Subscribe before the input: the stream is live only.
        await self._read_through(self._connect, f"connecting to session {sid}")
        latest = await self._read_through(
            lambda: backend.latest_turn(sid), f"reading session {sid} back"
        )
        self.before_turn = latest.id if latest is not None else None
        del session, latest  # not held for the whole turn
        message = {"type": "agent.session.input.message", "input": messages}
        # From here on the server may have a turn of ours (even if the answer never comes)...
        self.input_sent = True
        try:
            key = f"runmachine-input-{secrets.token_hex(16)}"
            await self._deliver(message, key, "the input", users=True)
        except Exception as exc:
            if is_server_answer(exc) and not is_transient(exc):
                # ...unless the server said no: then no turn is ours (another writer's turn,
                # say), and nothing must be cancelled on the way out.
                self.input_sent = False
            raise
        await self._continue()

    async def _start_session(self, params: Mapping[str, Any]) -> None:
        self.input_sent = True
        source = self.backend.create_session(params)
        await self._open(source)
        core = self.core
        assert self._events is not None
        try:
            while core.thread_id is None:
                try:
                    event = await self._events.__anext__()
                except StopAsyncIteration:
                    raise StreamLost("the stream ended before the session was named") from None
                session = getattr(event, "session", None)
                if event.type == lifecycle.SESSION_CREATED and session is not None:
                    core.thread_id = session.id
                await core.feed(event)
                await self._forward(event)
        except StreamLost:
            raise RunMachineError(
                "the stream that creates the session broke before the server named the session"
            ) from None
        await self._continue()

    async def _adopt(self, turn_id: str) -> None:
        backend, sid, core = self.backend, self.session_id, self.core
        await self._claim(turn_id, sid)  # RunHeld, and nothing done, if it is held
        # The turn is on the server: a failure from here on cancels it (or hands it off).
        core.run_id = turn_id
        self.input_sent = True
        await self._read_through(self._connect, f"connecting to session {sid}")
        turn = await self._read_through(
            lambda: backend.retrieve_turn(sid, turn_id), f"reading turn {turn_id} back"
        )
        session = await self._read_through(
            lambda: backend.retrieve_session(sid), f"reading session {sid} back"
        )
        # Whatever the turn said before now was not seen here: its text is read back at the end.
        self.lost_content = True
        self.input_sent = True
        entry = await self.ledger.load(turn_id)
        if entry is not None:
            self.rounds = entry.last_round
            self.records.extend(
                record_from(call)
                for call in entry.calls.values()
                if call.finished and not call.name.startswith(_APPROVAL)
            )
        await core.adopt(turn, session)
        await self._continue()

    # ----------------------------------------------------------------------------------------
    # The main loop
    # ----------------------------------------------------------------------------------------

    async def _continue(self) -> None:
        core = self.core
        await self._claim(core.turn_id, core.thread_id)
        while not core.is_finished:
            if core.cancel_requested and not self.cancel_sent:
                await self._send_cancel()
            if core.state == lifecycle.REQUIRES_ACTION:
                if await self._round():
                    await self._refresh_turn()  # left waiting: the turn as it is now
                    break
            else:
                await self._read_on()
        if self.lost_content and core.turn_id is not None:
            sid, tid = self.session_id, core.turn_id
            items = await self._read_through(
                lambda: self.backend.turn_items(sid, tid), f"reading the items of turn {tid} back"
            )
            core.replace_messages(items)

    async def _read_on(self) -> None:
        """Read the session's stream until the turn ends or waits on the client; a stream that
        drops (or ends) is reconnected, and what it missed read back."""
        core = self.core
        try:
            if self._events is None:
                raise StreamLost("no stream is open")
            while core.state not in lifecycle.TURN_STREAM_MAY_END:
                try:
                    event = await self._events.__anext__()
                except StopAsyncIteration:
                    raise StreamLost("the session's event stream ended") from None
                before = core.state
                await core.feed(event)
                if (
                    getattr(event, "type", None) == lifecycle.SESSION_REQUIRES_ACTION
                    and core.state == before
                    and before != lifecycle.REQUIRES_ACTION
                ):
                    await self._listed_again()
                if self.lease is None and self.leased:
                    await self._claim(core.turn_id, core.thread_id)
                if core.cancel_requested and not self.cancel_sent:
                    await self._send_cancel()
                await self._forward(event)
        except StreamLost as exc:
            core.record_stream_error(exc.__cause__ if exc.__cause__ is not None else exc)
            self.lost_content = True
            await self._reconnect()

    async def _forward(self, event: Any) -> None:
        if self.sink is not None:
            await self.sink(event)

    # ----------------------------------------------------------------------------------------
    # The stream
    # ----------------------------------------------------------------------------------------

    async def _connect(self) -> None:
        await self._open(self.backend.events(self.session_id))

    async def _open(self, source: AbstractAsyncContextManager[AsyncIterator[Any]]) -> None:
        await self._close_stream()
        self._events = await source.__aenter__()
        self._source = source

    async def _close_stream(self) -> None:
        source, self._source, self._events = self._source, None, None
        if source is not None:
            with anyio.CancelScope(shield=True), suppress(Exception):
                await source.__aexit__(None, None, None)

    async def _reconnect(self) -> None:
        """Open the session's stream again, then read back what the last one missed."""
        await self._close_stream()
        await self._read_through(self._connect, f"reconnecting to session {self.session_id}")
        await self._reconcile()

    async def _reconcile(self) -> None:
        """Bring the core to the turn as the server has it now (after a lost stream)."""
        backend, sid, core = self.backend, self.session_id, self.core
        turn_id = core.turn_id
        if turn_id is None:
            if not self.input_sent:
                return
            latest = await self._read_through(
                lambda: backend.latest_turn(sid), f"reading session {sid} back"
            )
            if latest is None or latest.id == self.before_turn:
                return  # not created yet: its events come on the new stream
            turn = latest
        else:
            turn = await self._read_through(
                lambda: backend.retrieve_turn(sid, turn_id), f"reading turn {turn_id} back"
            )
        session = await self._read_through(
            lambda: backend.retrieve_session(sid), f"reading session {sid} back"
        )
        await core.observe(turn, session)

    async def _refresh_turn(self) -> None:
        sid, turn_id = self.session_id, self.core.turn_id
        if turn_id is not None:
            turn = await self._read_through(
                lambda: self.backend.retrieve_turn(sid, turn_id), f"reading turn {turn_id} back"
            )
            self.core.remember_turn(turn)

    async def _listed_again(self) -> None:
        """The stream listed a round this driver has answered (the core set it aside): old news
        after a reconnect, most often. The session is read back; if it still waits on answers
        it was given, they are sent once more under the same keys (the server applies each
        once), and a second time is a loop."""
        core = self.core
        turn_id = core.turn_id
        if turn_id is None:
            return
        sid = self.session_id
        session = await self._read_through(
            lambda: self.backend.retrieve_session(sid), f"reading session {sid} back"
        )
        core.remember_turn(None, session)
        waiting = core.required_ids()
        entry = await self.ledger.load(turn_id)
        if not waiting or entry is None or waiting not in core.submitted_rounds:
            return  # not waiting on answers it was given: nothing to do
        if self.resubmitted[waiting] >= 1:
            await self._abort(
                RequiresActionLoop,
                f"turn {turn_id} still waits on {sorted(waiting)} after their answers were "
                "accepted twice; the turn was cancelled",
            )
        self.resubmitted[waiting] += 1
        for action in core.actions():
            known = entry.calls.get(action_id(action))
            if known is None or known.output is None:
                continue
            if action.type == "function_call":
                call = RequiredCall(action.call_id, action.name, _arguments(action.arguments))
                event, key, what = self._result_event(turn_id, call, known.output, known.error)
            else:
                event, key, what = self._approval_event(turn_id, action, known.output)
            await self._deliver(event, key, what)

    # ----------------------------------------------------------------------------------------
    # A round: everything the session requires of the turn
    # ----------------------------------------------------------------------------------------

    async def _round(self) -> bool:
        """Answer what the session requires of the turn. True when the turn is left waiting on
        approvals nobody has answered."""
        core = self.core
        actions = core.actions()
        if not actions:
            # A snapshot that lists nothing for this turn (a stale read): read it again.
            await self._reconcile()
            actions = core.actions()
            if not actions and core.state == lifecycle.REQUIRES_ACTION:
                raise RunMachineError(
                    f"turn {core.turn_id} waits on the client, but session {self.session_id} "
                    "lists nothing for it to answer"
                )
            return False
        turn_id = core.turn_id
        assert turn_id is not None
        sid = self.session_id
        calls = [
            RequiredCall(a.call_id, a.name, _arguments(a.arguments))
            for a in actions
            if a.type == "function_call"
        ]
        approvals = [a for a in actions if a.type in APPROVAL_KINDS]
        ids = frozenset(action_id(a) for a in actions)

        await self.ledger.record_run(turn_id, sid, core.state, self.machine_name)
        entry = await self.ledger.load(turn_id)
        assert entry is not None
        sent = entry.round_for(ids)
        if sent is not None and sent.round in self.sent_here:
            # Answered here already, and listed again: once more with the same keys (the
            # server replays what it took), then it is a loop.
            if self.resubmitted[ids] >= 1:
                await self._abort(
                    RequiresActionLoop,
                    f"turn {turn_id} listed {sorted(ids)} again after their answers were "
                    "accepted twice; the turn was cancelled",
                )
            self.resubmitted[ids] += 1
            core.forget_submission(ids)
        if sent is not None:
            round_no = sent.round
        else:
            # Approvals count in the round's signature too: two different approvals in a row
            # are not the same round asked again.
            asked = calls + [
                RequiredCall(a.request_id, f"{_APPROVAL}{a.type}", a.request.model_dump_json())
                for a in approvals
            ]
            await self._next_round(turn_id, asked, entry)
            round_no = self.rounds

        outputs: dict[str, str] = {}
        if calls:
            outputs = await self._run_tools(
                turn_id,
                calls,
                round_no,
                entry,
                self._round_deadline(),
                _sdk_call,
                ("when the turn's time (turn_timeout) ran out", ""),
            )
            if core.state != lifecycle.REQUIRES_ACTION:
                return False  # cancelled while the tools ran: nothing is sent
        decisions = await self._decide(approvals, round_no, entry)
        errors = {r.id: r.error for r in self.records}
        answers = [self._result_event(turn_id, c, outputs[c.id], errors.get(c.id)) for c in calls]
        answers.extend(
            self._approval_event(turn_id, a, decisions[a.request_id])
            for a in approvals
            if a.request_id in decisions
        )
        self.unanswered = [a for a in approvals if a.request_id not in decisions]
        if self.unanswered:
            # Sent as far as they go; the turn waits on the rest.
            for event, key, what in answers:
                if not await self._deliver(event, key, what):
                    return False
            return True
        await core.hand_over_outputs(ids)
        await self.ledger.round_submitted(turn_id, round_no, ids)
        self.sent_here.add(round_no)
        for event, key, what in answers:
            if not await self._deliver(event, key, what):
                return False  # the turn ended meanwhile (read back): nothing more to send
        await self.ledger.round_accepted(turn_id, round_no)
        return False

    def _round_deadline(self) -> float:
        return math.inf  # a turn has no expires_at; turn_timeout bounds the whole turn

    def _sent_error(self, kind: str, message: str, name: str, exc: BaseException) -> str:
        if kind == "tool_raised":
            # Exception text may hold secrets: the model gets none unless on_tool_error says so.
            return REDACTED.format(name=name, kind=type(exc).__name__)
        return message

    def _result_event(
        self, turn_id: str, call: RequiredCall, output: str, error: str | None
    ) -> tuple[dict[str, Any], str, str]:
        event: dict[str, Any] = {
            "type": "agent.session.input.tool_result",
            "turn_id": turn_id,
            "call_id": call.id,
        }
        if error is None:
            event.update(success=True, output=output)
        else:
            event.update(success=False, error=_error_text(output))
        key = _key("result", self.session_id, turn_id, call.id, output)
        return event, key, f"the result of call {call.id} ({call.name})"

    def _approval_event(
        self, turn_id: str, action: Any, decision: str
    ) -> tuple[dict[str, Any], str, str]:
        request_id = action.request_id
        if action.type == "mcp_approval_request":
            response: dict[str, Any] = {"decision": decision, "type": "mcp_tool_call"}
        elif action.request.type == "browser_origin_access":
            response = {"decision": decision, "type": "browser_origin_access"}
        else:
            # A sign-in form: runmachine has no credentials to submit; it dismisses it.
            response = dict(lifecycle.DISMISS_SIGN_IN)
        event = {
            "type": APPROVAL_KINDS[action.type],
            "request_id": request_id,
            "response": response,
        }
        key = _key("approval", self.session_id, turn_id, request_id, decision)
        return event, key, f"the answer to approval request {request_id}"

    async def _decide(self, approvals: list[Any], round_no: int, entry: RunEntry) -> dict[str, str]:
        """Each approval's decision: the one the ledger holds, the one given to ``resume``, or
        ``on_approval_request``'s; none (left pending) when nobody answers."""
        core = self.core
        turn_id = core.turn_id
        assert turn_id is not None
        decisions: dict[str, str] = {}
        for action in approvals:
            request_id = action.request_id
            known = entry.calls.get(request_id)
            if known is not None and known.finished and known.output in DECISIONS:
                decisions[request_id] = known.output
                continue
            decision: Any = self.given.get(request_id)
            if decision is None and self.on_approval is not None:
                try:
                    decision = self.on_approval(action)
                    if inspect.isawaitable(decision):
                        decision = await decision
                except Exception as error:
                    raise HookError("on_approval_request", core.state, turn_id, error) from error
                if decision is not None and decision not in DECISIONS:
                    wrong = ValueError(
                        f"it returned {decision!r} for request {request_id}; it must return "
                        "'approve', 'deny', 'cancel' or None"
                    )
                    raise HookError("on_approval_request", core.state, turn_id, wrong)
            if decision is None:
                continue
            name = f"{_APPROVAL}{action.type}"
            request = action.request.model_dump_json()
            await self.ledger.call_started(turn_id, request_id, round_no, name, request)
            await self.ledger.call_finished(
                turn_id, request_id, round_no, name, request, decision, None
            )
            decisions[request_id] = decision
        return decisions

    async def _deliver(
        self, event: Mapping[str, Any], key: str, what: str, *, users: bool = False
    ) -> bool:
        """Send one input event under ``key`` until the server takes it. False when it refused
        because the turn has ended meanwhile (the core is brought to that end). ``users``: the
        event holds what the user gave (``send_input``), not only what runmachine built."""
        backend, sid, core = self.backend, self.session_id, self.core
        send = backend.send_input if users else backend.send
        races = iter(RACE_WAITS)
        call_id = event.get("call_id")
        delay = 0.25
        failures = 0
        while True:
            try:
                await send(sid, event, key)
                return True
            except Exception as exc:
                if isinstance(call_id, str) and is_pending_call_race(exc, call_id):
                    wait = next(races, None)
                    if wait is None:
                        raise
                    await anyio.sleep(wait)
                    continue
                if is_conflict(exc):
                    await self._abort(
                        ResultConflict,
                        f"session {sid} already holds a different answer than {what} of turn "
                        f"{core.turn_id} (409); nothing was applied twice, and the turn was "
                        "cancelled",
                        exc,
                    )
                if is_refusal(exc) and core.turn_id is not None:
                    await self._reconcile()
                    if core.is_finished:
                        return False
                    raise
                if not is_transient(exc):
                    raise
                failures += 1
                if failures >= self.options.submit_attempts:
                    await self._abort(
                        RunAborted,
                        f"session {sid} did not take {what} of turn {core.turn_id} after "
                        f"{failures} attempts",
                        exc,
                    )
                wait = retry_after(exc)
            await anyio.sleep(wait if wait is not None else delay)
            delay = min(delay * 2, 8.0)

    # ----------------------------------------------------------------------------------------
    # Ending: results, cancellation
    # ----------------------------------------------------------------------------------------

    def result(self) -> RunResult:
        core = self.core
        turn = core.current_turn()
        usage = core.usage
        if turn is not None and turn.usage is None and usage is not None:
            turn = turn.model_copy(update={"usage": usage})
        return RunResult(
            status=core.state,  # type: ignore[arg-type]
            run=None,
            text=core.text(),
            messages=(),
            run_steps=(),
            tool_calls=tuple(self.records),
            rounds=self.rounds,
            transitions=tuple(core.history),
            usage=None,
            error=self.error,
            turn=turn,
            session_id=core.thread_id,
            turn_messages=tuple(core.final_messages()),
            pending_approvals=tuple(self.unanswered)
            if core.state == lifecycle.REQUIRES_ACTION
            else (),
        )

    async def _send_cancel(self) -> None:
        """A cancel recorded locally goes to the server, once; the stream brings the end."""
        self.cancel_sent = True
        with anyio.move_on_after(self.options.cancel_timeout, shield=True):
            await self._retrying(lambda: self.backend.send(self.session_id, _CANCEL, _cancel_key()))

    async def _cancel_server_run(self) -> None:
        """Cancel the turn on the server and wait until it has ended (shielded, within
        ``cancel_timeout``). Only the turn this driver started (or adopted) is cancelled: if it
        has ended already, nothing is sent."""
        core = self.core
        if core.is_finished or core.thread_id is None or not self.input_sent:
            return
        backend, sid = self.backend, core.thread_id
        with anyio.move_on_after(self.options.cancel_timeout, shield=True):
            if core.turn_id is None:
                # The input may have reached the server although its answer never came: the
                # turn it started is looked for a few times over about a second.
                for wait in (0.0, 0.1, 0.3, 0.6):
                    await anyio.sleep(wait)
                    latest = await self._retrying(lambda: backend.latest_turn(sid))
                    if latest is not None and latest.id != self.before_turn:
                        core.remember_turn(latest)
                        break
            turn_id = core.turn_id
            if turn_id is None:
                return  # the input started no turn: there is nothing of ours to cancel
            turn = await self._retrying(lambda: backend.retrieve_turn(sid, turn_id))
            if turn is not None and turn.status in lifecycle.TURN_TERMINAL_STATES:
                with suppress(RunMachineError):
                    await core.observe(turn, None)
                return
            with suppress(RunMachineError):
                await core.request_cancel()
            await self._retrying(lambda: backend.send(sid, _CANCEL, _cancel_key()))
            delay = 0.05
            while True:
                turn = await self._retrying(lambda: backend.retrieve_turn(sid, turn_id))
                if turn is None:
                    return
                with suppress(RunMachineError):
                    await core.observe(turn, None)
                if core.is_finished or turn.status in lifecycle.TURN_TERMINAL_STATES:
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)


#: The prefix of an approval's name in the ledger (approvals are recorded beside the calls).
_APPROVAL = "approval:"
_CANCEL: Mapping[str, Any] = {"type": "agent.session.input.cancel"}


def _cancel_key() -> str:
    return f"runmachine-cancel-{secrets.token_hex(16)}"


def _error_text(output: str) -> str:
    """The message of an error output (``runmachine.tools.error_output``)."""
    try:
        return str(json.loads(output)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return output


def _sdk_call(call: RequiredCall) -> Any:
    """What ``on_tool_started`` gets: the SDK's ``RequiredActionFunctionToolCall`` (the same type
    as for an Assistants run, so one hook serves both)."""
    return RequiredActionFunctionToolCall(
        id=call.id,
        type="function",
        function={"name": call.name, "arguments": call.arguments},  # type: ignore[arg-type]
    )
