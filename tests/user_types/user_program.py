"""A user's program, as the README shows it: ``mypy --strict`` must accept it unchanged."""

from __future__ import annotations

from typing import Literal

import anyio
import openai
from openai.types.beta import AssistantStreamEvent
from openai.types.beta.threads import Run, Text, TextDelta

from runmachine import RunMachine, RunResult, ToolCallRecord, TransitionRecord, tool
from runmachine.lifecycle import State


class Weather(RunMachine):
    @tool
    async def get_rain_probability(self, location: str) -> float:
        """Probability of rain at a location."""
        return 0.2

    @tool(name="get_current_temperature", timeout=5.0)
    def temperature(self, location: str, unit: Literal["c", "f"] = "c") -> str:
        return f"18 degrees {unit}"

    async def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        print(delta.value, end="")

    def on_text_done(self, text: Text) -> None:  # a plain function is a hook too
        print()

    async def on_enter_requires_action(self, run: Run) -> None:
        print(run.id)

    def on_transition(self, record: TransitionRecord) -> None:
        print(record.source, "->", record.dest)

    def on_tool_error(self, tool_call: ToolCallRecord, error: BaseException) -> bool:
        return False


async def main(client: openai.AsyncOpenAI) -> None:
    assistant = await client.beta.assistants.create(
        model="gpt-4o", tools=Weather.tool_definitions()
    )
    thread = await client.beta.threads.create()
    machine = Weather(client, tool_concurrency=4, max_rounds=5, stream=True)
    result: RunResult = await machine.run(thread_id=thread.id, assistant_id=assistant.id)
    status: State = result.status
    if result.usage is not None:
        print(result.usage.total_tokens)
    async with machine.stream(thread_id=thread.id, assistant_id=assistant.id) as events:
        async for event in events:
            check: AssistantStreamEvent = event
            print(check.event)
    final: RunResult = events.result
    print(status, final.rounds, machine.state)


if __name__ == "__main__":
    anyio.run(main, openai.AsyncOpenAI())
