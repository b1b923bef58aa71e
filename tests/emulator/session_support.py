"""Helpers for the agent-sessions tests: tools, sessions, driving one turn over the event stream,
and the event sequences the emulator promises."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import openai
from openai.types.beta import AgentSession, AgentSessionEvent
from pydantic import BaseModel

from .emu_support import WEATHER_TOOLS, collapse

#: The Assistants tests' tools in the agents format (``{"type": "function", "name", ...}``).
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "description": "", **tool["function"]} for tool in WEATHER_TOOLS
]

T = "agent.session.turn."
START = [T + "created", "agent.session.in_progress", T + "in_progress"]
REPLY = [
    T + "item.added",
    T + "content_part.added",
    T + "output_text.delta",
    T + "output_text.done",
    T + "content_part.done",
    T + "item.done",
]
END = [T + "completed", "agent.session.idle"]


def round_of(calls: int) -> list[str]:
    """A tool round of ``calls`` parallel calls, answered."""
    return [
        *[T + "item.added", T + "item.done"] * calls,
        "agent.session.requires_action",
        *[T + "item.added"] * calls,
        "agent.session.in_progress",
    ]


def message(text: str) -> dict[str, Any]:
    return {
        "type": "agent.session.input.message",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": text}]}],
    }


def result(action: Any, output: str = "sunny", **extra: Any) -> dict[str, Any]:
    return {
        "type": "agent.session.input.tool_result",
        "turn_id": action.turn_id,
        "call_id": action.call_id,
        "success": True,
        "output": output,
        **extra,
    }


def strict_client(base_url: str, **kwargs: Any) -> openai.AsyncOpenAI:
    options: dict[str, Any] = {"max_retries": 2, **kwargs}
    return openai.AsyncOpenAI(
        base_url=base_url, api_key="test", _strict_response_validation=True, **options
    )


async def new_session(
    client: openai.AsyncOpenAI, tools: list[dict[str, Any]] | None = None, **kwargs: Any
) -> AgentSession:
    agent: Any = {"model": "gpt-5", "tools": TOOLS if tools is None else tools}
    return await client.beta.agents.sessions.create(
        environment={"type": "none"}, agent=agent, **kwargs
    )


Answer = Callable[[AgentSessionEvent], Awaitable[None]]


def answer_tools(client: openai.AsyncOpenAI, session_id: str, output: str = "sunny") -> Answer:
    """Answer every function call of a ``requires_action`` with ``output`` (one POST each)."""

    async def answer(event: Any) -> None:
        for action in event.session.required_actions:
            if action.type == "function_call":
                await client.beta.agents.sessions.events.create(
                    session_id, events=[result(action, f"{action.name}: {output}")]
                )

    return answer


def answer_approvals(client: openai.AsyncOpenAI, session_id: str, decision: str) -> Answer:
    async def answer(event: Any) -> None:
        for action in event.session.required_actions:
            kind = "mcp" if action.type == "mcp_approval_request" else "computer_use"
            response_type = "mcp_tool_call" if kind == "mcp" else "browser_origin_access"
            await client.beta.agents.sessions.events.create(
                session_id,
                events=[
                    {  # type: ignore[list-item,misc]
                        "type": f"agent.session.input.{kind}_approval_request_result",
                        "request_id": action.request_id,
                        "response": {"decision": decision, "type": response_type},
                    }
                ],
            )

    return answer


async def follow(
    stream: Any, answer: Answer | None = None, on_event: Answer | None = None
) -> list[Any]:
    """Events of a stream up to the idle (or failed) session event that ends a turn; answers
    required actions with ``answer`` on the way."""
    seen: list[Any] = []
    ended = False
    async for event in stream:
        seen.append(event)
        if on_event is not None:
            await on_event(event)
        if event.type in (T + "completed", T + "failed", T + "cancelled"):
            ended = True
        elif event.type == "agent.session.failed" or (ended and event.type == "agent.session.idle"):
            return seen
        elif event.type == "agent.session.requires_action" and answer is not None:
            await answer(event)
    raise AssertionError(f"the stream ended early after {[e.type for e in seen]}")


async def run_turn(
    client: openai.AsyncOpenAI,
    session_id: str,
    text: str = "hello",
    answer: Answer | None = None,
    on_event: Answer | None = None,
) -> list[Any]:
    """Subscribe, send ``text`` and follow the turn; the on-connect status event is dropped."""
    sessions = client.beta.agents.sessions
    stream = await sessions.events.stream(session_id)
    async with stream:
        first = await stream.__anext__()
        assert first.type == "agent.session.idle", first.type
        await sessions.events.create(session_id, events=[message(text)])  # type: ignore[list-item]
        return await follow(stream, answer, on_event)


def types(events: list[Any]) -> list[str]:
    """Event types with runs of deltas collapsed to one."""
    return collapse([e.type for e in events])


def no_extra_keys(model: Any, where: str = "") -> list[str]:
    """Keys a parsed SDK model carries that its type does not declare (typos in optional keys
    would pass strict validation unseen)."""
    found: list[str] = []
    if isinstance(model, BaseModel):
        for key in model.model_extra or {}:
            found.append(f"{where}.{key}")
        for name in type(model).model_fields:
            found.extend(no_extra_keys(getattr(model, name), f"{where}.{name}"))
    elif isinstance(model, list):
        for index, value in enumerate(model):
            found.extend(no_extra_keys(value, f"{where}[{index}]"))
    return found
