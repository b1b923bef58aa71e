"""What both backends do the same way over the SDK's HTTP layer: read an SSE response into SDK
events, and note the server's clock from its ``Date`` header."""

from __future__ import annotations

import email.utils
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import anyio
import httpx2
import openai

from runmachine.backends.base import EventSource, ServerTime, StreamLost
from runmachine.backends.sse import SSEParser, StreamError

__all__ = ["ServerClock", "path_segment", "sse_source"]

#: Failures that mean the stream was lost (not that the server refused the request).
_LOST = (StreamError, openai.APIConnectionError, httpx2.TransportError)


#: What a path segment may hold unquoted (RFC 3986 ``pchar``, as the SDK quotes ids).
_SEGMENT_SAFE = "!$&'()*+,;=:@"


def path_segment(name: str, value: str) -> str:
    """``value`` (the id ``name``) quoted into one path segment as the SDK quotes it; an empty
    id, or one that would make a dot-segment, is refused as the SDK refuses it (a
    ``ValueError``)."""
    if not value:
        raise ValueError(f"Expected a non-empty value for `{name}` but received {value!r}")
    if value in (".", ".."):
        raise ValueError(f"`{name}` {value!r} would make a dot-segment of the path")
    return quote(value, safe=_SEGMENT_SAFE)


class ServerClock:
    """The latest reading of the server's clock, from the ``Date`` headers it sent."""

    def __init__(self) -> None:
        self.reading: ServerTime | None = None

    def saw(self, headers: Any) -> None:
        """Note the server's ``Date`` header (whole seconds of its clock)."""
        value = headers.get("date") if headers is not None else None
        if not value:
            return
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return  # a Date header that is not one: nothing learnt
        self.reading = ServerTime(seconds, anyio.current_time())


def sse_source(
    opener: Callable[[], Any],
    clock: ServerClock,
    build: Callable[[str | None, str], Any],
) -> EventSource:
    """One SSE response (``opener()``: an SDK ``with_streaming_response`` call) as an
    ``EventSource``, each event built by ``build(name, data)`` (``None``: nothing to yield)."""
    return _events(opener, clock, build)


@asynccontextmanager
async def _events(
    opener: Callable[[], Any], clock: ServerClock, build: Callable[[str | None, str], Any]
) -> AsyncIterator[AsyncIterator[Any]]:
    try:
        async with opener() as response:
            clock.saw(response.http_response.headers)
            events = _decode(response, build)
            try:
                yield events
            finally:
                await events.aclose()
    except openai.APIStatusError:
        raise
    except _LOST as exc:
        raise StreamLost(f"{type(exc).__name__}: {exc}") from exc


async def _decode(
    response: Any, build: Callable[[str | None, str], Any]
) -> AsyncGenerator[Any, None]:
    parser = SSEParser()
    chunks = response.http_response.aiter_bytes()
    try:
        async for chunk in chunks:
            for name, data in parser.feed(chunk):
                event = build(name, data)
                if event is not None:  # [DONE]: keep reading so the connection can be reused
                    yield event
                del event, data  # not held while the next chunk is awaited
        for name, data in parser.close():
            event = build(name, data)
            if event is not None:
                yield event
    except _LOST as exc:
        raise StreamLost(f"{type(exc).__name__}: {exc}") from exc
    finally:
        # Closed here, not left to the garbage collector: a byte iterator finalised later, from
        # whatever task is running then, is an error of that task's.
        await chunks.aclose()
