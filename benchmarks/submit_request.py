"""The cost of making one streamed submission, no network: the SDK's resource method (with the
outputs as its ``tool_outputs``, and in ``extra_body`` as runmachine sent them before) against
the client's own ``post`` with the same request, as ``AssistantsBackend.open_submission`` makes
it.

    python benchmarks/submit_request.py

Both go through one ``AsyncOpenAI`` client whose HTTP client answers every request at once from
memory (``httpx2.MockTransport``: the same empty SSE body), so what is measured is the SDK's and
the HTTP layer's work to build, send and close the request. Prints CPU µs per submission for
each, three rounds of 2,000 after a warm-up, side by side in one process.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx2
import openai

from runmachine import quiet_deprecation
from runmachine.backends import AssistantsBackend
from runmachine.backends.base import RunRef

BODY = b"event: done\ndata: [DONE]\n\n"
REF = RunRef("run_bench", "thread_bench")
OUTPUTS = {"call_1": "ok"}
ROUNDS, COUNT = 3, 2000


def _answer(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=BODY)


def _client() -> openai.AsyncOpenAI:
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(_answer))
    return openai.AsyncOpenAI(
        api_key="bench", base_url="http://127.0.0.1:9/v1", max_retries=0, http_client=http
    )


async def main() -> None:
    client = _client()
    runs = client.beta.threads.runs
    backend = AssistantsBackend(client)

    async def resource() -> None:
        with quiet_deprecation():
            pending = runs.with_streaming_response.submit_tool_outputs(
                run_id=REF.run_id,
                thread_id=REF.scope_id,
                tool_outputs=[{"tool_call_id": c, "output": o} for c, o in OUTPUTS.items()],
                stream=True,
            )
        async with pending as response:
            async for _ in response.http_response.aiter_bytes():
                pass

    async def extra_body() -> None:
        with quiet_deprecation():
            pending = runs.with_streaming_response.submit_tool_outputs(
                run_id=REF.run_id,
                thread_id=REF.scope_id,
                tool_outputs=(),
                stream=True,
                extra_body={
                    "tool_outputs": [{"tool_call_id": c, "output": o} for c, o in OUTPUTS.items()]
                },
            )
        async with pending as response:
            async for _ in response.http_response.aiter_bytes():
                pass

    async def post() -> None:
        async with backend.open_submission(REF, OUTPUTS) as events:
            async for _ in events:
                pass

    ways: dict[str, Callable[[], Awaitable[None]]] = {
        "resource method": resource,
        "resource, outputs in extra_body": extra_body,
        "client.post": post,
    }
    figures: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(ROUNDS):
        for name, way in ways.items():
            for _ in range(200):
                await way()
            started = time.process_time()
            for _ in range(COUNT):
                await way()
            figures[name].append((time.process_time() - started) / COUNT * 1e6)
    await client.close()
    out: dict[str, Any] = {name: statistics.median(v) for name, v in figures.items()}
    for name, value in out.items():
        rounds = ", ".join(f"{v:.1f}" for v in figures[name])
        print(f"{name:32s} {value:7.1f} µs per submission (rounds: {rounds})")
    print(f"client.post / resource method: {out['client.post'] / out['resource method']:.2f}")


if __name__ == "__main__":
    anyio.run(main)
