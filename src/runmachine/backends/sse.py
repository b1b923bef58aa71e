"""Server-sent events off the SDK's HTTP layer, decoded into the SDK's event types by name.

The SDK validates every event against a 24-member union; this module reads the ``event:`` line
first and builds only the type it names: one pydantic-core ``model_validate_json`` call on the raw
data (about ten times cheaper than a ``json.loads`` and the SDK's pure-Python construction),
falling back to the SDK's own non-validating ``construct`` whenever strict typing refuses the
payload (``instructions: null`` on a run, a status this SDK version does not know, ...), so
nothing the SDK would accept is refused here. What cannot be decoded at all (bytes that are not
UTF-8, data that is not JSON, a payload that is not an object) is a ``StreamError``, which the
driver treats as a lost stream.

Line endings (LF, CR, CRLF), comments, multi-line data and ``[DONE]`` follow the SDK's decoder.
The parser is linear in the bytes it is fed, however they are split. No I/O happens here: the
backend hands in byte chunks.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import openai
from openai.types.beta import AssistantStreamEvent
from openai.types.beta import assistant_stream_event as ase
from openai.types.beta.agent_session_event import AgentSessionEvent
from pydantic import ValidationError

from runmachine import lifecycle

__all__ = [
    "DONE",
    "EVENT_TYPES",
    "SESSION_EVENT_TYPES",
    "SSEParser",
    "StreamError",
    "build_event",
    "build_session_event",
]

DONE = "[DONE]"


def _event_types() -> dict[str, Any]:
    """Each SDK event class by the event name its ``event`` field declares."""
    union = typing.get_args(AssistantStreamEvent)[0]
    found: dict[str, Any] = {}
    for cls in typing.get_args(union):
        (name,) = typing.get_args(cls.model_fields["event"].annotation)
        found[name] = cls
    return found


EVENT_TYPES: dict[str, Any] = _event_types()
if set(EVENT_TYPES) != lifecycle.LIFECYCLE_EVENTS | lifecycle.CONTENT_EVENTS:  # pragma: no cover
    raise ImportError(
        "the openai SDK's stream events differ from runmachine's lifecycle table: "
        f"{sorted(set(EVENT_TYPES) ^ (lifecycle.LIFECYCLE_EVENTS | lifecycle.CONTENT_EVENTS))}"
    )


def _session_event_types() -> dict[str, Any]:
    """Each agent-session event class by the ``type`` its payload declares."""
    union = typing.get_args(AgentSessionEvent)[0]
    found: dict[str, Any] = {}
    for cls in typing.get_args(union):
        (name,) = typing.get_args(cls.model_fields["type"].annotation)
        found[name] = cls
    return found


SESSION_EVENT_TYPES: dict[str, Any] = _session_event_types()
_TURN_EVENTS = lifecycle.TURN_LIFECYCLE_EVENTS | lifecycle.TURN_CONTENT_EVENTS
if set(SESSION_EVENT_TYPES) != _TURN_EVENTS:  # pragma: no cover
    raise ImportError(
        "the openai SDK's agent-session events differ from runmachine's turn table: "
        f"{sorted(set(SESSION_EVENT_TYPES) ^ _TURN_EVENTS)}"
    )

_PREFIXES: dict[str, str] = {
    name: '{"event":' + json.dumps(name) + ',"data":' for name in EVENT_TYPES
}


class StreamError(Exception):
    """The stream carried something that cannot be decoded, or the server reported an error."""

    def __init__(self, message: str, *, event: str | None = None, body: Any = None) -> None:
        self.event = event
        self.body = body
        super().__init__(message)


class SSEParser:
    """Incremental SSE decoder: ``feed(chunk)`` returns the complete ``(event, data)`` pairs.

    Each byte is looked at a bounded number of times: line endings are normalised per chunk, and
    the search for the blank line that ends an event resumes where the last one stopped.
    """

    __slots__ = ("_buffer", "_cr", "_scan")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._cr = False
        self._scan = 0

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if b"\r" in chunk:
            # A CR at the very end may be the first half of a CRLF split across chunks.
            if chunk.endswith(b"\r"):
                chunk = chunk[:-1]
                self._cr = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer
        buffer += chunk
        out: list[tuple[str | None, str]] = []
        pos = 0
        scan = self._scan
        while True:
            end = buffer.find(b"\n\n", scan)
            if end < 0:
                break
            if end > pos:
                parsed = _parse_block(bytes(buffer[pos:end]))
                if parsed is not None:
                    out.append(parsed)
            pos = scan = end + 2
        if pos:
            del buffer[:pos]
            scan -= pos
        # Next time, resume one byte early: the blank line may straddle the chunks.
        self._scan = max(len(buffer) - 1, scan, 0)
        return out

    def close(self) -> list[tuple[str | None, str]]:
        """Dispatch what is left when the body ends (an event not followed by a blank line)."""
        rest = bytes(self._buffer).rstrip(b"\r\n")
        self._buffer = bytearray()
        self._scan = 0
        self._cr = False
        parsed = _parse_block(rest) if rest.strip() else None
        return [parsed] if parsed is not None else []


def _parse_block(block: bytes) -> tuple[str | None, str] | None:
    event: str | None = None
    data: list[str] = []
    for raw in block.split(b"\n"):
        if not raw or raw[:1] == b":":
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StreamError(
                f"the stream carried bytes that are not UTF-8 ({exc.reason} at byte {exc.start} "
                f"of the line {raw[:60]!r})"
            ) from exc
        field, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if event is None and not data:
        return None
    return event, "\n".join(data)


def build_event(name: str | None, data: str) -> Any:
    """The SDK event for one SSE event, built as the SDK builds it but only for the named type.

    Returns ``None`` for ``[DONE]``. Raises ``StreamError`` for data that is not JSON, for a
    known event whose data is not an object (``data: null``), and for an error event or an
    ``{"error": ...}`` payload (the SDK raises ``APIError`` for the latter).
    """
    if data.startswith(DONE):
        return None
    cls = EVENT_TYPES.get(name) if name is not None else None
    if (
        cls is not None
        and name is not None
        and name != lifecycle.ERROR_EVENT
        and '"error"' not in data
    ):
        # The fast path: one validation in pydantic-core, no intermediate dicts.
        try:
            return cls.model_validate_json(_PREFIXES[name] + data + "}")
        except ValidationError:
            pass  # not strictly typed (or not JSON): built as the SDK builds it, below
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise StreamError(
            f"event {name!r} carried data that is not JSON: {data[:80]!r}", event=name
        ) from exc
    if name == lifecycle.ERROR_EVENT or (isinstance(payload, dict) and payload.get("error")):
        inner = (
            payload.get("error") if isinstance(payload, dict) and "error" in payload else payload
        )
        message = inner.get("message") if isinstance(inner, dict) else None
        raise StreamError(
            f"the server sent an error event: {message or 'an error occurred during streaming'}",
            event=name,
            body=inner,
        )
    if cls is None:
        # An event name this version does not know: passed along, as the SDK does.
        return ase.ThreadCreated.construct(event=name, data=payload)
    if not isinstance(payload, dict):
        raise StreamError(
            f"event {name!r} carried {type(payload).__name__} data, not an object: {data[:80]!r}",
            event=name,
        )
    return cls.construct(event=name, data=payload)


def build_session_event(data: str) -> Any:
    """The SDK event for one frame of an agent-session stream (its ``type`` is in the data).

    Returns ``None`` for ``[DONE]``. Built strictly when the payload allows, else as the SDK
    builds it (non-validating ``construct``); a ``type`` this SDK does not declare
    (``agent.session.budget_reached``) is passed along as a plain SDK model. ``error`` events
    are values here, as the SDK yields them. Raises ``StreamError`` for data that is not JSON
    or not an object with a ``type``.
    """
    if data.startswith(DONE):
        return None
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise StreamError(f"a session event carried data that is not JSON: {data[:80]!r}") from exc
    name = payload.get("type") if isinstance(payload, dict) else None
    if not isinstance(name, str):
        raise StreamError(f"a session event carried no type: {data[:80]!r}", event=None)
    cls = SESSION_EVENT_TYPES.get(name)
    if cls is None:
        return openai.BaseModel.construct(**payload)
    try:
        return cls.model_validate(payload)
    except ValidationError:
        return cls.construct(**payload)
