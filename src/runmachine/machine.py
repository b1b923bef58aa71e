"""``RunMachine``: the class users subclass. A thin facade over the core and the driver.

A subclass declares tools (``@tool`` methods) and hooks, by name:

- state hooks ``on_enter_<state>`` / ``on_exit_<state>``, receiving the current ``Run`` (the SDK's
  type);
- event hooks with the names and signatures of the SDK's ``AsyncAssistantEventHandler``;
- ``on_transition``, ``on_tool_started``, ``on_tool_finished`` and ``on_tool_error``.

Hooks may be ``async def`` or plain functions. An instance drives one run at a time through its
entry points (``run``, ``create_thread_and_run``, ``resume``, ``stream``); each run gets a fresh
``RunCore`` (``machine.core``), whose state and snapshots the machine shows. Everything the
machine keeps for itself lives in name-mangled attributes, so no tool or hook of a subclass can
collide with it; a ``@tool`` method that would replace part of the public API is refused when the
class is defined.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, overload

import anyio
import openai
from openai.types.beta import AssistantStreamEvent, FunctionToolParam
from openai.types.beta.agent_session import AgentSession
from openai.types.beta.agent_session_event import AgentSessionEvent
from openai.types.beta.agents.sessions.turn import Turn
from openai.types.beta.threads import (
    ImageFile,
    Message,
    MessageDelta,
    RequiredActionFunctionToolCall,
    Run,
    Text,
    TextDelta,
)
from openai.types.beta.threads.runs import RunStep, RunStepDelta, ToolCall, ToolCallDelta

from runmachine import lifecycle
from runmachine.admission import Admission
from runmachine.backends.assistants import AssistantsBackend, CreateRun, CreateThreadAndRun
from runmachine.backends.sessions import SessionsBackend
from runmachine.core import CoreBase, RunCore
from runmachine.diagrams import Detail, draw_lifecycle
from runmachine.driver import Driver, EventStream
from runmachine.engine import Engine, engine_for
from runmachine.errors import HandedOff, MachineBusy, OptionError, RunMachineError
from runmachine.ledger import TURN_MARK, Ledger, MemoryLedger
from runmachine.options import DriverOptions, unknown_option
from runmachine.records import ToleratedEvent, ToolCallRecord, TransitionRecord
from runmachine.result import RunResult
from runmachine.tools import ToolSpec, as_spec, spec_of
from runmachine.turn_core import TurnCore
from runmachine.turn_driver import DECISIONS, Decision, TurnDriver, input_messages

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from typing_extensions import Never

__all__ = ["RunMachine", "importable_name"]

STATE_HOOK_NAMES: tuple[str, ...] = tuple(
    f"on_{edge}_{state}" for state in lifecycle.STATES for edge in ("enter", "exit")
)
DRIVER_HOOK_NAMES: tuple[str, ...] = (
    "on_transition",
    "on_tool_started",
    "on_tool_finished",
    "on_tool_error",
    "on_approval_request",
)
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
HOOK_NAMES: frozenset[str] = frozenset((*STATE_HOOK_NAMES, *DRIVER_HOOK_NAMES, *EVENT_HOOK_NAMES))

_OPTION_NAMES: tuple[str, ...] = tuple(a.name for a in DriverOptions.__attrs_attrs__)


class RunMachine:
    """The lifecycle of an Assistants run, driven by stream events, with per-state hooks.

    Subclass it and define any of ``on_enter_<state>``, ``on_exit_<state>`` and the
    ``AsyncAssistantEventHandler`` hooks (``on_text_delta(delta, snapshot)`` and friends), and
    ``@tool`` methods. Drive a run with ``await machine.run(thread_id=..., assistant_id=...)``,
    or feed events yourself with ``await machine.feed(event)``. Read ``state``, ``history``,
    ``current_run()``, ``final_messages()`` and ``text()`` during or after the run.

    A subclass may add rows to the lifecycle table with ``extra_transitions``; a guard named there
    is a method of the subclass that takes the current ``Run`` and returns a bool.
    """

    extra_transitions: ClassVar[tuple[lifecycle.TransitionSpec, ...]] = ()

    #: The ``runmachine.Admission`` every machine of this class (and of its subclasses) takes a
    #: slot of for each run and turn, unless one is given to ``__init__``; None: no limit.
    admission: Admission | None = None

    _runmachine_engine: ClassVar[Engine]
    _runmachine_turn_engine: ClassVar[Engine]
    _runmachine_hooks: ClassVar[frozenset[str]]

    def __init__(
        self,
        client: openai.AsyncOpenAI | None = None,
        *,
        tools: Iterable[Any] = (),
        ledger: Ledger | None = None,
        admission: Admission | None = None,
        tool_concurrency: int = 16,
        deadline_margin: float = 5.0,
        max_rounds: int = 20,
        max_identical_rounds: int = 3,
        stream: bool = True,
        poll_interval: float = 1.0,
        max_poll_interval: float = 8.0,
        reuse_connection: bool = True,
        submit_attempts: int = 4,
        recovery_attempts: int = 6,
        cancel_timeout: float = 10.0,
        turn_timeout: float | None = None,
        lease_ttl: float = 30.0,
        lease_holder: str | None = None,
        **unknown: Never,
    ) -> None:
        """``client``: an ``AsyncOpenAI`` or ``AsyncAzureOpenAI`` (needed to drive runs; not to
        feed events). ``tools``: extra tools, ``@tool`` functions or plain ones. ``ledger``:
        where tool calls and submissions are recorded (``runmachine.ledger``); by default a
        ``MemoryLedger`` of this machine, ``SQLiteLedger(path)`` to survive restarts.
        ``admission``: a ``runmachine.Admission`` shared with other machines, bounding the runs
        in flight at once (by default the class's ``admission``: none). The other options are
        ``runmachine.options.DriverOptions``, validated here."""
        name = type(self).__name__
        if unknown:
            raise unknown_option(
                name, unknown, ("client", "tools", "ledger", "admission", *_OPTION_NAMES)
            )
        if client is not None and not isinstance(client, openai.AsyncOpenAI):
            raise OptionError(
                f"{name} needs an AsyncOpenAI or AsyncAzureOpenAI client, got "
                f"{type(client).__module__}.{type(client).__qualname__}"
                + (
                    " (use openai.AsyncOpenAI instead of openai.OpenAI)"
                    if isinstance(client, openai.OpenAI)
                    else ""
                )
            )
        if ledger is not None and not isinstance(ledger, Ledger):
            raise OptionError(
                f"{name}(ledger=...) must implement runmachine.Ledger, got {type(ledger).__name__}"
            )
        _check_admission(f"{name}(admission=...)", admission)
        try:
            self.options = DriverOptions(
                tool_concurrency=tool_concurrency,
                deadline_margin=deadline_margin,
                max_rounds=max_rounds,
                max_identical_rounds=max_identical_rounds,
                stream=stream,
                poll_interval=poll_interval,
                max_poll_interval=max_poll_interval,
                reuse_connection=reuse_connection,
                submit_attempts=submit_attempts,
                recovery_attempts=recovery_attempts,
                cancel_timeout=cancel_timeout,
                turn_timeout=turn_timeout,
                lease_ttl=lease_ttl,
                lease_holder=lease_holder,
            )
        except OptionError as exc:
            raise OptionError(f"{name}(): {exc}") from None
        self.client = client
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        #: The admission this machine's runs and turns take their slots of (None: no limit).
        self.admission: Admission | None = admission if admission is not None else self.admission
        try:
            self.__extra_tools = {spec.name: spec for spec in map(as_spec, tools)}
        except TypeError as exc:
            raise OptionError(f"{name}(tools=...): {exc}") from None
        self.__backend = AssistantsBackend(client) if client is not None else None
        self.__sessions = SessionsBackend(client) if client is not None else None
        self.__driving: Driver | TurnDriver | None = None
        #: While the driven run waits for its admission slot: the scope ``hand_off()`` cancels.
        self.__queued: anyio.CancelScope | None = None
        self.__core = self.__new_core()
        self.__turn_core: TurnCore | None = None
        #: The core of the latest run or turn (what ``state``, ``history``, ... show).
        self.__last: CoreBase = self.__core

    # ----------------------------------------------------------------------------------------
    # The class: its table, hooks and tools
    # ----------------------------------------------------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_admission(f"{cls.__qualname__}.admission", cls.admission)
        _check_tools(cls)
        _prepare(cls)

    @classmethod
    def lifecycle_rows(cls) -> tuple[lifecycle.TransitionSpec, ...]:
        """Every row of this class's lifecycle table: the shared one plus ``extra_transitions``."""
        return (*lifecycle.TRANSITIONS, *cls.extra_transitions)

    @classmethod
    def diagram(
        cls,
        format: str = "mermaid",
        *,
        omit: Iterable[str] = (),
        detail: Detail = "readable",
    ) -> str | bytes:
        """Draw this class's lifecycle: ``"mermaid"``, ``"dot"``, ``"svg"`` or ``"png"``.

        ``detail="readable"`` (the default) is a statechart, the active and the terminal states
        each in a composite state; ``detail="full"`` draws one arrow per row of the table.
        ``omit`` names triggers whose rows are left out (``runmachine.diagrams.draw_lifecycle``)."""
        return draw_lifecycle(cls, format=format, omit=omit, detail=detail)

    @classmethod
    def hooks(cls) -> frozenset[str]:
        """The names of the hooks this class defines (overrides of ``RunMachine``'s no-ops)."""
        return cls._runmachine_hooks

    @classmethod
    def class_tools(cls) -> dict[str, ToolSpec]:
        """The tools declared with ``@tool`` on this class and its bases."""
        found: dict[str, ToolSpec] = {}
        for klass in reversed(cls.__mro__):
            for value in vars(klass).values():
                spec = spec_of(value)
                if spec is not None:
                    found[spec.name] = spec
        return found

    @classmethod
    def tool_definitions(cls) -> list[FunctionToolParam]:
        """The ``tools=`` list for ``assistants.create``, from the class's ``@tool`` methods."""
        return [spec.definition() for spec in cls.class_tools().values()]

    def tool_specs(self) -> dict[str, ToolSpec]:
        """Every tool this machine can call: the class's and those given to ``__init__``."""
        return {**self.class_tools(), **self.__extra_tools}

    # ----------------------------------------------------------------------------------------
    # Driving runs
    # ----------------------------------------------------------------------------------------

    def __new_core(self) -> RunCore:
        cls = type(self)
        return RunCore(self, engine=cls._runmachine_engine, hooks=cls._runmachine_hooks)

    def __check_free(self) -> None:
        cls = type(self)
        if self.__driving is not None:
            core = self.__driving.core
            raise MachineBusy(
                f"{cls.__name__} is already driving {self.__driving.noun} "
                f"{core.run_id or '(not created yet)'}; a RunMachine drives one "
                f"{self.__driving.noun} at a time: make one machine per concurrent one "
                "(machines are cheap)"
            )
        if self.client is None:
            raise RunMachineError(
                f"this {cls.__name__} has no client: create it as {cls.__name__}(client) to "
                "drive runs"
            )

    def __driver_options(self) -> dict[str, Any]:
        cls = type(self)
        return {
            "options": self.options,
            "tools": self.tool_specs(),
            "owner": self,
            "ledger": self.ledger,
            "machine_name": importable_name(cls),
            "on_tool_error": self.on_tool_error
            if "on_tool_error" in cls._runmachine_hooks
            else None,
        }

    async def __drive(
        self,
        work: Callable[[Driver], Awaitable[RunResult]],
        sink: Callable[[Any], Awaitable[None]] | None = None,
    ) -> RunResult:
        self.__check_free()
        assert self.__backend is not None
        if self.__core.state != lifecycle.INITIAL_STATE:
            self.__core = self.__new_core()
        self.__last = self.__core
        driver = Driver(self.__core, self.__backend, sink=sink, **self.__driver_options())
        self.__driving = driver
        try:
            return await self.__admitted(lambda: work(driver))
        finally:
            self.__driving = None

    async def __drive_turn(
        self,
        session_id: str | None,
        work: Callable[[TurnDriver], Awaitable[RunResult]],
        sink: Callable[[Any], Awaitable[None]] | None = None,
        approvals: Mapping[str, str] | None = None,
    ) -> RunResult:
        self.__check_free()
        assert self.__sessions is not None
        cls = type(self)
        core = TurnCore(
            self,
            session_id=session_id,
            engine=cls._runmachine_turn_engine,
            hooks=cls._runmachine_hooks,
        )
        self.__turn_core = self.__last = core
        options = self.__driver_options()
        options["machine_name"] += TURN_MARK
        driver = TurnDriver(
            core,
            self.__sessions,
            on_approval=self.on_approval_request
            if "on_approval_request" in cls._runmachine_hooks
            else None,
            approvals=approvals,
            sink=sink,
            **options,
        )
        self.__driving = driver
        try:
            return await self.__admitted(lambda: work(driver))
        finally:
            self.__driving = None

    async def __admitted(self, work: Callable[[], Awaitable[RunResult]]) -> RunResult:
        """``work`` within a slot of this machine's admission, if it has one. The wait sends
        nothing; ``hand_off()`` during it ends it with ``HandedOff``."""
        admission = self.admission
        if admission is None:
            return await work()
        with anyio.CancelScope() as queued:
            self.__queued = queued
            try:
                async with admission.slot():
                    self.__queued = None
                    return await work()
            finally:
                self.__queued = None
        assert self.__driving is not None
        raise HandedOff(
            f"{type(self).__name__} was handed off while its {self.__driving.noun} waited for a "
            f"slot of {admission!r}: nothing was sent"
        )

    # ----------------------------------------------------------------------------------------
    # Assistants runs
    # ----------------------------------------------------------------------------------------

    async def run(self, *, thread_id: str, assistant_id: str, **params: Any) -> RunResult:
        """Create a run on ``thread_id`` and drive it to its end. ``params`` go to
        ``runs.create`` (``instructions``, ``tools``, ``parallel_tool_calls``, ...)."""
        request = CreateRun(thread_id, assistant_id, params)
        return await self.__drive(lambda d: d.create(request))

    async def create_thread_and_run(self, *, assistant_id: str, **params: Any) -> RunResult:
        """Create a thread and a run at once (``threads.create_and_run``) and drive it."""
        request = CreateThreadAndRun(assistant_id, params)
        return await self.__drive(lambda d: d.create(request))

    @overload
    async def resume(self, *, run_id: str, thread_id: str | None = None) -> RunResult: ...

    @overload
    async def resume(
        self,
        *,
        session_id: str,
        turn_id: str,
        approvals: Mapping[str, Decision] | None = None,
    ) -> RunResult: ...

    async def resume(
        self,
        *,
        run_id: str | None = None,
        thread_id: str | None = None,
        session_id: str | None = None,
        turn_id: str | None = None,
        approvals: Mapping[str, Decision] | None = None,
    ) -> RunResult:
        """Pick up a run (``run_id``, ``thread_id``) or an agent-session turn (``session_id``,
        ``turn_id``) that is already on the server and drive it from its current status.

        With a ledger that knows the run (``SQLiteLedger`` after a restart), ``thread_id`` may be
        left out, recorded outputs are submitted without running their tools again, and a round
        the server already took is never submitted again. For a turn, ``approvals`` answers the
        approval requests it was left waiting on (``{request_id: "approve"}``)."""
        name = type(self).__name__
        if run_id is not None:
            if session_id is not None or turn_id is not None or approvals is not None:
                raise OptionError(
                    f"{name}.resume(): give run_id (and thread_id) for a run, or session_id "
                    "and turn_id (and approvals) for a turn, not both"
                )
            return await self.__drive(lambda d: d.resume(thread_id, run_id))
        if session_id is None or turn_id is None or thread_id is not None:
            raise OptionError(
                f"{name}.resume() needs run_id (a run) or session_id and turn_id (a turn)"
            )
        given = _check_approvals(name, approvals)
        turn = turn_id
        return await self.__drive_turn(session_id, lambda d: d.resume(turn), approvals=given)

    # ----------------------------------------------------------------------------------------
    # Agent-session turns
    # ----------------------------------------------------------------------------------------

    async def turn(self, *, session_id: str, input: str | Iterable[Any]) -> RunResult:
        """Start a turn on the idle session ``session_id`` with ``input`` (a string: one user
        message; or the SDK's message params) and drive it to its end, or to where it waits on
        approvals nobody has answered (``result.status == "requires_action"``)."""
        messages = _input(type(self).__name__, input)
        return await self.__drive_turn(session_id, lambda d: d.turn(messages))

    async def create_session(
        self,
        *,
        environment: Mapping[str, Any],
        input: str | Iterable[Any],
        agent: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> RunResult:
        """Create an agent session (``sessions.create``: ``environment``, ``agent`` or
        ``agent_id``, ``metadata``, ...) with its first turn, and drive that turn. When
        ``agent`` names no tools, the class's ``@tool`` definitions are given to it."""
        body: dict[str, Any] = {"environment": environment, **params}
        body["input"] = _input(type(self).__name__, input)
        if agent is not None:
            body["agent"] = self.__with_tools(agent)
        return await self.__drive_turn(None, lambda d: d.create_session(body))

    def __with_tools(self, agent: Mapping[str, Any]) -> dict[str, Any]:
        if "tools" in agent:
            return dict(agent)
        return {**agent, "tools": self.agent_tool_definitions()}

    @classmethod
    def agent_tool_definitions(cls) -> list[dict[str, Any]]:
        """The ``agent={"tools": [...]}`` list for agent sessions, from the ``@tool`` methods."""
        found = []
        for definition in cls.tool_definitions():
            function = definition["function"]
            found.append({"type": "function", **function})
        return found

    # ----------------------------------------------------------------------------------------
    # Streaming
    # ----------------------------------------------------------------------------------------

    @overload
    def stream(
        self,
        *,
        thread_id: str,
        assistant_id: str,
        transitions: Literal[False] = False,
        **params: Any,
    ) -> AbstractAsyncContextManager[EventStream[AssistantStreamEvent]]: ...

    @overload
    def stream(
        self, *, thread_id: str, assistant_id: str, transitions: Literal[True], **params: Any
    ) -> AbstractAsyncContextManager[EventStream[AssistantStreamEvent | TransitionRecord]]: ...

    @overload
    def stream(
        self,
        *,
        session_id: str,
        input: str | Iterable[Any],
        transitions: Literal[False] = False,
    ) -> AbstractAsyncContextManager[EventStream[AgentSessionEvent]]: ...

    @overload
    def stream(
        self, *, session_id: str, input: str | Iterable[Any], transitions: Literal[True]
    ) -> AbstractAsyncContextManager[EventStream[AgentSessionEvent | TransitionRecord]]: ...

    def stream(
        self,
        *,
        thread_id: str | None = None,
        assistant_id: str | None = None,
        session_id: str | None = None,
        input: str | Iterable[Any] | None = None,
        transitions: bool = False,
        **params: Any,
    ) -> AbstractAsyncContextManager[EventStream[Any]]:
        """Drive a run (``thread_id``, ``assistant_id``) or an agent-session turn
        (``session_id``, ``input``) while yielding its SDK events, across every tool handoff::

            async with machine.stream(thread_id=t, assistant_id=a) as events:
                async for event in events:
                    ...
            events.result  # the RunResult

        With ``transitions=True`` the machine's ``TransitionRecord``s come in the same stream,
        each exactly where it happened: right after the event that caused it, or (a local
        trigger, a poll) between the two events it fell between.

        An error that ends the run (a guard's, a server's) is raised by the iteration, after
        every event that came before it. Leaving the block early cancels the run (tools first,
        then the server run).
        """
        name = type(self).__name__
        if session_id is not None:
            if thread_id is not None or assistant_id is not None or params or input is None:
                raise OptionError(
                    f"{name}.stream(): a turn takes session_id and input only; a run takes "
                    "thread_id and assistant_id (and runs.create's parameters)"
                )
            messages = _input(name, input)
            sid = session_id

            def start_turn(sink: Callable[[Any], Awaitable[None]]) -> Awaitable[RunResult]:
                return self.__drive_turn(sid, lambda d: d.turn(messages), sink)

            return self.__stream(start_turn, transitions)
        if thread_id is None or assistant_id is None or input is not None:
            raise OptionError(
                f"{name}.stream() needs thread_id and assistant_id (a run) or session_id and "
                "input (a turn)"
            )
        request = CreateRun(thread_id, assistant_id, params)

        def start_run(sink: Callable[[Any], Awaitable[None]]) -> Awaitable[RunResult]:
            return self.__drive(lambda d: d.create(request), sink)

        return self.__stream(start_run, transitions)

    @asynccontextmanager
    async def __stream(
        self,
        start: Callable[[Callable[[Any], Awaitable[None]]], Awaitable[RunResult]],
        transitions: bool,
    ) -> AsyncIterator[EventStream[Any]]:
        send, receive = anyio.create_memory_object_stream[Any](16)
        events: EventStream[Any] = EventStream(receive)
        history = self.__last.history
        sent = 0

        async def sink(event: Any) -> None:
            nonlocal history, sent
            if not transitions:
                await send.send(event)
                return
            if history is not self.__last.history:
                history, sent = self.__last.history, 0
            for item in _placed(event, history[sent:]):
                await send.send(item)
            sent = len(history)

        async def produce() -> None:
            async with send:
                try:
                    result = await start(sink)
                except Exception as error:
                    await rest()
                    events.set_error(error)
                    return
                await rest()
                events.set_result(result)

        async def rest() -> None:
            # Transitions after the last event (the cancel of an aborted run, a final poll).
            if transitions:
                for record in self.__last.history[sent:]:
                    await send.send(record)

        try:
            async with anyio.create_task_group() as tg, receive:
                tg.start_soon(produce)
                try:
                    yield events
                finally:
                    if not events.finished:
                        tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # One failure (the run's error raised by the iteration, the caller's own exception):
            # raise it as itself, so ``except RequiresActionLoop`` around the block works.
            if len(group.exceptions) != 1:
                raise
            inner = group.exceptions[0]
            raise inner from inner.__cause__
        events.raise_unseen_error()

    # ----------------------------------------------------------------------------------------
    # The current run (the last one, once it has ended)
    # ----------------------------------------------------------------------------------------

    @property
    def core(self) -> RunCore:
        """The core of the current (or last) Assistants run: its state, history and snapshots."""
        return self.__core

    @property
    def turn_core(self) -> TurnCore | None:
        """The core of the current (or last) agent-session turn, if this machine drove one."""
        return self.__turn_core

    @property
    def state(self) -> str:
        """The state of the current (or last) run or turn."""
        return self.__last.state

    @property
    def history(self) -> list[TransitionRecord]:
        return self.__last.history

    @property
    def tolerated(self) -> list[ToleratedEvent]:
        return self.__last.tolerated

    @property
    def run_id(self) -> str | None:
        """The current (or last) run's id (a turn's id, for an agent-session turn)."""
        return self.__last.run_id

    @property
    def thread_id(self) -> str | None:
        """The current (or last) run's thread (a turn's session, for an agent-session turn)."""
        return self.__last.thread_id

    @property
    def session_id(self) -> str | None:
        """The session of the current (or last) agent-session turn."""
        return self.__turn_core.thread_id if self.__turn_core is not None else None

    @property
    def turn_id(self) -> str | None:
        """The id of the current (or last) agent-session turn."""
        return self.__turn_core.run_id if self.__turn_core is not None else None

    @property
    def is_finished(self) -> bool:
        return self.__last.is_finished

    def current_turn(self) -> Turn | None:
        """The current (or last) agent-session turn, as of its latest event (or read)."""
        return self.__turn_core.current_turn() if self.__turn_core is not None else None

    def current_session(self) -> AgentSession | None:
        """The session of the current (or last) turn, as of its latest snapshot."""
        return self.__turn_core.current_session() if self.__turn_core is not None else None

    async def feed(self, event: AssistantStreamEvent) -> None:
        """Feed one stream event to the current run's core (without driving anything)."""
        await self.__core.feed(event)

    def hand_off(self) -> bool:
        """Stop driving the current run (or turn) at once and leave it to another process:
        nothing is cancelled on the server, and its lease is released so that any other
        holder (``runmachine worker``, a ``resume``) may take it over now. The entry point
        that was driving it raises the cancellation of its task. False when nothing is driven.
        """
        if self.__driving is None:
            return False
        self.__driving.hand_off()
        if self.__queued is not None:
            self.__queued.cancel()
        return True

    async def request_cancel(self) -> bool:
        """Record a local cancel request in the state machine (``RunCore.request_cancel``).
        Returns False when the state has nothing to cancel. Safe from hooks and from any task.

        During a driven run, the driver sends the cancel to the server as soon as it sees the
        request (tools already running finish first; their round is not submitted). To stop the
        tools at once too, cancel the task that drives the run (an anyio cancel scope)."""
        return await self.__last.request_cancel()

    def current_event(self) -> AssistantStreamEvent | None:
        return self.__core.current_event()

    def current_run(self) -> Run | None:
        """The run as of the latest lifecycle event (or poll)."""
        return self.__core.current_run()

    def current_message_snapshot(self) -> Message | None:
        return self.__core.current_message_snapshot()

    def current_run_step_snapshot(self) -> RunStep | None:
        return self.__core.current_run_step_snapshot()

    def final_run(self) -> Run:
        """The run as the server left it. Raises ``RuntimeError`` before a terminal state."""
        return self.__core.final_run()

    def final_messages(self) -> list[Message]:
        """Every message of the run, in the order they were created."""
        return self.__core.final_messages()

    def final_run_steps(self) -> list[RunStep]:
        return self.__core.final_run_steps()

    def text(self) -> str:
        """All the assistant text of the current (or last) run or turn: text blocks joined by
        newlines, messages by a blank line."""
        return self.__last.text()

    # ----------------------------------------------------------------------------------------
    # Hooks. Override any of them, with ``async def`` or a plain ``def``.
    # ----------------------------------------------------------------------------------------

    def on_tool_error(
        self, tool_call: ToolCallRecord, error: BaseException
    ) -> Awaitable[bool | str | None] | bool | str | None:
        """Called when a tool call gets an error output, before it is recorded and sent. Return
        True to fail the whole run instead (the driver cancels the server run and raises
        ``ToolFailed``), or a string: the error text the model gets instead (on agent sessions
        the default sends no exception text; this is how to send some)."""
        return None

    def on_approval_request(self, request: Any) -> Awaitable[Decision | None] | Decision | None:
        """Agent sessions: called for each approval the turn requires (the SDK's
        ``mcp_approval_request`` or ``computer_use_approval_request`` required action). Return
        ``"approve"``, ``"deny"`` or ``"cancel"``, or ``None`` to leave the turn waiting (the
        default: an approval nobody answered is never approved); ``resume(...,
        approvals=...)`` can answer it later, from any process."""
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

    def on_event(self, event: AssistantStreamEvent) -> Awaitable[None] | None:
        """Every event, before it is handled."""
        return None

    def on_run_step_created(self, run_step: RunStep) -> Awaitable[None] | None:
        return None

    def on_run_step_delta(self, delta: RunStepDelta, snapshot: RunStep) -> Awaitable[None] | None:
        return None

    def on_run_step_done(self, run_step: RunStep) -> Awaitable[None] | None:
        return None

    def on_tool_call_created(self, tool_call: ToolCall) -> Awaitable[None] | None:
        return None

    def on_tool_call_delta(
        self, delta: ToolCallDelta, snapshot: ToolCall
    ) -> Awaitable[None] | None:
        return None

    def on_tool_call_done(self, tool_call: ToolCall) -> Awaitable[None] | None:
        return None

    def on_message_created(self, message: Message) -> Awaitable[None] | None:
        return None

    def on_message_delta(self, delta: MessageDelta, snapshot: Message) -> Awaitable[None] | None:
        return None

    def on_message_done(self, message: Message) -> Awaitable[None] | None:
        return None

    def on_text_created(self, text: Text) -> Awaitable[None] | None:
        return None

    def on_text_delta(self, delta: TextDelta, snapshot: Text) -> Awaitable[None] | None:
        return None

    def on_text_done(self, text: Text) -> Awaitable[None] | None:
        return None

    def on_image_file_done(self, image_file: ImageFile) -> Awaitable[None] | None:
        return None


#: RunMachine's own public names (hooks aside): what a subclass's ``@tool`` method may not take.
_PUBLIC_API: frozenset[str] = frozenset(
    name
    for name in dir(RunMachine)
    if not name.startswith("_") and name not in HOOK_NAMES and name != "extra_transitions"
) | {"client", "ledger", "options"}


def importable_name(cls: type) -> str:
    """``module:Class`` for the ledger, importable later: a class of a script run directly
    (``__main__``) is named after the script's file, as ``python -m`` would import it."""
    module = cls.__module__
    if module == "__main__":
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        path = getattr(main, "__file__", None)
        if spec is not None and spec.name:
            module = spec.name
        elif path:
            stem = Path(path).stem
            if stem.isidentifier():
                module = stem
    return f"{module}:{cls.__qualname__}"


_SERVER_EVENTS = lifecycle.LIFECYCLE_EVENTS | lifecycle.TURN_LIFECYCLE_EVENTS


def _placed(event: Any, new: list[TransitionRecord]) -> list[Any]:
    """``event`` with the transitions recorded since the last event: the one it caused after it,
    the others (local triggers, polls) before it."""
    name = getattr(event, "event", None) or getattr(event, "type", None)
    if new and new[-1].trigger == name and name in _SERVER_EVENTS:
        return [*new[:-1], event, new[-1]]
    return [*new, event]


def _input(owner: str, input: str | Iterable[Any]) -> list[Any]:
    try:
        return input_messages(input)
    except OptionError as exc:
        raise OptionError(f"{owner}: {exc}") from None


def _check_approvals(owner: str, approvals: Mapping[str, str] | None) -> dict[str, str]:
    given = dict(approvals or {})
    for request_id, decision in given.items():
        if decision not in DECISIONS:
            raise OptionError(
                f"{owner}.resume(approvals=...): the decision for {request_id!r} is "
                f"{decision!r}; it must be 'approve', 'deny' or 'cancel'"
            )
    return given


def _prepare(cls: type[RunMachine]) -> None:
    """Find the hooks ``cls`` defines and build (or reuse) the engine of its table."""
    states = [*lifecycle.STATES]
    for row in cls.extra_transitions:
        states.extend(s for s in (row.source, row.dest) if s not in states)
    hooks = {
        name
        for name in HOOK_NAMES
        if getattr(cls, name, None) is not getattr(RunMachine, name, None)
    }
    # Hooks of the states a subclass adds are whatever methods it defines for them.
    hooks.update(
        f"on_{edge}_{state}"
        for state in states
        if state not in lifecycle.STATES
        for edge in ("enter", "exit")
        if callable(getattr(cls, f"on_{edge}_{state}", None))
    )
    cls._runmachine_hooks = frozenset(hooks)
    state_hooks = frozenset(h for h in hooks if h.startswith(("on_enter_", "on_exit_")))
    cls._runmachine_engine = engine_for(cls.lifecycle_rows(), state_hooks, cls.__name__)
    turn_hooks = frozenset(h for h in state_hooks if h.split("_", 2)[2] in lifecycle.TURN_STATES)
    cls._runmachine_turn_engine = engine_for(
        lifecycle.TURN_TRANSITIONS, turn_hooks, cls.__name__, lifecycle.TURN_STATES
    )


def _check_admission(where: str, admission: object) -> None:
    if admission is not None and not isinstance(admission, Admission):
        raise OptionError(
            f"{where} must be a runmachine.Admission or None, got "
            f"{type(admission).__module__}.{type(admission).__qualname__}"
            + (
                f" (for a limit of {admission} runs in flight, give Admission({admission}))"
                if isinstance(admission, int) and not isinstance(admission, bool)
                else ""
            )
        )


def _check_tools(cls: type[RunMachine]) -> None:
    """A ``@tool`` method may not take the name of one of RunMachine's own members."""
    for attribute, value in vars(cls).items():
        spec = spec_of(value)
        if spec is not None and (attribute in _PUBLIC_API or attribute in HOOK_NAMES):
            raise TypeError(
                f"{cls.__qualname__}.{attribute} is a @tool, but {attribute!r} is part of "
                "RunMachine's own API; give the method another name and keep the tool's name "
                f"with @tool(name={spec.name!r})"
            )


_prepare(RunMachine)
