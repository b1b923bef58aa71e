"""runmachine inside an existing anyio application: many runs at once on one client, and one of
them cancelled from outside.

The app starts a task group and drives several conversations concurrently, each on its own
thread, all through one ``AsyncOpenAI`` client. One of them waits on a tool that never returns;
the app cancels it from outside with an ordinary anyio cancel scope. runmachine cancels the
tool, then the server run (shielded, bounded by ``cancel_timeout``), then lets the cancellation
propagate, so the thread is not left locked. The app then asks the server: that run is
``cancelled``. The same code runs on asyncio and on trio.

    python examples/anyio_app.py                  # embedded emulator, asyncio
    python examples/anyio_app.py --backend trio
    python examples/anyio_app.py --base-url https://api.openai.com/v1
"""

from __future__ import annotations

import argparse
import os

import anyio
import attrs
import openai

from runmachine import RunMachine, quiet_deprecation, tool
from runmachine.testing import emulated

CITIES = ("Paris", "Oslo", "Lima", "Kyoto")


class Concierge(RunMachine):
    """Quick lookups, and one tool that waits for a human who never answers."""

    def __init__(self, client: openai.AsyncOpenAI, waiting: anyio.Event, **options: object):
        super().__init__(client, **options)
        self.waiting = waiting

    @tool
    async def get_weather(self, city: str) -> str:
        """Weather for a city."""
        await anyio.sleep(0.1)
        return f"mild in {city}"

    @tool
    async def wait_for_approval(self, city: str) -> str:
        """Ask a human to approve a booking (never answers in this example)."""
        self.waiting.set()
        await anyio.sleep_forever()
        return "approved"


@attrs.define
class Outcome:
    city: str
    thread_id: str
    run_id: str | None = None
    status: str = "not started"
    text: str = ""


async def converse(
    client: openai.AsyncOpenAI, assistant_id: str, outcome: Outcome, machine: Concierge
) -> None:
    with quiet_deprecation():
        await client.beta.threads.messages.create(
            thread_id=outcome.thread_id,
            role="user",
            content=f"Plan a day in {outcome.city}: call get_weather."
            if outcome.city != "Kyoto"
            else f"Book a tour in {outcome.city}: call wait_for_approval.",
        )
    try:
        result = await machine.run(thread_id=outcome.thread_id, assistant_id=assistant_id)
    finally:
        # Also reached when the app cancels this task: the machine knows its run's id.
        outcome.run_id = machine.run_id
    outcome.status, outcome.text = result.status, result.text


async def app(client: openai.AsyncOpenAI, model: str = "gpt-4o") -> list[Outcome]:
    """Drive one conversation per city at once; cancel the one stuck waiting for approval."""
    with quiet_deprecation():
        assistant = await client.beta.assistants.create(
            model=model, name="concierge", tools=Concierge.tool_definitions()
        )
    outcomes = []
    for city in CITIES:
        with quiet_deprecation():
            thread = await client.beta.threads.create()
        outcomes.append(Outcome(city, thread.id))

    waiting = anyio.Event()
    # Its own cancel scope, so that the app can cancel that one conversation alone.
    kyoto_scope = anyio.CancelScope()

    async def cancellable(outcome: Outcome, machine: Concierge) -> None:
        with kyoto_scope:
            await converse(client, assistant.id, outcome, machine)
        if kyoto_scope.cancelled_caught:
            outcome.status = "cancelled by the app"

    async with anyio.create_task_group() as tg:
        for outcome in outcomes:
            machine = Concierge(client, waiting)
            if outcome.city == "Kyoto":
                tg.start_soon(cancellable, outcome, machine)
            else:
                tg.start_soon(converse, client, assistant.id, outcome, machine)
        with anyio.fail_after(60):
            await waiting.wait()
        kyoto_scope.cancel()  # from outside: the run's task knows nothing about it

    # What does the server say about the cancelled run? (cancelling settles to cancelled)
    stuck = next(o for o in outcomes if o.city == "Kyoto")
    assert stuck.run_id is not None
    with anyio.fail_after(30):
        while True:
            with quiet_deprecation():
                run = await client.beta.threads.runs.retrieve(
                    run_id=stuck.run_id, thread_id=stuck.thread_id
                )
            if run.status != "cancelling":
                break
            await anyio.sleep(0.2)
    stuck.text = f"server run status: {run.status}"
    return outcomes


async def main(base_url: str | None, model: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url) as client:
        outcomes = await app(client, model)
    for o in outcomes:
        print(f"{o.city:<6} run {o.run_id}: {o.status}: {o.text}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", help="default: the embedded emulator")
    parser.add_argument("--model", default="gpt-4o")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args()
    with emulated(args.base_url) as base_url:
        if args.base_url is None:
            os.environ.setdefault("OPENAI_API_KEY", "emulator")  # it takes any key
        anyio.run(main, base_url, args.model, backend=args.backend)


if __name__ == "__main__":
    cli()
