"""What the emulated agent does in one agent-session turn: scenarios, faults, the toy model.

A :class:`TurnScenario` is an immutable list of operations that one turn executes in order:

* ``reply(text)`` - an assistant ``message`` item whose text streams one token per
  ``agent.session.turn.output_text.delta`` (tokens as in the Assistants emulator: words carry
  their leading space, punctuation is its own delta);
* ``tool_round(calls)`` - one ``function_call`` item per call (parallel calls), then
  ``agent.session.requires_action``; the turn goes on once every call has a result;
* ``approval(kind="mcp" | "computer_use", ...)`` - one approval request as the session's required
  action; approved, an MCP request runs (an ``mcp_call`` item); denied or cancelled, the turn
  goes on without it;
* ``fail(code, message)`` - the turn fails with ``error = {code, message}`` (``code`` is one of
  :data:`TURN_ERROR_CODES`, the SDK's ``SessionTurnError`` codes); the session stays usable;
* ``session_fail(message)`` - the turn fails and the whole session with it (``status: failed``);
* ``hang()`` - the turn stays ``in_progress`` (an open stream only receives keep-alives) until it
  is cancelled;
* ``loop(calls, times=None)`` - the same calls asked round after round (new call ids each
  round), forever or ``times`` rounds.

When the operations run out the turn completes; if the last thing that happened was a tool round
or an approval, the agent first writes an answer about it (quoting the tool outputs the way the
Assistants toy model does: ``get_weather returned "sunny".``).

With no scenario queued, the toy model of the Assistants emulator plans the turn
(:func:`toy_turn_program`): it reads the turn's user input and calls the agent's function tools
that the input names ("then" splits rounds, the tools of one round are called in parallel), and
with no tool named answers ``You said: <the first 12 words>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import attrs

from runmachine.testing._model import (
    JSON,
    SESSION_ENDPOINTS,
    AnswerOutputs,
    Fail,
    Hang,
    HTTPFault,
    Loop,
    Reply,
    ScenarioBuilder,
    ToolRound,
    call_specs,
    toy_program,
)

#: The ``code`` values of a failed turn's ``error`` (the SDK's ``SessionTurnError``).
TURN_ERROR_CODES = frozenset(
    {
        "context_length_exceeded",
        "max_output_tokens",
        "usage_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
        "billing_not_active",
        "credit_balance_exhausted",
        "rate_limit_exceeded",
        "flex_unavailable",
        "server_overloaded",
        "cyber_policy",
        "misalignment_policy_violation",
        "connection_failed",
        "server_error",
        "authentication_error",
        "invalid_request",
        "resource_not_found",
        "sandbox_error",
        "executor_version_incompatible",
        "active_turn_not_steerable",
        "request_timeout",
        "internal_error",
    }
)

ApprovalKind = Literal["mcp", "computer_use"]


@attrs.frozen
class Approval:
    """Ask for one approval: an MCP tool call (``server_label``, ``name``, ``arguments``,
    ``message``) or a browser origin access (``origin``, ``reason``)."""

    kind: ApprovalKind
    server_label: str
    name: str
    arguments: Any
    message: str
    origin: str
    reason: str | None


@attrs.frozen
class SessionFail:
    message: str


TurnOp = Reply | ToolRound | Approval | Fail | SessionFail | Loop | Hang | AnswerOutputs


def _indices(minimum: int) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: frozenset[int]) -> None:
        if any(not isinstance(i, int) or isinstance(i, bool) or i < minimum for i in value):
            raise ValueError(f"{attribute.name} holds whole numbers >= {minimum}")

    return check


def _delay(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value >= 0:
        raise ValueError(f"{attribute.name} is a number of seconds >= 0")


def _session_faults(value: Iterable[HTTPFault]) -> tuple[HTTPFault, ...]:
    faults = tuple(value)
    for fault in faults:
        if not isinstance(fault, HTTPFault):
            raise TypeError(f"http_errors holds HTTPFault objects, not {fault!r}")
        if fault.endpoint not in SESSION_ENDPOINTS:
            raise ValueError(
                f"{fault.endpoint!r} is not an agent-sessions endpoint; one of "
                f"{sorted(SESSION_ENDPOINTS)}"
            )
    return faults


def _count(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{attribute.name} is a whole number >= 0")


@attrs.frozen
class TurnFaults:
    """What the agent-sessions wire does wrong in one turn.

    Event indices count every event the server emits for the turn, from its
    ``agent.session.turn.created`` (0) to the ``agent.session.idle`` (or ``failed``) that ends
    it, session snapshots included; the status event a stream gets on connecting is not one."""

    drop_at: frozenset[int] = attrs.field(
        factory=frozenset, converter=frozenset, validator=_indices(0)
    )
    """Right before the turn's k-th event, every event stream then carrying the session (the
    ``GET .../events`` subscribers and a ``create(stream=True)`` answer) is cut: the connection
    closes without its final chunk. The event still happens; those streams never get it."""
    duplicate: frozenset[int] = attrs.field(
        factory=frozenset, converter=frozenset, validator=_indices(0)
    )
    """The turn's k-th event is sent twice, with the same ``event_id``."""
    lose_result_response: frozenset[int] = attrs.field(
        factory=frozenset, converter=frozenset, validator=_indices(1)
    )
    """The n-th ``tool_result`` POST of the turn (1-based, every such POST counted) is answered
    (applied, or replayed for its Idempotency-Key), then its connection is cut before the
    answer's body: the client sees a dropped connection."""
    pending_race: int = attrs.field(default=0, validator=_count)
    """The first N POSTs carrying a valid result for each call are answered with the 400
    ``Unknown pending tool call: <call_id>`` (nothing applied), as when a result beats the
    server's registration of the call."""
    http_errors: tuple[HTTPFault, ...] = attrs.field(factory=tuple, converter=_session_faults)
    """Error answers on the agent-sessions endpoints; ``nth`` counts the requests that concern
    this turn (see ``runmachine.testing._sessions``)."""
    delta_delay: float | None = attrs.field(default=None, validator=_delay)
    """Seconds between streamed deltas (and between the calls of a round); the emulator's
    ``delta_delay`` when None."""
    start_delay: float | None = attrs.field(default=None, validator=_delay)
    """Seconds the turn stays ``queued`` after ``agent.session.turn.created``."""


