"""An offline OpenAI Assistants v2 API emulator, for testing run machines without a network.

It speaks the way the real service speaks: same endpoints under ``/v1``, same
objects with every key, same SSE events in the same order, same error envelopes and texts.
Scripted :class:`Scenario` objects decide what the "model" does in a run, :class:`Faults` break
streams and responses on purpose, and :meth:`Emulator.run_stats` reports what the server saw.

    from runmachine.testing import Emulator, Scenario

    emu = Emulator()
    emu.enqueue(Scenario().tool_round([("get_weather", {"city": "Paris"})]).reply("Sunny."))
    with emu.serve() as base_url:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="test")
        ...

The same emulator serves the agent-sessions API (``client.beta.agents.sessions``): scripted
:class:`TurnScenario` objects (queued with :meth:`Emulator.enqueue_turn`) decide what the agent
does in a turn, :class:`TurnFaults` break that wire, and :meth:`Emulator.turn_stats` reports what
the server saw (see ``runmachine.testing._sessions`` for the events and what is reconstructed).

The server part needs the ``runmachine[emulator]`` extra (Starlette and uvicorn); they are
imported only when an app is built or served.
"""

from __future__ import annotations

from runmachine.testing._model import Faults, HTTPFault, Scenario
from runmachine.testing._serve import emulated, serve
from runmachine.testing._server import Emulator, RunStats
from runmachine.testing._sessions import TurnStats
from runmachine.testing._turns import TURN_ERROR_CODES, TurnFaults, TurnScenario

__all__ = [
    "TURN_ERROR_CODES",
    "Emulator",
    "Faults",
    "HTTPFault",
    "RunStats",
    "Scenario",
    "TurnFaults",
    "TurnScenario",
    "TurnStats",
    "emulated",
    "serve",
]
