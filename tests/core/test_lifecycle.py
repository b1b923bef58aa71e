"""The lifecycle table and the machine built from it, with no network."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runmachine import HookError, ProtocolViolation, RunMachine, lifecycle
from runmachine.engine import engine_for
from runmachine.errors import DuplicateSubmission

from .events import event, required_action, run_event

pytestmark = pytest.mark.anyio

SERVER_EVENTS = sorted(lifecycle.LIFECYCLE_EVENTS)


async def machine_in(state: str, cls: type[RunMachine] = RunMachine) -> RunMachine:
    """A machine brought to ``state`` through the table's own paths."""
    machine = cls()
    if state == lifecycle.PENDING:
        return machine
    if state == lifecycle.SUBMITTING:
        await _walk(machine, lifecycle.REQUIRES_ACTION)
        await machine.core.hand_over_outputs(["call_1"])
        return machine
    await _walk(machine, state)
    return machine


async def _walk(machine: RunMachine, status: str) -> None:
    for name in lifecycle.path_to_status(machine.state, status):
        extra: dict[str, Any] = {}
        if name == "thread.run.requires_action":
            extra["required_action"] = required_action("call_1")
        await machine.feed(run_event(name, **extra))
    assert machine.state == status


def test_table_covers_every_state_and_nothing_else() -> None:
    used = {row.source for row in lifecycle.TRANSITIONS} | {
        row.dest for row in lifecycle.TRANSITIONS
    }
    assert used == set(lifecycle.STATES)
    for state in lifecycle.TERMINAL_STATES:
        assert not list(lifecycle.rows_from(state)), f"terminal {state} has exits"
    for row in lifecycle.TRANSITIONS:
        assert all(guard in lifecycle.GUARDS for guard in row.guards)


def test_every_non_terminal_state_is_reachable_from_pending() -> None:
    for state in lifecycle.STATES:
        if state in (lifecycle.PENDING, lifecycle.SUBMITTING):
            continue
        path = lifecycle.path_to_status(lifecycle.PENDING, state)
        assert path[0] == "thread.run.created"


@pytest.mark.parametrize(
    ("source", "trigger", "dest"),
    [
        (s, e, d)
        for s, events in lifecycle.SERVER_EVENT_TRANSITIONS.items()
        for e, d in events.items()
    ],
)
async def test_every_allowed_server_transition(source: str, trigger: str, dest: str) -> None:
    machine = await machine_in(source)
    before = len(machine.history)
    await machine.feed(run_event(trigger))
    assert machine.state == dest
    record = machine.history[-1]
    assert len(machine.history) == before + 1
    assert (record.source, record.dest, record.trigger) == (source, dest, trigger)
    assert record.run_id == "run_test"


FORBIDDEN = [
    (state, name)
    for state in lifecycle.STATES
    for name in SERVER_EVENTS
    if lifecycle.classify(state, name) == "violation"
]


@pytest.mark.parametrize(("state", "name"), FORBIDDEN)
async def test_every_forbidden_server_event_raises(state: str, name: str) -> None:
    machine = await machine_in(state)
    history = list(machine.history)
    with pytest.raises(ProtocolViolation) as info:
        await machine.feed(run_event(name))
    assert info.value.event == name
    assert info.value.state == state
    assert name in str(info.value) and repr(state) in str(info.value)
    assert machine.state == state
    assert machine.history == history


def test_forbidden_list_is_what_the_issue_names() -> None:
    assert ("pending", "thread.run.completed") in FORBIDDEN
    for terminal in lifecycle.TERMINAL_STATES:
        assert all((terminal, name) in FORBIDDEN for name in SERVER_EVENTS)


async def test_violation_names_the_run_id() -> None:
    machine = await machine_in("completed")
    with pytest.raises(ProtocolViolation, match="run_test"):
        await machine.feed(run_event("thread.run.queued"))
    with pytest.raises(ProtocolViolation, match="'pending' \\(run run_test\\)"):
        await RunMachine().feed(run_event("thread.run.completed"))
    with pytest.raises(ProtocolViolation, match="not created yet"):
        await RunMachine().feed(event("thread.message.in_progress", {"id": "msg_1"}))