def _check_code(instance: Any, attribute: attrs.Attribute[Any], value: tuple[TurnOp, ...]) -> None:
    for op in value:
        if isinstance(op, Fail) and op.code not in TURN_ERROR_CODES:
            raise ValueError(
                f"unknown turn error code {op.code!r}; one of {sorted(TURN_ERROR_CODES)}"
            )


@attrs.frozen
class TurnScenario(ScenarioBuilder):
    """What the agent does in one turn (see the module docstring): ``reply``, ``tool_round``,
    ``fail``, ``hang``, ``with_faults`` and ``TurnScenario.text`` as for ``Scenario``, and
    ``approval``, ``session_fail`` and ``loop`` below. The faults are a :class:`TurnFaults`;
    ``fail`` takes a code of :data:`TURN_ERROR_CODES`."""

    ops: tuple[TurnOp, ...] = attrs.field(default=(), validator=_check_code)
    faults: TurnFaults = attrs.field(
        factory=TurnFaults, validator=attrs.validators.instance_of(TurnFaults)
    )

    def approval(
        self,
        kind: ApprovalKind = "mcp",
        *,
        server_label: str = "docs",
        name: str = "search_docs",
        arguments: Any = None,
        message: str | None = None,
        origin: str = "https://example.com",
        reason: str | None = "The page needs this origin.",
    ) -> TurnScenario:
        if kind not in ("mcp", "computer_use"):
            raise ValueError("kind is 'mcp' or 'computer_use'")
        args = {"query": "emulator"} if arguments is None else arguments
        text = message if message is not None else f"Allow {name} on {server_label}?"
        return self._add(Approval(kind, server_label, name, args, text, origin, reason))

    def session_fail(self, message: str = "The session failed.") -> TurnScenario:
        return self._add(SessionFail(message))

    def loop(self, calls: Iterable[tuple[str, Any]], *, times: int | None = None) -> TurnScenario:
        return self._add(Loop(call_specs(calls), times, same_ids=False))


def toy_turn_program(message: str, tools: Sequence[JSON]) -> list[TurnOp]:
    """Plan a turn of the toy model: the Assistants toy model, given the agent's function tools
    (the agents format, ``{"type": "function", "name", "parameters", ...}``), parallel calls."""
    functions = [
        {"type": "function", "function": tool}
        for tool in tools
        if tool.get("type") == "function" and isinstance(tool.get("name"), str)
    ]
    return [op for op in toy_program(message, functions, True) if isinstance(op, TurnOp)]
