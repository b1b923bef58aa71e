"""Builders of the SDK's own event objects for tests that need no network."""

from __future__ import annotations

import itertools
from typing import Any

from openai._models import construct_type
from openai.types.beta import AssistantStreamEvent

_ids = itertools.count(1)


def run_payload(status: str, *, run_id: str = "run_test", **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": run_id,
        "object": "thread.run",
        "created_at": 1_700_000_000,
        "assistant_id": "asst_test",
        "thread_id": "thread_test",
        "status": status,
        "started_at": None,
        "expires_at": 1_700_000_600,
        "cancelled_at": None,
        "failed_at": None,
        "completed_at": None,
        "required_action": None,
        "last_error": None,
        "model": "gpt-4o",
        "instructions": "",
        "tools": [],
        "metadata": {},
        "incomplete_details": None,
        "usage": None,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "response_format": "auto",
        "truncation_strategy": {"type": "auto", "last_messages": None},
        "max_completion_tokens": None,
        "max_prompt_tokens": None,
        "temperature": 1.0,
        "top_p": 1.0,
    }
    payload.update(extra)
    return payload


def required_action(*call_ids: str) -> dict[str, Any]:
    return {
        "type": "submit_tool_outputs",
        "submit_tool_outputs": {
            "tool_calls": [
                {"id": cid, "type": "function", "function": {"name": "f", "arguments": "{}"}}
                for cid in call_ids
            ]
        },
    }


def event(name: str, data: Any) -> AssistantStreamEvent:
    """Build an event exactly as the SDK's stream does: a non-validating union coercion."""
    return construct_type(  # type: ignore[no-any-return]
        type_=AssistantStreamEvent, value={"event": name, "data": data}
    )


def run_event(name: str, **extra: Any) -> AssistantStreamEvent:
    status = {
        "thread.run.created": "queued",
    }.get(name, name.rsplit(".", 1)[-1])
    return event(name, run_payload(status, **extra))


def message_created(message_id: str = "msg_1") -> AssistantStreamEvent:
    return event(
        "thread.message.created",
        {
            "id": message_id,
            "object": "thread.message",
            "created_at": 1,
            "assistant_id": "asst_test",
            "thread_id": "thread_test",
            "run_id": "run_test",
            "status": "in_progress",
            "incomplete_details": None,
            "incomplete_at": None,
            "completed_at": None,
            "role": "assistant",
            "content": [],
            "attachments": [],
            "metadata": {},
        },
    )


def text_delta(value: str, message_id: str = "msg_1", first: bool = False) -> AssistantStreamEvent:
    text: dict[str, Any] = {"value": value}
    if first:
        text["annotations"] = []
    return event(
        "thread.message.delta",
        {
            "id": message_id,
            "object": "thread.message.delta",
            "delta": {"content": [{"index": 0, "type": "text", "text": text}]},
        },
    )
