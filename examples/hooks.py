"""A RunMachine subclass with state hooks and text hooks that logs a run the way an app would.

Run it against the embedded emulator (no API key):

    python examples/hooks.py

or against a real endpoint: ``python examples/hooks.py --base-url https://api.openai.com/v1
--model gpt-4o`` (the key comes from OPENAI_API_KEY).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import anyio
import openai

from runmachine import RunMachine, RunResult, ToolCallRecord, quiet_deprecation, tool
from runmachine.testing import emulated

log = logging.getLogger("support_bot")

ORDERS = {"A1": "shipped on Monday", "B2": "waiting for stock"}


class SupportBot(RunMachine):
    """Answers order questions; every hook writes one log line, as a real service would."""

    @tool
    async def lookup_order(self, order_id: str) -> dict[str, str]:
        """The status of an order, by its id."""
        return {"order_id": order_id, "status": ORDERS.get(order_id, "unknown order")}

    @tool(timeout=2.0)
    def refund_policy(self) -> str:
        """The shop's refund policy (a plain function: runs in a worker thread)."""
        return "30 days, no questions asked"

    # State hooks: on_enter_<state> / on_exit_<state> receive the SDK's Run object.
    def on_enter_queued(self, run: Any) -> None:
        log.info("run %s queued (thread %s)", run.id, run.thread_id)

    def on_enter_requires_action(self, run: Any) -> None:
        calls = run.required_action.submit_tool_outputs.tool_calls
        log.info(
            "run %s needs %d tool call(s): %s",
            run.id,
            len(calls),
            ", ".join(f"{c.function.name}{c.function.arguments}" for c in calls),
        )

    def on_exit_submitting(self, run: Any) -> None:
        log.info("run %s: the server took the outputs", run.id)

    async def on_enter_completed(self, run: Any) -> None:  # hooks may be async too
        usage = run.usage.total_tokens if run.usage else "?"
        log.info("run %s completed (%s tokens)", run.id, usage)

    def on_enter_failed(self, run: Any) -> None:
        log.error("run %s failed: %s", run.id, run.last_error)

    # Text hooks: the SDK's AsyncAssistantEventHandler names.
    async def on_text_created(self, text: Any) -> None:
        self.chunks = 0

    async def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        self.chunks += 1  # a web app would forward delta.value to the browser here

    async def on_text_done(self, text: Any) -> None:
        log.info("assistant said (%d chunks): %s", self.chunks, text.value)

    def on_tool_error(self, tool_call: ToolCallRecord, error: BaseException) -> bool:
        log.warning("tool %s failed: %s", tool_call.name, tool_call.error)
        return False  # send the error output and let the model deal with it


async def ask(client: openai.AsyncOpenAI, question: str, model: str = "gpt-4o") -> RunResult:
    """Create the assistant and a thread, ask ``question``, and drive the run."""
    with quiet_deprecation():
        assistant = await client.beta.assistants.create(
            model=model, name="support bot", tools=SupportBot.tool_definitions()
        )
        thread = await client.beta.threads.create(messages=[{"role": "user", "content": question}])
    return await SupportBot(client).run(thread_id=thread.id, assistant_id=assistant.id)


QUESTION = "Where is order A1? call lookup_order and refund_policy."


async def main(base_url: str | None, model: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url) as client:
        result = await ask(client, QUESTION, model)
    print(f"{result.status} after {result.rounds} round(s): {result.text}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", help="default: the embedded emulator")
    parser.add_argument("--model", default="gpt-4o")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    with emulated(args.base_url) as base_url:
        if args.base_url is None:
            os.environ.setdefault("OPENAI_API_KEY", "emulator")  # it takes any key
        anyio.run(main, base_url, args.model)


if __name__ == "__main__":
    cli()
