"""The agent-sessions API on the emulator: sessions, turns, items, the event stream, its faults.

The same :class:`~runmachine.testing.Emulator` (same app, same ``/v1`` base URL) serves what
``client.beta.agents.sessions`` of the openai SDK (3.57) calls:

* ``POST /agents/sessions`` - create a session; with ``input`` its first turn starts; with
  ``stream: true`` the answer is an event stream (see below);
* ``GET /agents/sessions/{id}`` - the session (``status``: ``idle | in_progress |
  requires_action | failed``, ``required_actions``);
* ``GET /agents/sessions/{id}/events`` - the session's live event stream;
* ``POST /agents/sessions/{id}/events`` - input events (``Idempotency-Key`` honoured), answered
  ``202`` with an empty body;
* ``GET /agents/sessions/{id}/turns``, ``.../turns/{turn_id}`` - turns (cursor pages, ``order``
  ``desc`` by default, ``limit``, ``after``);
* ``GET /agents/sessions/{id}/items``, ``.../turns/{turn_id}/items`` - items, the same way.

Every payload passes the SDK's strict response validation. Ids: ``sess_``, ``turn_``, ``msg_``
(messages), ``fc_`` (function-call items), ``call_`` (call ids), ``fco_`` (function-call output
items), ``mcp_`` (MCP call items), ``apr_`` (approval request ids), ``event_`` (event ids).

One turn's events, in order (each carries a fresh ``event_id``; those whose type has the fields
carry ``session_id`` and ``turn_id``):

1. ``agent.session.turn.created`` (turn ``queued``), ``agent.session.in_progress`` (session
   snapshot), ``agent.session.turn.in_progress``;
2. per operation of the scenario (``runmachine.testing._turns``):

   * a reply: ``turn.item.added`` (assistant ``message``, ``in_progress``, no content),
     ``turn.content_part.added``, one ``turn.output_text.delta`` per token,
     ``turn.output_text.done``, ``turn.content_part.done``, ``turn.item.done`` (``completed``,
     the whole text). Its ``phase`` is ``final_answer`` when nothing follows it in the turn,
     else ``commentary``;
   * a tool round: per call ``turn.item.added`` (``function_call``, ``in_progress``,
     ``arguments`` as JSON text) and ``turn.item.done`` (``completed``); then
     ``agent.session.requires_action`` (the round's ``function_call`` required actions; the
     turn is ``waiting``). Once every call has a result: per call ``turn.item.added`` of a
     ``function_call_output`` item (``completed``, or ``failed`` for ``success: false``), then
     ``agent.session.in_progress`` (the turn is ``in_progress`` again; no second
     ``turn.in_progress`` event);
   * an approval: ``agent.session.requires_action`` with one ``mcp_approval_request`` or
     ``computer_use_approval_request`` (``browser_origin_access``); once answered
     ``agent.session.in_progress``, then for an approved MCP request an ``mcp_call`` item
     (``turn.item.added`` ``in_progress``, ``turn.item.done`` ``completed`` with an output);
   * ``fail``: ``agent.session.turn.failed`` (``error`` set), ``agent.session.idle``;
   * ``session_fail``: ``agent.session.turn.failed`` (error code ``internal_error``),
     ``agent.session.failed`` (session ``failed``, ``error`` the message; it takes no more
     input);
   * ``hang``: nothing (keep-alives) until cancelled;
   * ``loop``: tool rounds as above, new call ids each round;

   when the operations run out after a tool round or an approval, a reply about it (quoting the
   tool outputs) comes first;
3. ``agent.session.turn.completed`` (``usage``), ``agent.session.idle``. A cancelled turn ends
   with ``turn.item.done`` of a message it was writing (``incomplete``), then
   ``agent.session.turn.cancelled``, ``agent.session.idle``.

Reconstructions (the SDK defines the shapes, not these behaviours; nothing here was checked
against the live service):

* A ``function_call_output`` item is announced by ``turn.item.added`` only: the SDK's
  ``turn.item.done`` takes agent output items, which have no ``function_call_output`` kind.
  User input messages appear in the items lists, not on the stream.
* ``GET .../events`` is one long-lived stream per connection, live only (no replay): on
  connecting it first gets the session's current status event (``agent.session.idle``,
  ``.in_progress``, ``.requires_action`` or ``.failed``, with a full snapshot and a fresh
  ``event_id``), then every later event of the session, for as long as it stays connected;
  ``: keep-alive`` comments every ``keepalive_interval`` idle seconds. Frames are
  ``data: {json}`` without an ``event:`` line. It never ends on its own: it ends when the client
  goes away, ``close_streams()`` or ``reset()`` cuts it (both also stop the turns where they
  are, as for runs: the server is going away), or a fault does.
* ``create(stream=True)`` streams ``agent.session.created`` (a snapshot taken before the first
  turn exists: ``idle``), then the first turn's events, and ends (a clean end of the body, no
  ``[DONE]``) after the ``agent.session.idle`` (or ``agent.session.failed``) that ends that
  turn. ``stream: true`` without ``input`` is refused (400) unless the environment is
  ``self_hosted`` (the SDK's docstring); then the stream ends after the first turn started by
  ``events.create``. Without ``stream``, ``input`` is optional for every environment (the SDK
  says it is required with ``environment: none``; the emulator is lenient so that a client can
  create an idle session and subscribe before its first input). The JSON answer is the session
  as it is after its first turn was queued (``in_progress`` when ``input`` was given).
* Events carry ``obfuscation`` padding unless ``include_obfuscation=false`` (the stream's query)
  or ``stream_options.include_obfuscation: false`` (create).
* ``agent.session.input.message`` during a turn is refused with a 400 naming the active turn
  (code ``active_turn_not_steerable``); the SDK's docs speak of steering a turn, which the
  emulator does not do. On a failed session it is a 400 too.
* A function call can be answered from the moment ``agent.session.requires_action`` lists it.
  A result that comes earlier (between its ``turn.item.added`` and the required action; only
  possible with a ``delta_delay``) gets the SDK's registration race, the 400
  ``Unknown pending tool call: <call_id>`` (code ``invalid_request_error``), as does a call never
  asked; ``TurnFaults.pending_race`` forces that answer. A second result for an answered call
  gets the 409 ``Tool call <call_id> already has a result`` (code ``conflict``); a result naming
  a turn that is not the session's active turn, a 400. Every 409 carries ``x-should-retry:
  false`` (the SDK would otherwise retry it). Approval answers work the same way
  (``Unknown pending approval request: <id>``, ``Approval request <id> already has a result``).
* ``TurnFaults.lose_result_response``: the POST is answered (applied, or replayed), then its
  connection is cut after the headers (the emulator's aborted answer, as for the Assistants
  faults): the SDK sees a connection error and retries the POST with the same headers.
* ``Idempotency-Key``: an answer that applied the POST (202) or refused it with a 409 is kept,
  per session; the same key again gets that answer again (same status and body; nothing is
  applied; counted as a replay), or a 409 when the body differs. A 400 is not kept (a result
  refused by the registration race must be able to succeed on retry with its key).
* One POST may carry several events: all are checked first (shapes, then the session's state,
  in order); a refusal applies none of them.
* ``agent.session.input.cancel`` ends the active turn before its 202 is sent (the turn is
  ``cancelled`` and its last events are on the streams when the POST returns); with no active
  turn: 202 and nothing happens.
* Which requests ``TurnFaults.http_errors`` count: a request naming a turn counts for it;
  another request to a session counts for its active turn, else its latest turn;
  ``create_session`` counts for the scenario the first turn will take (the head of the queue)
  when ``input`` is given.
* Agent tools echo the agents format with the server's defaults; ``tool_search`` is accepted and
  not echoed (the SDK has no shape for it in an agent). With ``agent_id`` and no ``agent.model``
  the agent's model is ``gpt-5``. Environments echo ``none``, ``openai_hosted`` (without files,
  plugins or skills) and ``self_hosted`` with generated ids.
* Usage is made up: 50 input tokens plus a quarter of the input's characters; one output token
  per streamed token and 10 per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import secrets
import string
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from runmachine.testing import _objects as ob
from runmachine.testing._model import (
    AnswerOutputs,
    Fail,
    Hang,
    Pending,
    Program,
    Reply,
    ToolRound,
    answer_from_outputs,
)
from runmachine.testing._turns import (
    Approval,
    SessionFail,
    TurnFaults,
    TurnOp,
    TurnScenario,
    toy_turn_program,
)

if TYPE_CHECKING:
    import threading

    from starlette.requests import Request
    from starlette.responses import Response

JSON = dict[str, Any]

_END = object()  # ends a stream's body cleanly
_CUT = object()  # cuts a stream's connection

MESSAGE = "agent.session.input.message"
TOOL_RESULT = "agent.session.input.tool_result"
MCP_RESULT = "agent.session.input.mcp_approval_request_result"
COMPUTER_RESULT = "agent.session.input.computer_use_approval_request_result"
CANCEL = "agent.session.input.cancel"
INPUT_TYPES = (MESSAGE, TOOL_RESULT, MCP_RESULT, COMPUTER_RESULT, CANCEL)

_DECISIONS = ("approve", "deny", "cancel")
_NO_RETRY = {"x-should-retry": "false"}
_PAD = string.ascii_letters + string.digits


@attrs.frozen
class TurnStats:
    """What the server saw of one turn. ``result_posts`` counts every ``tool_result`` POST that
    reached the turn (replayed and refused ones too); ``keys`` their Idempotency-Keys, in order;
    ``results_applied`` how many results each call asked in the turn took (never more than 1);
    ``outputs`` the applied ``tool_result`` event of each answered call; ``replays`` answers
    given again for a known Idempotency-Key; ``conflicts`` 409s sent (replayed ones too);
    ``races`` registration-race
    400s (``Unknown pending tool call`` for a call the turn asked); ``approvals`` request id ->
    decision; ``cancels`` cancel inputs applied while the turn was the session's current one;
    ``requests`` requests per endpoint counted for the turn's faults."""

    turn_id: str
    session_id: str
    status: str
    rounds: int
    results_applied: Mapping[str, int]
    result_posts: int
    replays: int
    conflicts: int
    races: int
    approvals: Mapping[str, str]
    cancels: int
    keys: tuple[str, ...]
    outputs: Mapping[str, JSON]
    requests: Mapping[str, int]


