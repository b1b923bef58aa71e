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

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from runmachine.errors import LedgerError
from runmachine.tools import error_output

__all__ = [
    "TURN_MARK",
    "CallEntry",
    "Ledger",
    "LedgerError",
    "MemoryLedger",
    "RoundEntry",
    "RunEntry",
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
    """The default ledger: plain dictionaries, for the life of the process."""

    def __init__(self) -> None:
        self._runs: dict[str, dict[str, Any]] = {}
        self._calls: dict[str, dict[str, CallEntry]] = {}
        self._rounds: dict[str, dict[int, RoundEntry]] = {}

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

    async def record_run(self, run_id: str, thread_id: str, status: str, machine: str) -> None:
        run = self._run(run_id)
        run["thread_id"] = thread_id or run["thread_id"]
        run["machine"] = machine or run["machine"]
        run["status"] = status
        run["updated_at"] = time.time()

    async def call_started(
        self, run_id: str, call_id: str, round: int, name: str, arguments: str
    ) -> None:
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
    ) -> None:
        self._run(run_id)
        calls = self._calls[run_id]
        known = calls.get(call_id)
        if known is not None and known.finished:
            return
        started = known.started_at if known is not None else None
        calls[call_id] = CallEntry(
            run_id, call_id, round, name, arguments, started, time.time(), output, error
        )

    async def round_submitted(self, run_id: str, round: int, call_ids: frozenset[str]) -> None:
        self._run(run_id)
        rounds = self._rounds[run_id]
        if round not in rounds:
            rounds[round] = RoundEntry(run_id, round, frozenset(call_ids), time.time())

    async def round_accepted(self, run_id: str, round: int) -> None:
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
