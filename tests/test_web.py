"""Web code that stops listening early: every way of leaving ends the run ``cancelled``.

``encoded()`` and ``RunResponse`` own the task that drives the run, so a ``break``, an exception
in the consumer and a client that disconnects mid-stream (through a real ASGI server, uvicorn,
over real HTTP) all cancel the tools and then the server run, on asyncio and on trio.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import openai
import pytest

from runmachine import RunMachine, RunResponse, encoded, quiet_deprecation
from runmachine.testing import Emulator, Scenario

pytestmark = pytest.mark.anyio


async def _setup(client: openai.AsyncOpenAI) -> tuple[str, str]:
    with quiet_deprecation():
        assistant = await client.beta.assistants.create(model="gpt-4o")
        thread = await client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    return thread.id, assistant.id


def _long_reply(emulator: Emulator) -> None:
    # Words for a while, then the run hangs: it can only end by being cancelled.
    emulator.enqueue(Scenario().reply("word " * 20).hang())


async def _cancelled(emulator: Emulator, run_id: str) -> None:
    while emulator.run_stats(run_id).status != "cancelled":
        await anyio.sleep(0.01)


async def test_a_break_out_of_the_body_cancels_the_run(
    emulator: Emulator, openai_client: openai.AsyncOpenAI
) -> None:
    _long_reply(emulator)
    thread_id, assistant_id = await _setup(openai_client)
    machine = RunMachine(openai_client)
    async with encoded(machine, thread_id=thread_id, assistant_id=assistant_id) as body:
        async for chunk in body:
            if b"thread.message.delta" in chunk:
                break
    assert machine.run_id is not None
    assert machine.state == "cancelled"
    assert emulator.run_stats(machine.run_id).status == "cancelled"


async def test_an_exception_in_the_consumer_cancels_the_run_and_comes_out_as_itself(
    emulator: Emulator, openai_client: openai.AsyncOpenAI
) -> None:
    _long_reply(emulator)
    thread_id, assistant_id = await _setup(openai_client)
    machine = RunMachine(openai_client)
    with pytest.raises(LookupError, match="the consumer's own"):
        async with encoded(machine, thread_id=thread_id, assistant_id=assistant_id) as body:
            async for chunk in body:
                if b"thread.message.delta" in chunk:
                    raise LookupError("the consumer's own")
    assert machine.run_id is not None
    assert emulator.run_stats(machine.run_id).status == "cancelled"


@contextlib.contextmanager
def _served(app: Any, clients: list[openai.AsyncOpenAI]) -> Iterator[str]:
    """``app`` on uvicorn, on 127.0.0.1, in a thread of its own; yields its base URL. The
    ``clients`` the app made on the server's loop are closed there when it stops."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, loop="asyncio", lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            for client in clients:
                await client.close()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            threading.Event().wait(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        loop.close()
        sock.close()


async def test_a_client_that_disconnects_mid_stream_cancels_the_run_on_the_server(
    emulator: Emulator, emulator_url: str, anyio_backend: str
) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    _long_reply(emulator)
    seen: list[RunMachine] = []
    setup: dict[str, str] = {}
    clients: list[openai.AsyncOpenAI] = []

    async def chat(request: Request) -> RunResponse:
        # The server's own client, made on the server's loop.
        client = openai.AsyncOpenAI(base_url=emulator_url, api_key="emulator")
        clients.append(client)
        setup["thread_id"], setup["assistant_id"] = await _setup(client)
        machine = RunMachine(client)
        seen.append(machine)
        return RunResponse(
            machine, thread_id=setup["thread_id"], assistant_id=setup["assistant_id"]
        )

    app = Starlette(routes=[Route("/chat", chat, methods=["POST"])])
    with _served(app, clients) as url:
        async with (
            httpx2.AsyncClient(base_url=url) as client,
            client.stream("POST", "/chat") as response,
        ):
            assert response.headers["content-type"].startswith("text/event-stream")
            async for chunk in response.aiter_bytes():
                if b"thread.message.delta" in chunk:
                    break  # leaving the block closes the connection: the client has gone
        (machine,) = seen
        assert machine.run_id is not None
        await _cancelled(emulator, machine.run_id)
        while machine.state != "cancelled":  # the response's cancel has landed
            await anyio.sleep(0.01)
    assert emulator.run_stats(machine.run_id).cancel_requests == 1
