"""The machine of the fleet tests: two tools with side effects counted in files.

``charge`` is not idempotent: it appends its call id to ``$FLEET_EFFECTS/charge`` before it
returns, and, when ``$FLEET_HOLD`` names a file, first waits until that file exists (so a test
can pause or race the process that runs it). ``lookup`` is idempotent and appends likewise.
Workers run it as ``runmachine worker --ledger LEDGER fleet:Fleet`` from this directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from runmachine import RunMachine, tool


def _effect(name: str, call_id: str | None) -> None:
    with (Path(os.environ["FLEET_EFFECTS"]) / name).open("a") as f:
        f.write(f"{call_id}\n")
        f.flush()
        os.fsync(f.fileno())


class Fleet(RunMachine):
    @tool(idempotent=False)
    async def charge(self, amount: int) -> str:
        """Charge a card."""
        hold = os.environ.get("FLEET_HOLD")
        _effect("charge-started", self.run_id)
        if hold:
            while not await anyio.Path(hold).exists():
                await anyio.sleep(0.02)
        _effect("charge", self.run_id)
        return f"charged {amount}"

    @tool
    async def lookup(self, sku: str) -> str:
        """Look a product up."""
        _effect("lookup", self.run_id)
        return f"{sku}: in stock"
