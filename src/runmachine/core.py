"""The core: one run's lifecycle, applied from the table, with its history and snapshots. No I/O.

A ``RunCore`` is fed the SDK's ``AssistantStreamEvent`` objects, one at a time, through ``feed()``.
Lifecycle events go through the ``transitions`` engine built from ``runmachine.lifecycle``; every
other event takes a fast path that only accumulates snapshots and calls the matching hook. Local
actions (handing over outputs, a cancel request, adopting a run found on the server) are methods
that fire the table's local triggers, whose guards are the table's own pure functions.

Hooks are methods of a *target* object (the user's ``RunMachine`` subclass), called by name; the
core calls only the ones named in ``hooks`` (those the target overrides), and wraps every failure
of one in ``HookError``. The core holds no client, no options and no driver: the driver feeds it.

Ordering: one transition runs at a time. A trigger fired while another is running is queued
behind it when it comes from a hook or from another task that cannot wait (``request_cancel``),
and waits its turn otherwise (events fed by the driver). So a hook that cancels from a child task
works, and nothing is ever processed out of order.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import anyio
from openai.lib.streaming._assistants import accumulate_event, accumulate_run_step
from openai.types.beta import AssistantStreamEvent
from openai.types.beta.threads import Message, MessageDelta, Run, Text, TextContentBlock
from openai.types.beta.threads.runs import RunStep, ToolCall

from runmachine import errors, lifecycle
from runmachine.engine import Engine, engine_for
from runmachine.errors import DuplicateSubmission, HookError, ProtocolViolation, RunMachineError
from runmachine.records import ToleratedEvent, TransitionRecord

if TYPE_CHECKING:
    from transitions.core import EventData

__all__ = ["CoreBase", "RunCore", "append_text", "required_call_ids"]


_MISSING: Any = object()


def append_text(text: Text, piece: str) -> None:
    """``text.value += piece``, in time linear in the text's length over a whole stream.

    ``text.value += piece`` on the attribute copies the whole text every time (a long answer's
    deltas would cost time quadratic in its length). Taken out of the model's ``__dict__`` for
    the append, the text is held by nothing else, and CPython appends to such a string in place;
    where anything else holds it (a hook that kept ``snapshot.value``), it is copied, as strings
    are immutable. No ``await`` in between: no other task sees the text missing."""
    fields = text.__dict__
    value = fields.pop("value", _MISSING)
    if type(value) is not str:  # none, or not a string (a ``construct``-ed model): as the SDK
        if value is not _MISSING:
            fields["value"] = value
        text.value += piece
        return
    value += piece
    fields["value"] = value


def required_call_ids(run: Run | None) -> frozenset[str]:
    """The call ids a run's ``requires_action`` asks outputs for (empty when it asks none)."""
    if run is None or run.required_action is None:
        return frozenset()
    return frozenset(c.id for c in run.required_action.submit_tool_outputs.tool_calls)


_DEFAULT_ENGINE = engine_for(lifecycle.TRANSITIONS, frozenset())


