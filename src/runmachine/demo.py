"""``runmachine demo``: a multi-round tool-calling conversation on the embedded emulator.

It starts the emulator on a free loopback port, creates an assistant with three example tools,
and drives two user turns through the real openai SDK, printing the streamed text, each tool call
with its output and duration, every state transition, and a one-line summary per run. Plain text
output, readable in a terminal and in a log.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Literal

import anyio

from runmachine.machine import RunMachine
from runmachine.tools import tool

TURNS = (
    "call get_current_temperature and get_rain_probability for Paris, then slow_forecast.",
    "and for Oslo? call get_current_temperature and get_rain_probability.",
)


class DemoMachine(RunMachine):
    """Example tools, and hooks that narrate the run."""

    @tool
    async def get_current_temperature(self, location: str, unit: Literal["c", "f"] = "c") -> str:
        """Current temperature at a location."""
        return f"18 degrees {unit.upper()} in {location}"

    @tool(name="get_rain_probability", timeout=5.0)
    def rain(self, location: str) -> float:
        """Probability of rain at a location (a plain function: runs in a worker thread)."""
        return 0.2

    @tool(timeout=5.0)
    async def slow_forecast(self, location: str) -> str:
        """A deliberately slow tool."""
        await anyio.sleep(0.5)
        return f"dry all week in {location}"

    def __init__(self, client: Any, out: Any = sys.stdout, **options: Any) -> None:
        super().__init__(client, **options)
        self.out = out
        self._last = self.state

    def _say(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _record(self, event_data: Any) -> None:
        super()._record(event_data)
        record = self.history[-1]
        self._say(f"\n  [{record.source} -> {record.dest}]  ({record.trigger})\n")

    def on_enter_requires_action(self, run: Any) -> None:
        for call in run.required_action.submit_tool_outputs.tool_calls:
            self._say(f"  tool call {call.function.name}({call.function.arguments}) ...\n")

    def on_enter_submitting(self, run: Any) -> None:
        self._say("  submitting every output in one request\n")

    async def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        self._say(delta.value or "")


async def run_demo(out: Any = sys.stdout) -> int:
    import openai

    from runmachine.testing import Emulator

    emulator = Emulator(delta_delay=0.01)
    with emulator.serve() as base_url:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="demo") as client:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                assistant = await client.beta.assistants.create(
                    model="gpt-4o",
                    name="weather",
                    tools=DemoMachine.tool_definitions(),  # type: ignore[arg-type]
                )
                thread = await client.beta.threads.create()
            out.write(f"emulator at {base_url}; assistant {assistant.id}, thread {thread.id}\n")
            for turn in TURNS:
                out.write(f"\nuser: {turn}\nassistant:\n")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    await client.beta.threads.messages.create(
                        thread_id=thread.id, role="user", content=turn
                    )
                started = time.perf_counter()
                result = await DemoMachine(client, out=out).run(
                    thread_id=thread.id, assistant_id=assistant.id
                )
                for call in result.tool_calls:
                    out.write(
                        f"  round {call.round}: {call.name} -> {call.output!r} "
                        f"({(call.duration or 0) * 1000:.0f} ms)\n"
                    )
                out.write(
                    f"\nrun {result.run_id}: {result.status}, {result.rounds} rounds, "
                    f"{len(result.tool_calls)} tool calls, {time.perf_counter() - started:.2f} s\n"
                )
                if result.status != "completed":
                    return 1
            out.write("\ntrace of the last run (mermaid):\n")
            out.write(str(result.diagram("mermaid")))
    return 0


def main() -> int:
    try:
        return anyio.run(run_demo)
    except Exception as exc:  # the demo reports any failure readably
        print(f"runmachine demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
