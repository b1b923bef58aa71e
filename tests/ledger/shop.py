"""The machines of the ledger tests, and a process that drives one run for the kill-point tests.

``python shop.py BACKEND LEDGER POINT`` creates an assistant, a thread and a run
on the emulator at ``OPENAI_BASE_URL`` and drives it. At kill point ``POINT`` it prints
``point POINT RUN_ID THREAD_ID`` and (except for ``during-submit``) stops there until the test
kills it with SIGKILL. Resuming is the CLI's job: ``runmachine resume --ledger LEDGER RUN_ID
shop:Shop``, run from this directory.

Each tool appends a line to ``$SHOP_EFFECTS/<tool>`` before it returns: the side effect the test
counts. ``charge`` is not idempotent; ``lookup`` is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import openai

from runmachine import RunMachine, SQLiteLedger, tool

#: Short, so that a resume after the kill waits little for the dead process's lease.
LEASE_TTL = 1.0

POINTS = ("mid-charge", "mid-lookup", "before-submit", "during-submit", "after-accept", "none")


def _effect(name: str) -> None:
    with (Path(os.environ["SHOP_EFFECTS"]) / name).open("a") as f:
        f.write("1\n")
        f.flush()
        os.fsync(f.fileno())


def _point(name: str, run_id: str | None, thread_id: str | None) -> None:
    print(f"point {name} {run_id} {thread_id}", flush=True)


class Shop(RunMachine):
    """Two tools with side effects; ``SHOP_POINT`` says where to stop."""

    @tool(idempotent=False)
    async def charge(self, amount: int) -> str:
        """Charge the customer's card."""
        _effect("charge")
        if os.environ.get("SHOP_POINT") == "mid-charge":
            await self._other_call_recorded("lookup")
            _point("mid-charge", self.run_id, self.thread_id)
            await anyio.sleep_forever()
        return f"charged {amount}"

    @tool
    async def lookup(self, sku: str) -> str:
        """Look a product up."""
        _effect("lookup")
        if os.environ.get("SHOP_POINT") == "mid-lookup":
            await self._other_call_recorded("charge")
            _point("mid-lookup", self.run_id, self.thread_id)
            await anyio.sleep_forever()
        return f"{sku}: in stock"

    async def _other_call_recorded(self, name: str) -> None:
        """Stop only once the round's other call has its output in the ledger."""
        assert self.run_id is not None
        while True:
            entry = await self.ledger.load(self.run_id)
            if entry is not None and any(
                c.name == name and c.finished for c in entry.calls.values()
            ):
                return
            await anyio.sleep(0.01)


class Counter(RunMachine):
    """Two quick tools, for the concurrency tests."""

    @tool
    async def add(self, a: int, b: int) -> int:
        """Add two numbers."""
        await anyio.lowlevel.checkpoint()
        return a + b

    @tool(idempotent=False)
    def note(self, text: str) -> str:
        """Write a note (a plain function)."""
        return f"noted {text}"


def _client(point: str) -> openai.AsyncOpenAI:
    async def on_request(request: Any) -> None:
        if request.method == "POST" and request.url.path.endswith("/submit_tool_outputs"):
            _, run_id = _ids(str(request.url.path))
            if point == "before-submit":
                _point(point, run_id, _thread(str(request.url.path)))
                await anyio.sleep_forever()
            if point == "during-submit":
                _point(point, run_id, _thread(str(request.url.path)))

    async def on_response(response: Any) -> None:
        path = str(response.request.url.path)
        if point == "after-accept" and path.endswith("/submit_tool_outputs"):
            _, run_id = _ids(path)
            _point(point, run_id, _thread(path))
            await anyio.sleep_forever()

    http = openai.DefaultAsyncHttpxClient(
        event_hooks={"request": [on_request], "response": [on_response]}
    )
    return openai.AsyncOpenAI(http_client=http, max_retries=0)


def _ids(path: str) -> tuple[str, str]:
    parts = path.split("/")
    return parts[parts.index("threads") + 1], parts[parts.index("runs") + 1]


def _thread(path: str) -> str:
    return _ids(path)[0]


async def main(ledger_path: str, point: str) -> None:
    os.environ["SHOP_POINT"] = point
    async with _client(point) as client:
        assistant = await client.beta.assistants.create(
            model="gpt-4o",
            tools=Shop.tool_definitions(),  # type: ignore[arg-type]
        )
        thread = await client.beta.threads.create(
            messages=[{"role": "user", "content": "call charge and lookup"}]
        )
        machine = Shop(client, ledger=SQLiteLedger(ledger_path), lease_ttl=LEASE_TTL)
        result = await machine.run(thread_id=thread.id, assistant_id=assistant.id)
        print(f"done {result.status} {result.run_id}", flush=True)


if __name__ == "__main__":
    _, backend, ledger_path, point = sys.argv
    assert point in POINTS, sys.argv
    anyio.run(main, ledger_path, point, backend=backend)
