"""The tool ledger: the one place where the driver records what each tool call did.

Per run and tool call id, the driver records that a call *started*, that it *finished* (with its
output, or its error output), and that its round was *submitted* and then *accepted*. It reads the
ledger before it runs any tool and before it submits anything, so a machine that resumes a run
after a restart never runs a recorded call again and never submits an accepted round again.

Two implementations of the :class:`Ledger` protocol:

* :class:`MemoryLedger`, the default: the guarantees hold within one process.
* :class:`~runmachine.sqlite_ledger.SQLiteLedger`: a file that outlives the process, shared by
  processes; with it the guarantees hold across crashes and restarts.

What the records guarantee (see the README's "Durability" section for the whole argument):

* A call recorded as finished is never run again: its recorded output is what gets submitted.
* A call of a tool marked ``@tool(idempotent=False)`` that started but never finished is never run
  again: it gets the error output of :func:`interrupted_output` instead.
* A call of an idempotent tool (the default) that started but never finished runs again.
* A round recorded as accepted is never submitted again.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from runmachine import lifecycle
from runmachine.errors import LeaseLost, LedgerError, RunHeld
from runmachine.tools import error_output

__all__ = [
    "FINISHED",
    "TURN_MARK",
    "CallEntry",
    "Claim",
    "Lease",
    "LeaseLost",
    "LeasedLedger",
    "Ledger",
    "LedgerError",
    "MemoryLedger",
    "RoundEntry",
    "RunEntry",
    "RunHeld",
    "check_fence",
    "default_holder",
    "interrupted_message",
    "interrupted_output",
    "split_machine",
]


@attrs.frozen
class CallEntry:
    """What the ledger knows about one tool call."""

    run_id: str
    call_id: str
    round: int
    name: str
    arguments: str
    started_at: float | None = None
    finished_at: float | None = None
    output: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.output is not None


@attrs.frozen
class RoundEntry:
    """One submission round: which calls, when it was sent, and when the server took it."""

    run_id: str
    round: int
    call_ids: frozenset[str]
    submitted_at: float
    accepted_at: float | None = None

    @property
    def accepted(self) -> bool:
        return self.accepted_at is not None


@attrs.frozen
class RunEntry:
    """Everything the ledger knows about one run."""

    run_id: str
    thread_id: str
    status: str
    machine: str
    created_at: float
    updated_at: float
    calls: Mapping[str, CallEntry] = attrs.field(factory=dict)
    rounds: Sequence[RoundEntry] = ()

    def round_for(self, call_ids: Iterable[str]) -> RoundEntry | None:
        """The submitted round made of exactly ``call_ids``, if any."""
        wanted = frozenset(call_ids)
        for entry in self.rounds:
            if entry.call_ids == wanted:
                return entry
        return None

    @property
    def last_round(self) -> int:
        numbers = [r.round for r in self.rounds] + [c.round for c in self.calls.values()]
        return max(numbers, default=0)


@attrs.frozen
class Lease:
    """One holder's right to drive one run, until ``expires_at`` (Unix time on the ledger's own
    clock: the database server's for ``PostgresLedger``). ``epoch`` grows with every claim of the
    run: a write fenced by a lease whose epoch is no longer the run's is refused."""

    run_id: str
    holder: str
    epoch: int
    expires_at: float


@attrs.frozen
class Claim:
    """One line of a run's claim audit: who held it, from when, until when (``released_at``, or
    the lease's last ``expires_at`` when it was never released)."""

    run_id: str
    holder: str
    epoch: int
    claimed_at: float
    expires_at: float
    released_at: float | None = None

    @property
    def ended_at(self) -> float:
        return self.released_at if self.released_at is not None else self.expires_at


