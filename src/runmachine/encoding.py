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
(bytes). A whole run, built on the public ``machine.stream(..., transitions=True)``:
:class:`RunResponse`, an ASGI response that owns the run for as long as the client listens;
:func:`encoded`, an async context manager whose body is the bytes; and :func:`stream_run`, the
same bytes as an async generator for frameworks that only take one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeAlias, TypedDict

import anyio

from runmachine import lifecycle
from runmachine.driver import EventStream
from runmachine.machine import RunMachine
from runmachine.records import TransitionRecord
from runmachine.result import RunResult

__all__ = [
    "ERROR_EVENT",
    "NDJSON_MEDIA_TYPE",
    "RESULT_EVENT",
    "SSE_MEDIA_TYPE",
    "TRANSITION_EVENT",
    "EncodedEvent",
    "RunResponse",
    "StreamItem",
    "encode_event",
    "encoded",
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
                "abandoned": call.abandoned,
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


@asynccontextmanager
async def encoded(
    machine: RunMachine,
    *,
    thread_id: str,
    assistant_id: str,
    format: Format = "sse",
    **params: Any,
) -> AsyncIterator[AsyncIterator[bytes]]:
    """Drive a run and give its body, encoded, to iterate within the block::

        async with encoded(machine, thread_id=t, assistant_id=a) as body:
            async for chunk in body:
                ...

    Built on ``machine.stream(..., transitions=True)``: each stream event is encoded as soon as
    the machine has been fed it, and the machine's transitions sit exactly where they happened.
    The last item is ``runmachine.result``; if the run ends with an ``Exception`` (a guard, an
    HTTP error) it is ``runmachine.error`` instead and the body still ends normally, so the
    client learns what happened. Leaving the block early cancels the run: the tools, then the
    server run. The block owns the task that drives the run, so it is safe to leave it at any
    point, by ``break``, an exception or a cancellation.
    """
    encode = _encoder(format)
    async with machine.stream(
        thread_id=thread_id, assistant_id=assistant_id, transitions=True, **params
    ) as events:
        yield _Body(events, encode)


class _Body:
    """The encoded items of one ``EventStream``, ending with its result or its error."""

    def __init__(self, events: EventStream[Any], encode: Callable[[StreamItem], bytes]) -> None:
        self._events = events
        self._encode = encode
        self._done = False

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._events.__anext__()
        except StopAsyncIteration:
            self._done = True
            return self._encode(self._events.result)
        except Exception as error:
            self._done = True
            return self._encode(error)
        return self._encode(item)


class RunResponse:
    """An ASGI response that drives a run and streams it to the client::

        async def chat(request):
            return RunResponse(machine, thread_id=t, assistant_id=a)   # Starlette, FastAPI, ...

    It owns the task group that drives the run for as long as the response lasts: when the
    client goes away mid-stream, the run is cancelled (the tools, then the server run), and
    the response ends. ``format`` is ``"sse"`` (``text/event-stream``) or ``"ndjson"``.
    """

    def __init__(
        self,
        machine: RunMachine,
        *,
        thread_id: str,
        assistant_id: str,
        format: Format = "sse",
        headers: Mapping[str, str] | None = None,
        **params: Any,
    ) -> None:
        _encoder(format)
        self.machine = machine
        self.thread_id = thread_id
        self.assistant_id = assistant_id
        self.format = format
        self.headers = dict(headers or {})
        self.params = params
        self.media_type = SSE_MEDIA_TYPE if format == "sse" else NDJSON_MEDIA_TYPE

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        headers = {"cache-control": "no-cache", **self.headers, "content-type": self.media_type}
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
            }
        )
        async with anyio.create_task_group() as tg:

            async def watch_disconnect() -> None:
                while True:
                    message = await receive()
                    if message.get("type") == "http.disconnect":
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch_disconnect)
            async with encoded(
                self.machine,
                thread_id=self.thread_id,
                assistant_id=self.assistant_id,
                format=self.format,
                **self.params,
            ) as body:
                async for chunk in body:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()


async def stream_run(
    machine: RunMachine,
    *,
    thread_id: str,
    assistant_id: str,
    format: Format = "sse",
    **params: Any,
) -> AsyncIterator[bytes]:
    """The body of ``encoded(...)`` as an async generator, for frameworks that take one::

        body = stream_run(machine, thread_id=thread_id, assistant_id=assistant_id)
        return StreamingResponse(body, media_type=SSE_MEDIA_TYPE)

    An async generator cannot own the task that drives the run safely: close it where you
    opened it (``async with contextlib.aclosing(stream_run(...)) as body``), or, better, use
    ``RunResponse`` (an ASGI response) or ``encoded()`` (an async context manager), which own
    it. Closing it early cancels the run: the tools, then the server run.
    """
    async with encoded(
        machine, thread_id=thread_id, assistant_id=assistant_id, format=format, **params
    ) as body:
        async for chunk in body:
            yield chunk
