"""The ``transitions`` engine behind the core, adapted to anyio and to many short-lived machines.

The stock ``transitions.extensions.asyncio.AsyncMachine`` calls ``asyncio.current_task`` and
``asyncio.gather`` (so it fails on trio), turns a cancellation of the caller into ``return False``,
keeps every model it drives in a list (so a machine dropped mid-run is never freed, and adding or
removing one costs more the more are alive), and logs every exception of a callback at ERROR level
although it raises it to the caller anyway. This adaptation:

- drives no model of its own: one ``Engine`` per table (shared by every machine of a class, built
  once) is handed the model on each trigger, so creating and dropping a machine costs the same
  whatever number are alive, and a dropped machine is freed with its last reference;
- runs callbacks one after another, in the order they were registered, and conditions one after
  another in the order they were given: hooks fire in a predictable order, an exception stops the
  chain, and no task group is opened per transition;
- lets every exception and cancellation propagate unchanged and unlogged;
- never queues: ordering triggers (one at a time, one fired from a hook after the running one) is
  the core's job (``runmachine.core``), which knows which task fired what;
- fires through a dispatch table compiled from the machine ``transitions`` built: one dict lookup
  by ``(state, trigger)``, then the rows' guards, the source's ``on_exit`` callbacks, the new
  state, and the destination's ``on_enter`` callbacks, in the order ``transitions`` itself runs
  them (``tests/core/test_engine.py`` checks the two agree on every row). ``transitions`` keeps
  the table's structure (its states, rows and callbacks, validated as it builds them); the lookup
  spares each trigger its partials, event objects and callback resolution (about a tenth of the
  CPU per transition).

Each entered state is reported to the model's ``entered(event_data)`` coroutine before the state's
``on_enter`` callbacks run. It knows nothing about runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import cache
from typing import Any, cast

import attrs
from transitions.extensions.asyncio import AsyncEvent, AsyncMachine, AsyncState

from runmachine.lifecycle import INITIAL_STATE, STATES, TransitionSpec

__all__ = ["Engine", "engine_for"]


class _State(AsyncState):
    """A state that reports every entry to its model before the ``on_enter`` callbacks run."""

    # Hooks are registered explicitly by the table's owner, never discovered by name.
    dynamic_methods: list[str] = []  # noqa: RUF012 (transitions reads it per class)

    async def enter(self, event_data: Any) -> None:  # type: ignore[override]
        await event_data.model.entered(event_data)
        await super().enter(event_data)


class _Event(AsyncEvent):
    """An event whose failures reach the caller as they are, without an ERROR log line."""

    async def _trigger(self, event_data: Any) -> bool:  # type: ignore[override]
        machine = self.machine
        event_data.state = machine.get_state(getattr(event_data.model, machine.model_attribute))
        try:
            if self._is_valid_source(event_data.state):
                await self._process(event_data)
        except BaseException as err:
            event_data.error = err
            raise
        return bool(event_data.result)


class Engine(AsyncMachine):
    """An ``AsyncMachine`` that owns a table but no model: the model comes with each trigger."""

    state_cls = _State  # type: ignore[assignment]
    event_cls = _Event
    rows: tuple[TransitionSpec, ...] = ()
    """The table this engine was built from."""
    _dispatch: dict[tuple[str, str], tuple[_Row, ...]]
    _names: dict[str, _Named]

    @staticmethod
    async def await_all(callables: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
        return [await func() for func in callables]

    async def callbacks(self, funcs: Any, event_data: Any) -> None:  # type: ignore[override]
        for func in funcs:
            await self.callback(func, event_data)

    async def callback(self, func: Any, event_data: Any) -> None:  # type: ignore[override]
        func = self.resolve_callable(func, event_data)
        res = func(event_data) if self.send_event else func(*event_data.args, **event_data.kwargs)
        if inspect.isawaitable(res):
            await res

    async def cancel_running_transitions(self, model: Any, msg: str | None = None) -> None:
        return None  # one trigger at a time per model (the core's rule): nothing to cancel

    async def process_context(self, func: Callable[[], Awaitable[Any]], model: Any) -> Any:
        return await func()

    def compile(self) -> None:
        """Build the dispatch table ``fire`` reads, from the rows and callbacks added so far."""
        dispatch: dict[tuple[str, str], tuple[_Row, ...]] = {}
        for trigger, event in self.events.items():
            for source, transitions in event.transitions.items():
                dispatch[(source, trigger)] = tuple(
                    _Row(
                        source=source,
                        dest=str(t.dest),
                        guards=_callables(c.func for c in t.conditions),
                        exits=_callables(self.get_state(source).on_exit),
                        enters=_callables(self.get_state(str(t.dest)).on_enter),
                    )
                    for t in transitions
                )
        self._dispatch = dispatch
        self._names = {trigger: _Named(trigger) for trigger in self.events}

    def has_rows(self, trigger: str, state: str) -> bool:
        """Whether the table has a row for ``trigger`` from ``state`` (whatever its guards say)."""
        return (state, trigger) in self._dispatch

    async def fire(self, trigger: str, model: Any, **kwargs: Any) -> bool:
        """Fire ``trigger`` on ``model`` (which carries its own ``state``); True if it moved."""
        rows = self._dispatch.get((model.state, trigger))
        if rows is None:
            return False  # no row from this state: ignored, as the table says
        data = _EventData(self._names[trigger], model, kwargs)
        for row in rows:
            data.transition = row
            # Every guard of the row is asked, as ``transitions`` asks them (no short cut).
            if not all([guard(data) for guard in row.guards]):
                continue
            for callback in row.exits:
                await callback(data)
            model.state = row.dest
            await model.entered(data)
            for callback in row.enters:
                await callback(data)
            return True
        return False

    async def fire_through_transitions(self, trigger: str, model: Any, **kwargs: Any) -> bool:
        """``fire`` by ``transitions``' own trigger (what the dispatch table is checked against)."""
        return bool(await self.events[trigger].trigger(model, **kwargs))


