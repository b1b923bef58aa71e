"""A round's submission is made with the client's own ``post``, not the SDK's resource method
(which costs more to make, in the window between ``requires_action`` and the request).
It must be the very request the resource method sends, on every kind of client: the same
method, URL (base URL, path, query), headers (auth, Azure's, defaults, the beta header) and body.
Both are sent to the emulator and compared as the HTTP layer hands them over."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest

from runmachine import quiet_deprecation
from runmachine.backends import AssistantsBackend
from runmachine.backends.base import RunRef
from runmachine.backends.sessions import SessionsBackend
from runmachine.testing import Emulator

pytestmark = pytest.mark.anyio

OUTPUTS = {"call_a": "sunny", "call_b": '{"mm": 3, "note": "naïve ✓"}'}


def _openai(base_url: str, http: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key="sk-test",
        organization="org-test",
        project="proj-test",
        default_headers={"x-app": "runmachine-test"},
        default_query={"tenant": "t1"},
        http_client=http,
    ).with_options(timeout=12.5)


def _azure_key(base_url: str, http: Any) -> openai.AsyncOpenAI:
    return openai.AsyncAzureOpenAI(
        base_url=base_url,
        api_key="azure-key",
        api_version="2024-05-01-preview",
        http_client=http,
    ).with_options(default_headers={"x-app": "runmachine-test"}, timeout=30.0)


def _azure_token(base_url: str, http: Any) -> openai.AsyncOpenAI:
    async def token() -> str:
        return "entra-token"

    return openai.AsyncAzureOpenAI(
        base_url=base_url,
        azure_ad_token_provider=token,
        api_version="2025-01-01-preview",
        http_client=http,
    )


CLIENTS: dict[str, Callable[[str, Any], openai.AsyncOpenAI]] = {
    "openai": _openai,
    "azure-key": _azure_key,
    "azure-token": _azure_token,
}


def _recording_http() -> tuple[list[httpx2.Request], httpx2.AsyncClient]:
    """An SDK HTTP client, and the list of every request it hands over, in order."""
    sent: list[httpx2.Request] = []

    async def log(request: httpx2.Request) -> None:
        sent.append(request)

    return sent, openai.DefaultAsyncHttpxClient(event_hooks={"request": [log]})


def _seen(request: httpx2.Request) -> dict[str, Any]:
    headers = dict(request.headers)
    # A fresh one per request where the client sends one, as the SDK makes them.
    key = headers.pop("idempotency-key", None)
    return {
        "idempotency-key": key is not None,
        "method": request.method,
        "url": str(request.url),
        "headers": headers,
        "body": json.loads(request.content),
        "raw": request.content,
    }


@pytest.mark.parametrize("kind", sorted(CLIENTS))
async def test_the_submission_is_the_request_the_sdk_resource_method_sends(
    kind: str, emulator: Emulator, anyio_backend: Any
) -> None:
    sent, http = _recording_http()
    client = CLIENTS[kind](emulator.base_url, http)
    ref = RunRef("run_missing", "thread_missing")
    async with client:
        with pytest.raises(openai.NotFoundError):
            with quiet_deprecation():
                pending = client.with_options(
                    max_retries=0
                ).beta.threads.runs.with_streaming_response.submit_tool_outputs(
                    run_id=ref.run_id,
                    thread_id=ref.scope_id,
                    tool_outputs=[{"tool_call_id": c, "output": o} for c, o in OUTPUTS.items()],
                    stream=True,
                )
            async with pending:
                pass
        with pytest.raises(openai.NotFoundError):
            async with AssistantsBackend(client).open_submission(ref, OUTPUTS):
                pass
    assert len(sent) == 2  # neither was retried
    sdk, ours = (_seen(r) for r in sent)
    assert ours == sdk
    assert ours["body"] == {
        "stream": True,
        "tool_outputs": [{"tool_call_id": c, "output": o} for c, o in OUTPUTS.items()],
    }
    assert ours["headers"]["openai-beta"] == "assistants=v2"


@pytest.mark.parametrize(
    ("ref", "quoted"),
    [
        (RunRef("run/../x", "thread_1"), "/threads/thread_1/runs/run%2F..%2Fx/submit_tool_outputs"),
        (RunRef("run 1?a#b", "th@1"), "/threads/th@1/runs/run%201%3Fa%23b/submit_tool_outputs"),
    ],
)
async def test_ids_are_quoted_into_the_path_as_the_sdk_quotes_them(
    ref: RunRef, quoted: str, emulator: Emulator, anyio_backend: Any
) -> None:
    """Ids come from the server: whatever they hold stays inside their own path segment."""
    sent, http = _recording_http()
    async with openai.AsyncOpenAI(base_url=emulator.base_url, api_key="k", http_client=http) as c:
        with pytest.raises(openai.NotFoundError):
            async with AssistantsBackend(c).open_submission(ref, OUTPUTS):
                pass
        with pytest.raises(openai.NotFoundError), quiet_deprecation():
            await c.with_options(max_retries=0).beta.threads.runs.submit_tool_outputs(
                run_id=ref.run_id, thread_id=ref.scope_id, tool_outputs=[], stream=True
            )
    ours, sdk = (r.url.raw_path.decode() for r in sent)
    assert ours == sdk
    assert ours.endswith(quoted)


@pytest.mark.parametrize(
    "ref", [RunRef("", "thread_1"), RunRef("..", "thread_1"), RunRef("r", ".")]
)
async def test_an_id_the_sdk_refuses_is_refused_before_any_request(
    ref: RunRef, anyio_backend: Any
) -> None:
    async with openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k") as client:
        with pytest.raises(ValueError, match=r"thread_id|run_id"):
            AssistantsBackend(client).open_submission(ref, OUTPUTS)


# --- agent sessions: the input events runmachine builds ----------------------------------------

SESSION_EVENTS: dict[str, dict[str, Any]] = {
    "tool result": {
        "type": "agent.session.input.tool_result",
        "turn_id": "turn_1",
        "call_id": "call_a",
        "success": True,
        "output": '{"mm": 3, "note": "naïve ✓"}',
    },
    "tool error": {
        "type": "agent.session.input.tool_result",
        "turn_id": "turn_1",
        "call_id": "call_b",
        "success": False,
        "error": "lookup failed: timeout",
    },
    "approval": {
        "type": "agent.session.input.mcp_approval_response",
        "request_id": "req_1",
        "response": {"decision": "approve", "type": "mcp_tool_call"},
    },
    "cancel": {"type": "agent.session.input.cancel"},
}


@pytest.mark.parametrize("event", sorted(SESSION_EVENTS))
@pytest.mark.parametrize("kind", sorted(CLIENTS))
async def test_a_session_input_is_the_request_the_sdk_resource_method_sends(
    kind: str, event: str, emulator: Emulator, anyio_backend: Any
) -> None:
    """``SessionsBackend.send`` posts what ``sessions.events.create`` posts, idempotency key
    included, on every kind of client."""
    sent, http = _recording_http()
    client = CLIENTS[kind](emulator.base_url, http).with_options(max_retries=0)
    body = SESSION_EVENTS[event]
    async with client:
        with pytest.raises(openai.NotFoundError):
            await client.beta.agents.sessions.events.create(
                "sess_missing",
                events=[body],  # type: ignore[list-item]
                idempotency_key="key-1",
            )
        with pytest.raises(openai.NotFoundError):
            await SessionsBackend(client).send("sess_missing", body, "key-1")
    assert len(sent) == 2
    sdk, ours = (_seen(r) for r in sent)
    assert ours == sdk
    assert ours["body"] == {"events": [body]}
    assert ours["headers"]["openai-beta"] == "agents=v1"
    assert [r.headers["idempotency-key"] for r in sent] == ["key-1", "key-1"]


@pytest.mark.parametrize(
    ("session_id", "quoted"), [("s/../x", "s%2F..%2Fx"), ("s 1?#", "s%201%3F%23")]
)
async def test_a_session_id_is_quoted_into_the_path_as_the_sdk_quotes_it(
    session_id: str, quoted: str, emulator: Emulator, anyio_backend: Any
) -> None:
    sent, http = _recording_http()
    async with openai.AsyncOpenAI(
        base_url=emulator.base_url, api_key="k", http_client=http, max_retries=0
    ) as client:
        cancel = SESSION_EVENTS["cancel"]
        with pytest.raises(openai.NotFoundError):
            await SessionsBackend(client).send(session_id, cancel, "k1")
        with pytest.raises(openai.NotFoundError):
            await client.beta.agents.sessions.events.create(
                session_id,
                events=[cancel],  # type: ignore[list-item]
                idempotency_key="k1",
            )
    ours, sdk = (r.url.raw_path.decode() for r in sent)
    assert ours == sdk
    assert ours.endswith(f"/agents/sessions/{quoted}/events")


@pytest.mark.parametrize("session_id", ["", ".", ".."])
async def test_a_session_id_the_sdk_refuses_is_refused_before_any_request(
    session_id: str, anyio_backend: Any
) -> None:
    async with openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k") as client:
        with pytest.raises(ValueError, match="session_id"):
            await SessionsBackend(client).send(session_id, SESSION_EVENTS["cancel"], "k1")
