"""The backend seam: what a run-shaped server offers, as the driver sees it.

The driver talks to a server only through a ``Backend``: it opens (or continues) the event stream
of a run, learns which calls a ``requires_action`` asks for, submits outputs, cancels, retrieves
the run for polling and reconciliation, and re-reads content a lost stream took with it. A
backend turns the server's wire into the SDK's objects and nothing more: every decision (what a
stream event means, when a round may be submitted, what to do when something fails) belongs to
the table, the core and the driver.

Two shapes of server fit it. The Assistants API answers a submission with a *new* stream
(``submit_mode`` ``"new_stream"``), or, when polling, only acknowledges it (``"acknowledge"``).
Agent sessions keep one long-lived stream per session, on which the events that follow an
answer arrive (``"same_stream"``), and take one result per call with an idempotency key.

This module also says which failures of a request are worth retrying: the SDK's exception types
are the vocabulary both backends share.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol, TypeAlias

import attrs
import openai

__all__ = [
    "Backend",
    "EventSource",
    "RequiredCall",
    "RunRef",
    "ServerTime",
    "StreamLost",
    "SubmitMode",
    "is_refusal",
    "is_server_answer",
    "is_transient",
    "retry_after",
]

SubmitMode: TypeAlias = Literal["new_stream", "same_stream", "acknowledge"]
"""What answering a ``requires_action`` gives back: a new event stream, more events on the
stream already open, or only an acknowledgement (the driver then polls)."""

#: An open event stream: entering it waits for the server's 2xx answer (HTTP errors before the
#: first byte are raised there), iterating yields the SDK's event objects in order, and any
#: failure after that (a dropped connection, bytes that cannot be decoded, an ``error`` event)
#: ends the iteration with ``StreamLost``.
EventSource: TypeAlias = AbstractAsyncContextManager[AsyncIterator[Any]]


class StreamLost(Exception):
    """An event stream broke before it said how the run goes on (dropped, timed out, errored,
    undecodable). The cause is chained; the driver recovers by polling."""


@attrs.frozen
class RunRef:
    """Where a run lives on its server: its id and the scope that holds it (a thread for the
    Assistants API, a session for agent sessions)."""

    run_id: str
    scope_id: str


@attrs.frozen
class RequiredCall:
    """One function call a ``requires_action`` asks an output for."""

    id: str
    name: str
    arguments: str
    """The arguments exactly as the model sent them (a JSON string, possibly invalid)."""


class Backend(Protocol):
    """A run-shaped server, seen through the SDK. Requests are the backend's own records
    (``AssistantsBackend.CreateRun``, ...): the driver passes them through unread."""

    @property
    def name(self) -> str:
        """A short name for messages and records (``"assistants"``)."""
        ...

    def submit_mode(self, streaming: bool) -> SubmitMode:
        """What a submission returns when the run is driven by streaming, or by polling."""
        ...

    def open_run(self, request: Any) -> EventSource:
        """Create the run and stream its events."""
        ...

    async def create_run(self, request: Any) -> Any:
        """Create the run without streaming; returns the run as created."""
        ...

    async def find_created(self, request: Any, since: float) -> Any | None:
        """The run ``request`` created, when its stream broke before naming it; ``since`` is
        ``time.time()`` just before the request was sent."""
        ...

    def ref(self, run: Any) -> RunRef:
        """Where ``run`` lives."""
        ...

    def required_calls(self, run: Any) -> list[RequiredCall]:
        """The calls ``run`` asks outputs for, in the server's order."""
        ...

    def open_submission(self, ref: RunRef, outputs: Mapping[str, str]) -> EventSource:
        """Submit one output per call id, all of them at once, and stream what follows."""
        ...

    async def submit(self, ref: RunRef, outputs: Mapping[str, str]) -> Any:
        """Submit one output per call id without streaming; returns the run as the server
        answered."""
        ...

    async def retrieve(self, ref: RunRef) -> tuple[Any, float | None]:
        """The run as the server has it now, and how long it asks pollers to wait (seconds),
        if it says."""
        ...

    async def cancel(self, ref: RunRef) -> Any:
        """Ask the server to cancel the run; returns the run as the server answered."""
        ...

    async def messages(self, ref: RunRef) -> list[Any]:
        """Every message of the run, oldest first (to recover content a lost stream had)."""
        ...

    def server_time(self) -> ServerTime | None:
        """What the server's latest response said of its own time (its ``Date`` header), or
        ``None`` before any said it."""
        ...


@attrs.frozen
class ServerTime:
    """One reading of the server's clock: ``seconds`` (Unix time, as the server reports it) seen
    at ``local`` (``anyio.current_time()``, this process's monotonic clock)."""

    seconds: float
    local: float


def is_transient(error: BaseException) -> bool:
    """A failure that says nothing about the request itself: the connection, the server's own
    trouble, a rate limit, or a stream that broke. Trying again may work."""
    return isinstance(
        error,
        (
            openai.APIConnectionError,
            openai.InternalServerError,
            openai.RateLimitError,
            StreamLost,
        ),
    )


def is_server_answer(error: BaseException) -> bool:
    """The server answered with an error (any status), or the request failed on the way: the
    SDK's own ``APIError`` family."""
    return isinstance(error, openai.APIError)


def is_refusal(error: BaseException) -> bool:
    """The server refused the request as made (most often: the run moved on meanwhile)."""
    return isinstance(error, openai.BadRequestError)


def retry_after(error: BaseException) -> float | None:
    """The wait a failed response asks for (``retry-after-ms`` or ``retry-after``, at most a
    minute), with a little jitter; ``None`` when it asks none."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                seconds = float(value) * scale
            except ValueError:
                continue
            if 0 < seconds <= 60:
                return seconds + random.uniform(0, 0.05)
    return None