async def test_content_after_the_end_raises() -> None:
    machine = await machine_in("completed")
    with pytest.raises(ProtocolViolation):
        await machine.feed(event("thread.message.in_progress", {"id": "msg_1"}))


async def test_repeats_and_unknown_events_are_tolerated_and_recorded() -> None:
    machine = await machine_in("queued")
    await machine.feed(run_event("thread.run.queued"))
    await machine.feed(event("thread.run.step.frobnicated", {"id": "x"}))
    assert machine.state == "queued"
    assert [(t.event, t.kind) for t in machine.tolerated] == [
        ("thread.run.queued", "repeat"),
        ("thread.run.step.frobnicated", "unknown"),
    ]


@pytest.mark.parametrize("local", ["cancel"])
@pytest.mark.parametrize("state", lifecycle.CANCELLABLE_STATES)
async def test_local_cancel(state: str, local: str) -> None:
    machine = await machine_in(state)
    assert await machine.request_cancel()
    assert machine.state == "cancelling"
    assert machine.history[-1].trigger == "cancel"
    assert not await machine.request_cancel()  # already cancelling: nothing to do


@pytest.mark.parametrize("state", ["pending", *sorted(lifecycle.TERMINAL_STATES)])
async def test_local_cancel_refused_where_nothing_runs(state: str) -> None:
    machine = await machine_in(state)
    assert not await machine.request_cancel()
    assert machine.state == state


async def test_submit_guards() -> None:
    machine = await machine_in("requires_action")
    with pytest.raises(ProtocolViolation, match="do not match the required calls"):
        await machine.core.hand_over_outputs(["call_1", "call_extra"])
    assert machine.state == "requires_action"
    await machine.core.hand_over_outputs(["call_1"])
    assert machine.state == "submitting"
    with pytest.raises(DuplicateSubmission):
        await machine.core.hand_over_outputs(["call_1"])
    await machine.feed(run_event("thread.run.queued"))
    await machine.feed(run_event("thread.run.in_progress"))
    # The server presents the same call ids again: submitting them again is refused.
    await machine.feed(
        run_event("thread.run.requires_action", required_action=required_action("call_1"))
    )
    with pytest.raises(DuplicateSubmission, match="call_1"):
        await machine.core.hand_over_outputs(["call_1"])
    assert machine.state == "requires_action"


@pytest.mark.parametrize(
    "status", [s for s in lifecycle.STATES if s not in ("pending", "submitting")]
)
async def test_adopt_every_server_status(status: str) -> None:
    from openai.types.beta.threads import Run

    from .events import run_payload

    machine = RunMachine()
    await machine.core.adopt(Run.construct(**run_payload(status)))
    assert machine.state == status
    assert machine.history[-1].trigger == "adopt"


async def test_polling_fills_in_implied_events() -> None:
    from openai.types.beta.threads import Run

    from .events import run_payload

    machine = await machine_in("queued")
    await machine.core.observe_status(Run.construct(**run_payload("completed")))
    assert [r.trigger for r in machine.history] == [
        "thread.run.created",
        "thread.run.in_progress",
        "thread.run.completed",
    ]


class Recorder(RunMachine):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str | None]] = []

    def on_exit_pending(self, run: Any) -> None:
        self.calls.append(("exit pending", self.state))

    async def on_enter_queued(self, run: Any) -> None:
        self.calls.append(("enter queued", run.status))

    def on_exit_queued(self, run: Any) -> None:
        self.calls.append(("exit queued", run.status))

    async def on_enter_in_progress(self, run: Any) -> None:
        self.calls.append(("enter in_progress", run.status))

    def on_enter_completed(self, run: Any) -> None:
        self.calls.append(("enter completed", run.status))


