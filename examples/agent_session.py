"""Agent-session turns (``client.beta.agents.sessions``) driven by a RunMachine: two tools, a
second turn on the same session, and an approval policy that approves MCP calls to one known
server and leaves anything else to a person, who answers later with ``resume``.

Run it against the embedded emulator (no API key), where the agent's turns are scripted:

    python examples/agent_session.py

or against a real endpoint (the key comes from OPENAI_API_KEY; the MCP servers in MCP_SERVERS
must then be yours): ``python examples/agent_session.py --base-url https://api.openai.com/v1``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Literal

import anyio
import openai

from runmachine import RunMachine, RunResult, tool
from runmachine.testing import Emulator, TurnScenario

Decision = Literal["approve", "deny", "cancel"]

#: The agent's MCP servers; the machine approves calls to the trusted ones on its own.
MCP_SERVERS = {"docs": "https://docs.example.com/mcp", "bookings": "https://book.example.com/mcp"}
TRUSTED_MCP_SERVERS = frozenset({"docs"})

WEATHER = {"Lisbon": "sunny, 24 C", "Porto": "cloudy, 19 C"}


class TravelDesk(RunMachine):
    """Two tools, and a policy for the approvals the agent asks for."""

    @tool
    async def get_weather(self, city: str) -> str:
        """Current weather in a city."""
        return WEATHER.get(city, "no data")

    @tool
    def local_time(self, city: str) -> str:
        """Local time in a city (a plain function: runs in a worker thread)."""
        return "14:05" if city in WEATHER else "unknown"

    def on_approval_request(self, request: Any) -> Literal["approve"] | None:
        """``request`` is the SDK's required action. Approve an MCP call to a trusted server;
        return None for anything else: the turn waits, and is never approved by default."""
        if (
            request.type == "mcp_approval_request"
            and request.request.server_label in TRUSTED_MCP_SERVERS
        ):
            return "approve"
        return None


def agent(model: str) -> dict[str, Any]:
    """The agent of the session: the class's tools and the MCP servers."""
    servers = [
        {"type": "mcp", "server_label": label, "transport": {"type": "http", "server_url": url}}
        for label, url in MCP_SERVERS.items()
    ]
    return {"model": model, "tools": [*TravelDesk.agent_tool_definitions(), *servers]}


#: What the emulator's agent does in each turn below (a real agent decides for itself).
EMULATED_TURNS = (
    TurnScenario().tool_round(
        [("get_weather", {"city": "Lisbon"}), ("local_time", {"city": "Lisbon"})]
    ),
    TurnScenario().tool_round([("get_weather", {"city": "Porto"})]),
    TurnScenario()
    .approval("mcp", server_label="docs", name="search_docs", arguments={"query": "Lisbon"})
    .approval("mcp", server_label="bookings", name="book_hotel", arguments={"nights": 2}),
)


async def plan_trip(client: openai.AsyncOpenAI, model: str = "gpt-4o") -> list[RunResult]:
    """A session with a first turn (two tools at once), then a second turn on it."""
    desk = TravelDesk(client)
    first = await desk.create_session(
        environment={"type": "none"},
        agent=agent(model),
        input="What is it like in Lisbon right now? call get_weather and local_time.",
    )
    assert first.session_id is not None
    second = await desk.turn(session_id=first.session_id, input="And Porto? call get_weather.")
    return [first, second]


async def ask_to_book(client: openai.AsyncOpenAI, session_id: str) -> RunResult:
    """A turn with two approvals: the policy approves the docs lookup, and the booking is left
    waiting for a person (the turn ends ``requires_action``, the request in
    ``pending_approvals``)."""
    desk = TravelDesk(client)
    return await desk.turn(session_id=session_id, input="Book a hotel in Lisbon, 2 nights.")


async def answer(client: openai.AsyncOpenAI, waiting: RunResult, decision: Decision) -> RunResult:
    """Later, from any process: send a person's decision on each pending request, and drive the
    turn on to its end."""
    assert waiting.session_id is not None and waiting.turn_id is not None
    decisions = {request.request_id: decision for request in waiting.pending_approvals}
    desk = TravelDesk(client)
    return await desk.resume(
        session_id=waiting.session_id, turn_id=waiting.turn_id, approvals=decisions
    )


def show(result: RunResult) -> None:
    print(f"turn {result.turn_id}: {result.status} after {result.rounds} round(s): {result.text}")


async def main(base_url: str | None, model: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url) as client:
        first, second = await plan_trip(client, model)
        show(first)
        show(second)
        assert first.session_id is not None
        waiting = await ask_to_book(client, first.session_id)
        show(waiting)
        for request in waiting.pending_approvals:
            ask = request.request
            print(f"  waiting on {request.request_id}: {ask.name} on {ask.server_label}")
        # Here a person (a review queue, a button in a chat) says yes.
        show(await answer(client, waiting, "approve"))


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", help="default: the embedded emulator")
    parser.add_argument("--model", default="gpt-4o")
    args = parser.parse_args()
    if args.base_url is not None:
        anyio.run(main, args.base_url, args.model)
        return
    emulator = Emulator()
    for scenario in EMULATED_TURNS:
        emulator.enqueue_turn(scenario)
    with emulator.serve() as base_url:
        os.environ.setdefault("OPENAI_API_KEY", "emulator")  # it takes any key
        anyio.run(main, base_url, args.model)


if __name__ == "__main__":
    cli()