def default_holder() -> str:
    """A holder name unique to this process and this call: host, process id, a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


#: Statuses of an entry whose run (or turn) is over: nobody needs to drive it any more.
FINISHED: frozenset[str] = lifecycle.TERMINAL_STATES | lifecycle.TURN_TERMINAL_STATES


@runtime_checkable
class Ledger(Protocol):
    """Where the driver records tool calls and submissions. Every method is a coroutine; a write
    has taken effect (and, for a durable ledger, reached the disk) when it returns."""

    async def record_run(self, run_id: str, thread_id: str, status: str, machine: str) -> None:
        """Create or update the run's entry with its latest status."""

    async def call_started(
        self, run_id: str, call_id: str, round: int, name: str, arguments: str
    ) -> None:
        """The call's tool is about to run. Written before the tool is called."""

    async def call_finished(
        self,
        run_id: str,
        call_id: str,
        round: int,
        name: str,
        arguments: str,
        output: str,
        error: str | None,
    ) -> None:
        """The call has its output (or its error output). Written before anything is
        submitted. A finished call is never overwritten."""

    async def round_submitted(self, run_id: str, round: int, call_ids: frozenset[str]) -> None:
        """The round's outputs are about to be sent."""

    async def round_accepted(self, run_id: str, round: int) -> None:
        """The server took the round's outputs."""

    async def load(self, run_id: str) -> RunEntry | None:
        """Everything recorded about a run, or ``None``."""

    async def runs(self) -> list[RunEntry]:
        """Every run recorded, oldest first."""


@runtime_checkable
class LeasedLedger(Ledger, Protocol):
    """A ledger that also coordinates holders: a run is driven by one holder at a time, under a
    lease the driver claims, renews while it drives, and releases at the end. Every write of
    the ``Ledger`` methods takes ``lease=``: when given, the write takes effect only if that
    lease is still the run's (its epoch), checked in the same transaction, and raises
    ``LeaseLost`` otherwise. Every ledger runmachine ships is one."""

    async def record_run(
        self, run_id: str, thread_id: str, status: str, machine: str, *, lease: Lease | None = None
    ) -> None: ...

    async def call_started(
        self,
        run_id: str,
        call_id: str,
        round: int,
        name: str,
        arguments: str,
        *,
        lease: Lease | None = None,
    ) -> None: ...

    async def call_finished(
        self,
        run_id: str,
        call_id: str,
        round: int,
        name: str,
        arguments: str,
        output: str,
        error: str | None,
        *,
        lease: Lease | None = None,
    ) -> None: ...

    async def round_submitted(
        self, run_id: str, round: int, call_ids: frozenset[str], *, lease: Lease | None = None
    ) -> None: ...

    async def round_accepted(
        self, run_id: str, round: int, *, lease: Lease | None = None
    ) -> None: ...

    async def claim(
        self, run_id: str, holder: str, ttl: float, *, thread_id: str = "", machine: str = ""
    ) -> Lease:
        """Take the run for ``holder`` for ``ttl`` seconds (creating its entry if new). Raises
        ``RunHeld`` when another holder's lease has not expired. Every claim is audited; a
        holder's claim of a run it holds already bumps the epoch and ends its previous claim
        in the audit (``released_at``)."""

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        """Extend ``lease`` by ``ttl`` seconds from now; ``LeaseLost`` if it is no longer the
        run's."""

    async def release(self, lease: Lease, *, handoff: bool = False) -> None:
        """Give the run up. ``handoff=True``: the run is not done (a worker shutting down) and
        any other holder may take it at once; otherwise nobody needs to (it ended, or it waits
        on a person). Releasing a lease that is no longer the run's does nothing."""

    async def lease_of(self, run_id: str) -> Lease | None:
        """The run's current lease (expired or not), if it has one."""

    async def claim_orphan(
        self, holder: str, ttl: float, *, machines: Collection[str] | None = None
    ) -> tuple[Lease, RunEntry] | None:
        """Claim one run whose holder is gone (its lease expired, or was handed off) and whose
        recorded status is not finished, oldest first (only runs recorded by one of
        ``machines``, when given: machine names as recorded); ``None`` when there is none.
        Holders calling this at once never get the same run."""

    async def claims(self, run_id: str) -> list[Claim]:
        """The run's claim audit, oldest first."""


#: Appended to a ledger entry's machine name (``module:Class``) when the entry is an
#: agent-session turn (its ``run_id`` the turn's, its ``thread_id`` the session's).
TURN_MARK = "@sessions"


def split_machine(machine: str) -> tuple[str, bool]:
    """An entry's machine name as (``module:Class``, whether the entry is a turn)."""
    if machine.endswith(TURN_MARK):
        return machine[: -len(TURN_MARK)], True
    return machine, False


