"""The engine's dispatch table against ``transitions``' own trigger: for every table runmachine
builds (a run's, a turn's, a subclass's with rows and state hooks of its own), every state, every
trigger and every outcome of the guards that matter there, both move the model to the same state,
with the same answer, calling the same guards and callbacks in the same order."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from runmachine import lifecycle
from runmachine.engine import Engine, engine_for
from runmachine.lifecycle import TransitionSpec

pytestmark = pytest.mark.anyio

EXTRA = (
    TransitionSpec("nudge", lifecycle.IN_PROGRESS, lifecycle.IN_PROGRESS, ("custom_guard",)),
    TransitionSpec("nudge", lifecycle.IN_PROGRESS, lifecycle.QUEUED),
    TransitionSpec("park", lifecycle.QUEUED, "parked", ("custom_guard", "other_guard")),
    TransitionSpec("unpark", "parked", lifecycle.QUEUED),
)


def _hooks(states: list[str]) -> frozenset[str]:
    return frozenset(f"on_{edge}_{state}" for state in states for edge in ("enter", "exit"))


ENGINES: dict[str, Engine] = {
    "run": engine_for(lifecycle.TRANSITIONS, frozenset()),
    "run, every state hook": engine_for(
        lifecycle.TRANSITIONS, _hooks(list(lifecycle.STATES)), "Hooked"
    ),
    "turn": engine_for(
        lifecycle.TURN_TRANSITIONS,
        _hooks([lifecycle.REQUIRES_ACTION, lifecycle.COMPLETED]),
        "Turns",
        lifecycle.TURN_STATES,
    ),
    "subclass rows": engine_for(
        (*lifecycle.TRANSITIONS, *EXTRA), _hooks(["parked", lifecycle.QUEUED]), "Extra"
    ),
}


class Model:
    """Records every guard asked and callback run; guards answer from ``outcomes``."""

    def __init__(self, state: str, outcomes: dict[str, bool]) -> None:
        self.state = state
        self.outcomes = outcomes
        self.calls: list[tuple[Any, ...]] = []

    def check_guard(self, name: str, event_data: Any) -> bool:
        self.calls.append(("guard", name, event_data.kwargs["run"]))
        return self.outcomes[name]

    async def state_hook(self, name: str, event_data: Any) -> None:
        self.calls.append(("hook", name, event_data.kwargs["run"]))

    async def entered(self, event_data: Any) -> None:
        t = event_data.transition
        self.calls.append(("entered", t.source, str(t.dest), event_data.event.name))


def _cases(engine: Engine) -> list[tuple[str, str, dict[str, bool]]]:
    triggers = sorted({row.trigger for row in engine.rows})
    cases = []
    for state in engine.states:
        for trigger in triggers:
            rows = [r for r in engine.rows if r.source == state and r.trigger == trigger]
            guards = sorted({g for r in rows for g in r.guards})
            for values in itertools.product((True, False), repeat=len(guards)):
                cases.append((state, trigger, dict(zip(guards, values, strict=True))))
    return cases


@pytest.mark.parametrize("table", list(ENGINES))
async def test_the_dispatch_table_moves_as_transitions_does(table: str) -> None:
    engine = ENGINES[table]
    cases = _cases(engine)
    moved = 0
    for state, trigger, outcomes in cases:
        fast, slow = Model(state, outcomes), Model(state, outcomes)
        got = await engine.fire(trigger, fast, run="the run")
        expected = await engine.fire_through_transitions(trigger, slow, run="the run")
        assert (got, fast.state, fast.calls) == (expected, slow.state, slow.calls), (
            state,
            trigger,
            outcomes,
        )
        moved += got
    # The comparison covered both outcomes: rows taken and triggers refused.
    assert 0 < moved < len(cases)
