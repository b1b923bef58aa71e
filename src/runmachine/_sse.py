"""Server-sent events off the SDK's HTTP layer, decoded into the SDK's event types by name.

The SDK validates every event against a 24-member union; this module reads the ``event:`` line
first and builds only the type it names: one pydantic-core ``model_validate_json`` call on the raw
data (about ten times cheaper than a ``json.loads`` and the SDK's pure-Python ``construct_type``),
falling back to the SDK's own non-validating ``construct_type`` whenever strict typing refuses
the payload (``instructions: null`` on a run, a status this SDK version does not know, ...), so
nothing the SDK would accept is refused here.
Line endings (LF, CR, CRLF), comments, multi-line data and ``[DONE]`` follow the SDK's decoder
(PROTOCOL.md §1.2). No I/O happens here: the driver hands in byte chunks.
"""

from __future__ import annotations

import json
from typing import Any

from openai._models import construct_type
from openai.types.beta import assistant_stream_event as ase
from pydantic import ValidationError

__all__ = ["DONE", "EVENT_TYPES", "SSEParser", "StreamError", "build_event"]

DONE = "[DONE]"

EVENT_TYPES: dict[str, Any] = {
    "thread.created": ase.ThreadCreated,
    "thread.run.created": ase.ThreadRunCreated,
    "thread.run.queued": ase.ThreadRunQueued,
    "thread.run.in_progress": ase.ThreadRunInProgress,
    "thread.run.requires_action": ase.ThreadRunRequiresAction,
    "thread.run.completed": ase.ThreadRunCompleted,
    "thread.run.incomplete": ase.ThreadRunIncomplete,
    "thread.run.failed": ase.ThreadRunFailed,
    "thread.run.cancelling": ase.ThreadRunCancelling,
    "thread.run.cancelled": ase.ThreadRunCancelled,
    "thread.run.expired": ase.ThreadRunExpired,
    "thread.run.step.created": ase.ThreadRunStepCreated,
    "thread.run.step.in_progress": ase.ThreadRunStepInProgress,
    "thread.run.step.delta": ase.ThreadRunStepDelta,
    "thread.run.step.completed": ase.ThreadRunStepCompleted,
    "thread.run.step.failed": ase.ThreadRunStepFailed,
    "thread.run.step.cancelled": ase.ThreadRunStepCancelled,
    "thread.run.step.expired": ase.ThreadRunStepExpired,
    "thread.message.created": ase.ThreadMessageCreated,
    "thread.message.in_progress": ase.ThreadMessageInProgress,
    "thread.message.delta": ase.ThreadMessageDelta,
    "thread.message.completed": ase.ThreadMessageCompleted,
    "thread.message.incomplete": ase.ThreadMessageIncomplete,
    "error": ase.ErrorEvent,
}


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
    """Incremental SSE decoder: ``feed(chunk)`` returns the complete ``(event, data)`` pairs."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            # A CR at the very end may be the first half of a CRLF split across chunks.
            keep_cr = buffer.endswith(b"\r")
            if keep_cr:
                buffer = buffer[:-1]
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep_cr:
                buffer += b"\r"
        blocks = buffer.split(b"\n\n")
        self._buffer = blocks.pop()
        out: list[tuple[str | None, str]] = []
        for block in blocks:
            if block:
                parsed = _parse_block(block)
                if parsed is not None:
                    out.append(parsed)
        return out

    def close(self) -> list[tuple[str | None, str]]:
        """Dispatch what is left when the body ends (an event not followed by a blank line)."""
        rest, self._buffer = self._buffer.rstrip(b"\r"), b""
        parsed = _parse_block(rest) if rest.strip() else None
        return [parsed] if parsed is not None else []


def _parse_block(block: bytes) -> tuple[str | None, str] | None:
    event: str | None = None
    data: list[str] = []
    for raw in block.split(b"\n"):
        if not raw or raw[:1] == b":":
            continue
        line = raw.decode("utf-8")
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

    Returns ``None`` for ``[DONE]``. Raises ``StreamError`` for data that is not JSON, and for an
    error event or an ``{"error": ...}`` payload (the SDK raises ``APIError`` for the latter).
    """
    if data.startswith(DONE):
        return None
    cls = EVENT_TYPES.get(name) if name is not None else None
    if cls is not None and name is not None and name != "error" and '"error"' not in data:
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
    if name == "error" or (isinstance(payload, dict) and payload.get("error")):
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
        return construct_type(type_=ase.ThreadCreated, value={"event": name, "data": payload})
    return construct_type(type_=cls, value={"event": name, "data": payload})
