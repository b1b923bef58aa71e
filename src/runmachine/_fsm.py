"""``transitions``' async machine, adapted to anyio so that it runs on asyncio and on trio.

The stock ``transitions.extensions.asyncio.AsyncMachine`` calls ``asyncio.current_task`` and
``asyncio.gather`` (so it fails on trio), turns a cancellation of the caller into ``return False``
(so the code after ``await trigger()`` keeps running after a cancel), and keeps its task
bookkeeping in class attributes shared by every machine in the process. This adaptation:

- runs a trigger inside one anyio ``CancelScope`` per outermost trigger, recorded per machine, so
  a transition that wins can cancel the ones still running (the stock behaviour), and lets every
  other cancellation propagate;
- runs callbacks one after another, in the order they were registered, so hooks fire in a
  predictable order and an exception stops the chain;
- evaluates conditions one after another, in the order they were given;
- binds nothing onto its models: callers dispatch triggers by name, and each entered state is
  reported to the model's ``_record(event_data)`` method, when it has one, before ``on_enter``.

It knows nothing about runs; ``runmachine.machine`` builds the run lifecycle on top of it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
from transitions.extensions.asyncio import AsyncMachine, AsyncState

__all__ = ["AnyioMachine"]


class _State(AsyncState):
    """A state that reports every entry to its model before the ``on_enter`` callbacks run."""

    # Hooks are registered explicitly by the model's class, never discovered by name.
    dynamic_methods: list[str] = []  # noqa: RUF012 (transitions reads it per class)

    async def enter(self, event_data: Any) -> None:  # type: ignore[override]
        record = getattr(event_data.model, "_record", None)
        if record is not None:
            await record(event_data)
        await super().enter(event_data)


class AnyioMachine(AsyncMachine):
    """An ``AsyncMachine`` whose callbacks, conditions and cancellation work on every anyio
    backend."""

    state_cls = _State  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Instance-level replacements for the stock class-level bookkeeping.
        self._scopes: dict[int, list[anyio.CancelScope]] = {}
        self._in_trigger: set[int] = set()
        super().__init__(*args, **kwargs)

    # Models keep their own API: the machine never binds ``trigger``, ``may_<trigger>``,
    # ``is_<state>`` or one method per trigger onto them (triggers are dispatched by name).
    def _checked_assignment(self, model: Any, name: str, func: Any) -> None:
        return None

    def _add_trigger_to_model(self, trigger: str, model: Any) -> None:
        return None

    def _add_model_to_state(self, state: Any, model: Any) -> None:
        return None

    @staticmethod
    async def await_all(callables: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
        # Conditions one after another, in order: guards are cheap and pure, and a task group
        # per transition would cost more than all of them together.
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
        scopes = self._scopes.get(id(model), [])
        # The newest scope belongs to the trigger that is now winning; cancel only the older ones.
        for scope in scopes[:-1]:
            scope.cancel()

    async def process_context(self, func: Callable[[], Awaitable[Any]], model: Any) -> Any:
        key = id(model)
        if key in self._in_trigger:
            # A trigger fired from inside a callback: it belongs to the outer trigger's scope.
            return await self._process_async(func, model)
        self._in_trigger.add(key)
        scopes = self._scopes.setdefault(key, [])
        try:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                return await self._process_async(func, model)
            # Only reached when a newer transition cancelled this one (the stock semantics).
            return False
        finally:
            self._in_trigger.discard(key)
            scopes.pop()
            if not scopes:
                del self._scopes[key]
