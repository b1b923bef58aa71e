"""Workers: any live process takes over the runs whose process died.

A run (or agent-session turn) driven with a leased ledger is held under a lease that its driver
renews while it drives. When that process dies, is paused or is cut off, the lease runs out; a
worker finds such runs (``LeasedLedger.claim_orphan``: not finished, lease expired or handed
off, recorded by this worker's machine class), claims each, and resumes it to its end with a
machine of that class. Recorded outputs are not computed again, a round the server took is not
submitted again, and a non-idempotent call that started is not run again, whichever process
started them.

``run_worker`` is the library call, for apps that run their own event loop; ``runmachine worker
--ledger DSN module:Class`` is the process. Stopping (``stop`` set, SIGTERM or Ctrl-C for the
process) hands every run the worker drives off (``RunMachine.hand_off``): nothing is cancelled on
the server, and their leases are released so that another worker takes them over at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import attrs
import openai

from runmachine.errors import HandedOff, LeaseLost, RunHeld
from runmachine.ledger import (
    TURN_MARK,
    Lease,
    LeasedLedger,
    RunEntry,
    default_holder,
    split_machine,
)
from runmachine.machine import RunMachine, importable_name
from runmachine.result import RunResult

__all__ = ["WorkerStats", "run_worker"]

log = logging.getLogger("runmachine.worker")


@attrs.define
class WorkerStats:
    """What a worker did: runs it took over, and how each ended."""

    taken: int = 0
    finished: int = 0
    """Driven to an end (``completed``, or any other end the run reached)."""
    failed: int = 0
    """Stopped by an error (a guard, a server failure): the run was cancelled."""
    lost: int = 0
    """Taken over by another holder meanwhile (held, or its lease lost)."""
    handed_off: int = 0
    """Left for another holder when the worker stopped."""


async def run_worker(
    machine_class: type[RunMachine],
    ledger: LeasedLedger,
    client: openai.AsyncOpenAI,
    *,
    concurrency: int = 8,
    holder: str | None = None,
    lease_ttl: float = 30.0,
    poll_interval: float = 1.0,
    stop: anyio.Event | None = None,
    on_result: Callable[[RunEntry, RunResult], Awaitable[None] | None] | None = None,
) -> WorkerStats:
    """Take over and drive orphaned runs of ``machine_class`` until ``stop`` is set (forever
    without one), ``concurrency`` at a time. Returns what it did."""
    if not isinstance(ledger, LeasedLedger):
        raise TypeError(f"a worker needs a ledger that keeps leases, not {type(ledger).__name__}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency!r}")
    name = holder or default_holder()
    recorded = importable_name(machine_class)
    machines = (recorded, recorded + TURN_MARK)
    stop = stop if stop is not None else anyio.Event()
    stats = WorkerStats()
    slots = anyio.Semaphore(concurrency)
    driving: set[RunMachine] = set()

    async def drive(lease: Lease, entry: RunEntry) -> None:
        try:
            machine = machine_class(client, ledger=ledger, lease_ttl=lease_ttl, lease_holder=name)
        except Exception:
            stats.failed += 1
            log.exception("cannot make a %s for run %s", machine_class.__name__, entry.run_id)
            await ledger.release(lease, handoff=True)
            slots.release()
            return
        driving.add(machine)
        if stop.is_set():  # stopped while this run was being claimed: leave it to others
            driving.discard(machine)
            stats.handed_off += 1
            await ledger.release(lease, handoff=True)
            slots.release()
            return
        try:
            if split_machine(entry.machine)[1]:
                result = await machine.resume(session_id=entry.thread_id, turn_id=entry.run_id)
            else:
                result = await machine.resume(run_id=entry.run_id, thread_id=entry.thread_id)
        except HandedOff:
            stats.handed_off += 1
        except (RunHeld, LeaseLost) as exc:
            stats.lost += 1
            log.info("run %s: %s", entry.run_id, exc)
        except Exception:
            stats.failed += 1
            log.exception("run %s failed", entry.run_id)
            # The machine's own lease (if it got one) was released by its driver; the worker's
            # claim may still stand when it failed before that: leave the run to others.
            await ledger.release(lease, handoff=True)
        else:
            stats.finished += 1
            if on_result is not None:
                done = on_result(entry, result)
                if done is not None:
                    await done
        finally:
            driving.discard(machine)
            slots.release()

    async def stopper() -> None:
        await stop.wait()
        for machine in list(driving):
            machine.hand_off()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stopper)
        while not stop.is_set():
            await slots.acquire()
            if stop.is_set():
                slots.release()
                break
            try:
                taken = await ledger.claim_orphan(name, lease_ttl, machines=machines)
            except Exception:
                slots.release()
                log.exception("the ledger could not be read; trying again")
                taken = None
            else:
                if taken is None:
                    slots.release()
            if taken is None:
                with anyio.move_on_after(poll_interval):
                    await stop.wait()
                continue
            stats.taken += 1
            tg.start_soon(drive, *taken)
        # ``stopper`` hands off what is still driven; the drives end with HandedOff.
    return stats