class _Subscriber:
    """One open event stream of a session: a queue of events (or ``_END``/``_CUT``)."""

    def __init__(self, obfuscate: bool, until_turn_end: bool) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.obfuscate = obfuscate
        self.until_turn_end = until_turn_end

    async def send_item(self, item: Any, out: Any, gone: asyncio.Event) -> bool | None:
        if item is _CUT:
            return False
        if item is _END:
            return True
        data = item
        if self.obfuscate:
            pad = "".join(secrets.choice(_PAD) for _ in range(8 + secrets.randbelow(24)))
            data = {**item, "obfuscation": pad}
        await out(b"data: " + ob.dumps(data).encode() + b"\n\n")
        return None


@attrs.define
class _Counts:
    """What a turn's :class:`TurnStats` count."""

    rounds: int = 0
    result_posts: int = 0
    replays: int = 0
    conflicts: int = 0
    races: int = 0
    cancels: int = 0


class _Turn:
    """Mutable server-side record of one turn (guarded by the emulator lock)."""

    def __init__(
        self, data: JSON, session: _Session, faults: TurnFaults, ops: Iterable[TurnOp]
    ) -> None:
        self.data = data
        self.session = session
        self.faults = faults
        self.program: Program[TurnOp] = Program(list(ops))
        self.items: list[JSON] = []
        self.outputs_count = 0
        self.events = 0
        self.input_tokens = 50
        self.output_tokens = 0
        self.open_message: JSON | None = None  # the assistant message being written
        self.open_index: int | None = None
        self.asked: dict[str, str] = {}  # call id -> function name, every round
        self.pending: dict[str, JSON] = {}  # call id -> required action, this round
        self.results: dict[str, JSON] = {}  # call id -> applied tool_result event
        self.pending_approvals: dict[str, JSON] = {}
        self.approvals: dict[str, str] = {}
        self.race_counts: dict[str, int] = {}
        self.notes: list[str] = []
        self.answer_due = False
        self.cancel_requested = False
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.requests: dict[str, int] = {}
        self.counts = _Counts()
        self.applied: dict[str, int] = {}  # call id -> results applied
        self.keys: list[str] = []

    @property
    def id(self) -> str:
        return str(self.data["id"])

    def stats(self) -> TurnStats:
        return TurnStats(
            turn_id=self.id,
            session_id=self.session.id,
            status=str(self.data["status"]),
            results_applied={call: self.applied.get(call, 0) for call in self.asked},
            approvals=dict(self.approvals),
            keys=tuple(self.keys),
            outputs=copy.deepcopy(self.results),
            requests=dict(self.requests),
            **attrs.asdict(self.counts),
        )


@attrs.define
class _Reply:
    """A kept answer to an Idempotency-Key."""

    status: int
    body: bytes
    fingerprint: str
    turn: _Turn | None


class _Session:
    def __init__(self, data: JSON) -> None:
        self.data = data
        self.turns: list[_Turn] = []
        self.items: list[JSON] = []
        self.subscribers: list[_Subscriber] = []
        self.active: _Turn | None = None
        self.replies: dict[str, _Reply] = {}

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def current(self) -> _Turn | None:
        """The active turn, else the latest one."""
        if self.active is not None:
            return self.active
        return self.turns[-1] if self.turns else None


