"""A user's program, as the README shows it: ``mypy --strict`` must accept it unchanged."""

from __future__ import annotations

from typing import Literal

import anyio
import openai
from openai.types.beta import AgentSessionEvent, AssistantStreamEvent
from openai.types.beta.agents.sessions.turn import Turn
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

    def on_approval_request(self, request: object) -> Literal["approve", "deny"] | None:
        return "deny"


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

    # The same machine drives agent-session turns.
    first = await machine.create_session(
        environment={"type": "none"}, agent={"model": "gpt-5"}, input="Rain in Paris?"
    )
    session_id: str | None = first.session_id
    turn: Turn | None = first.turn
    again = await machine.turn(session_id=session_id or "", input="And in Oslo?")
    if again.status == "requires_action":
        for request in again.pending_approvals:
            print(request)
        await machine.resume(
            session_id=session_id or "", turn_id=again.turn_id or "", approvals={"apr_1": "deny"}
        )
    async with machine.stream(session_id=session_id or "", input="Thanks") as turn_events:
        async for turn_event in turn_events:
            seen: AgentSessionEvent = turn_event
            print(seen.type)
    print(turn, turn_events.result.turn_id)


if __name__ == "__main__":
    anyio.run(main, openai.AsyncOpenAI())
