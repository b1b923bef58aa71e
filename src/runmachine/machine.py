"""``RunMachine``: the run lifecycle as a state machine that stream events drive.

A ``RunMachine`` is fed the SDK's ``AssistantStreamEvent`` objects, one at a time, through
``feed()``. Lifecycle events (``thread.run.*``) go through the ``transitions`` machine built from
``runmachine.lifecycle``; every other event takes a fast path that only accumulates snapshots and
calls the matching hook. Users subclass it and define hooks:

- state hooks by naming convention, ``on_enter_<state>`` / ``on_exit_<state>``, receiving the
  current ``Run`` (the SDK's type);
- event hooks with the names and signatures of the SDK's ``AsyncAssistantEventHandler``.

Hooks may be ``async def`` or plain functions. This module does no I/O; the driver that talks to
the server feeds it (``runmachine.driver``).
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, cast

import anyio
import attrs
import openai
from openai.lib.streaming._assistants import accumulate_event, accumulate_run_step
from openai.types.beta import AssistantStreamEvent
from openai.types.beta.threads import (
    ImageFile,
    Message,
    MessageDelta,
    RequiredActionFunctionToolCall,
    Run,
    Text,
    TextContentBlock,
    TextDelta,
)
from openai.types.beta.threads.runs import RunStep, RunStepDelta, ToolCall, ToolCallDelta

from runmachine import lifecycle
from runmachine._fsm import AnyioMachine
from runmachine.errors import DuplicateSubmission, HookError, ProtocolViolation
from runmachine.ledger import Ledger, MemoryLedger

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from transitions.core import EventData

    from runmachine.driver import Driver, EventStream
    from runmachine.result import RunResult, ToolCallRecord
    from runmachine.tools import ToolSpec

__all__ = ["RunMachine", "ToleratedEvent", "TransitionRecord"]


@attrs.frozen
class TransitionRecord:
    """One step of a run's history: ``trigger`` moved the run from ``source`` to ``dest``."""

    source: str
    dest: str
    trigger: str
    run_id: str | None
    at: float
    """``time.monotonic()`` when the state changed."""


@attrs.frozen
class ToleratedEvent:
    """An event that did not move the state and was accepted anyway: a repeat or an unknown name."""

    event: str
    state: str
    run_id: str | None
    at: float
    kind: str
    """``"repeat"`` or ``"unknown"``."""


STATE_HOOK_NAMES: tuple[str, ...] = tuple(
    f"on_{edge}_{state}" for state in lifecycle.STATES for edge in ("enter", "exit")
)
DRIVER_HOOK_NAMES: tuple[str, ...] = ("on_transition", "on_tool_started", "on_tool_finished")
EVENT_HOOK_NAMES: tuple[str, ...] = (
    "on_event",
    "on_run_step_created",
    "on_run_step_delta",
    "on_run_step_done",
    "on_tool_call_created",
    "on_tool_call_delta",
    "on_tool_call_done",
    "on_message_created",
    "on_message_delta",
    "on_message_done",
    "on_text_created",
    "on_text_delta",
    "on_text_done",
    "on_image_file_done",
)


async def _maybe_await(result: object) -> None:
    if inspect.isawaitable(result):
        await result


class _HookCallback:
    """A state hook as ``transitions`` sees it: calls ``model.<name>(run)`` and wraps its errors."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.__name__ = name  # diagrams label callbacks by name

    async def __call__(self, event_data: EventData) -> None:
        model = cast(RunMachine, event_data.model)
        run = event_data.kwargs.get("run")
        try:
            await _maybe_await(getattr(model, self.name)(run))
        except Exception as error:
            raise HookError(self.name, model.state, model.run_id, error) from error


class _GuardCondition:
    """A guard from the table as ``transitions`` sees it: calls ``model.<name>(run)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.__name__ = name

    def __call__(self, event_data: EventData) -> bool:
        model = cast(RunMachine, event_data.model)
        return bool(getattr(model, self.name)(event_data.kwargs.get("run")))