class CoreBase:
    """What every core shares, whatever the server: the state, moved only by its table's triggers
    (one at a time), the history, the hooks, and the local actions (handing over outputs,
    cancelling). ``RunCore`` (an Assistants run) and ``TurnCore`` (an agent-session turn,
    ``runmachine.turn_core``) add what their server's events mean.

    ``run_id`` and ``thread_id`` name what is driven and where it lives: the run and its thread,
    or the turn and its session.
    """

    #: The states this core's subject ends in.
    terminal_states: frozenset[str] = lifecycle.TERMINAL_STATES
    #: Where a local cancel request may be made.
    cancellable_states: tuple[str, ...] = lifecycle.CANCELLABLE_STATES

    def __init__(
        self,
        target: object | None,
        *,
        engine: Engine,
        hooks: frozenset[str] = frozenset(),
    ) -> None:
        self.target = target
        self.hooks = hooks
        self.engine = engine
        self.state: str = lifecycle.INITIAL_STATE
        self.run_id: str | None = None
        self.thread_id: str | None = None
        self.history: list[TransitionRecord] = []
        self.tolerated: list[ToleratedEvent] = []
        self.stream_errors: list[Any] = []
        #: A local cancel was recorded (``request_cancel``): the driver is to send it.
        self.cancel_requested = False
        self._submitted: set[frozenset[str]] = set()
        self._pending_outputs: frozenset[str] = frozenset()
        self._busy: object | None = None
        #: Triggers queued behind the running one (rare: a list, lighter than a deque).
        self._queue: list[tuple[str, Any]] = []
        self._idle: anyio.Event | None = None

    @property
    def is_finished(self) -> bool:
        return self.state in self.terminal_states

    @property
    def submitted_rounds(self) -> frozenset[frozenset[str]]:
        """The rounds (sets of call ids) handed to the server and not known to be refused."""
        return frozenset(self._submitted)

    def subject(self) -> Any:
        """What state hooks receive: the run (or turn) as last reported."""
        raise NotImplementedError

    def required_ids(self) -> frozenset[str]:
        """The ids of what the server waits on now (call ids; approval request ids)."""
        raise NotImplementedError

    def status(self) -> str | None:
        """The server's last word on the subject's status, as a state name."""
        raise NotImplementedError

    def remember(self, subject: Any) -> None:
        """Take ``subject`` as the latest report of what is driven."""
        raise NotImplementedError

    def text(self) -> str:
        """All the assistant text seen so far."""
        raise NotImplementedError

    def record_stream_error(self, error: object) -> None:
        """A stream ended abnormally (or carried an error event); kept for the result."""
        self.stream_errors.append(error)

    def mark_submitted(self, call_ids: Iterable[str]) -> None:
        """A round submitted before this core existed (read from the ledger at resume)."""
        self._submitted.add(frozenset(call_ids))

    def forget_submission(self, call_ids: Iterable[str]) -> None:
        """The server presents a submitted round again and is confirmed to wait on it: the round
        may be submitted once more."""
        self._submitted.discard(frozenset(call_ids))

    # ----------------------------------------------------------------------------------------
    # Hooks
    # ----------------------------------------------------------------------------------------

    async def call_hook(self, name: str, *args: Any) -> None:
        """Call the target's hook ``name`` if it defines one; its failure is a ``HookError``."""
        if name not in self.hooks:
            return
        try:
            result = getattr(self.target, name)(*args)
            if inspect.isawaitable(result):
                await result
        except Exception as error:
            raise HookError(name, self.state, self.run_id, error) from error

    # Called by the engine.
    async def state_hook(self, name: str, event_data: EventData) -> None:
        await self.call_hook(name, event_data.kwargs.get("run"))

    def check_guard(self, name: str, event_data: EventData) -> bool:
        guard = lifecycle.GUARDS.get(name)
        if guard is not None:
            return guard.check(self._context())
        # A guard of a subclass's ``extra_transitions``: a method of the target, given the run.
        return bool(getattr(self.target, name)(event_data.kwargs.get("run")))

    async def entered(self, event_data: EventData) -> None:
        transition = event_data.transition
        assert transition is not None and transition.dest is not None
        record = TransitionRecord(
            source=transition.source,
            dest=str(transition.dest),
            trigger=event_data.event.name,
            run_id=self.run_id,
            at=time.monotonic(),
        )
        self.history.append(record)
        if record.trigger == lifecycle.CANCEL:
            self.cancel_requested = True
        if "on_transition" in self.hooks:
            await self.call_hook("on_transition", record)

    def _context(self, outputs: frozenset[str] | None = None) -> lifecycle.GuardContext:
        return lifecycle.GuardContext(
            status=self.status(),
            required=self.required_ids(),
            outputs=self._pending_outputs if outputs is None else outputs,
            submitted=self._submitted,
        )

    # ----------------------------------------------------------------------------------------
    # Firing triggers, one at a time
    # ----------------------------------------------------------------------------------------

    async def _fire(self, trigger: str, run: Any, *, queue: bool = False) -> bool:
        """Fire ``trigger``; True if the state changed (or, queued, once it is processed).

        While another trigger runs, ``queue=True`` puts this one behind it and returns at once;
        otherwise this waits for it to finish, unless it is the running trigger's own task (a
        hook), which could never wait for itself.
        """
        me = anyio.get_current_task().id
        if self._busy is not None:
            if queue:
                self._queue.append((trigger, run))
                return True
            if self._busy == me:
                raise RunMachineError(
                    f"{trigger!r} was fired from inside a hook of a running transition "
                    f"(state {self.state!r}, run {self.run_id or '<none>'}); only "
                    "request_cancel() may be called from a hook"
                )
            while self._busy is not None:
                if self._idle is None:
                    self._idle = anyio.Event()
                await self._idle.wait()
        self._busy = me
        try:
            moved = await self.engine.fire(trigger, self, run=run)
            while self._queue:
                queued, queued_run = self._queue.pop(0)
                await self.engine.fire(queued, self, run=queued_run)
        finally:
            self._busy = None
            self._queue.clear()
            if self._idle is not None:
                self._idle.set()
                self._idle = None
        return moved

    def _refusal(self, trigger: str, outputs: frozenset[str], in_state: bool) -> RunMachineError:
        """The error for a local trigger the table refused: the first of its guards that fails
        here names it (``DuplicateSubmission`` for a round already submitted)."""
        context = self._context(outputs)
        for row in self.engine.rows:
            if row.trigger != trigger:
                continue
            for name in row.guards:
                guard = lifecycle.GUARDS.get(name)
                if guard is None or guard.check(context):
                    continue
                error_class = getattr(errors, guard.error)
                if error_class is DuplicateSubmission:
                    return DuplicateSubmission(self.run_id or "<none>", outputs)
                if in_state:
                    return ProtocolViolation(
                        trigger, self.state, self.run_id, self._guard_detail(name, context)
                    )
        return ProtocolViolation(trigger, self.state, self.run_id)

    @staticmethod
    def _guard_detail(name: str, context: lifecycle.GuardContext) -> str:
        if name == "outputs_match_required_calls":
            return (
                f"outputs for {sorted(context.outputs)} do not match the required calls "
                f"{sorted(context.required)}"
            )
        return f"guard {name} failed: {lifecycle.GUARDS[name].description}"

    # ----------------------------------------------------------------------------------------
    # Local actions
    # ----------------------------------------------------------------------------------------

    async def hand_over_outputs(self, call_ids: Iterable[str]) -> None:
        """Record that one output for each of ``call_ids`` is about to be submitted.

        Moves ``requires_action → submitting`` if the table's guards hold: the outputs cover
        exactly the required calls, and this round was never submitted before. Raises
        ``DuplicateSubmission`` or ``ProtocolViolation`` otherwise; in that case nothing must
        be sent.
        """
        outputs = frozenset(call_ids)
        in_state = self.engine.has_rows(lifecycle.SUBMIT, self.state)
        if not in_state:
            raise self._refusal(lifecycle.SUBMIT, outputs, in_state)
        self._pending_outputs = outputs
        try:
            moved = await self._fire(lifecycle.SUBMIT, self.subject())
        finally:
            self._pending_outputs = frozenset()
        if not moved:
            raise self._refusal(lifecycle.SUBMIT, outputs, in_state)
        self._submitted.add(outputs)

    async def submission_not_accepted(self, subject: Any) -> None:
        """The last submission failed in transit and the server still waits on the same round
        (``subject``, read back, says so): back to ``requires_action``, the round no longer
        counted as submitted."""
        self.remember(subject)
        round_ids = self.required_ids()
        if not await self._fire(lifecycle.NOT_ACCEPTED, subject):
            raise ProtocolViolation(
                lifecycle.NOT_ACCEPTED, self.state, self.run_id, f"status is {self.status()!r}"
            )
        self._submitted.discard(round_ids)

    async def request_cancel(self) -> bool:
        """Record a local cancel request. Returns False when the state has nothing to cancel,
        True when it moved the run to ``cancelling`` or was queued.

        Safe from any task and from hooks: while another transition runs, the request is queued
        behind it and True is returned at once; it is dropped if the run is no longer
        cancellable by the time it is taken."""
        if self.state not in self.cancellable_states:
            return False
        return await self._fire(lifecycle.CANCEL, self.subject(), queue=True)


