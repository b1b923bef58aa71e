"""Encode a driven run for the browser: its events as Server-Sent Events or as NDJSON.

What ``machine.stream(...)`` yields (the SDK's event objects, across every tool handoff) plus the
machine's own state changes and the final result become a sequence of JSON objects
``{"event": <name>, "data": <payload>}``, the shape openai-node's ``toReadableStream()`` sends:

- an SDK event keeps its own name (``thread.run.created``, ``thread.message.delta``, ...) and its
  data is the SDK model's ``model_dump(mode="json")``;
- ``runmachine.transition``: one row of ``machine.history`` (``source``, ``dest``, ``trigger``,
  ``run_id``), placed right after the stream event that caused it; local transitions
  (``submit_tool_outputs``, ``cancel``) and transitions seen by polling come where they happened,
  between two stream events;
- ``runmachine.result``: the ``RunResult`` summary, last, once the run has ended;
- ``runmachine.error``: what stopped the run, last, when the driver raised.

Per item: :func:`encode_event` (the JSON object), :func:`sse_event` and :func:`ndjson_line`
(bytes). A whole run: :func:`stream_run` drives it and yields the bytes, an async iterator that a
Starlette ``StreamingResponse`` takes as its body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypedDict

import anyio

from runmachine import lifecycle
from runmachine.machine import TransitionRecord
from runmachine.result import RunResult

if TYPE_CHECKING:
    from runmachine.machine import RunMachine

__all__ = [
    "ERROR_EVENT",
    "NDJSON_MEDIA_TYPE",
    "RESULT_EVENT",
    "SSE_MEDIA_TYPE",
    "TRANSITION_EVENT",
    "EncodedEvent",
    "StreamItem",
    "encode_event",
    "ndjson_line",
    "sse_event",
    "stream_run",
]

TRANSITION_EVENT = "runmachine.transition"
RESULT_EVENT = "runmachine.result"
ERROR_EVENT = "runmachine.error"
SSE_MEDIA_TYPE = "text/event-stream"
NDJSON_MEDIA_TYPE = "application/x-ndjson"

Format = Literal["sse", "ndjson"]

StreamItem: TypeAlias = Any
"""What the encoder accepts: an SDK stream event (any object with ``event`` and ``data``), a
``TransitionRecord``, the final ``RunResult``, or the exception that stopped the run."""


class EncodedEvent(TypedDict):
    """One encoded item: ``event`` names it, ``data`` is plain JSON."""

    event: str
    data: Any


# --------------------------------------------------------------------------------------------
# One item
# --------------------------------------------------------------------------------------------


def _plain(value: Any, *, known: bool = True) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        # An event this version does not know is carried in a stand-in model: only what the
        # server sent is passed on.
        return dump(mode="json") if known else dump(mode="json", exclude_unset=True)
    return value


def _transition(record: TransitionRecord) -> dict[str, Any]:
    return {
        "source": record.source,
        "dest": record.dest,
        "trigger": record.trigger,
        "run_id": record.run_id,
        "local": record.trigger not in lifecycle.LIFECYCLE_EVENTS,
    }


def _result(result: RunResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "run_id": result.run_id,
        "thread_id": result.thread_id,
        "rounds": result.rounds,
        "text": result.text,
        "error": result.error,
        "tool_calls": [
            {
                "id": call.id,
                "name": call.name,
                "arguments": call.arguments,
                "output": call.output,
                "error": call.error,
                "round": call.round,
                "duration": call.duration,
            }
            for call in result.tool_calls
        ],
        "transitions": [_transition(record) for record in result.transitions],
        "usage": _plain(result.usage),
    }


def _error(error: BaseException) -> dict[str, Any]:
    result = getattr(error, "result", None)
    return {
        "type": type(error).__name__,
        "message": str(error),
        "result": _result(result) if isinstance(result, RunResult) else None,
    }


def encode_event(item: StreamItem) -> EncodedEvent:
    """The JSON object for one item: ``{"event": name, "data": payload}``. Pure."""
    if isinstance(item, TransitionRecord):
        return {"event": TRANSITION_EVENT, "data": _transition(item)}
    if isinstance(item, RunResult):
        return {"event": RESULT_EVENT, "data": _result(item)}
    if isinstance(item, BaseException):
        return {"event": ERROR_EVENT, "data": _error(item)}
    name = getattr(item, "event", None)
    if not isinstance(name, str) or not hasattr(item, "data"):
        raise TypeError(
            f"cannot encode {type(item).__name__}: expected an SDK stream event, a "
            "TransitionRecord, a RunResult or an exception"
        )
    known = name in lifecycle.LIFECYCLE_EVENTS or name in lifecycle.CONTENT_EVENTS
    return {"event": name, "data": _plain(item.data, known=known)}


def _json(encoded: EncodedEvent) -> str:
    return json.dumps(encoded, separators=(",", ":"), ensure_ascii=False)


def sse_event(item: StreamItem) -> bytes:
    """One Server-Sent Event: ``event: <name>`` and one ``data:`` line holding the whole object
    ``{"event": ..., "data": ...}`` (so both ``addEventListener(name)`` and a plain reader of
    ``data`` lines work). Pure."""
    encoded = encode_event(item)
    return f"event: {encoded['event']}\ndata: {_json(encoded)}\n\n".encode()


def ndjson_line(item: StreamItem) -> bytes:
    """One NDJSON line ``{"event": ..., "data": ...}\\n``, as ``toReadableStream()`` writes it."""
    return (_json(encode_event(item)) + "\n").encode()


def _encoder(format: Format) -> Callable[[StreamItem], bytes]:
    if format == "sse":
        return sse_event
    if format == "ndjson":
        return ndjson_line
    raise ValueError(f"unknown format {format!r}; choose 'sse' or 'ndjson'")


# --------------------------------------------------------------------------------------------
# Whole runs, as bytes
# --------------------------------------------------------------------------------------------


class _Rows:
    """Reads ``machine.history`` at the moment each stream event has been fed, so every row is
    placed exactly: the row an event caused right after it, rows without an event of their own
    (local triggers, polling) before the next event."""

    def __init__(self, machine: RunMachine) -> None:
        self.machine = machine
        self.sent = 0

    def around(self, event: Any) -> list[StreamItem]:
        history = self.machine.history
        new = history[self.sent :]
        self.sent = len(history)
        name = getattr(event, "event", None)
        if new and name in lifecycle.LIFECYCLE_EVENTS and new[-1].trigger == name:
            return [*new[:-1], event, new[-1]]
        return [*new, event]

    def rest(self) -> list[StreamItem]:
        history = self.machine.history
        new = history[self.sent :]
        self.sent = len(history)
        return list(new)


async def stream_run(
    machine: RunMachine,
    *,
    thread_id: str,
    assistant_id: str,
    format: Format = "sse",
    **params: Any,
) -> AsyncIterator[bytes]:
    """Drive a run, as ``machine.stream(...)`` does, and yield it encoded, ready to be the body
    of a response::

        body = stream_run(machine, thread_id=thread_id, assistant_id=assistant_id)
        return StreamingResponse(body, media_type=SSE_MEDIA_TYPE)

    ``format`` is ``"sse"`` or ``"ndjson"``; ``params`` go to ``runs.create``. Each stream event
    is encoded as soon as the machine has been fed it, so its data is the event as it arrived
    and the machine's transitions sit exactly where they happened. The last item is
    ``runmachine.result``; if the driver raises an ``Exception`` (a guard, an HTTP error) it is
    ``runmachine.error`` instead and the body still ends normally, so the client learns what
    happened. Closing the iterator early (the client went away) cancels the run: the tools,
    then the server run.
    """
    encode = _encoder(format)
    rows = _Rows(machine)
    send, receive = anyio.create_memory_object_stream[bytes](64)

    async def sink(event: Any) -> None:
        for item in rows.around(event):
            await send.send(encode(item))

    async def produce() -> None:
        async with send:
            last: StreamItem
            try:
                last = await machine._drive(
                    lambda d: d.create_run(thread_id, assistant_id, params), sink=sink
                )
            except Exception as error:
                last = error
            for record in rows.rest():
                await send.send(encode(record))
            await send.send(encode(last))

    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(produce)
        try:
            async for chunk in receive:
                yield chunk
        except GeneratorExit:
            # Closed early: the driver is cancelled (tools, then the server run) and the
            # generator ends here, instead of the task group wrapping GeneratorExit in a group.
            tg.cancel_scope.cancel()