class SessionsState:
    """Every session, turn and queued turn scenario of an emulator."""

    def __init__(self) -> None:
        self.sessions: dict[str, _Session] = {}
        self.turns: dict[str, _Turn] = {}
        self.queue: deque[Pending[TurnScenario]] = deque()

    def abandon(self) -> None:
        """Stop every turn and cut every stream (on the server loop)."""
        for turn in self.turns.values():
            if turn.task is not None:
                turn.task.cancel()
        for session in self.sessions.values():
            for subscriber in session.subscribers:
                subscriber.queue.put_nowait(_CUT)
            session.subscribers.clear()


class _TurnCancelled(Exception):
    pass


# --- objects ----------------------------------------------------------------------------------

Problem = tuple[str, str | None]  # (message, param) of a 400


def _event(kind: str, **fields: Any) -> JSON:
    return {"type": kind, "event_id": ob.new_id("event"), **copy.deepcopy(fields)}


def token_usage(input_tokens: int, output_tokens: int) -> JSON:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _sum_usage(usage: JSON | None, more: JSON) -> JSON:
    if usage is None:
        return copy.deepcopy(more)
    return token_usage(
        usage["input_tokens"] + more["input_tokens"],
        usage["output_tokens"] + more["output_tokens"],
    )


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _mcp_transport(raw: Any) -> JSON:
    raw = raw if isinstance(raw, dict) else {}
    if raw.get("type") == "stdio":
        return {
            "type": "stdio",
            "command": str(raw.get("command", "")),
            "args": _strings(raw.get("args")),
            "cwd": str(raw.get("cwd", "/")),
            "env_vars": _strings(raw.get("env_vars")),
        }
    return {"type": "http", "server_url": str(raw.get("server_url", ""))}


def agent_tool(tool: Any, index: int) -> JSON | Problem | None:
    """A tool as the session echoes it (None: accepted, not echoed)."""
    param = f"agent.tools[{index}]"
    if not isinstance(tool, dict):
        return f"Invalid type for '{param}': expected an object.", param
    kind = tool.get("type")
    if kind == "function":
        if not isinstance(tool.get("name"), str):
            return f"Missing required parameter: '{param}.name'.", f"{param}.name"
        out: JSON = {
            "type": "function",
            "name": tool["name"],
            "description": str(tool.get("description") or ""),
            "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
            "defer_loading": bool(tool.get("defer_loading", False)),
        }
        if "async" in tool:
            out["async"] = bool(tool["async"])
        return out
    if kind == "mcp":
        return {
            "type": "mcp",
            "server_label": str(tool.get("server_label", "")),
            "transport": _mcp_transport(tool.get("transport")),
            "allowed_tools": tool.get("allowed_tools"),
            "connection_origin": tool.get("connection_origin") or "service",
            "credential_id": tool.get("credential_id"),
            "request_metadata": tool.get("request_metadata") or {},
            "required": bool(tool.get("required", False)),
        }
    if kind == "web_search":
        return {
            "type": "web_search",
            "allowed_domains": tool.get("allowed_domains"),
            "context_size": tool.get("context_size") or "medium",
            "location": tool.get("location"),
            "mode": tool.get("mode") or "live",
        }
    if kind == "computer_use":
        return {
            "type": "computer_use",
            "include_screenshots": bool(tool.get("include_screenshots")),
        }
    if kind == "programmatic_tool_calling":
        return {"type": kind, "enabled": bool(tool.get("enabled", True))}
    if kind == "automations":
        return {"type": kind}
    if kind == "tool_search":
        return None
    return f"Invalid value: '{kind}'. Supported values are the agent tool types.", f"{param}.type"


def agent_obj(body: JSON) -> JSON | Problem:
    agent = body.get("agent")
    agent_id = body.get("agent_id")
    if agent is not None and not isinstance(agent, dict):
        return "Invalid type for 'agent': expected an object.", "agent"
    agent = agent or {}
    if agent_id is None and not agent.get("model"):
        return "Missing required parameter: 'agent.model'.", "agent.model"
    if agent_id is not None and not isinstance(agent_id, str):
        return "Invalid type for 'agent_id': expected a string.", "agent_id"
    tools: list[JSON] = []
    raw_tools = agent.get("tools") or []
    if not isinstance(raw_tools, list):
        return "Invalid type for 'agent.tools': expected an array.", "agent.tools"
    for index, raw in enumerate(raw_tools):
        tool = agent_tool(raw, index)
        if isinstance(tool, tuple):
            return tool
        if tool is not None:
            tools.append(tool)
    multi = agent.get("multi_agent") or {}
    enabled = bool(multi.get("enabled", False))
    reasoning = agent.get("reasoning") or {}
    text = agent.get("text") or {}
    return {
        "id": agent_id or ob.new_id("agent"),
        "name": None,
        "model": str(agent.get("model") or "gpt-5"),
        "instructions": agent.get("instructions"),
        "multi_agent": {
            "enabled": enabled,
            "max_concurrent_subagents": (multi.get("max_concurrent_subagents") or 6)
            if enabled
            else None,
        },
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "service_tier": agent.get("service_tier") or "auto",
        "text": {
            "format": copy.deepcopy(text.get("format") or {"type": "text"}),
            "verbosity": text.get("verbosity") or "medium",
        },
        "tools": tools,
        "compaction": {"async": bool((agent.get("compaction") or {}).get("async", False))},
        "experimental": {
            "time_awareness": bool((agent.get("experimental") or {}).get("time_awareness", False))
        },
    }


def environment_obj(raw: Any) -> JSON | Problem:
    if raw is None:
        return "Missing required parameter: 'environment'.", "environment"
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "none":
        return {"type": "none"}
    assert isinstance(raw, dict) or kind is None
    if kind == "openai_hosted":
        network = raw.get("network") or {}
        desktop = raw.get("desktop") or {}
        return {
            "type": "openai_hosted",
            "id": str(raw.get("environment_id") or ob.new_id("env")),
            "capability_directories": _strings(raw.get("capability_directories")),
            "files": [],
            "network": {
                "access": network.get("access") or "disabled",
                "allowed_domains": _strings(network.get("allowed_domains")),
            },
            "packages": {
                key: _strings((raw.get("packages") or {}).get(key))
                for key in ("npm", "python", "system")
            },
            "plugins": [],
            "skills": [],
            "container_size": raw.get("container_size") or "medium",
            "desktop": {"enabled": bool(desktop.get("enabled", False))},
        }
    if kind == "self_hosted":
        env_id = ob.new_id("env")
        return {
            "type": "self_hosted",
            "id": env_id,
            "capability_directories": _strings(raw.get("capability_directories")),
            "remote_url": f"wss://emulator.invalid/v1/agents/environments/{env_id}",
            "workspace_directory": str(raw.get("workspace_directory") or "/workspace"),
        }
    return (
        f"Invalid value: '{kind}'. Supported values are: 'none', 'openai_hosted' and "
        "'self_hosted'.",
        "environment.type",
    )


