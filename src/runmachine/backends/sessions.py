"""``SessionsBackend``: agent sessions (``client.beta.agents.sessions``), through the openai SDK.

The wire, as the SDK defines it: one long-lived SSE stream per session (``GET .../events``, live
only: no resume cursor), on which every turn's events arrive; input (a message that starts a
turn, one result per function call, an approval's decision, a cancel) is a ``POST .../events``
answered ``202``, which confirms acceptance, not completion. A turn and its items can be read
back (``turns.retrieve``, ``turns.items.list``) to make up for a stream that dropped.

Streams are opened through the SDK's own HTTP layer (``with_streaming_response``), so auth,
``base_url``, Azure, headers and timeouts stay the SDK's, and decoded here into the SDK's event
types (``runmachine.backends.sse.build_session_event``). Every input carries an
``Idempotency-Key``, so the SDK's retries of a POST whose answer was lost are safe: the server
answers a repeated key without applying the input again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import openai
from openai.types.beta.agent_session import AgentSession
from openai.types.beta.agents.sessions.turn import Turn

from runmachine.backends.base import EventSource, ServerTime
from runmachine.backends.http import ServerClock, path_segment, sse_source
from runmachine.backends.sse import build_session_event

__all__ = ["PENDING_CALL", "SessionsBackend", "is_conflict", "is_pending_call_race"]

#: The start of the 400's message when a result comes before the server registered its call.
PENDING_CALL = "Unknown pending tool call: "


def is_pending_call_race(error: BaseException, call_id: str) -> bool:
    """The 400 the server answers when a call's result arrives before it registered the call
    (the item event can come first): worth trying again shortly. Matched as the SDK's own
    helper matches it."""
    if not isinstance(error, openai.BadRequestError):
        return False
    body = error.body if isinstance(error.body, dict) else {}
    return body.get("code") == "invalid_request_error" and body.get("message") == (
        PENDING_CALL + call_id
    )


def is_conflict(error: BaseException) -> bool:
    """The server already holds a different answer for what was sent (409)."""
    return isinstance(error, openai.ConflictError)


class SessionsBackend:
    """The agent sessions of ``client`` (an ``AsyncOpenAI`` or ``AsyncAzureOpenAI``)."""

    name = "sessions"

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client
        self.sessions = client.beta.agents.sessions
        self._clock = ServerClock()

    def server_time(self) -> ServerTime | None:
        return self._clock.reading

    # ----------------------------------------------------------------------------------------
    # Streams
    # ----------------------------------------------------------------------------------------

    def events(self, session_id: str) -> EventSource:
        """The session's live event stream (every turn's events, from now on)."""
        events = self.sessions.events
        return sse_source(
            lambda: events.with_streaming_response.stream(session_id), self._clock, _build
        )

    def create_session(self, params: Mapping[str, Any]) -> EventSource:
        """Create a session and stream its first turn (``sessions.create(stream=True)``)."""
        sessions = self.sessions
        return sse_source(
            lambda: sessions.with_streaming_response.create(stream=True, **params),
            self._clock,
            _build,
        )

    # ----------------------------------------------------------------------------------------
    # Input
    # ----------------------------------------------------------------------------------------

    async def send(self, session_id: str, event: Mapping[str, Any], key: str) -> None:
        """Send one input event that runmachine built (a tool's result, an approval's answer, a
        cancel: plain JSON), under the idempotency key ``key``.

        It is the request ``sessions.events.create`` sends, made with the client's own ``post``
        (base URL, auth and Azure's, default headers, query, timeouts and retries stay the
        client's), without that method's type-driven transform of the body, which plain JSON
        does not need: in the window between a call's ``requires_action`` and its result.
        The test suite checks the two requests byte for byte."""
        await self.client.post(
            _events_path(session_id),
            cast_to=type(None),
            body={"events": [event]},
            options={
                "headers": {"OpenAI-Beta": "agents=v1", "Idempotency-Key": key, "Accept": "*/*"},
                "security": {"bearer_auth": True},
            },
        )

    async def send_input(self, session_id: str, event: Mapping[str, Any], key: str) -> None:
        """Send one input event that holds what a user gave (a message's content, which may be
        SDK models or other types the SDK's transform turns into JSON), with
        ``sessions.events.create``, under the idempotency key ``key``."""
        await self.sessions.events.create(
            session_id,
            events=[event],  # type: ignore[list-item]
            idempotency_key=key,
        )

    # ----------------------------------------------------------------------------------------
    # Reading back
    # ----------------------------------------------------------------------------------------

    async def retrieve_session(self, session_id: str) -> AgentSession:
        raw = await self.sessions.with_raw_response.retrieve(session_id)
        self._clock.saw(raw.headers)
        session: AgentSession = raw.parse()
        return session

    async def retrieve_turn(self, session_id: str, turn_id: str) -> Turn:
        turn: Turn = await self.sessions.turns.retrieve(turn_id, session_id=session_id)
        return turn

    async def latest_turn(self, session_id: str) -> Turn | None:
        """The session's newest root turn (not a subagent's), if it has any."""
        page = await self.sessions.turns.list(session_id, order="desc", limit=20)
        for turn in page.data:
            if turn.subagent_id is None:
                return turn
        return None

    async def turn_items(self, session_id: str, turn_id: str) -> list[Any]:
        """Every item of the turn, oldest first."""
        pages = self.sessions.turns.items.list(
            turn_id, session_id=session_id, order="asc", limit=100
        )
        return [item async for item in pages]


def _events_path(session_id: str) -> str:
    """The path of a session's input events, its id quoted as the SDK quotes it; an empty id, or
    one that would make a dot-segment, is refused before any request (a ``ValueError``)."""
    return f"/agents/sessions/{path_segment('session_id', session_id)}/events"


def _build(name: str | None, data: str) -> Any:
    return build_session_event(data)