class RunCore(CoreBase):
    """The state, history and snapshots of one Assistants run, moved only by the table's
    triggers.

    ``target`` is the object whose hooks are called (``hooks`` names those it defines);
    ``engine`` the table's engine (``runmachine.engine.engine_for``), the shared table's by default.
    """

    def __init__(
        self,
        target: object | None = None,
        *,
        engine: Engine | None = None,
        hooks: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(
            target, engine=engine if engine is not None else _DEFAULT_ENGINE, hooks=hooks
        )
        self._run: Run | None = None
        self._event: AssistantStreamEvent | None = None
        self._messages: dict[str, Message] = {}
        self._message: Message | None = None
        self._steps: dict[str, RunStep] = {}
        self._step_id: str | None = None
        self._content_index: int | None = None
        self._content: Any = None
        self._tool_call_index: int | None = None
        self._tool_call: ToolCall | None = None

    def subject(self) -> Run | None:
        return self._run

    def required_ids(self) -> frozenset[str]:
        return required_call_ids(self._run)

    def status(self) -> str | None:
        return self._run.status if self._run is not None else None

    def remember(self, subject: Any) -> None:
        self.remember_run(subject)

    # ----------------------------------------------------------------------------------------
    # Reading
    # ----------------------------------------------------------------------------------------

    def current_event(self) -> AssistantStreamEvent | None:
        return self._event

    def current_run(self) -> Run | None:
        """The run as of the latest lifecycle event (or poll)."""
        return self._run

    def current_message_snapshot(self) -> Message | None:
        return self._message

    def current_run_step_snapshot(self) -> RunStep | None:
        return None if self._step_id is None else self._steps.get(self._step_id)

    def final_run(self) -> Run:
        """The run as the server left it. Raises ``RuntimeError`` before a terminal state."""
        if not self.is_finished or self._run is None:
            raise RuntimeError(f"the run has not finished (state {self.state!r})")
        return self._run

    def final_messages(self) -> list[Message]:
        """Every message of the run, in the order they were created."""
        return list(self._messages.values())

    def final_run_steps(self) -> list[RunStep]:
        return list(self._steps.values())

    def text(self) -> str:
        """All the assistant text of this run: text blocks joined by newlines, messages by a
        blank line."""
        parts = []
        for message in self._messages.values():
            blocks = [c.text.value for c in message.content if c.type == "text"]
            if blocks:
                parts.append("\n".join(blocks))
        return "\n\n".join(parts)

    # ----------------------------------------------------------------------------------------
    # What the driver tells the core
    # ----------------------------------------------------------------------------------------

    def remember_run(self, run: Run) -> None:
        """Take ``run`` as the latest report of the run (from an event, a poll or a cancel)."""
        self._run = run
        if self.run_id is None:
            self.run_id = run.id
            self.thread_id = run.thread_id

    def replace_messages(self, messages: Iterable[Message]) -> None:
        """Replace the message snapshots with authoritative ones (e.g. from ``messages.list``,
        oldest first). Their order wins: a message lost with a dropped stream comes back in its
        place, before messages a later stream showed."""
        fresh = {message.id: message for message in messages}
        rest = {key: value for key, value in self._messages.items() if key not in fresh}
        self._messages = {**fresh, **rest}

    # ----------------------------------------------------------------------------------------
    # Adopting and polling
    # ----------------------------------------------------------------------------------------

    async def adopt(self, run: Run) -> None:
        """Pick up a run that already exists on the server, in whatever status it reports."""
        self.remember_run(run)
        if not await self._fire(lifecycle.ADOPT, run):
            raise ProtocolViolation(
                lifecycle.ADOPT, self.state, run.id, f"cannot adopt a run in status {run.status!r}"
            )

    async def observe_status(self, run: Run) -> None:
        """Bring the core to ``run.status`` as seen by polling, not streaming.

        Every lifecycle event the jump implies (``queued`` then ``completed`` implies
        ``in_progress``; a run just created implies ``thread.run.created``) is fed in order; the
        state hooks fire as they would on a stream.
        """
        self.remember_run(run)
        if run.status == self.state:
            return
        if self.state == lifecycle.CANCELLING and run.status in lifecycle.LATE_WHILE_CANCELLING:
            return  # the server has not acted on the cancel yet
        try:
            events = lifecycle.path_to_status(self.state, run.status)
        except ValueError as exc:
            raise ProtocolViolation(
                f"status {run.status}", self.state, run.id, "not reachable by polling"
            ) from exc
        for name in events:
            await self.feed_lifecycle(name, run, None)

    # ----------------------------------------------------------------------------------------
    # Feeding events
    # ----------------------------------------------------------------------------------------

    async def feed(self, event: AssistantStreamEvent) -> None:
        """Feed one stream event. Safe to call from any anyio task; lifecycle events are
        processed one at a time, in the order they arrive."""
        name = event.event
        handler = _CONTENT_HANDLERS.get(name)
        if handler is not None:
            if not lifecycle.accepts_content(self.state, name):
                raise ProtocolViolation(name, self.state, self.run_id)
            self._event = event
            if "on_event" in self.hooks:
                await self.call_hook("on_event", event)
            await handler(self, event)
            self._event = None
            return
        if name in lifecycle.LIFECYCLE_EVENTS:
            await self.feed_lifecycle(name, cast(Run, event.data), event)
            return
        # Neither lifecycle nor content: an event this version does not know (the SDK passes
        # them through). Tolerated and recorded; ``None`` names come from helpers.
        label = name if isinstance(name, str) else "<unnamed>"
        self.tolerated.append(
            ToleratedEvent(label, self.state, self.run_id, time.monotonic(), "unknown")
        )
        if "on_event" in self.hooks:
            await self.call_hook("on_event", event)

    async def feed_lifecycle(self, name: str, run: Run, event: AssistantStreamEvent | None) -> None:
        """A lifecycle event (``event``, or one implied by a poll when ``event`` is None)."""
        kind = lifecycle.classify(self.state, name)
        if kind == "violation":
            raise ProtocolViolation(name, self.state, getattr(run, "id", None) or self.run_id)
        self.remember_run(run)
        if event is not None:
            self._event = event
            if "on_event" in self.hooks:
                await self.call_hook("on_event", event)
        if name in lifecycle.CLOSES_TOOL_CALL and self._tool_call is not None:
            await self._tool_call_done()
        if kind in ("repeat", "late"):
            self.tolerated.append(
                ToleratedEvent(name, self.state, self.run_id, time.monotonic(), kind)
            )
        else:
            await self._fire(name, run)
        self._event = None

    # ----------------------------------------------------------------------------------------
    # Content events: the fast path
    # ----------------------------------------------------------------------------------------

    async def _on_message_created(self, event: Any) -> None:
        # The snapshot grows with every delta: a copy, so the event stays as it arrived.
        message: Message = event.data.model_copy(deep=True)
        self._message = message
        self._messages[message.id] = message
        if "on_message_created" in self.hooks:
            await self.call_hook("on_message_created", message)

    async def _on_message_delta(self, event: Any) -> None:
        snapshot = self._message
        data = event.data
        if snapshot is None or snapshot.id != data.id:
            snapshot = self._messages.get(data.id)
            if snapshot is None:
                raise ProtocolViolation(
                    event.event, self.state, self.run_id, f"no message {data.id} was created"
                )
            self._message = snapshot
        delta: MessageDelta = data.delta
        hooks = self.hooks
        for part in delta.content or ():
            index = part.index
            content = snapshot.content
            created = False
            if (
                part.type == "text"
                and index < len(content)
                and content[index].type == "text"
                and not (part.text and part.text.annotations)
            ):
                # The fast path: append the text in place, as the SDK's accumulation would.
                piece = part.text
                if piece is not None and piece.value:
                    append_text(cast(TextContentBlock, content[index]).text, piece.value)
            else:
                _, new = accumulate_event(
                    event=_one_part(event, part), current_message_snapshot=snapshot
                )
                created = bool(new)
            if created:
                block = snapshot.content[index]
                if block.type == "text" and "on_text_created" in hooks:
                    await self.call_hook("on_text_created", block.text)
            if part.type == "text" and part.text is not None and "on_text_delta" in hooks:
                text_block = cast(TextContentBlock, snapshot.content[index])
                await self.call_hook("on_text_delta", part.text, text_block.text)
            if index != self._content_index:
                await self._content_done()
                self._content_index = index
            self._content = snapshot.content[index]
        if "on_message_delta" in hooks:
            await self.call_hook("on_message_delta", delta, snapshot)

    async def _content_done(self) -> None:
        content = self._content
        if content is None:
            return
        if content.type == "text" and "on_text_done" in self.hooks:
            await self.call_hook("on_text_done", content.text)
        elif content.type == "image_file" and "on_image_file_done" in self.hooks:
            await self.call_hook("on_image_file_done", content.image_file)

    async def _on_message_done(self, event: Any) -> None:
        message: Message = event.data
        self._messages[message.id] = message
        self._message = message
        if self._content_index is not None and self._content_index < len(message.content):
            self._content = message.content[self._content_index]
            await self._content_done()
        self._content_index = None
        self._content = None
        if "on_message_done" in self.hooks:
            await self.call_hook("on_message_done", message)

    async def _on_step_created(self, event: Any) -> None:
        step: RunStep = event.data.model_copy(deep=True)
        self._steps[step.id] = step
        self._step_id = step.id
        if "on_run_step_created" in self.hooks:
            await self.call_hook("on_run_step_created", step)

    async def _on_step_in_progress(self, event: Any) -> None:
        self._step_id = event.data.id

    async def _on_step_delta(self, event: Any) -> None:
        data = event.data
        snapshot = self._steps.get(data.id)
        if snapshot is None:
            raise ProtocolViolation(
                event.event, self.state, self.run_id, f"no run step {data.id} was created"
            )
        accumulate_run_step(event=event, run_step_snapshots=self._steps)
        snapshot = self._steps[data.id]
        details = data.delta.step_details
        hooks = self.hooks
        if (
            details is not None
            and details.type == "tool_calls"
            and details.tool_calls is not None
            and snapshot.step_details.type == "tool_calls"
        ):
            calls = snapshot.step_details.tool_calls
            for call_delta in details.tool_calls:
                index = call_delta.index
                if index == self._tool_call_index and "on_tool_call_delta" in hooks:
                    await self.call_hook("on_tool_call_delta", call_delta, calls[index])
                if index != self._tool_call_index:
                    await self._tool_call_done()
                    self._tool_call_index = index
                    self._tool_call = calls[index]
                    if "on_tool_call_created" in hooks:
                        await self.call_hook("on_tool_call_created", calls[index])
                self._tool_call = calls[index]
        if "on_run_step_delta" in hooks:
            await self.call_hook("on_run_step_delta", data.delta, snapshot)

    async def _tool_call_done(self) -> None:
        # Once per call: unlike the SDK's handler, which reports the last call done again at
        # every later step or run end of the same stream.
        call = self._tool_call
        self._tool_call = None
        self._tool_call_index = None
        if call is not None and "on_tool_call_done" in self.hooks:
            await self.call_hook("on_tool_call_done", call)

    async def _on_step_done(self, event: Any) -> None:
        step: RunStep = event.data
        self._steps[step.id] = step
        await self._tool_call_done()
        if "on_run_step_done" in self.hooks:
            await self.call_hook("on_run_step_done", step)
        self._step_id = None

    async def _on_error(self, event: Any) -> None:
        self.stream_errors.append(event.data)

    async def _on_nothing(self, event: Any) -> None:
        return None


def _one_part(event: Any, part: Any) -> Any:
    """A message-delta event carrying only ``part`` (for the SDK's generic accumulator)."""
    if len(event.data.delta.content or ()) == 1:
        return event
    data = event.data.model_copy(
        update={"delta": event.data.delta.model_copy(update={"content": [part]})}
    )
    return event.model_copy(update={"data": data})


_Handler = Callable[[RunCore, Any], Awaitable[None]]
_CONTENT_HANDLERS: Mapping[str, _Handler] = {
    lifecycle.THREAD_CREATED: RunCore._on_nothing,
    lifecycle.STEP_CREATED: RunCore._on_step_created,
    lifecycle.STEP_IN_PROGRESS: RunCore._on_step_in_progress,
    lifecycle.STEP_DELTA: RunCore._on_step_delta,
    **{name: RunCore._on_step_done for name in lifecycle.STEP_DONE_EVENTS},
    lifecycle.MESSAGE_CREATED: RunCore._on_message_created,
    lifecycle.MESSAGE_IN_PROGRESS: RunCore._on_nothing,
    lifecycle.MESSAGE_DELTA: RunCore._on_message_delta,
    **{name: RunCore._on_message_done for name in lifecycle.MESSAGE_DONE_EVENTS},
    lifecycle.ERROR_EVENT: RunCore._on_error,
}
assert set(_CONTENT_HANDLERS) == lifecycle.CONTENT_EVENTS
