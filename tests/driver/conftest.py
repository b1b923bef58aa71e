"""Helpers for driving runs against the emulator."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from runmachine import RunMachine


@pytest.fixture
async def thread_and_assistant(
    openai_client: openai.AsyncOpenAI,
) -> Any:
    async def make(
        machine_cls: type[RunMachine] = RunMachine, text: str = "hello"
    ) -> tuple[str, str]:
        assistant = await openai_client.beta.assistants.create(
            model="gpt-4o",
            tools=machine_cls.tool_definitions(),  # type: ignore[arg-type]
        )
        thread = await openai_client.beta.threads.create(
            messages=[{"role": "user", "content": text}]
        )
        return thread.id, assistant.id

    return make
