"""What the emulated "model" does in a run: scripted scenarios, faults, and the default toy model.

A :class:`Scenario` is an immutable list of operations that one run executes in order:

* ``reply(text)`` - a ``message_creation`` step whose text streams one token per
  ``thread.message.delta`` (words carry their leading space, punctuation is its own delta);
* ``tool_round(calls)`` - one ``tool_calls`` step holding every call (parallel calls), streamed
  call after call, then ``thread.run.requires_action``; the run resumes after a valid submission;
* ``fail(code, message)`` - the run ends ``failed`` with ``last_error``;
* ``incomplete(reason)`` - the run ends ``incomplete``; a reply right before it ends
  ``thread.message.incomplete`` (reason ``max_tokens``);
* ``expire()`` - right after a tool round: the run is expired as soon as it reaches
  ``requires_action`` (a later submit gets the 400); elsewhere: the run expires on the spot;
* ``loop(calls, times=None, same_ids=False)`` - the same calls asked round after round (new call
  ids each round, or the very same ids with ``same_ids=True``), forever or ``times`` rounds;
* ``hang()`` - the run stays ``in_progress`` (an open stream only receives ``:`` comments) until
  it is cancelled or its ``expires_at`` passes.

When the operations run out the run completes; if the last thing that happened was a tool round,
the model first writes an answer quoting the submitted outputs.

The default toy model (used when no scenario applies) is deterministic:

1. It reads the last user message of the thread and looks for the names of the run's function
   tools in it (exact name, word-boundary match), in order of appearance.
2. The word "then" splits the message into phases: tools named after a "then" are called in a
   later round than tools named before it ("get_weather and get_rain, then slow_report" gives
   two rounds). Within a phase all tools are called in one round, in parallel, when
   ``parallel_tool_calls`` is true (the default); otherwise one tool per round.
3. Arguments come from each tool's JSON schema: only required properties; a string takes the
   first capitalised word of the message that is not its first word or a tool name (e.g.
   "Paris"), else the property's name; an enum takes its first value; integers and numbers are
   1; booleans are true; objects are built the same way; arrays are empty.
4. After the last round it answers quoting the outputs: ``get_weather returned "sunny".``
5. With no tool named it answers in text: ``You said: <the first 12 words of the message>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar, cast

import attrs

JSON = dict[str, Any]

#: The endpoints of the agent-sessions API (``runmachine.testing._sessions``).
SESSION_ENDPOINTS = frozenset(
    {
        "create_session",
        "retrieve_session",
        "session_events",
        "send_events",
        "retrieve_turn",
        "list_turns",
        "list_items",
        "list_turn_items",
    }
)

#: Every endpoint an :class:`HTTPFault` can name.
ENDPOINTS = SESSION_ENDPOINTS | frozenset(
    {
        "create_assistant",
        "retrieve_assistant",
        "list_assistants",
        "modify_assistant",
        "delete_assistant",
        "list_models",
        "retrieve_model",
        "create_thread",
        "create_message",
        "list_messages",
        "create_run",
        "create_thread_and_run",
        "retrieve_run",
        "list_runs",
        "cancel_run",
        "submit_tool_outputs",
        "list_run_steps",
        "retrieve_run_step",
    }
)


@attrs.frozen
class HTTPFault:
    """Answer the ``nth`` request (1-based) to ``endpoint`` with ``status`` and the real error
    envelope; ``retry_after`` (seconds) adds a ``retry-after`` header."""

    endpoint: str
    nth: int = 1
    status: int = 500
    retry_after: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {self.endpoint!r}; one of {sorted(ENDPOINTS)}")
        if self.nth < 1:
            raise ValueError("nth is 1-based")


def _int_map(value: Mapping[int, int] | None) -> Mapping[int, int]:
    return dict(value or {})


def _fault_tuple(value: Iterable[HTTPFault]) -> tuple[HTTPFault, ...]:
    return tuple(value)


@attrs.frozen
class Faults:
    """Faults injected into one run. Stream indices: 0 is the stream that created the run, n is
    the stream of the n-th accepted submission. Event counts include every SSE event sent on
    that stream (``thread.created`` and the run events too)."""

    drop_after: Mapping[int, int] = attrs.field(factory=dict, converter=_int_map)
    http_errors: Sequence[HTTPFault] = attrs.field(factory=tuple, converter=_fault_tuple)
    error_event: Mapping[int, int] = attrs.field(factory=dict, converter=_int_map)
    error_shape: Literal["bare", "wrapped"] | None = None
    unknown_event: Mapping[int, int] = attrs.field(factory=dict, converter=_int_map)
    malformed_data: Mapping[int, int] = attrs.field(factory=dict, converter=_int_map)
    undecodable_data: Mapping[int, int] = attrs.field(factory=dict, converter=_int_map)
    """Before the k-th event of stream n, a ``thread.message.delta`` whose data is not UTF-8."""
    hold_open: frozenset[int] = attrs.field(factory=frozenset, converter=frozenset)
    """Streams (by index) that, after their last event, send neither ``done`` nor an end: only
    keep-alive comments, for as long as the client listens."""
    null_data: Mapping[int, int] = attrs.field(factory=dict, converter=_int_map)
    """Before the k-th event of stream n, a repeat of the run's latest lifecycle event with
    ``data: null``."""
    delta_delay: float | None = None
    lose_submit_response: frozenset[int] = attrs.field(factory=frozenset, converter=frozenset)
    create_response_delay: float | None = None
    """Seconds between creating the run and answering the request that created it."""
    lose_create_response: bool = False
    """The run is created, then the connection is cut before the answer's body: the SDK retries
    the request (and is told the thread already has an active run)."""
    submit_response_delay: float | None = None
    """Seconds between taking a submission and answering it: a window in which the client can
    die after the server took its outputs."""


ToolCallSpec = tuple[str, str]  # (name, arguments as a JSON string)


def call_specs(calls: Iterable[tuple[str, Any]]) -> tuple[ToolCallSpec, ...]:
    out: list[ToolCallSpec] = []
    for name, args in calls:
        out.append((name, args if isinstance(args, str) else json.dumps(args)))
    if not out:
        raise ValueError("a tool round needs at least one call")
    return tuple(out)


@attrs.frozen
class Reply:
    text: str


@attrs.frozen
class ToolRound:
    calls: tuple[ToolCallSpec, ...]
    fixed_ids: tuple[str, ...] | None = None


@attrs.frozen
class Fail:
    code: str
    message: str


@attrs.frozen
class Incomplete:
    reason: str


@attrs.frozen
class Expire:
    pass


@attrs.frozen
class Loop:
    calls: tuple[ToolCallSpec, ...]
    times: int | None
    same_ids: bool


@attrs.frozen
class Hang:
    pass


@attrs.frozen
class AnswerOutputs:
    """Internal: write an answer quoting the last submitted outputs."""


Op = Reply | ToolRound | Fail | Incomplete | Expire | Loop | Hang | AnswerOutputs


BuilderT = TypeVar("BuilderT", bound="ScenarioBuilder")


class ScenarioBuilder:
    """The builders :class:`Scenario` and the agent-sessions ``TurnScenario`` share (attrs
    classes with ``ops`` and ``faults``): each returns a new object, so that one scenario can
    script many runs or turns."""

    ops: tuple[Any, ...]

    @classmethod
    def text(cls: type[BuilderT], text: str, **kwargs: Any) -> BuilderT:
        return cls(**kwargs).reply(text)

    def _add(self: BuilderT, op: Any) -> BuilderT:
        return cast(BuilderT, attrs.evolve(cast(Any, self), ops=(*self.ops, op)))

    def reply(self: BuilderT, text: str) -> BuilderT:
        return self._add(Reply(text))

    def tool_round(self: BuilderT, calls: Iterable[tuple[str, Any]]) -> BuilderT:
        return self._add(ToolRound(call_specs(calls)))

    def fail(
        self: BuilderT, code: str = "server_error", message: str = "Sorry, something went wrong."
    ) -> BuilderT:
        return self._add(Fail(code, message))

    def hang(self: BuilderT) -> BuilderT:
        return self._add(Hang())

    def with_faults(self: BuilderT, faults: Any) -> BuilderT:
        return cast(BuilderT, attrs.evolve(cast(Any, self), faults=faults))


@attrs.frozen
class Scenario(ScenarioBuilder):
    """What the model does in one run (see the module docstring)."""

    ops: tuple[Op, ...] = ()
    ttl: float | None = None
    faults: Faults = attrs.field(factory=Faults, validator=attrs.validators.instance_of(Faults))

    def incomplete(self, reason: str = "max_completion_tokens") -> Scenario:
        return self._add(Incomplete(reason))

    def expire(self) -> Scenario:
        return self._add(Expire())

    def loop(
        self, calls: Iterable[tuple[str, Any]], *, times: int | None = None, same_ids: bool = False
    ) -> Scenario:
        return self._add(Loop(call_specs(calls), times, same_ids))


ScenarioT = TypeVar("ScenarioT")


class Pending(Generic[ScenarioT]):
    """A scenario waiting for a run (or an agent-session turn), with its own request counters
    for the faults of the request that will create it."""

    def __init__(self, scenario: ScenarioT) -> None:
        self.scenario = scenario
        self.requests: dict[str, int] = {}


OpT = TypeVar("OpT")


class Program(Generic[OpT]):
    """The cursor of one run (or session turn) through its operations: ``Loop`` operations
    come out as one ``ToolRound`` per round."""

    def __init__(self, ops: Sequence[OpT]) -> None:
        self._ops = list(ops)
        self._pc = 0
        self._loop_count = 0
        self._loop_ids: tuple[str, ...] | None = None

    def next(self, new_ids: Any) -> OpT | ToolRound | None:
        while self._pc < len(self._ops):
            op = self._ops[self._pc]
            if isinstance(op, Loop):
                if op.times is None or self._loop_count < op.times:
                    self._loop_count += 1
                    if op.same_ids:
                        if self._loop_ids is None:
                            self._loop_ids = tuple(new_ids(len(op.calls)))
                        return ToolRound(op.calls, self._loop_ids)
                    return ToolRound(op.calls)
                self._pc += 1
                self._loop_count = 0
                self._loop_ids = None
                continue
            self._pc += 1
            return op
        return None

    def peek(self) -> OpT | None:
        return self._ops[self._pc] if self._pc < len(self._ops) else None


# --- the toy model ---------------------------------------------------------------------------

_WORD_RE = re.compile(r"[A-Za-z][\w'-]*")


def _schema_value(schema: Any, name: str, word: str | None) -> Any:
    if not isinstance(schema, dict):
        return name
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "string":
        return word or name
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return _schema_object(schema, word)
    if kind == "null":
        return None
    return word or name


def _schema_object(schema: JSON, word: str | None) -> JSON:
    props = schema.get("properties") or {}
    required = schema.get("required") or []
    return {key: _schema_value(props.get(key), key, word) for key in required}


def toy_arguments(parameters: Any, message: str, tool_names: Iterable[str]) -> str:
    names = set(tool_names)
    words = _WORD_RE.findall(message)
    word = next(
        (w for i, w in enumerate(words) if i > 0 and w[:1].isupper() and w not in names), None
    )
    schema = parameters if isinstance(parameters, dict) else {}
    return json.dumps(_schema_object(schema, word))


def toy_program(message: str, tools: Sequence[JSON], parallel: bool) -> list[Op]:
    """Plan a run of the toy model for the last user message (see the module docstring)."""
    functions = {
        t["function"]["name"]: t["function"]
        for t in tools
        if t.get("type") == "function" and isinstance(t.get("function"), dict)
    }
    rounds: list[list[ToolCallSpec]] = []
    for phase in re.split(r"\bthen\b", message):
        found: list[tuple[int, str]] = []
        for name in functions:
            match = re.search(r"(?<![\w])" + re.escape(name) + r"(?![\w])", phase)
            if match:
                found.append((match.start(), name))
        calls = [
            (name, toy_arguments(functions[name].get("parameters"), message, functions))
            for _, name in sorted(found)
        ]
        if not calls:
            continue
        if parallel:
            rounds.append(calls)
        else:
            rounds.extend([call] for call in calls)
    if not rounds:
        words = message.split()
        echo = " ".join(words[:12]) if words else "nothing"
        return [Reply(f"You said: {echo}")]
    ops: list[Op] = [ToolRound(tuple(r)) for r in rounds]
    ops.append(AnswerOutputs())
    return ops


def answer_from_outputs(outputs: Sequence[tuple[str, str]]) -> str:
    if not outputs:
        return "Done."
    parts = [f"{name} returned {json.dumps(output)}." for name, output in outputs]
    return " ".join(parts)