def input_messages(raw: Any, param: str) -> list[list[JSON]] | Problem:
    """The content of each user message an ``input`` gives (a string is one message)."""
    if isinstance(raw, str):
        if not raw:
            return f"Invalid value for '{param}': it must not be empty.", param
        return [[{"type": "input_text", "text": raw}]]
    if not isinstance(raw, list) or not raw:
        return f"Invalid value for '{param}': expected a string or a non-empty array.", param
    messages: list[list[JSON]] = []
    for index, message in enumerate(raw):
        where = f"{param}[{index}]"
        if not isinstance(message, dict) or message.get("role") != "user":
            return f"Invalid value for '{where}': expected a user message.", where
        if message.get("type", "message") != "message":
            return f"Invalid value for '{where}.type': expected 'message'.", f"{where}.type"
        content = message.get("content")
        parts: list[JSON] = []
        for n, part in enumerate(content if isinstance(content, list) else [None]):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "input_text" and isinstance(part.get("text"), str):
                parts.append({"type": "input_text", "text": part["text"]})
            elif kind == "input_image" and isinstance(part.get("image_url"), str):
                parts.append({"type": "input_image", "image_url": part["image_url"]})
            else:
                return (
                    f"Invalid value for '{where}.content[{n}]': expected input_text or "
                    "input_image content.",
                    f"{where}.content",
                )
        if not parts:
            return f"Invalid value for '{where}.content': it must not be empty.", f"{where}.content"
        messages.append(parts)
    return messages


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return " ".join(
            str(p.get("text", "")) for p in output if isinstance(p, dict) and "text" in p
        )
    return ""


def _input_problem(index: int, event: Any) -> Problem | None:
    """What is wrong with the shape of one input event, if anything."""
    where = f"events[{index}]"
    if not isinstance(event, dict):
        return f"Invalid type for '{where}': expected an object.", where
    kind = event.get("type")
    if kind is None:
        return f"Missing required parameter: '{where}.type'.", f"{where}.type"
    if kind not in INPUT_TYPES:
        names = ", ".join(f"'{t}'" for t in INPUT_TYPES[:-1])
        return (
            f"Invalid value: '{kind}'. Supported values are: {names} and '{INPUT_TYPES[-1]}'.",
            f"{where}.type",
        )
    if kind == MESSAGE:
        if "input" not in event:
            return f"Missing required parameter: '{where}.input'.", f"{where}.input"
        found = input_messages(event["input"], f"{where}.input")
        return found if isinstance(found, tuple) else None
    if kind == TOOL_RESULT:
        for key in ("turn_id", "call_id"):
            if not isinstance(event.get(key), str):
                return f"Missing required parameter: '{where}.{key}'.", f"{where}.{key}"
        if not isinstance(event.get("success"), bool):
            return f"Missing required parameter: '{where}.success'.", f"{where}.success"
        output = event.get("output")
        if output is not None and not isinstance(output, str | list):
            return f"Invalid type for '{where}.output': expected a string or an array.", (
                f"{where}.output"
            )
        if event.get("error") is not None and not isinstance(event["error"], str):
            return f"Invalid type for '{where}.error': expected a string.", f"{where}.error"
        return None
    if kind in (MCP_RESULT, COMPUTER_RESULT):
        if not isinstance(event.get("request_id"), str):
            return f"Missing required parameter: '{where}.request_id'.", f"{where}.request_id"
        response = event.get("response")
        expected = "mcp_tool_call" if kind == MCP_RESULT else "browser_origin_access"
        if not isinstance(response, dict) or response.get("type") != expected:
            return (
                f"Invalid value for '{where}.response': expected a '{expected}' response.",
                f"{where}.response",
            )
        if response.get("decision") not in _DECISIONS:
            return (
                f"Invalid value: '{response.get('decision')}'. Supported values are: 'approve', "
                "'deny' and 'cancel'.",
                f"{where}.response.decision",
            )
    return None


def _approval_note(op: Approval, decision: str, output: str) -> str:
    done = {"approve": "approved", "deny": "denied", "cancel": "cancelled"}[decision]
    if op.kind == "mcp":
        if decision == "approve":
            return answer_from_outputs([(op.name, output)])
        return f"The call to {op.name} on {op.server_label} was {done}."
    return f"Access to {op.origin} was {done}."


# --- the API (a mixin of Emulator) -----------------------------------------------------------


