"""Two ways to drive a run without reading one long stream: polling, and resuming by run id.

1. ``RunMachine(client, stream=False)`` drives a whole run by polling ``runs.retrieve``
   (honouring ``openai-poll-after-ms``). State hooks fire; text-delta hooks do not, and the text
   is read with ``messages.list`` at the end.
2. A run created elsewhere (here with the plain SDK, as a crashed worker or another service
   would) is picked up by id with ``machine.resume(thread_id=..., run_id=...)``: the machine
   adopts the run's current status (here ``requires_action``), runs the tools, submits, and
   drives it to its end.

    python examples/polling_and_resume.py
    python examples/polling_and_resume.py --base-url https://api.openai.com/v1
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import anyio
import openai

from runmachine import RunMachine, RunResult, quiet_deprecation, tool
from runmachine.testing import emulated


class Shipping(RunMachine):
    """One tool, and a state hook that shows which states a polled run went through."""

    def __init__(self, client: openai.AsyncOpenAI, **options: Any) -> None:
        super().__init__(client, **options)
        self.entered: list[str] = []

    @tool
    async def shipping_quote(self, country: str) -> str:
        """Shipping price to a country."""
        return f"12 EUR to {country}"

    def on_enter_requires_action(self, run: Any) -> None:
        self.entered.append("requires_action")

    def on_enter_completed(self, run: Any) -> None:
        self.entered.append("completed")


async def _setup(client: openai.AsyncOpenAI, model: str, question: str) -> tuple[str, str]:
    with quiet_deprecation():
        assistant = await client.beta.assistants.create(
            model=model, name="shipping", tools=Shipping.tool_definitions()
        )
        thread = await client.beta.threads.create(messages=[{"role": "user", "content": question}])
    return assistant.id, thread.id


async def by_polling(
    client: openai.AsyncOpenAI, model: str = "gpt-4o"
) -> tuple[Shipping, RunResult]:
    """A run driven by polling alone, from creation to its end."""
    assistant_id, thread_id = await _setup(
        client, model, "What does shipping to Norway cost? call shipping_quote."
    )
    machine = Shipping(client, stream=False, poll_interval=0.2)
    result = await machine.run(thread_id=thread_id, assistant_id=assistant_id)
    return machine, result


async def by_resume(client: openai.AsyncOpenAI, model: str = "gpt-4o") -> tuple[str, RunResult]:
    """A run started by someone else, found waiting for tool outputs, and taken over by id."""
    assistant_id, thread_id = await _setup(
        client, model, "What does shipping to Chile cost? call shipping_quote."
    )
    with quiet_deprecation():
        # Started elsewhere, with the plain SDK; nobody is reading it.
        run = await client.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant_id)
        run = await client.beta.threads.runs.poll(
            run_id=run.id, thread_id=thread_id, poll_interval_ms=200
        )
    status_before = run.status  # "requires_action": it waits for outputs nobody will send
    result = await Shipping(client).resume(thread_id=thread_id, run_id=run.id)
    return status_before, result


async def main(base_url: str | None, model: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url) as client:
        machine, polled = await by_polling(client, model)
        print(f"polled run {polled.run_id}: {polled.status} after {polled.rounds} round(s)")
        print(f"  states entered (hooks): {machine.entered}")
        print(f"  text (read with messages.list): {polled.text}")

        status_before, resumed = await by_resume(client, model)
        print(f"resumed run {resumed.run_id}: it was {status_before}, now {resumed.status}")
        print(f"  transitions: {[f'{t.source}->{t.dest}' for t in resumed.transitions]}")
        print(f"  text: {resumed.text}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", help="default: the embedded emulator")
    parser.add_argument("--model", default="gpt-4o")
    args = parser.parse_args()
    with emulated(args.base_url) as base_url:
        if args.base_url is None:
            os.environ.setdefault("OPENAI_API_KEY", "emulator")  # it takes any key
        anyio.run(main, base_url, args.model)


if __name__ == "__main__":
    cli()
