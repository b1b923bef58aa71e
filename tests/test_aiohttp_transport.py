"""runmachine over the SDK's aiohttp transport (``openai.DefaultAioHttpClient()``, the
``openai[aiohttp]`` extra), end to end against the emulator: a run with a tool round, and a
streamed text reply.

asyncio only: aiohttp is built on asyncio's event loop (its connector, its timeouts and its
streams are asyncio's own), so the SDK's aiohttp transport cannot run under trio. The rest of the
suite drives both backends over the SDK's default transport (httpx2).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
from openai.types.beta.threads import Text, TextDelta

from runmachine import RunMachine, tool
from runmachine.testing import Emulator, Scenario

pytest.importorskip(
    "aiohttp",
    reason='the SDK\'s aiohttp transport needs aiohttp: pip install "openai[aiohttp]" '
    "(runmachine's dev extra has it)",
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp runs on asyncio only (see the module docstring)."""
    return "asyncio"


@pytest.fixture
async def aiohttp_client(
    emulator_url: str, anyio_backend: str
) -> AsyncIterator[openai.AsyncOpenAI]:
    """An SDK client of the emulator whose HTTP client is ``openai.DefaultAioHttpClient()``:
    every request goes through aiohttp (the SDK raises at construction when it cannot)."""
    client = openai.AsyncOpenAI(
        base_url=emulator_url,
        api_key="test",
        max_retries=2,
        http_client=openai.DefaultAioHttpClient(),
    )
    try:
        yield client
    finally:
        await client.close()


class Weather(RunMachine):
    """One async tool, and every text delta kept."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        super().__init__(client)
        self.deltas: list[str] = []

    @tool
    async def get_weather(self, city: str) -> str:
        """Current weather in a city."""
        return f"sunny in {city}"

    async def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        self.deltas.append(delta.value or "")


async def start(client: openai.AsyncOpenAI) -> tuple[str, str]:
    """A thread with one user message, and an assistant with ``Weather``'s tools."""
    assistant = await client.beta.assistants.create(
        model="gpt-4o",
        tools=Weather.tool_definitions(),
    )
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    return thread.id, assistant.id


async def test_tool_round_over_aiohttp(
    emulator: Emulator, aiohttp_client: openai.AsyncOpenAI
) -> None:
    emulator.enqueue(Scenario().tool_round([("get_weather", {"city": "Paris"})]).reply("Sunny."))
    thread_id, assistant_id = await start(aiohttp_client)
    machine = Weather(aiohttp_client)
    result = await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed"
    assert result.rounds == 1
    assert [(c.name, c.output, c.error) for c in result.tool_calls] == [
        ("get_weather", "sunny in Paris", None)
    ]
    assert result.text == "Sunny."
    assert result.run_id is not None
    stats = emulator.run_stats(result.run_id)
    assert stats.submissions_accepted == 1
    assert stats.submissions_rejected == 0
    assert stats.tool_outputs == ({result.tool_calls[0].id: "sunny in Paris"},)


async def test_streamed_text_over_aiohttp(
    emulator: Emulator, aiohttp_client: openai.AsyncOpenAI
) -> None:
    reply = " ".join(f"word{i}" for i in range(200))
    emulator.enqueue(Scenario.text(reply))
    thread_id, assistant_id = await start(aiohttp_client)
    machine = Weather(aiohttp_client)
    result = await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    assert result.status == "completed"
    assert result.text == reply
    assert len(machine.deltas) > 1
    assert "".join(machine.deltas) == reply
