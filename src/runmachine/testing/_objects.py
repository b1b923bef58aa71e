"""JSON builders for the objects the emulator serves, with every key the real API sends.

Key sets and key order follow the real recordings (``tests/data/recordings``):
runs, steps and streamed messages carry every key with ``null`` where not applicable. One real
quirk is kept on purpose: messages returned by the REST endpoints (create/list) omit ``status``,
``incomplete_details``, ``incomplete_at`` and ``completed_at``, while messages inside stream
events carry them (both seen in the 2025 recordings).
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import string
import time
from contextvars import ContextVar
from typing import Any

JSON = dict[str, Any]

_ALPHABET = string.ascii_letters + string.digits

ACTIVE_STATUSES = frozenset({"queued", "in_progress", "requires_action", "cancelling"})
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})


def new_id(prefix: str) -> str:
    """An id like the real ones: a prefix, an underscore and 24 random alphanumerics."""
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


#: Seconds the emulator's clock is ahead of this machine's (behind when negative), for the
#: request being served: every timestamp it reports, and its ``Date`` header, carry it.
CLOCK_OFFSET: ContextVar[float] = ContextVar("runmachine_emulator_clock_offset", default=0.0)


def clock() -> float:
    """The emulator's own time, in seconds (this machine's, shifted by ``clock_offset``)."""
    return time.time() + CLOCK_OFFSET.get()


def stamp(local: float) -> int:
    """A local ``time.time()`` reading as the emulator reports it: whole seconds, shifted."""
    return int(local + CLOCK_OFFSET.get())


def now() -> int:
    return int(clock())


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> JSON:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def normalize_tools(tools: Any) -> list[JSON]:
    """Tools as the server echoes them: function tools gain ``parameters`` and ``strict``."""
    out: list[JSON] = []
    if not isinstance(tools, list):
        return out
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            fn = tool["function"]
            function: JSON = {"name": fn.get("name")}
            if fn.get("description") is not None:
                function["description"] = fn["description"]
            function["parameters"] = fn.get("parameters") or {"type": "object", "properties": {}}
            function["strict"] = bool(fn.get("strict", False))
            out.append({"type": "function", "function": function})
        else:
            out.append(copy.deepcopy(tool))
    return out


def assistant_obj(body: JSON) -> JSON:
    return {
        "id": new_id("asst"),
        "object": "assistant",
        "created_at": now(),
        "name": body.get("name"),
        "description": body.get("description"),
        "model": body.get("model"),
        "instructions": body.get("instructions"),
        "tools": normalize_tools(body.get("tools")),
        "top_p": float(body["top_p"]) if body.get("top_p") is not None else 1.0,
        "temperature": float(body["temperature"]) if body.get("temperature") is not None else 1.0,
        "reasoning_effort": body.get("reasoning_effort"),
        "tool_resources": body.get("tool_resources") or {},
        "metadata": body.get("metadata") or {},
        "response_format": body.get("response_format") or "auto",
    }


#: The fields ``POST /v1/assistants/{assistant_id}`` accepts (the spec's ModifyAssistantRequest).
ASSISTANT_FIELDS = frozenset(
    {
        "model",
        "reasoning_effort",
        "name",
        "description",
        "instructions",
        "tools",
        "tool_resources",
        "metadata",
        "temperature",
        "top_p",
        "response_format",
    }
)


def modified_assistant(assistant: JSON, body: JSON) -> JSON:
    """The assistant with the fields ``body`` gives replaced, normalised as on creation; the
    id, ``created_at`` and key order stay. Keys outside :data:`ASSISTANT_FIELDS` are ignored
    (the server refuses them first)."""
    updated = copy.deepcopy(assistant)
    for key in ASSISTANT_FIELDS & body.keys():
        value = body[key]
        if key == "tools":
            value = normalize_tools(value)
        elif key in ("top_p", "temperature"):
            value = float(value) if value is not None else 1.0
        elif key in ("tool_resources", "metadata"):
            value = value or {}
        elif key == "response_format":
            value = value or "auto"
        updated[key] = copy.deepcopy(value)
    return updated


def deleted_obj(object_id: str, kind: str) -> JSON:
    """The answer to a DELETE: ``{"id", "object": "<kind>.deleted", "deleted": true}``."""
    return {"id": object_id, "object": f"{kind}.deleted", "deleted": True}


#: What ``GET /v1/models`` lists: a small fixed set of model objects in the API's shape.
MODELS: tuple[JSON, ...] = (
    {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
    {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
    {"id": "gpt-4.1", "object": "model", "created": 1744316542, "owned_by": "system"},
    {"id": "gpt-4.1-mini", "object": "model", "created": 1744318173, "owned_by": "system"},
    {"id": "gpt-4-turbo", "object": "model", "created": 1712361441, "owned_by": "system"},
    {"id": "gpt-3.5-turbo", "object": "model", "created": 1677610602, "owned_by": "openai"},
)


def thread_obj(body: JSON, *, tool_resources: JSON | None = None) -> JSON:
    return {
        "id": new_id("thread"),
        "object": "thread",
        "created_at": now(),
        "metadata": body.get("metadata") or {},
        "tool_resources": body.get("tool_resources") or tool_resources or {},
    }


def text_content(content: Any) -> list[JSON]:
    """Message content as stored: text parts with empty annotations."""
    if isinstance(content, str):
        return [{"type": "text", "text": {"value": content, "annotations": []}}]
    parts: list[JSON] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(
                    {
                        "type": "text",
                        "text": {"value": str(part.get("text", "")), "annotations": []},
                    }
                )
            elif isinstance(part, dict):
                parts.append(copy.deepcopy(part))
    return parts


def message_obj(
    *,
    thread_id: str,
    role: str,
    content: list[JSON],
    assistant_id: str | None = None,
    run_id: str | None = None,
    status: str = "completed",
    attachments: Any = None,
    metadata: Any = None,
) -> JSON:
    """A message with the full (stream) key set; see ``rest_message`` for the REST shape."""
    created = now()
    return {
        "id": new_id("msg"),
        "object": "thread.message",
        "created_at": created,
        "assistant_id": assistant_id,
        "thread_id": thread_id,
        "run_id": run_id,
        "status": status,
        "incomplete_details": None,
        "incomplete_at": None,
        "completed_at": created if status == "completed" else None,
        "role": role,
        "content": content,
        "attachments": attachments if isinstance(attachments, list) else [],
        "metadata": metadata if isinstance(metadata, dict) else {},
    }


_REST_MESSAGE_KEYS = (
    "id",
    "object",
    "created_at",
    "assistant_id",
    "thread_id",
    "run_id",
    "role",
    "content",
    "attachments",
    "metadata",
)


def rest_message(message: JSON) -> JSON:
    """The key set the real REST endpoints return for a message (no status keys)."""
    return {key: copy.deepcopy(message[key]) for key in _REST_MESSAGE_KEYS}


def run_obj(
    *,
    thread_id: str,
    assistant: JSON,
    body: JSON,
    created_at: int,
    expires_at: int,
) -> JSON:
    tools = normalize_tools(body["tools"]) if body.get("tools") is not None else assistant["tools"]
    instructions = body.get("instructions")
    if instructions is None:
        instructions = assistant.get("instructions")
    extra = body.get("additional_instructions")
    if extra:
        instructions = (instructions + "\n" if instructions else "") + str(extra)
    return {
        "id": new_id("run"),
        "object": "thread.run",
        "created_at": created_at,
        "assistant_id": assistant["id"],
        "thread_id": thread_id,
        "status": "queued",
        "started_at": None,
        "expires_at": expires_at,
        "cancelled_at": None,
        "failed_at": None,
        "completed_at": None,
        "required_action": None,
        "last_error": None,
        "model": body.get("model") or assistant["model"],
        "instructions": instructions,
        "tools": copy.deepcopy(tools),
        "tool_resources": body.get("tool_resources") or {"code_interpreter": {"file_ids": []}},
        "metadata": body.get("metadata") or {},
        "temperature": _float_or(body.get("temperature"), assistant.get("temperature", 1.0)),
        "top_p": _float_or(body.get("top_p"), assistant.get("top_p", 1.0)),
        "reasoning_effort": body.get("reasoning_effort"),
        "max_completion_tokens": body.get("max_completion_tokens"),
        "max_prompt_tokens": body.get("max_prompt_tokens"),
        "truncation_strategy": body.get("truncation_strategy")
        or {"type": "auto", "last_messages": None},
        "incomplete_details": None,
        "usage": None,
        "response_format": body.get("response_format") or assistant.get("response_format", "auto"),
        "tool_choice": body.get("tool_choice") or "auto",
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
    }


def _float_or(value: Any, default: Any) -> float:
    if value is None:
        value = default
    return float(value) if value is not None else 1.0


def step_obj(*, run: JSON, step_type: str, message_id: str | None = None) -> JSON:
    details: JSON
    if step_type == "message_creation":
        details = {"type": "message_creation", "message_creation": {"message_id": message_id}}
    else:
        details = {"type": "tool_calls", "tool_calls": []}
    # The wire carries ``expires_at`` (the spec says ``expired_at``) and no ``metadata``.
    return {
        "id": new_id("step"),
        "object": "thread.run.step",
        "created_at": now(),
        "run_id": run["id"],
        "assistant_id": run["assistant_id"],
        "thread_id": run["thread_id"],
        "type": step_type,
        "status": "in_progress",
        "cancelled_at": None,
        "completed_at": None,
        "expires_at": run["expires_at"],
        "failed_at": None,
        "last_error": None,
        "step_details": details,
        "usage": None,
    }


def usage_obj(prompt_tokens: int, completion_tokens: int) -> JSON:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_token_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def sum_usage(usages: list[JSON]) -> JSON:
    prompt = sum(int(u["prompt_tokens"]) for u in usages)
    completion = sum(int(u["completion_tokens"]) for u in usages)
    return usage_obj(prompt, completion)


_TOKEN_RE = re.compile(r"\s*(?:[\w'’]+|[^\w\s])|\s+$")


def tokenize(text: str) -> list[str]:
    """Split text into token-sized deltas: words keep their leading space, punctuation stands
    alone, as in the recorded real streams. Joining the pieces gives the text back."""
    pieces = _TOKEN_RE.findall(text)
    if "".join(pieces) != text:  # pragma: no cover - the pattern covers every character
        return [text]
    return pieces or [text]


def split_arguments(arguments: str, size: int = 5) -> list[str]:
    """Argument fragments as the real stream sends them: a short string comes whole."""
    if len(arguments) <= 4:
        return [arguments]
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


def list_envelope(
    items: list[JSON], *, limit: int, order: str, after: str | None, before: str | None
) -> JSON:
    """The list envelope with cursor paging (``after``/``before`` are item ids)."""
    ordered = list(items) if order == "asc" else list(reversed(items))
    ids = [item["id"] for item in ordered]
    if after is not None and after in ids:
        ordered = ordered[ids.index(after) + 1 :]
    elif before is not None and before in ids:
        cut = ids.index(before)
        ordered = ordered[max(0, cut - limit) : cut]
    page = ordered[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(ordered) > limit,
    }


def dumps(data: Any) -> str:
    """One-line JSON like the real server: no spaces after separators."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