def interrupted_message(name: str) -> str:
    """Why a call of a non-idempotent tool that started but never finished is not run again."""
    return (
        f"the result of tool {name!r} is unknown: the process stopped while the call was "
        "running, and the tool is not idempotent, so it was not run again"
    )


def interrupted_output(name: str) -> str:
    """The error output given, at resume, to a call of a non-idempotent tool that started but
    never finished: its effect may or may not have happened, so it is not run again."""
    return error_output("interrupted", interrupted_message(name), name)


class MemoryLedger:
    """The default ledger: plain dictionaries, for the life of the process. It keeps leases as
    the durable ledgers do (one holder at a time, fenced writes), on this process's clock."""

    #: Its leases cannot outlive this process: drivers claim them without expiry, and do not
    #: renew them.
    process_local = True

    def __init__(self) -> None:
        self._runs: dict[str, dict[str, Any]] = {}
        self._calls: dict[str, dict[str, CallEntry]] = {}
        self._rounds: dict[str, dict[int, RoundEntry]] = {}
        self._leases: dict[str, Lease] = {}
        self._claims: dict[str, list[Claim]] = {}

    def _run(self, run_id: str) -> dict[str, Any]:
        run = self._runs.get(run_id)
        if run is None:
            now = time.time()
            run = self._runs[run_id] = {
                "thread_id": "",
                "status": "unknown",
                "machine": "",
                "created_at": now,
                "updated_at": now,
            }
            self._calls[run_id] = {}
            self._rounds[run_id] = {}
        return run

    def _fence(self, run_id: str, lease: Lease | None) -> None:
        if lease is not None:
            check_fence(run_id, lease, self._leases.get(run_id))

    async def record_run(
        self, run_id: str, thread_id: str, status: str, machine: str, *, lease: Lease | None = None
    ) -> None:
        self._fence(run_id, lease)
        run = self._run(run_id)
        run["thread_id"] = thread_id or run["thread_id"]
        run["machine"] = machine or run["machine"]
        run["status"] = status
        run["updated_at"] = time.time()

    async def call_started(
        self,
        run_id: str,
        call_id: str,
        round: int,
        name: str,
        arguments: str,
        *,
        lease: Lease | None = None,
    ) -> None:
        self._fence(run_id, lease)
        self._run(run_id)
        calls = self._calls[run_id]
        known = calls.get(call_id)
        if known is None or not known.finished:
            calls[call_id] = CallEntry(run_id, call_id, round, name, arguments, time.time())

    async def call_finished(
        self,
        run_id: str,
        call_id: str,
        round: int,
        name: str,
        arguments: str,
        output: str,
        error: str | None,
        *,
        lease: Lease | None = None,
    ) -> None:
        self._fence(run_id, lease)
        self._run(run_id)
        calls = self._calls[run_id]
        known = calls.get(call_id)
        if known is not None and known.finished:
            return
        started = known.started_at if known is not None else None
        calls[call_id] = CallEntry(
            run_id, call_id, round, name, arguments, started, time.time(), output, error
        )

    async def round_submitted(
        self, run_id: str, round: int, call_ids: frozenset[str], *, lease: Lease | None = None
    ) -> None:
        self._fence(run_id, lease)
        self._run(run_id)
        rounds = self._rounds[run_id]
        if round not in rounds:
            rounds[round] = RoundEntry(run_id, round, frozenset(call_ids), time.time())

    async def round_accepted(self, run_id: str, round: int, *, lease: Lease | None = None) -> None:
        self._fence(run_id, lease)
        self._run(run_id)
        rounds = self._rounds[run_id]
        entry = rounds.get(round)
        if entry is not None and not entry.accepted:
            rounds[round] = attrs.evolve(entry, accepted_at=time.time())

    def _entry(self, run_id: str) -> RunEntry:
        run = self._runs[run_id]
        return RunEntry(
            run_id,
            run["thread_id"],
            run["status"],
            run["machine"],
            run["created_at"],
            run["updated_at"],
            calls=dict(self._calls[run_id]),
            rounds=tuple(sorted(self._rounds[run_id].values(), key=lambda r: r.round)),
        )

    async def load(self, run_id: str) -> RunEntry | None:
        return self._entry(run_id) if run_id in self._runs else None

    async def runs(self) -> list[RunEntry]:
        entries = [self._entry(run_id) for run_id in self._runs]
        return sorted(entries, key=lambda r: r.created_at)

    # ----------------------------------------------------------------------------------------
    # Leases
    # ----------------------------------------------------------------------------------------

    def _take(self, run_id: str, holder: str, ttl: float) -> Lease:
        now = time.time()
        current = self._leases.get(run_id)
        if current is not None and current.holder != holder and current.expires_at > now:
            raise RunHeld(run_id, current.holder, current.expires_at)
        if current is not None and current.holder == holder:
            self._audit(current, released_at=now)  # superseded by this holder's new claim
        # Epochs never repeat, even after a lease was released: the audit remembers the last.
        past = self._claims.get(run_id, [])
        lease = Lease(run_id, holder, (past[-1].epoch if past else 0) + 1, now + ttl)
        self._leases[run_id] = lease
        self._claims.setdefault(run_id, []).append(
            Claim(run_id, holder, lease.epoch, now, lease.expires_at)
        )
        return lease

    async def claim(
        self, run_id: str, holder: str, ttl: float, *, thread_id: str = "", machine: str = ""
    ) -> Lease:
        lease = self._take(run_id, holder, ttl)
        fresh = run_id not in self._runs
        run = self._run(run_id)
        if fresh:
            run["status"] = lifecycle.INITIAL_STATE
        run["thread_id"] = thread_id or run["thread_id"]
        run["machine"] = machine or run["machine"]
        return lease

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        check_fence(lease.run_id, lease, self._leases.get(lease.run_id))
        renewed = attrs.evolve(lease, expires_at=time.time() + ttl)
        self._leases[lease.run_id] = renewed
        self._audit(renewed, expires_at=renewed.expires_at)
        return renewed

    async def release(self, lease: Lease, *, handoff: bool = False) -> None:
        current = self._leases.get(lease.run_id)
        if not _same(lease, current):
            return
        now = time.time()
        if handoff:
            self._leases[lease.run_id] = attrs.evolve(lease, expires_at=now)
        else:
            del self._leases[lease.run_id]
        self._audit(lease, released_at=now)

    def _audit(
        self, lease: Lease, *, expires_at: float | None = None, released_at: float | None = None
    ) -> None:
        claims = self._claims.get(lease.run_id, [])
        for index, claim in enumerate(claims):
            if claim.epoch == lease.epoch:
                claims[index] = attrs.evolve(
                    claim,
                    expires_at=claim.expires_at if expires_at is None else expires_at,
                    # A release keeps its first time (a hand-off, then a claim by the holder).
                    released_at=claim.released_at if claim.released_at is not None else released_at,
                )

    async def lease_of(self, run_id: str) -> Lease | None:
        return self._leases.get(run_id)

    async def claim_orphan(
        self, holder: str, ttl: float, *, machines: Collection[str] | None = None
    ) -> tuple[Lease, RunEntry] | None:
        now = time.time()
        for entry in await self.runs():
            if machines is not None and entry.machine not in machines:
                continue
            lease = self._leases.get(entry.run_id)
            if lease is not None and lease.expires_at <= now and entry.status not in FINISHED:
                return self._take(entry.run_id, holder, ttl), entry
        return None

    async def claims(self, run_id: str) -> list[Claim]:
        return list(self._claims.get(run_id, []))


def _same(lease: Lease, current: Lease | None) -> bool:
    return current is not None and (current.epoch, current.holder) == (lease.epoch, lease.holder)


def check_fence(run_id: str, lease: Lease, current: Lease | None) -> None:
    """Raise ``LeaseLost`` unless ``lease`` is still the run's (``current``: its lease now)."""
    if not _same(lease, current):
        now_held = (
            f"it is held by {current.holder} (epoch {current.epoch})"
            if current is not None
            else "it has no lease now"
        )
        raise LeaseLost(
            f"the lease of {lease.holder} on run {run_id} (epoch {lease.epoch}) is no longer the "
            f"run's: {now_held}; nothing was recorded"
        )