@attrs.frozen
class _Row:
    """One compiled row: from ``source``, if every guard holds, to ``dest``, with the callbacks
    to run on the way (the source's ``on_exit``, then the destination's ``on_enter``)."""

    source: str
    dest: str
    guards: tuple[Callable[[Any], Any], ...]
    exits: tuple[Callable[[Any], Any], ...]
    enters: tuple[Callable[[Any], Any], ...]


def _callables(items: Iterable[object]) -> tuple[Callable[[Any], Any], ...]:
    """The callbacks of a row; every one is a ``_Guard`` or a ``_Hook`` (never a name to look
    up on the model, which ``transitions`` would also accept)."""
    found = tuple(items)
    for item in found:
        if not callable(item):
            raise TypeError(f"a callback of the table is not callable: {item!r}")
    return cast("tuple[Callable[[Any], Any], ...]", found)


class _Named:
    """What ``event_data.event`` is to the model: the trigger's name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _EventData:
    """What a fired trigger tells the model's callbacks: the trigger (``event.name``), the model,
    the keywords it was fired with, and the row being taken (``transition.source``/``.dest``)."""

    __slots__ = ("event", "kwargs", "model", "transition")

    def __init__(self, event: _Named, model: Any, kwargs: dict[str, Any]) -> None:
        self.event = event
        self.model = model
        self.kwargs = kwargs
        self.transition: _Row | None = None


class _Guard:
    """A guard of the table as ``transitions`` sees it: asks the model to evaluate it by name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.__name__ = name

    def __call__(self, event_data: Any) -> bool:
        return bool(event_data.model.check_guard(self.name, event_data))


class _Hook:
    """A state hook as ``transitions`` sees it: asks the model to call it by name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.__name__ = name

    async def __call__(self, event_data: Any) -> None:
        await event_data.model.state_hook(self.name, event_data)


@cache
def engine_for(
    rows: tuple[TransitionSpec, ...],
    state_hooks: frozenset[str],
    name: str = "RunMachine",
    states: tuple[str, ...] = STATES,
) -> Engine:
    """The engine of one table and one set of state hooks (``on_enter_<state>`` and
    ``on_exit_<state>`` names), built once and shared. ``states``: the table's own states, in
    order (an Assistants run's by default); states the rows add come after them."""
    all_states = _states(rows, states)
    engine = Engine(
        model=None,
        states=all_states,
        initial=INITIAL_STATE,
        auto_transitions=False,
        send_event=True,
        queued=False,
        ignore_invalid_triggers=True,
        name=name,
    )
    for row in rows:
        engine.add_transition(
            row.trigger,
            row.source,
            row.dest,
            conditions=[_Guard(g) for g in row.guards] or None,
        )
    engine.rows = rows
    for state_name in all_states:
        state = engine.get_state(state_name)
        for edge in ("enter", "exit"):
            hook = f"on_{edge}_{state_name}"
            if hook in state_hooks:
                state.add_callback(edge, _Hook(hook))
    engine.compile()
    return engine


def _states(rows: Iterable[TransitionSpec], base: tuple[str, ...]) -> list[str]:
    states = list(base)
    for row in rows:
        for name in (row.source, row.dest):
            if name not in states:
                states.append(name)
    return states
