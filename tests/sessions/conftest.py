"""Driving agent-session turns against the emulator: a strict SDK client, a session to use."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest

from runmachine import RunMachine


@pytest.fixture
async def client(emulator_url: str, anyio_backend: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    """The real SDK over HTTP to the emulator, validating every payload strictly."""
    async with openai.AsyncOpenAI(
        base_url=emulator_url, api_key="test", max_retries=2, _strict_response_validation=True
    ) as sdk:
        yield sdk


@pytest.fixture
def new_session(client: openai.AsyncOpenAI) -> Callable[..., Awaitable[str]]:
    """``await new_session(MachineClass)``: an idle session whose agent has the class's tools."""

    async def make(machine_cls: type[RunMachine] = RunMachine, **agent: Any) -> str:
        session = await client.beta.agents.sessions.create(
            environment={"type": "none"},
            agent={
                "model": "gpt-test",
                "tools": machine_cls.agent_tool_definitions(),  # type: ignore[typeddict-item]
                **agent,
            },
        )
        return session.id

    return make