async def test_hooks_fire_in_order_async_and_sync() -> None:
    machine = Recorder()
    for name in [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.completed",
    ]:
        await machine.feed(run_event(name))
    assert machine.calls == [
        ("exit pending", "pending"),
        ("enter queued", "queued"),
        ("exit queued", "in_progress"),
        ("enter in_progress", "in_progress"),
        ("enter completed", "completed"),
    ]
    # History is recorded before the enter hooks run, so a hook sees its own transition.
    assert [r.dest for r in machine.history] == ["queued", "in_progress", "completed"]


class Exploding(RunMachine):
    async def on_enter_in_progress(self, run: Any) -> None:
        raise ValueError("boom in hook")


async def test_hook_exceptions_propagate_with_context() -> None:
    machine = Exploding()
    await machine.feed(run_event("thread.run.created"))
    with pytest.raises(HookError) as info:
        await machine.feed(run_event("thread.run.in_progress"))
    err = info.value
    assert isinstance(err.__cause__, ValueError)
    assert err.hook == "on_enter_in_progress"
    assert err.state == "in_progress"
    assert err.run_id == "run_test"
    assert "boom in hook" in str(err)


class Escalating(RunMachine):
    """A hook that fires a local trigger: it is queued behind the running transition."""

    async def on_enter_requires_action(self, run: Any) -> None:
        await self.request_cancel()


async def test_trigger_from_a_hook_is_queued_not_reentrant() -> None:
    machine = await machine_in("in_progress", Escalating)
    await machine.feed(
        run_event("thread.run.requires_action", required_action=required_action("call_1"))
    )
    assert machine.state == "cancelling"
    assert [r.trigger for r in machine.history][-2:] == ["thread.run.requires_action", "cancel"]


class Hooked(RunMachine):
    def on_enter_requires_action(self, run: Any) -> None: ...


def test_class_hooks_are_registered_per_class() -> None:
    assert "on_enter_requires_action" in Hooked.hooks()
    assert "on_enter_requires_action" not in RunMachine.hooks()
    hooked = engine_for(Hooked.lifecycle_rows(), frozenset(Hooked.hooks()), "Hooked")
    plain = engine_for(RunMachine.lifecycle_rows(), frozenset(), "RunMachine")
    assert hooked.get_state("requires_action").on_enter
    assert not plain.get_state("requires_action").on_enter
    # Built once per table and set of hooks, shared by every machine of the class.
    assert engine_for(Hooked.lifecycle_rows(), frozenset(Hooked.hooks()), "Hooked") is hooked


@pytest.mark.parametrize("state", ["requires_action", "completed"])
async def test_a_dropped_machine_is_freed_mid_run_or_finished(state: str) -> None:
    machine = await machine_in(state, Hooked)
    core = weakref.ref(machine.core)
    ref = weakref.ref(machine)
    del machine
    gc.collect()
    assert ref() is None
    assert core() is None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([*SERVER_EVENTS, "cancel", "submit"]), max_size=14))
def test_any_event_sequence_follows_the_table_or_raises(names: list[str]) -> None:
    import anyio

    async def scenario() -> None:
        machine = RunMachine()
        for name in names:
            before = machine.state
            if name == "cancel":
                moved = await machine.request_cancel()
                assert machine.state == ("cancelling" if moved else before)
                continue
            if name == "submit":
                try:
                    await machine.core.hand_over_outputs(["call_1"])
                except (ProtocolViolation, DuplicateSubmission):
                    assert machine.state == before
                else:
                    assert (before, machine.state) == ("requires_action", "submitting")
                continue
            kind = lifecycle.classify(before, name)
            extra = {"required_action": required_action("call_1")} if "requires" in name else {}
            try:
                await machine.feed(run_event(name, **extra))
            except ProtocolViolation:
                assert kind == "violation"
                assert machine.state == before
            else:
                assert kind in ("transition", "repeat", "late")
                expected = (
                    lifecycle.SERVER_EVENT_TRANSITIONS[before][name]
                    if kind == "transition"
                    else before
                )
                assert machine.state == expected
            assert machine.state in lifecycle.STATES
        for record in machine.history:
            assert any(
                (row.source, row.trigger, row.dest) == (record.source, record.trigger, record.dest)
                for row in lifecycle.TRANSITIONS
            )

    anyio.run(scenario)
