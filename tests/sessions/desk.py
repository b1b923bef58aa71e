"""The machine of the sessions ledger tests, and a process that drives one turn to a kill point.

``python desk.py BACKEND LEDGER POINT`` creates a session on the emulator at
``OPENAI_BASE_URL`` and drives its first turn with a ``SQLiteLedger``. At kill point ``POINT`` it
prints ``point POINT TURN_ID SESSION_ID`` and stops there until the test kills it with SIGKILL.
Resuming is the CLI's job: ``runmachine resume --ledger LEDGER TURN_ID desk:Desk``, run from
this directory.

Each tool appends a line to ``$DESK_EFFECTS/<tool>`` before it returns: the side effect the test
counts. ``charge`` is not idempotent; ``lookup`` is.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import openai

from runmachine import RunMachine, SQLiteLedger, tool

#: Short, so that a resume after the kill waits little for the dead process's lease.
LEASE_TTL = 1.0

POINTS = ("mid-charge", "mid-lookup", "before-submit", "after-accept", "none")


def _effect(name: str) -> None:
    with (Path(os.environ["DESK_EFFECTS"]) / name).open("a") as f:
        f.write("1\n")
        f.flush()
        os.fsync(f.fileno())


def _point(name: str, turn_id: str | None, session_id: str | None) -> None:
    print(f"point {name} {turn_id} {session_id}", flush=True)


class Desk(RunMachine):
    """Two tools with side effects; ``DESK_POINT`` says where to stop."""

    @tool(idempotent=False)
    async def charge(self, amount: int) -> str:
        """Charge the customer's card."""
        _effect("charge")
        if os.environ.get("DESK_POINT") == "mid-charge":
            await self._other_call_recorded("lookup")
            _point("mid-charge", self.turn_id, self.session_id)
            await anyio.sleep_forever()
        return f"charged {amount}"

    @tool
    async def lookup(self, sku: str) -> str:
        """Look a product up."""
        _effect("lookup")
        if os.environ.get("DESK_POINT") == "mid-lookup":
            await self._other_call_recorded("charge")
            _point("mid-lookup", self.turn_id, self.session_id)
            await anyio.sleep_forever()
        return f"{sku}: in stock"

    def on_approval_request(self, request: Any) -> Any:
        return None  # nobody here answers: the turn is left waiting

    async def _other_call_recorded(self, name: str) -> None:
        """Stop only once the round's other call has its output in the ledger."""
        assert self.turn_id is not None
        while True:
            entry = await self.ledger.load(self.turn_id)
            if entry is not None and any(
                c.name == name and c.finished for c in entry.calls.values()
            ):
                return
            await anyio.sleep(0.01)


def _client(point: str) -> openai.AsyncOpenAI:
    results = 0

    def is_result(request: Any) -> bool:
        if request.method != "POST" or not request.url.path.endswith("/events"):
            return False
        events = json.loads(request.content or b"{}").get("events", [])
        return any(e.get("type") == "agent.session.input.tool_result" for e in events)

    async def on_request(request: Any) -> None:
        if point == "before-submit" and is_result(request):
            body = json.loads(request.content)["events"][0]
            _point(point, body["turn_id"], request.url.path.split("/")[-2])
            await anyio.sleep_forever()

    async def on_response(response: Any) -> None:
        nonlocal results
        request = response.request
        if point == "after-accept" and is_result(request):
            results += 1
            if results == 2:  # both results taken; what follows is never read
                body = json.loads(request.content)["events"][0]
                _point(point, body["turn_id"], request.url.path.split("/")[-2])
                await anyio.sleep_forever()

    http = openai.DefaultAsyncHttpxClient(
        event_hooks={"request": [on_request], "response": [on_response]}
    )
    return openai.AsyncOpenAI(http_client=http, max_retries=0)


async def main(ledger_path: str, point: str) -> None:
    os.environ["DESK_POINT"] = point
    async with _client(point) as client:
        machine = Desk(client, ledger=SQLiteLedger(ledger_path), lease_ttl=LEASE_TTL)
        result = await machine.create_session(
            environment={"type": "none"},
            agent={"model": "gpt-test"},
            input="call charge and lookup",
        )
        print(f"done {result.status} {result.turn_id} {result.session_id}", flush=True)


if __name__ == "__main__":
    _, backend, ledger_path, point = sys.argv
    assert point in POINTS, sys.argv
    anyio.run(main, ledger_path, point, backend=backend)
