"""Many tools in one round: a concurrency limit, per-tool timeouts, and the run's own deadline.

The model asks for six tools at once. runmachine runs them concurrently, at most
``tool_concurrency`` at a time; ``slow_report`` has a 0.5 s ``timeout`` and gets an error output
when it overruns; ``archive_search`` has no timeout, but every round must be submitted
``deadline_margin`` seconds before the run's ``expires_at``, so it is cancelled in time and the
run does not expire. All six outputs still go to the server in one submission.

    python examples/parallel_tools.py            # embedded emulator, runs expire after 8 s
    python examples/parallel_tools.py --base-url https://api.openai.com/v1

(Real runs expire after 10 minutes, so there the deadline only matters for very slow tools.)
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import anyio
import openai

from runmachine import RunMachine, RunResult, quiet_deprecation, tool
from runmachine.testing import emulated


class Dashboard(RunMachine):
    """Six independent lookups; ``running`` and ``peak`` show the concurrency limit at work."""

    running = 0
    peak = 0
    expires_at: int | None = None

    def on_enter_requires_action(self, run: Any) -> None:
        self.expires_at = run.expires_at  # the round must be submitted well before this

    async def _work(self, seconds: float) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await anyio.sleep(seconds)
        finally:
            self.running -= 1

    @tool
    async def fetch_weather(self, city: str) -> str:
        """Weather for a city."""
        await self._work(0.2)
        return f"sunny in {city}"

    @tool
    async def fetch_news(self, city: str) -> list[str]:
        """Headlines for a city."""
        await self._work(0.2)
        return [f"{city} opens a new library", f"{city} marathon on Sunday"]

    @tool
    async def fetch_traffic(self, city: str) -> str:
        """Traffic for a city."""
        await self._work(0.2)
        return "light"

    @tool
    def fetch_calendar(self) -> list[str]:
        """Today's meetings (a plain function: it runs in a worker thread)."""
        time.sleep(0.2)
        return ["09:30 stand-up", "14:00 design review"]

    @tool(timeout=0.5)
    async def slow_report(self, city: str) -> str:
        """A report that takes far longer than its 0.5 s timeout allows."""
        await self._work(3.0)
        return "never"

    @tool
    async def archive_search(self, city: str) -> str:
        """A search with no timeout of its own; the run's deadline stops it."""
        await self._work(60.0)
        return "never"


QUESTION = (
    "Brief me on Paris: call fetch_weather, fetch_news, fetch_traffic, fetch_calendar, "
    "slow_report and archive_search."
)


async def brief(
    client: openai.AsyncOpenAI, model: str = "gpt-4o", deadline_margin: float = 5.0
) -> tuple[Dashboard, RunResult]:
    with quiet_deprecation():
        assistant = await client.beta.assistants.create(
            model=model, name="dashboard", tools=Dashboard.tool_definitions()
        )
        thread = await client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}])
    machine = Dashboard(client, tool_concurrency=2, deadline_margin=deadline_margin)
    result = await machine.run(thread_id=thread.id, assistant_id=assistant.id)
    return machine, result


async def main(base_url: str | None, model: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url) as client:
        machine, result = await brief(client, model)
    run = result.run
    assert run is not None
    left = (machine.expires_at or 0) - time.time()
    print(f"run {run.id}: {result.status}; it would have expired {left:.1f} s from now")
    print(f"at most {machine.peak} tools ran at once (tool_concurrency=2)")
    for call in sorted(result.tool_calls, key=lambda c: c.finished_at or 0):
        took = f"{call.duration:.2f} s" if call.duration is not None else "cut"
        print(f"  {call.name:<15} {took:>14}  {call.error or call.output}")
    print(f"answer: {result.text}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", help="default: the embedded emulator")
    parser.add_argument("--model", default="gpt-4o")
    args = parser.parse_args()
    # Runs on the emulator expire 8 s after they start, so the deadline shows within seconds.
    with emulated(args.base_url, run_ttl=8.0) as base_url:
        if args.base_url is None:
            os.environ.setdefault("OPENAI_API_KEY", "emulator")  # it takes any key
        anyio.run(main, base_url, args.model)


if __name__ == "__main__":
    cli()