class RunMachine:
    """The lifecycle of one Assistants run, driven by stream events, with per-state hooks.

    Subclass it and define any of ``on_enter_<state>``, ``on_exit_<state>`` and the
    ``AsyncAssistantEventHandler`` hooks (``on_text_delta(delta, snapshot)`` and friends). Feed it
    events with ``await machine.feed(event)``. Read ``state``, ``history``, ``current_run()``,
    ``final_messages()`` and ``text()`` during or after the run.

    A subclass may add rows to the lifecycle table with ``extra_transitions``; a guard named there
    is a method of the subclass that takes the current ``Run`` and returns a bool.
    """

    extra_transitions: ClassVar[tuple[lifecycle.TransitionSpec, ...]] = ()

    _fsm: ClassVar[AnyioMachine]
    _overridden: ClassVar[frozenset[str]]

    state: str

    def __init__(
        self,
        client: openai.AsyncOpenAI | None = None,
        *,
        tools: Iterable[Any] = (),
        ledger: Ledger | None = None,
        **options: Any,
    ) -> None:
        """``client``: an ``AsyncOpenAI`` or ``AsyncAzureOpenAI`` (needed to drive runs; not to
        feed events). ``tools``: extra tools, ``@tool`` functions or plain ones. ``ledger``:
        where tool calls and submissions are recorded (``runmachine.ledger``); by default a
        ``MemoryLedger`` of this machine, ``SQLiteLedger(path)`` to survive restarts.
        ``options``: the fields of ``runmachine.driver.DriverOptions`` (``tool_concurrency``,
        ``deadline_margin``, ``max_rounds``, ``max_identical_rounds``, ``stream``, ...)."""
        from runmachine.driver import DriverOptions
        from runmachine.tools import as_spec

        self.client = client
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        try:
            self.options = DriverOptions(**options)
        except TypeError as exc:
            raise TypeError(f"{type(self).__name__}(): {exc}") from None
        self._extra_tools = {spec.name: spec for spec in map(as_spec, tools)}
        self._driving = False
        self._reset()

    def _reset(self) -> None:
        self.run_id: str | None = None
        self.thread_id: str | None = None
        self.history: list[TransitionRecord] = []
        self.tolerated: list[ToleratedEvent] = []
        self.stream_errors: list[Any] = []
        self.submitted_rounds: set[frozenset[str]] = set()
        self._lock = anyio.Lock()
        self._lock_holder: object | None = None
        self._pending_outputs: frozenset[str] = frozenset()
        self._current_run: Run | None = None
        self._current_event: AssistantStreamEvent | None = None
        self._messages: dict[str, Message] = {}
        self._current_message: Message | None = None
        self._run_steps: dict[str, RunStep] = {}
        self._current_step_id: str | None = None
        self._content_index: int | None = None
        self._content: Any = None
        self._tool_call_index: int | None = None
        self._tool_call: ToolCall | None = None
        self._attached = False
        self.state = lifecycle.INITIAL_STATE
        self._attach()

    # ----------------------------------------------------------------------------------------
    # The class's machine, built once per class from the table
    # ----------------------------------------------------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._build_class_machine()

    @classmethod
    def _build_class_machine(cls) -> None:
        cls._overridden = frozenset(
            name
            for name in (*STATE_HOOK_NAMES, *EVENT_HOOK_NAMES, *DRIVER_HOOK_NAMES)
            if getattr(cls, name, None) is not getattr(RunMachine, name, None)
        )
        states = list(lifecycle.STATES)
        for row in cls.extra_transitions:
            for name in (row.source, row.dest):
                if name not in states:
                    states.append(name)
        fsm = AnyioMachine(
            model=None,
            states=states,
            initial=lifecycle.INITIAL_STATE,
            auto_transitions=False,
            send_event=True,
            queued="model",
            name=cls.__name__,
        )
        for row in (*lifecycle.TRANSITIONS, *cls.extra_transitions):
            fsm.add_transition(
                row.trigger,
                row.source,
                row.dest,
                conditions=[_GuardCondition(g) for g in row.guards] or None,
            )
        for state_name in states:
            state = fsm.get_state(state_name)
            for edge in ("enter", "exit"):
                hook = f"on_{edge}_{state_name}"
                if hook in cls._overridden or (
                    state_name not in lifecycle.STATES and callable(getattr(cls, hook, None))
                ):
                    state.add_callback(edge, _HookCallback(hook))
        cls._fsm = fsm

    @classmethod
    def lifecycle_rows(cls) -> tuple[lifecycle.TransitionSpec, ...]:
        """Every row of this class's lifecycle table: the shared one plus ``extra_transitions``."""
        return (*lifecycle.TRANSITIONS, *cls.extra_transitions)

    @classmethod
    def diagram(cls, format: str = "mermaid", *, omit: Iterable[str] = ()) -> str | bytes:
        """Draw this class's lifecycle: ``"mermaid"``, ``"dot"``, ``"svg"`` or ``"png"``;
        ``omit`` names triggers whose rows are left out (``runmachine.diagrams.draw_lifecycle``)."""
        from runmachine.diagrams import draw_lifecycle

        return draw_lifecycle(cls, format=format, omit=omit)

    @classmethod
    def hooks(cls) -> frozenset[str]:
        """The names of the hooks this class defines (overrides of ``RunMachine``'s no-ops)."""
        return cls._overridden

    def _attach(self) -> None:
        type(self)._fsm.add_model(self)
        self._attached = True

    # ----------------------------------------------------------------------------------------
    # Tools and driving (the I/O itself lives in runmachine.driver)
    # ----------------------------------------------------------------------------------------

    @classmethod
    def class_tools(cls) -> dict[str, ToolSpec]:
        """The tools declared with ``@tool`` on this class and its bases."""
        from runmachine.tools import spec_of

        found: dict[str, ToolSpec] = {}
        for klass in reversed(cls.__mro__):
            for value in vars(klass).values():
                spec = spec_of(value)
                if spec is not None:
                    found[spec.name] = spec
        return found

    def tool_specs(self) -> dict[str, ToolSpec]:
        """Every tool this machine can call: the class's and those given to ``__init__``."""
        return {**self.class_tools(), **self._extra_tools}

    @classmethod
    def tool_definitions(cls) -> list[dict[str, Any]]:
        """The ``tools=`` list for ``assistants.create``, from the class's ``@tool`` methods."""
        return [spec.definition() for spec in cls.class_tools().values()]

    def on_tool_error(self, tool_call: ToolCallRecord, error: BaseException) -> bool | None:
        """Called when a tool call gets an error output. Return True to fail the whole run
        instead: the driver cancels the server run and raises ``ToolFailed``."""
        return None

    def on_transition(self, record: TransitionRecord) -> Awaitable[None] | None:
        """Called after every state change, before the new state's ``on_enter`` hook."""
        return None

    def on_tool_started(self, tool_call: RequiredActionFunctionToolCall) -> Awaitable[None] | None:
        """Called as a tool starts on a required call (inside the concurrency limit)."""
        return None

    def on_tool_finished(self, record: ToolCallRecord) -> Awaitable[None] | None:
        """Called when a call has its output: the tool's, an error output, or one recorded in
        the ledger before a restart."""
        return None

    def _begin(self) -> None:
        if self._driving:
            raise RuntimeError(f"{type(self).__name__} is already driving run {self.run_id}")
        if self.state != lifecycle.INITIAL_STATE:
            self._reset()
        self._driving = True

    async def _drive(
        self, work: Callable[[Driver], Awaitable[RunResult]], sink: Any = None
    ) -> RunResult:
        from runmachine.driver import Driver

        self._begin()
        try:
            return await work(Driver(self, sink))
        finally:
            self._driving = False

    async def run(self, *, thread_id: str, assistant_id: str, **params: Any) -> RunResult:
        """Create a run on ``thread_id`` and drive it to its end. ``params`` go to
        ``runs.create`` (``instructions``, ``tools``, ``parallel_tool_calls``, ...)."""
        return await self._drive(lambda d: d.create_run(thread_id, assistant_id, params))

    async def create_thread_and_run(self, *, assistant_id: str, **params: Any) -> RunResult:
        """Create a thread and a run at once (``threads.create_and_run``) and drive it."""
        return await self._drive(lambda d: d.create_thread_and_run(assistant_id, params))

    async def resume(self, *, run_id: str, thread_id: str | None = None) -> RunResult:
        """Pick up a run that is already on the server and drive it from its current status.

        With a ledger that knows the run (``SQLiteLedger`` after a restart), ``thread_id`` may be
        left out, recorded outputs are submitted without running their tools again, and a round
        the server already took is never submitted again."""
        return await self._drive(lambda d: d.resume(thread_id, run_id))

    @asynccontextmanager
    async def stream(
        self, *, thread_id: str, assistant_id: str, **params: Any
    ) -> AsyncIterator[EventStream]:
        """Drive a run while yielding its SDK events, across every tool handoff::

            async with machine.stream(thread_id=t, assistant_id=a) as events:
                async for event in events:
                    ...
            events.result  # the RunResult

        Leaving the block early cancels the run (tools first, then the server run).
        """
        from runmachine.driver import EventStream

        send, receive = anyio.create_memory_object_stream[Any](16)
        events = EventStream(receive)

        async def produce() -> None:
            async with send:
                events.result = await self._drive(
                    lambda d: d.create_run(thread_id, assistant_id, params), sink=send.send
                )

        try:
            async with anyio.create_task_group() as tg, receive:
                tg.start_soon(produce)
                try:
                    yield events
                finally:
                    if events.result is None:
                        tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # One failure (a guard's error, the caller's own exception): raise it as itself, so
            # ``except RequiresActionLoop`` around the block works.
            if len(group.exceptions) != 1:
                raise
            inner = group.exceptions[0]
            raise inner from inner.__cause__

    def detach(self) -> None:
        """Release this machine's slot in its class's ``transitions`` machine (done at the end)."""
        if self._attached:
            type(self)._fsm.remove_model(self)
            self._attached = False

    # ----------------------------------------------------------------------------------------
    # Guards named in the table (methods so that subclasses can refine them)
    # ----------------------------------------------------------------------------------------

    def _required_call_ids(self) -> frozenset[str]:
        run = self._current_run
        if run is None or run.required_action is None:
            return frozenset()
        return frozenset(c.id for c in run.required_action.submit_tool_outputs.tool_calls)

    def outputs_match_required_calls(self, run: Run | None) -> bool:
        return lifecycle.outputs_match_required_calls(
            self._required_call_ids(), self._pending_outputs
        )

    def round_not_submitted_before(self, run: Run | None) -> bool:
        return lifecycle.round_not_submitted_before(self._pending_outputs, self.submitted_rounds)

    def __getattr__(self, name: str) -> Any:
        # ``run_status_is_<state>`` guards of the ``adopt`` rows, generated from the table.
        if name.startswith("run_status_is_"):
            wanted = name[len("run_status_is_") :]
            return lambda run: run is not None and run.status == wanted
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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
            self._current_event = event
            if "on_event" in self._overridden:
                await _maybe_await(self.on_event(event))
            await handler(self, event)
            self._current_event = None
            return
        if name in lifecycle.LIFECYCLE_EVENTS:
            await self._feed_lifecycle(name, cast(Run, event.data), event)
            return
        # Neither lifecycle nor content: an event this version does not know (the SDK passes them
        # through, PROTOCOL.md §1.2). Tolerated and recorded; ``None`` names come from helpers.
        label = name if isinstance(name, str) else "<unnamed>"
        if self.state in lifecycle.TERMINAL_STATES and label in lifecycle.CONTENT_EVENTS:
            raise ProtocolViolation(label, self.state, self.run_id)
        self.tolerated.append(
            ToleratedEvent(label, self.state, self.run_id, time.monotonic(), "unknown")
        )
        if "on_event" in self._overridden:
            await _maybe_await(self.on_event(event))

    async def _feed_lifecycle(
        self, name: str, run: Run, event: AssistantStreamEvent | None
    ) -> None:
        kind = lifecycle.classify(self.state, name)
        if kind == "violation":
            raise ProtocolViolation(name, self.state, getattr(run, "id", None) or self.run_id)
        self._remember_run(run)
        if event is not None:
            self._current_event = event
            if "on_event" in self._overridden:
                await _maybe_await(self.on_event(event))
        if name in _CLOSES_TOOL_CALL and self._tool_call is not None:
            await self._tool_call_done()
        if kind == "repeat":
            self.tolerated.append(
                ToleratedEvent(name, self.state, self.run_id, time.monotonic(), "repeat")
            )
        else:
            await self._trigger(name, run)
        self._current_event = None

    async def _trigger(self, trigger: str, run: Run | None) -> bool:
        """Fire ``trigger``; True if the state changed (the queued machine always says True)."""
        before = len(self.history)
        holder = anyio.get_current_task().id
        if self._lock_holder == holder:
            # Fired from one of this machine's own hooks: queued behind the running transition.
            await self._fsm.events[trigger].trigger(self, run=run)
            return True
        async with self._lock:
            self._lock_holder = holder
            try:
                await self._fsm.events[trigger].trigger(self, run=run)
            finally:
                self._lock_holder = None
                if self.state in lifecycle.TERMINAL_STATES:
                    # Nothing can move a finished run; free its slot in the class machine.
                    self.detach()
        return len(self.history) > before

    def _remember_run(self, run: Run) -> None:
        self._current_run = run
        if self.run_id is None:
            self.run_id = run.id
            self.thread_id = run.thread_id

    async def observe_status(self, run: Run) -> None:
        """Bring the machine to ``run.status`` as seen by polling, not streaming.

        Every lifecycle event the jump implies (``queued`` then ``completed`` implies
        ``in_progress``; a run just created implies ``thread.run.created``) is fed in order; the
        state hooks fire as they would on a stream.
        """
        self._remember_run(run)
        if run.status == self.state:
            return
        try:
            events = lifecycle.path_to_status(self.state, run.status)
        except ValueError as exc:
            raise ProtocolViolation(
                f"status {run.status}", self.state, run.id, "not reachable by polling"
            ) from exc
        for name in events:
            await self._feed_lifecycle(name, run, None)

    async def adopt(self, run: Run) -> None:
        """Pick up a run that already exists on the server, in whatever status it reports."""
        self._remember_run(run)
        if not await self._trigger(lifecycle.ADOPT, run):
            raise ProtocolViolation(
                lifecycle.ADOPT, self.state, run.id, f"cannot adopt a run in status {run.status!r}"
            )

    async def hand_over_outputs(self, call_ids: Iterable[str]) -> None:
        """Record that one output for each of ``call_ids`` is about to be submitted.

        Moves ``requires_action → submitting`` if the table's guards hold: the outputs cover
        exactly the required calls, and this round was never submitted before. Raises
        ``DuplicateSubmission`` or ``ProtocolViolation`` otherwise; in that case nothing must
        be sent.
        """
        outputs = frozenset(call_ids)
        self._pending_outputs = outputs
        try:
            if self.state != lifecycle.REQUIRES_ACTION:
                if not lifecycle.round_not_submitted_before(outputs, self.submitted_rounds):
                    raise DuplicateSubmission(self.run_id or "<none>", outputs)
                raise ProtocolViolation(lifecycle.SUBMIT, self.state, self.run_id)
            if not lifecycle.round_not_submitted_before(outputs, self.submitted_rounds):
                raise DuplicateSubmission(self.run_id or "<none>", outputs)
            if not await self._trigger(lifecycle.SUBMIT, self._current_run):
                raise ProtocolViolation(
                    lifecycle.SUBMIT,
                    self.state,
                    self.run_id,
                    f"outputs for {sorted(outputs)} do not match the required calls "
                    f"{sorted(self._required_call_ids())}",
                )
            self.submitted_rounds.add(outputs)
        finally:
            self._pending_outputs = frozenset()

    async def submission_not_accepted(self, run: Run) -> None:
        """The last submission failed in transit and the server still waits on the same round:
        back to ``requires_action``, the round no longer counted as submitted."""
        self._remember_run(run)
        round_ids = self._required_call_ids()
        if not await self._trigger(lifecycle.NOT_ACCEPTED, run):
            raise ProtocolViolation(
                lifecycle.NOT_ACCEPTED, self.state, self.run_id, f"run status is {run.status!r}"
            )
        self.submitted_rounds.discard(round_ids)

    def run_still_requires_the_same_round(self, run: Run | None) -> bool:
        return (
            run is not None
            and run.status == "requires_action"
            and self._required_call_ids() in self.submitted_rounds
        )

    async def request_cancel(self) -> bool:
        """Record a local cancel request. Returns False when the state has nothing to cancel."""
        if self.state == lifecycle.CANCELLING or self.state not in lifecycle.CANCELLABLE_STATES:
            return False
        return await self._trigger(lifecycle.CANCEL, self._current_run)

    async def _record(self, event_data: EventData) -> None:
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
        if "on_transition" in self._overridden:
            await self._hook("on_transition", record)

    async def _hook(self, name: str, *args: Any) -> None:
        """Call a non-state hook; its failure is a ``HookError`` naming it."""
        try:
            await _maybe_await(getattr(self, name)(*args))
        except Exception as error:
            raise HookError(name, self.state, self.run_id, error) from error

    # ----------------------------------------------------------------------------------------
    # Content events: the fast path
    # ----------------------------------------------------------------------------------------

    async def _on_message_created(self, event: Any) -> None:
        message: Message = event.data
        self._current_message = message
        self._messages[message.id] = message
        if "on_message_created" in self._overridden:
            await _maybe_await(self.on_message_created(message))

    async def _on_message_delta(self, event: Any) -> None:
        snapshot = self._current_message
        data = event.data
        if snapshot is None or snapshot.id != data.id:
            snapshot = self._messages.get(data.id)
            if snapshot is None:
                raise ProtocolViolation(
                    event.event, self.state, self.run_id, f"no message {data.id} was created"
                )
            self._current_message = snapshot
        delta: MessageDelta = data.delta
        overridden = self._overridden
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
                    cast(TextContentBlock, content[index]).text.value += piece.value
            else:
                _, new = accumulate_event(
                    event=_one_part(event, part), current_message_snapshot=snapshot
                )
                created = bool(new)
            if created:
                block = snapshot.content[index]
                if block.type == "text" and "on_text_created" in overridden:
                    await _maybe_await(self.on_text_created(block.text))
            if part.type == "text" and part.text is not None and "on_text_delta" in overridden:
                text_block = cast(TextContentBlock, snapshot.content[index])
                await _maybe_await(self.on_text_delta(part.text, text_block.text))
            if index != self._content_index:
                await self._content_done()
                self._content_index = index
            self._content = snapshot.content[index]
        if "on_message_delta" in overridden:
            await _maybe_await(self.on_message_delta(delta, snapshot))

    async def _content_done(self) -> None:
        content = self._content
        if content is None:
            return
        if content.type == "text" and "on_text_done" in self._overridden:
            await _maybe_await(self.on_text_done(content.text))
        elif content.type == "image_file" and "on_image_file_done" in self._overridden:
            await _maybe_await(self.on_image_file_done(content.image_file))

    async def _on_message_done(self, event: Any) -> None:
        message: Message = event.data
        self._messages[message.id] = message
        self._current_message = message
        if self._content_index is not None and self._content_index < len(message.content):
            self._content = message.content[self._content_index]
            await self._content_done()
        self._content_index = None
        self._content = None
        if "on_message_done" in self._overridden:
            await _maybe_await(self.on_message_done(message))

    async def _on_step_created(self, event: Any) -> None:
        step: RunStep = event.data
        self._run_steps[step.id] = step
        self._current_step_id = step.id
        if "on_run_step_created" in self._overridden:
            await _maybe_await(self.on_run_step_created(step))

    async def _on_step_in_progress(self, event: Any) -> None:
        self._current_step_id = event.data.id

    async def _on_step_delta(self, event: Any) -> None:
        data = event.data
        snapshot = self._run_steps.get(data.id)
        if snapshot is None:
            raise ProtocolViolation(
                event.event, self.state, self.run_id, f"no run step {data.id} was created"
            )
        accumulate_run_step(event=event, run_step_snapshots=self._run_steps)
        snapshot = self._run_steps[data.id]
        details = data.delta.step_details
        if (
            details is not None
            and details.type == "tool_calls"
            and details.tool_calls is not None
            and snapshot.step_details.type == "tool_calls"
        ):
            calls = snapshot.step_details.tool_calls
            for call_delta in details.tool_calls:
                index = call_delta.index
                if index == self._tool_call_index and "on_tool_call_delta" in self._overridden:
                    await _maybe_await(self.on_tool_call_delta(call_delta, calls[index]))
                if index != self._tool_call_index:
                    await self._tool_call_done()
                    self._tool_call_index = index
                    self._tool_call = calls[index]
                    if "on_tool_call_created" in self._overridden:
                        await _maybe_await(self.on_tool_call_created(calls[index]))
                self._tool_call = calls[index]
        if "on_run_step_delta" in self._overridden:
            await _maybe_await(self.on_run_step_delta(data.delta, snapshot))

    async def _tool_call_done(self) -> None:
        # Once per call: unlike the SDK's handler, which reports the last call done again at
        # every later step or run end of the same stream.
        call = self._tool_call
        self._tool_call = None
        self._tool_call_index = None
        if call is not None and "on_tool_call_done" in self._overridden:
            await _maybe_await(self.on_tool_call_done(call))

    async def _on_step_done(self, event: Any) -> None:
        step: RunStep = event.data
        self._run_steps[step.id] = step
        await self._tool_call_done()
        if "on_run_step_done" in self._overridden:
            await _maybe_await(self.on_run_step_done(step))
        self._current_step_id = None

    async def _on_error(self, event: Any) -> None:
        self.stream_errors.append(event.data)

    async def _on_nothing(self, event: Any) -> None:
        return None

    # ----------------------------------------------------------------------------------------
    # Snapshots (the features of openai-node's AssistantStream)
    # ----------------------------------------------------------------------------------------

    def current_event(self) -> AssistantStreamEvent | None:
        return self._current_event

    def current_run(self) -> Run | None:
        """The run as of the latest lifecycle event (or poll)."""
        return self._current_run

    def current_message_snapshot(self) -> Message | None:
        return self._current_message

    def current_run_step_snapshot(self) -> RunStep | None:
        if self._current_step_id is None:
            return None
        return self._run_steps.get(self._current_step_id)

    @property
    def is_finished(self) -> bool:
        return self.state in lifecycle.TERMINAL_STATES

    def final_run(self) -> Run:
        """The run as the server left it. Raises ``RuntimeError`` before a terminal state."""
        if not self.is_finished or self._current_run is None:
            raise RuntimeError(f"the run has not finished (state {self.state!r})")
        return self._current_run

    def final_messages(self) -> list[Message]:
        """Every message of the run, in the order they were created."""
        return list(self._messages.values())

    def final_run_steps(self) -> list[RunStep]:
        return list(self._run_steps.values())

    def text(self) -> str:
        """All the assistant text of this run: text blocks joined by newlines, messages by a
        blank line."""
        parts = []
        for message in self._messages.values():
            blocks = [c.text.value for c in message.content if c.type == "text"]
            if blocks:
                parts.append("\n".join(blocks))
        return "\n\n".join(parts)

    def replace_messages(self, messages: Iterable[Message]) -> None:
        """Replace the message snapshots with authoritative ones (e.g. from ``messages.list``,
        oldest first). Their order wins: a message lost with a dropped stream comes back in its
        place, before messages a later stream showed."""
        fresh = {message.id: message for message in messages}
        rest = {key: value for key, value in self._messages.items() if key not in fresh}
        self._messages = {**fresh, **rest}

    # ----------------------------------------------------------------------------------------
    # Hooks: the SDK's AsyncAssistantEventHandler vocabulary. Override any of them.
    # ----------------------------------------------------------------------------------------

    async def on_event(self, event: AssistantStreamEvent) -> None:
        """Every event, before it is handled."""

    async def on_run_step_created(self, run_step: RunStep) -> None: ...

    async def on_run_step_delta(self, delta: RunStepDelta, snapshot: RunStep) -> None: ...

    async def on_run_step_done(self, run_step: RunStep) -> None: ...

    async def on_tool_call_created(self, tool_call: ToolCall) -> None: ...

    async def on_tool_call_delta(self, delta: ToolCallDelta, snapshot: ToolCall) -> None: ...

    async def on_tool_call_done(self, tool_call: ToolCall) -> None: ...

    async def on_message_created(self, message: Message) -> None: ...

    async def on_message_delta(self, delta: MessageDelta, snapshot: Message) -> None: ...

    async def on_message_done(self, message: Message) -> None: ...

    async def on_text_created(self, text: Text) -> None: ...

    async def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None: ...

    async def on_text_done(self, text: Text) -> None: ...

    async def on_image_file_done(self, image_file: ImageFile) -> None: ...