class SessionsAPI:
    """The agent-sessions half of :class:`~runmachine.testing.Emulator`: its request handlers
    and its turn engine. The state lives in ``self._agent_sessions`` (a :class:`SessionsState`);
    the HTTP helpers (answers, errors, faults, the event-stream response) are the emulator's."""

    if TYPE_CHECKING:  # what the emulator provides
        _lock: threading.Lock
        _loop: asyncio.AbstractEventLoop | None
        _tasks: set[asyncio.Task[None]]
        _agent_sessions: SessionsState
        delta_delay: float

        def _json(self, data: Any, extra: Mapping[str, str] | None = None) -> Response: ...

        def _error(
            self,
            status: int,
            message: str,
            *,
            param: str | None = None,
            code: str | None = None,
            extra: Mapping[str, str] | None = None,
        ) -> Response: ...

        def _check_faults(
            self, endpoint: str, counters: dict[str, int] | None, faults: TurnFaults | None
        ) -> Response | None: ...

        async def _body(self, request: Request) -> JSON | Response: ...

        def _missing(self, param: str) -> Response: ...

        @staticmethod
        def _list_args(request: Request) -> tuple[int, str, str | None, str | None]: ...

        @staticmethod
        def _headers(extra: Mapping[str, str] | None = None) -> dict[str, str]: ...

        def _event_stream(
            self, queue: asyncio.Queue[Any], on_item: Any, detach: Callable[[], None]
        ) -> Response: ...

        def _aborted(self) -> Response: ...

    # public surface (called from the test's thread) ------------------------------------------

    def _enqueue_turn(self, scenario: TurnScenario) -> None:
        with self._lock:
            self._agent_sessions.queue.append(Pending(scenario))

    def _turn_stats(self, turn_id: str) -> TurnStats:
        with self._lock:
            return self._agent_sessions.turns[turn_id].stats()

    def _session_snapshot(self, session_id: str) -> JSON:
        with self._lock:
            return copy.deepcopy(self._agent_sessions.sessions[session_id].data)

    def _close_sessions(self) -> None:
        """Cut every session stream and stop every turn where it is (the server is going
        away)."""
        self._on_loop(self._agent_sessions.abandon)

    def _on_loop(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the server loop (now, when already there or not served)."""
        loop = self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or loop.is_closed() or running is loop:
            call()
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(call)

    # events (lock held, on the server loop) --------------------------------------------------

    def _publish(self, session: _Session, event: JSON, turn: _Turn | None = None) -> None:
        """Send an event to every stream of the session, with the turn's stream faults."""
        index = None
        if turn is not None:
            index = turn.events
            turn.events += 1
        faults = turn.faults if turn is not None else TurnFaults()
        if index in faults.drop_at:
            for subscriber in session.subscribers:
                subscriber.queue.put_nowait(_CUT)
            session.subscribers.clear()
            return
        copies = 2 if index in faults.duplicate else 1
        for subscriber in session.subscribers:
            for _ in range(copies):
                subscriber.queue.put_nowait(event)

    def _snapshot_event(self, session: _Session, turn: _Turn | None = None) -> None:
        kind = f"agent.session.{session.data['status']}"
        self._publish(session, _event(kind, session=session.data), turn)

    def _turn_event(self, turn: _Turn, kind: str, /, **fields: Any) -> None:
        event = _event(kind, session_id=turn.session.id, turn_id=turn.id, **fields)
        self._publish(turn.session, event, turn)

    def _add_item(self, turn: _Turn, item: JSON, output: bool) -> int | None:
        turn.items.append(item)
        turn.session.items.append(item)
        if not output:
            return None
        turn.outputs_count += 1
        return turn.outputs_count - 1

    # the turn engine -------------------------------------------------------------------------

    def _start_turn(self, session: _Session, messages: list[list[JSON]]) -> _Turn:
        """Queue a turn for the user messages, taking the next scenario (lock held, on loop)."""
        state = self._agent_sessions
        pending = state.queue.popleft() if state.queue else None
        text = " ".join(
            str(part["text"]) for content in messages for part in content if "text" in part
        )
        agent = session.data["agent"]
        ops = pending.scenario.ops if pending else toy_turn_program(text, agent["tools"])
        faults = pending.scenario.faults if pending else TurnFaults()
        data = {
            "id": ob.new_id("turn"),
            "object": "agent.session.turn",
            "agent_id": agent["id"],
            "session_id": session.id,
            "created_at": ob.now(),
            "started_at": None,
            "completed_at": None,
            "status": "queued",
            "error": None,
            "subagent_id": None,
            "usage": None,
            "prompt_cache_options": copy.deepcopy(session.data.get("prompt_cache_options")),
        }
        turn = _Turn(data, session, faults, ops)
        turn.input_tokens += len(text) // 4
        if pending is not None:
            turn.requests.update(pending.requests)
        for content in messages:
            item = {
                "id": ob.new_id("msg"),
                "type": "message",
                "role": "user",
                "status": "completed",
                "phase": None,
                "turn_id": turn.id,
                "content": copy.deepcopy(content),
            }
            self._add_item(turn, item, output=False)
        session.turns.append(turn)
        session.active = turn
        state.turns[turn.id] = turn
        session.data.update(status="in_progress", last_active_at=ob.now())
        self._turn_event(turn, "agent.session.turn.created", turn=turn.data)
        task = asyncio.get_running_loop().create_task(self._drive_turn(turn))
        turn.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return turn

    def _turn_delay(self, turn: _Turn) -> float:
        if turn.faults.delta_delay is not None:
            return turn.faults.delta_delay
        return self.delta_delay

    async def _turn_wait(
        self, turn: _Turn, delay: float, until: Callable[[], bool] | None = None
    ) -> None:
        """Wait ``delay`` seconds (0: yield once), or until ``until()`` holds; raise
        ``_TurnCancelled`` as soon as the turn is to be cancelled."""
        end = time.monotonic() + delay
        while True:
            if turn.cancel_requested:
                raise _TurnCancelled
            if until is not None and until():
                return
            wait = math.inf if until is not None else end - time.monotonic()
            if wait <= 0:
                await asyncio.sleep(0)
                if turn.cancel_requested:
                    raise _TurnCancelled
                return
            turn.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(turn.wake.wait(), None if wait == math.inf else wait)

    async def _drive_turn(self, turn: _Turn) -> None:
        try:
            await self._turn_wait(turn, turn.faults.start_delay or 0.0)
            with self._lock:
                turn.data.update(status="in_progress", started_at=ob.now())
                self._snapshot_event(turn.session, turn)
                self._turn_event(turn, "agent.session.turn.in_progress", turn=turn.data)
            while True:
                await self._turn_wait(turn, 0.0)
                with self._lock:
                    op = turn.program.next(lambda n: [ob.new_id("call") for _ in range(n)])
                if op is None:
                    break
                if await self._turn_op(turn, op):
                    return
            if turn.answer_due:
                await self._say(turn, " ".join(turn.notes) or "Done.")
            with self._lock:
                self._end_turn(turn, "completed")
        except _TurnCancelled:
            pass  # the cancel input has ended the turn already

    def _cancel_turn(self, turn: _Turn) -> None:
        """End the turn as cancelled, now (lock held, on the loop, the turn's task waiting):
        the task stops at its next step."""
        turn.cancel_requested = True
        turn.wake.set()
        message, index = turn.open_message, turn.open_index
        if message is not None:
            message["status"] = "incomplete"
            turn.open_message = None
            self._turn_event(turn, "agent.session.turn.item.done", item=message, output_index=index)
        self._end_turn(turn, "cancelled")

    async def _turn_op(self, turn: _Turn, op: TurnOp) -> bool:
        """Run one operation; True when the turn is over."""
        if isinstance(op, Reply | AnswerOutputs):
            text = op.text if isinstance(op, Reply) else " ".join(turn.notes) or "Done."
            turn.answer_due = False
            await self._say(turn, text)
            return False
        if isinstance(op, ToolRound):
            await self._turn_tool_round(turn, op)
            turn.answer_due = True
            return False
        if isinstance(op, Approval):
            await self._approval(turn, op)
            turn.answer_due = True
            return False
        if isinstance(op, Fail):
            with self._lock:
                self._end_turn(turn, "failed", {"code": op.code, "message": op.message})
            return True
        if isinstance(op, SessionFail):
            with self._lock:
                error = {"code": "internal_error", "message": op.message}
                self._end_turn(turn, "failed", error, session_error=op.message)
            return True
        if isinstance(op, Hang):
            await self._turn_wait(turn, 0.0, until=lambda: False)
        return False  # pragma: no cover - a hang only ends by cancellation; loops are expanded

    async def _say(self, turn: _Turn, text: str) -> None:
        """Stream one assistant message."""
        await self._turn_wait(turn, 0.0)
        with self._lock:
            phase = "final_answer" if turn.program.peek() is None else "commentary"
            message: JSON = {
                "id": ob.new_id("msg"),
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "phase": phase,
                "turn_id": turn.id,
                "content": [],
            }
            index = self._add_item(turn, message, output=True)
            turn.open_message, turn.open_index = message, index
            where = {"item_id": message["id"], "output_index": index, "content_index": 0}
            self._turn_event(
                turn, "agent.session.turn.item.added", item=message, output_index=index
            )
            self._turn_event(
                turn,
                "agent.session.turn.content_part.added",
                part={"type": "output_text", "text": ""},
                **where,
            )
        tokens = ob.tokenize(text)
        delay = self._turn_delay(turn)
        written = ""
        for number, token in enumerate(tokens):
            await self._turn_wait(turn, delay if number else 0.0)
            with self._lock:
                written += token
                message["content"] = [{"type": "output_text", "text": written}]
                self._turn_event(turn, "agent.session.turn.output_text.delta", delta=token, **where)
        await self._turn_wait(turn, 0.0)
        with self._lock:
            part = {"type": "output_text", "text": text}
            self._turn_event(turn, "agent.session.turn.output_text.done", text=text, **where)
            self._turn_event(turn, "agent.session.turn.content_part.done", part=part, **where)
            message.update(status="completed", content=[part])
            turn.open_message = None
            turn.output_tokens += len(tokens)
            self._turn_event(turn, "agent.session.turn.item.done", item=message, output_index=index)

    async def _turn_tool_round(self, turn: _Turn, op: ToolRound) -> None:
        ids = list(op.fixed_ids) if op.fixed_ids else [ob.new_id("call") for _ in op.calls]
        delay = self._turn_delay(turn)
        actions: list[JSON] = []
        await self._turn_wait(turn, 0.0)
        for number, ((name, arguments), call_id) in enumerate(zip(op.calls, ids, strict=True)):
            if number and delay:
                await self._turn_wait(turn, delay)
            with self._lock:
                item: JSON = {
                    "id": ob.new_id("fc"),
                    "type": "function_call",
                    "call_id": call_id,
                    "name": name,
                    "arguments": arguments,
                    "status": "in_progress",
                    "turn_id": turn.id,
                }
                index = self._add_item(turn, item, output=True)
                turn.asked[call_id] = name
                self._turn_event(
                    turn, "agent.session.turn.item.added", item=item, output_index=index
                )
                item["status"] = "completed"
                self._turn_event(
                    turn, "agent.session.turn.item.done", item=item, output_index=index
                )
                turn.output_tokens += 10
                actions.append(
                    {
                        "type": "function_call",
                        "call_id": call_id,
                        "name": name,
                        "arguments": arguments,
                        "turn_id": turn.id,
                    }
                )
        with self._lock:
            turn.counts.rounds += 1
            turn.pending = {action["call_id"]: action for action in actions}
            self._require(turn, actions)
        await self._turn_wait(turn, 0.0, until=lambda: not turn.pending)
        with self._lock:
            outputs: list[tuple[str, str]] = []
            for action in actions:
                result = turn.results[action["call_id"]]
                success = bool(result["success"])
                output_item = {
                    "id": ob.new_id("fco"),
                    "type": "function_call_output",
                    "call_id": action["call_id"],
                    "output": copy.deepcopy(result.get("output")) if success else None,
                    "error": None if success else result.get("error") or "Tool call failed.",
                    "status": "completed" if success else "failed",
                    "turn_id": turn.id,
                }
                self._add_item(turn, output_item, output=False)
                self._turn_event(turn, "agent.session.turn.item.added", item=output_item)
                text = _output_text(result.get("output")) if success else output_item["error"]
                outputs.append((action["name"], str(text)))
            turn.notes.append(answer_from_outputs(outputs))
            self._resume(turn)

    async def _approval(self, turn: _Turn, op: Approval) -> None:
        request_id = ob.new_id("apr")
        request: JSON
        if op.kind == "mcp":
            kind = "mcp_approval_request"
            request = {
                "type": "mcp_tool_call",
                "server_label": op.server_label,
                "name": op.name,
                "arguments": op.arguments,
                "message": op.message,
            }
        else:
            kind = "computer_use_approval_request"
            request = {"type": "browser_origin_access", "origin": op.origin, "reason": op.reason}
        action = {"type": kind, "request_id": request_id, "turn_id": turn.id, "request": request}
        await self._turn_wait(turn, 0.0)
        with self._lock:
            turn.pending_approvals[request_id] = action
            self._require(turn, [action])
        await self._turn_wait(turn, 0.0, until=lambda: request_id in turn.approvals)
        output = f"{op.name} ran on {op.server_label}."
        with self._lock:
            decision = turn.approvals[request_id]
            self._resume(turn)
            if op.kind == "mcp" and decision == "approve":
                item: JSON = {
                    "id": ob.new_id("mcp"),
                    "type": "mcp_call",
                    "server_label": op.server_label,
                    "name": op.name,
                    "arguments": op.arguments,
                    "output": None,
                    "error": None,
                    "status": "in_progress",
                    "turn_id": turn.id,
                }
                index = self._add_item(turn, item, output=True)
                self._turn_event(
                    turn, "agent.session.turn.item.added", item=item, output_index=index
                )
                item.update(status="completed", output=output)
                self._turn_event(
                    turn, "agent.session.turn.item.done", item=item, output_index=index
                )
                turn.output_tokens += 10
            turn.notes.append(_approval_note(op, decision, output))

    def _require(self, turn: _Turn, actions: list[JSON]) -> None:
        turn.data["status"] = "waiting"
        turn.session.data.update(
            status="requires_action",
            required_actions=copy.deepcopy(actions),
            last_active_at=ob.now(),
        )
        self._snapshot_event(turn.session, turn)

    def _resume(self, turn: _Turn) -> None:
        turn.data["status"] = "in_progress"
        turn.session.data.update(status="in_progress", required_actions=[], last_active_at=ob.now())
        self._snapshot_event(turn.session, turn)

    def _end_turn(
        self,
        turn: _Turn,
        status: str,
        error: JSON | None = None,
        session_error: str | None = None,
    ) -> None:
        session = turn.session
        usage = token_usage(turn.input_tokens, turn.output_tokens)
        turn.data.update(status=status, completed_at=ob.now(), usage=usage, error=error)
        turn.pending.clear()
        turn.pending_approvals.clear()
        if session.active is turn:
            session.active = None
        session.data.update(
            required_actions=[],
            last_active_at=ob.now(),
            usage=_sum_usage(session.data.get("usage"), usage),
        )
        self._turn_event(turn, f"agent.session.turn.{status}", turn=turn.data, usage=usage)
        if session_error is not None:
            session.data.update(status="failed", error=session_error)
        else:
            session.data["status"] = "idle"
        self._snapshot_event(session, turn)
        for subscriber in [s for s in session.subscribers if s.until_turn_end]:
            subscriber.queue.put_nowait(_END)
            session.subscribers.remove(subscriber)

    # HTTP ------------------------------------------------------------------------------------

    def _session_routes(self) -> list[Any]:
        from starlette.routing import Route

        s = "/v1/agents/sessions/{session_id}"
        return [
            Route("/v1/agents/sessions", self._h_create_session, methods=["POST"]),
            Route(s, self._h_get_session, methods=["GET"]),
            Route(s + "/events", self._h_stream_events, methods=["GET"]),
            Route(s + "/events", self._h_send_events, methods=["POST"]),
            Route(s + "/turns", self._h_list_turns, methods=["GET"]),
            Route(s + "/turns/{turn_id}", self._h_get_turn, methods=["GET"]),
            Route(s + "/items", self._h_list_items, methods=["GET"]),
            Route(s + "/turns/{turn_id}/items", self._h_list_turn_items, methods=["GET"]),
        ]

    def _problem(self, problem: Problem, code: str | None = None) -> Response:
        message, param = problem
        return self._error(400, message, param=param, code=code)

    def _turn_faults(self, endpoint: str, turn: _Turn | None) -> Response | None:
        if turn is None:
            return self._check_faults(endpoint, None, None)
        return self._check_faults(endpoint, turn.requests, turn.faults)

    def _session_request(self, request: Request, endpoint: str) -> _Session | Response:
        """The session a request names, after its faults (lock held)."""
        session_id = request.path_params["session_id"]
        session = self._agent_sessions.sessions.get(session_id)
        if session is None:
            self._check_faults(endpoint, None, None)
            return self._error(404, f"No session found with id '{session_id}'.")
        fault = self._turn_faults(endpoint, session.current)
        return session if fault is None else fault

    def _turn_request(self, request: Request, endpoint: str) -> _Turn | Response:
        session_id = request.path_params["session_id"]
        turn_id = request.path_params["turn_id"]
        session = self._agent_sessions.sessions.get(session_id)
        turn = self._agent_sessions.turns.get(turn_id)
        if session is None or turn is None or turn.session is not session:
            self._check_faults(endpoint, None, None)
            if session is None:
                return self._error(404, f"No session found with id '{session_id}'.")
            return self._error(404, f"No turn found with id '{turn_id}'.")
        fault = self._turn_faults(endpoint, turn)
        return turn if fault is None else fault

    def _stream_response(self, session: _Session, subscriber: _Subscriber) -> Response:
        def detach() -> None:
            with self._lock:
                if subscriber in session.subscribers:
                    session.subscribers.remove(subscriber)

        return self._event_stream(subscriber.queue, subscriber.send_item, detach)

    async def _h_create_session(self, request: Request) -> Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            return body
        with self._lock:
            state = self._agent_sessions
            given = body.get("input") is not None
            pending = state.queue[0] if given and state.queue else None
            fault = self._check_faults(
                "create_session",
                pending.requests if pending is not None else None,
                pending.scenario.faults if pending is not None else None,
            )
            if fault is not None:
                return fault
            environment = environment_obj(body.get("environment"))
            if isinstance(environment, tuple):
                return self._problem(environment)
            agent = agent_obj(body)
            if isinstance(agent, tuple):
                return self._problem(agent)
            messages = input_messages(body["input"], "input") if given else []
            if isinstance(messages, tuple):
                return self._problem(messages)
            stream = body.get("stream")
            if stream not in (None, True, False):
                return self._error(
                    400, "Invalid type for 'stream': expected a boolean.", param="stream"
                )
            if stream and not given and environment["type"] != "self_hosted":
                return self._error(400, "Missing required parameter: 'input'.", param="input")
            metadata = body.get("metadata") or {}
            if not isinstance(metadata, dict):
                return self._error(
                    400, "Invalid type for 'metadata': expected an object.", param="metadata"
                )
            created = ob.now()
            data: JSON = {
                "id": ob.new_id("sess"),
                "object": "agent.session",
                "created_at": created,
                "last_active_at": created,
                "status": "idle",
                "agent": agent,
                "environment": environment,
                "error": None,
                "metadata": {str(k): str(v) for k, v in metadata.items()},
                "required_actions": [],
                "usage": None,
                "vault_ids": _strings(body.get("vault_ids")),
                "prompt_cache_options": copy.deepcopy(body.get("prompt_cache_options")),
            }
            if body.get("review") == "auto_review":
                data["review"] = "auto_review"
            session = _Session(data)
            state.sessions[session.id] = session
            subscriber = None
            if stream:
                options = body.get("stream_options") or {}
                subscriber = _Subscriber(bool(options.get("include_obfuscation", True)), True)
                session.subscribers.append(subscriber)
                self._publish(session, _event("agent.session.created", session=data))
            if messages:
                self._start_turn(session, messages)
            if subscriber is not None:
                return self._stream_response(session, subscriber)
            return self._json(session.data)

    def _read(
        self, request: Request, endpoint: str, answer: Callable[[_Session, _Turn | None], Any]
    ) -> Response:
        """Answer a read of a session (or of one of its turns, when the path names one)."""
        with self._lock:
            found = (
                self._turn_request(request, endpoint)
                if "turn_id" in request.path_params
                else self._session_request(request, endpoint)
            )
            if isinstance(found, _Turn):
                return self._json_or_page(request, answer(found.session, found))
            if isinstance(found, _Session):
                return self._json_or_page(request, answer(found, None))
            return found

    def _json_or_page(self, request: Request, data: JSON | list[JSON]) -> Response:
        if isinstance(data, list):
            limit, order, after, _ = self._list_args(request)
            data = ob.list_envelope(
                copy.deepcopy(data), limit=limit, order=order, after=after, before=None
            )
        return self._json(data)

    async def _h_get_session(self, request: Request) -> Response:
        return self._read(request, "retrieve_session", lambda session, _: session.data)

    async def _h_list_turns(self, request: Request) -> Response:
        return self._read(
            request, "list_turns", lambda session, _: [turn.data for turn in session.turns]
        )

    async def _h_get_turn(self, request: Request) -> Response:
        return self._read(request, "retrieve_turn", lambda _, turn: turn.data if turn else {})

    async def _h_list_items(self, request: Request) -> Response:
        return self._read(request, "list_items", lambda session, _: session.items)

    async def _h_list_turn_items(self, request: Request) -> Response:
        return self._read(request, "list_turn_items", lambda _, turn: turn.items if turn else [])

    async def _h_stream_events(self, request: Request) -> Response:
        with self._lock:
            session = self._session_request(request, "session_events")
            if not isinstance(session, _Session):
                return session
            obfuscate = request.query_params.get("include_obfuscation", "true") != "false"
            subscriber = _Subscriber(obfuscate, until_turn_end=False)
            kind = f"agent.session.{session.data['status']}"
            subscriber.queue.put_nowait(_event(kind, session=session.data))
            session.subscribers.append(subscriber)
            return self._stream_response(session, subscriber)

    # input events ------------------------------------------------------------------------------

    async def _h_send_events(self, request: Request) -> Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            return body
        key = request.headers.get("idempotency-key")
        with self._lock:
            session_id = request.path_params["session_id"]
            session = self._agent_sessions.sessions.get(session_id)
            if session is None:
                self._check_faults("send_events", None, None)
                return self._error(404, f"No session found with id '{session_id}'.")
            events = body.get("events")
            events = events if isinstance(events, list) else []
            posted: list[_Turn] = []  # the turns whose tool results this POST carries
            for event in events:
                if isinstance(event, dict) and event.get("type") == TOOL_RESULT:
                    turn = self._agent_sessions.turns.get(str(event.get("turn_id")))
                    turn = turn if turn is not None and turn.session is session else session.active
                    if turn is not None and turn not in posted:
                        posted.append(turn)
            for turn in posted:
                turn.counts.result_posts += 1
                if key is not None:
                    turn.keys.append(key)
            fault = self._turn_faults("send_events", session.current)
            if fault is not None:
                return fault
            response = self._answer_events(session, body, key, posted)
            lost = response.status_code == 202 and any(
                turn.counts.result_posts in turn.faults.lose_result_response for turn in posted
            )
            return self._aborted() if lost else response

    def _answer_events(
        self, session: _Session, body: JSON, key: str | None, posted: list[_Turn]
    ) -> Response:
        """The answer to an input POST, applying it when it is acceptable (lock held)."""
        fingerprint = json.dumps(body, sort_keys=True)
        if key is not None and key in session.replies:
            kept = session.replies[key]
            if kept.fingerprint != fingerprint:
                if kept.turn is not None:
                    kept.turn.counts.conflicts += 1
                return self._conflict(
                    f"Idempotency-Key {key} was already used with a different request body."
                )
            if kept.turn is not None:
                kept.turn.counts.replays += 1
                kept.turn.counts.conflicts += kept.status == 409
            return self._kept(kept)
        if "events" not in body:
            return self._missing("events")
        events = body["events"]
        if not isinstance(events, list) or not events:
            return self._error(
                400, "Invalid value for 'events': expected a non-empty array.", param="events"
            )
        for index, event in enumerate(events):
            problem = _input_problem(index, event)
            if problem is not None:
                return self._problem(problem, "invalid_request_error")
        refusal = self._check_state(session, events)
        if refusal is not None:
            if refusal.status_code == 409 and key is not None:
                turn = posted[0] if posted else session.current
                session.replies[key] = _Reply(409, bytes(refusal.body), fingerprint, turn)
            return refusal
        started = self._apply_events(session, events)
        if key is not None:
            turn = posted[0] if posted else started or session.current
            session.replies[key] = _Reply(202, b"", fingerprint, turn)
        return self._accepted()

    def _conflict(self, message: str) -> Response:
        """A 409, which the SDK is told not to retry (``x-should-retry: false``)."""
        return self._error(409, message, code="conflict", extra=_NO_RETRY)

    def _kept(self, kept: _Reply) -> Response:
        from starlette.responses import Response

        media = "application/json" if kept.body else None
        extra = _NO_RETRY if kept.status == 409 else None
        return Response(kept.body, kept.status, headers=self._headers(extra), media_type=media)

    def _accepted(self) -> Response:
        from starlette.responses import Response

        return Response(status_code=202, headers=self._headers())

    def _check_state(self, session: _Session, events: list[JSON]) -> Response | None:
        """Refuse the events that the session cannot take now (400/409), or None."""
        claimed: set[str] = set()
        starts = False
        for event in events:
            kind = event["type"]
            active = session.active
            if kind == MESSAGE:
                if session.data["status"] == "failed":
                    return self._error(
                        400,
                        f"Session {session.id} has failed and accepts no more input.",
                        code="invalid_request_error",
                    )
                if active is not None or starts:
                    where = active.id if active is not None else "started by this request"
                    return self._error(
                        400,
                        f"Session {session.id} already has an active turn ({where}); wait for "
                        "it to end or cancel it.",
                        code="active_turn_not_steerable",
                    )
                starts = True
            elif kind == TOOL_RESULT:
                refusal = self._check_result(session, event, claimed)
                if refusal is not None:
                    return refusal
            elif kind in (MCP_RESULT, COMPUTER_RESULT):
                refusal = self._check_approval(session, event, claimed)
                if refusal is not None:
                    return refusal
        return None

    def _check_result(self, session: _Session, event: JSON, claimed: set[str]) -> Response | None:
        call_id = event["call_id"]
        turn_id = event["turn_id"]
        turn = self._agent_sessions.turns.get(turn_id)
        if turn is not None and turn.session is not session:
            turn = None
        if turn is not None and (call_id in turn.results or call_id in claimed):
            turn.counts.conflicts += 1
            return self._conflict(f"Tool call {call_id} already has a result")
        active = session.active
        if turn is None or turn is not active:
            return self._error(
                400,
                f"Turn {turn_id} is not the active turn of session {session.id}.",
                param="turn_id",
                code="invalid_request_error",
            )
        race = self._error(
            400, f"Unknown pending tool call: {call_id}", code="invalid_request_error"
        )
        if call_id in turn.pending:
            seen = turn.race_counts.get(call_id, 0)
            if seen < turn.faults.pending_race:
                turn.race_counts[call_id] = seen + 1
                turn.counts.races += 1
                return race
            claimed.add(call_id)
            return None
        if call_id in turn.asked:
            turn.counts.races += 1
        return race

    def _check_approval(self, session: _Session, event: JSON, claimed: set[str]) -> Response | None:
        request_id = event["request_id"]
        for turn in session.turns:
            if request_id in turn.approvals or (
                request_id in claimed and request_id in turn.pending_approvals
            ):
                turn.counts.conflicts += 1
                return self._conflict(f"Approval request {request_id} already has a result")
        active = session.active
        action = active.pending_approvals.get(request_id) if active is not None else None
        if action is None:
            return self._error(
                400,
                f"Unknown pending approval request: {request_id}",
                code="invalid_request_error",
            )
        wanted = MCP_RESULT if action["type"] == "mcp_approval_request" else COMPUTER_RESULT
        if event["type"] != wanted:
            return self._error(
                400,
                f"Approval request {request_id} is a {action['type']}; answer it with {wanted}.",
                code="invalid_request_error",
            )
        claimed.add(request_id)
        return None

    def _apply_events(self, session: _Session, events: list[JSON]) -> _Turn | None:
        """Apply checked events; the turn a message started, if any (lock held, on loop)."""
        started = None
        session.data["last_active_at"] = ob.now()
        for event in events:
            kind = event["type"]
            turn = session.active
            if kind == MESSAGE:
                found = input_messages(event["input"], "input")
                assert not isinstance(found, tuple)
                started = self._start_turn(session, found)
            elif kind == CANCEL:
                current = session.current
                if current is not None:
                    current.counts.cancels += 1
                if turn is not None:
                    self._cancel_turn(turn)
            elif kind == TOOL_RESULT and turn is not None:
                turn.results[event["call_id"]] = copy.deepcopy(event)
                turn.applied[event["call_id"]] = turn.applied.get(event["call_id"], 0) + 1
                turn.pending.pop(event["call_id"], None)
                turn.wake.set()
            elif turn is not None:
                turn.approvals[event["request_id"]] = event["response"]["decision"]
                turn.pending_approvals.pop(event["request_id"], None)
                turn.wake.set()
        return started
