"""``Admission``: a limit on the runs and turns in flight at once, shared by the machines given it.

Thousands of runs started at once in one process each get a share of one event loop; when the
loop is saturated, every request's timeouts (the SDK's connect timeout first) run out while its
task waits for its turn, and runs fail that a server would have served. An ``Admission`` lets a
run start only when fewer than ``limit`` runs hold one of its slots; the others wait, in the
order they came, sending nothing, and the wait is no request, so no HTTP timeout covers it.

It is made anywhere (at import, outside any event loop) and used under asyncio or trio alike: it
keeps plain counts, and each wait is an ``anyio.Event`` of the loop it waits in. Like anyio's own
primitives, it is not thread-safe: share it between the tasks of one event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

import anyio
import anyio.lowlevel

from runmachine.errors import OptionError
from runmachine.options import check_integer

__all__ = ["Admission"]

#: The admissions whose slot the current task (or a task it was started from) holds.
_HELD: ContextVar[frozenset[Admission]] = ContextVar(
    "runmachine_admissions_held", default=frozenset()
)


class Admission:
    """At most ``limit`` runs and turns in flight at once among the machines that share it.

    Give it to machines with ``RunMachine(client, admission=...)``, or to a whole class (and its
    subclasses) as the class attribute ``admission``. Every entry point that drives a run or a
    turn (``run``, ``create_thread_and_run``, ``resume``, ``turn``, ``create_session``,
    ``stream``) takes a slot before its first request and gives it back when it ends, however
    it ends (a result, an error, a cancel). A run waiting for its slot has sent nothing: a
    cancel of its task then leaves nothing behind on the server.

    A run started from inside a run that holds a slot of the same admission (a tool that drives
    a machine of its own) runs under its parent's slot: waiting for another could wait for ever,
    with every slot held by a parent waiting on its child.

    ``in_flight`` and ``waiting`` are there for monitoring; ``limit`` may be changed at any time
    (raising it admits waiting runs at once; lowering it lets the runs in flight finish).

    With the SDK's default HTTP client, a limit of at most 100 (its keep-alive pool,
    ``max_keepalive_connections``) lets every run reuse a pooled connection; above it,
    connections are closed and opened again, and on a busy loop the SDK's connect timeout
    (5 s, the shortest of its defaults) is the first to run out.
    """

    __slots__ = ("_in_flight", "_limit", "_waiters")

    def __init__(self, limit: int) -> None:
        self._limit = _checked(limit)
        self._in_flight = 0
        self._waiters: OrderedDict[anyio.Event, None] = OrderedDict()

    @property
    def limit(self) -> int:
        """The most runs in flight at once."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._limit = _checked(value)
        self._admit()

    @property
    def in_flight(self) -> int:
        """The runs holding a slot now (more than ``limit`` for a while after it was lowered)."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """The runs waiting for a slot now."""
        return len(self._waiters)

    def __repr__(self) -> str:
        return (
            f"Admission(limit={self._limit}, in_flight={self._in_flight}, "
            f"waiting={len(self._waiters)})"
        )

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of ``async with admission.slot():``, waiting for it first
        when every slot is held; the machines use it around each run, and any other work that
        should count against the same limit can too. Within a slot of this admission, the
        slot is the one already held."""
        held = _HELD.get()
        if self in held:
            yield
            return
        await self._acquire()
        token = _HELD.set(held | {self})
        try:
            yield
        finally:
            _HELD.reset(token)
            self._release()

    async def _acquire(self) -> None:
        if self._in_flight < self._limit and not self._waiters:
            await anyio.lowlevel.checkpoint_if_cancelled()
            self._in_flight += 1
            return
        event = anyio.Event()
        self._waiters[event] = None
        try:
            await event.wait()
        except BaseException:
            if event.is_set():  # cancelled as the slot was handed over: hand it on
                self._release()
            else:
                del self._waiters[event]
            raise

    def _release(self) -> None:
        self._in_flight -= 1
        self._admit()

    def _admit(self) -> None:
        """Hand the free slots to the longest waiting runs (a slot handed over is counted in
        flight at once, so no later arrival can take it first)."""
        while self._waiters and self._in_flight < self._limit:
            event, _ = self._waiters.popitem(last=False)
            self._in_flight += 1
            event.set()


def _checked(limit: object) -> int:
    try:
        return check_integer("limit", limit, 1)
    except OptionError as exc:
        raise OptionError(f"Admission(): {exc}") from None