def _one_part(event: Any, part: Any) -> Any:
    """A message-delta event carrying only ``part`` (for the SDK's generic accumulator)."""
    if len(event.data.delta.content or ()) == 1:
        return event
    data = event.data.model_copy(
        update={"delta": event.data.delta.model_copy(update={"content": [part]})}
    )
    return event.model_copy(update={"data": data})


_Handler = Callable[[RunMachine, Any], Awaitable[None]]
_CONTENT_HANDLERS: Mapping[str, _Handler] = {
    "thread.created": RunMachine._on_nothing,
    "thread.run.step.created": RunMachine._on_step_created,
    "thread.run.step.in_progress": RunMachine._on_step_in_progress,
    "thread.run.step.delta": RunMachine._on_step_delta,
    "thread.run.step.completed": RunMachine._on_step_done,
    "thread.run.step.failed": RunMachine._on_step_done,
    "thread.run.step.cancelled": RunMachine._on_step_done,
    "thread.run.step.expired": RunMachine._on_step_done,
    "thread.message.created": RunMachine._on_message_created,
    "thread.message.in_progress": RunMachine._on_nothing,
    "thread.message.delta": RunMachine._on_message_delta,
    "thread.message.completed": RunMachine._on_message_done,
    "thread.message.incomplete": RunMachine._on_message_done,
    "error": RunMachine._on_error,
}
assert set(_CONTENT_HANDLERS) == lifecycle.CONTENT_EVENTS

#: Lifecycle events after which the SDK's handler reports the open tool call as done.
_CLOSES_TOOL_CALL = frozenset(
    {
        "thread.run.completed",
        "thread.run.cancelled",
        "thread.run.expired",
        "thread.run.failed",
        "thread.run.requires_action",
        "thread.run.incomplete",
    }
)

RunMachine._build_class_machine()
