"""The machine alone, no I/O: one lifecycle transition, and creating a machine with many alive.

    python benchmarks/machine_cost.py            # this checkout
    PYTHONPATH=/other/checkout/src python benchmarks/machine_cost.py   # another one, to compare

Prints, for asyncio and trio: the CPU cost of one lifecycle transition fed through
``RunMachine.feed``, and the wall time of creating a machine, feeding it the first two events of
a run and dropping it mid-run, with no other machine alive and with 10,000 alive (the ratio of
the two should be 1: the engine keeps no list of the machines it drives).
"""

from __future__ import annotations

import gc
import json
import time
from typing import Any

import anyio

from runmachine import RunMachine

try:
    from runmachine.backends.sse import build_event
except ImportError:  # a checkout from before the backend seam
    from runmachine._sse import build_event  # type: ignore[no-redef]


def _event(name: str, status: str) -> Any:
    run = {
        "id": "run_bench",
        "object": "thread.run",
        "created_at": 1,
        "assistant_id": "asst_bench",
        "thread_id": "thread_bench",
        "status": status,
        "model": "gpt-4o",
        "instructions": "",
        "tools": [],
        "parallel_tool_calls": True,
    }
    return build_event(name, json.dumps(run))


EVENTS = [
    _event("thread.run.created", "queued"),
    _event("thread.run.in_progress", "in_progress"),
    _event("thread.run.completed", "completed"),
]


async def measure(alive: int = 10_000, churn: int = 2_000) -> str:
    machines = [RunMachine() for _ in range(churn)]
    started = time.process_time()
    for machine in machines:
        for event in EVENTS:
            await machine.feed(event)
    per_transition = (time.process_time() - started) / (churn * len(EVENTS))
    del machines
    gc.collect()

    async def once() -> float:
        started = time.perf_counter()
        for _ in range(churn):
            machine = RunMachine()
            for event in EVENTS[:2]:
                await machine.feed(event)
            del machine
        return (time.perf_counter() - started) / churn

    alone = min([await once() for _ in range(3)])
    kept = []
    for _ in range(alive):
        machine = RunMachine()
        for event in EVENTS[:2]:
            await machine.feed(event)
        kept.append(machine)
    crowded = min([await once() for _ in range(3)])
    return (
        f"transition {per_transition * 1e6:.1f} µs; create, feed 2 events, drop: "
        f"{alone * 1e6:.1f} µs with none alive, {crowded * 1e6:.1f} µs with {alive:,} alive "
        f"({crowded / alone:.2f} ×)"
    )


if __name__ == "__main__":
    for backend in ("asyncio", "trio"):
        print(f"{backend}: {anyio.run(measure, backend=backend)}")
