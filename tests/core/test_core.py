"""``runmachine.core.RunCore``: the table applied, one trigger at a time, with no I/O."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from runmachine import HookError, ProtocolViolation, RunCore, RunMachine, lifecycle
from runmachine.engine import engine_for
from runmachine.errors import DuplicateSubmission, RunMachineError

from .events import message_created, required_action, run_event, text_delta

pytestmark = pytest.mark.anyio


async def core_in_requires_action(core: RunCore, *call_ids: str) -> RunCore:
    for name in ("thread.run.created", "thread.run.in_progress"):
        await core.feed(run_event(name))
    await core.feed(
        run_event("thread.run.requires_action", required_action=required_action(*call_ids))
    )
    return core


async def test_a_core_needs_no_machine_and_no_client() -> None:
    core = await core_in_requires_action(RunCore(), "call_1", "call_2")
    assert core.state == lifecycle.REQUIRES_ACTION
    await core.hand_over_outputs(["call_2", "call_1"])
    assert core.state == lifecycle.SUBMITTING
    assert core.submitted_rounds == {frozenset({"call_1", "call_2"})}
    assert [r.trigger for r in core.history][-1] == lifecycle.SUBMIT


async def test_the_tables_own_duplicate_guard_refuses_a_second_submission() -> None:
    # The guard in the table decides; the core asks it which guard failed to name the error.
    core = await core_in_requires_action(RunCore(), "call_1")
    await core.hand_over_outputs(["call_1"])
    await core.feed(run_event("thread.run.queued"))
    await core.feed(run_event("thread.run.in_progress"))
    await core.feed(
        run_event("thread.run.requires_action", required_action=required_action("call_1"))
    )
    with pytest.raises(DuplicateSubmission) as info:
        await core.hand_over_outputs(["call_1"])
    assert info.value.call_ids == ("call_1",)
    assert core.state == lifecycle.REQUIRES_ACTION


async def test_outputs_that_do_not_cover_the_calls_name_both_sides() -> None:
    core = await core_in_requires_action(RunCore(), "call_1", "call_2")
    with pytest.raises(ProtocolViolation, match=r"\['call_1'\] do not match .*'call_2'"):
        await core.hand_over_outputs(["call_1"])
    assert core.state == lifecycle.REQUIRES_ACTION
    assert core.submitted_rounds == frozenset()


async def test_a_guard_function_of_the_table_decides_the_transition() -> None:
    context = lifecycle.GuardContext(
        status=lifecycle.REQUIRES_ACTION,
        required=frozenset({"a"}),
        outputs=frozenset({"a"}),
        submitted={frozenset({"a"})},
    )
    assert lifecycle.GUARDS["outputs_match_required_calls"].check(context)
    assert not lifecycle.GUARDS["round_not_submitted_before"].check(context)
    assert lifecycle.GUARDS["run_still_requires_the_same_round"].check(context)
    assert lifecycle.GUARDS["run_status_is_requires_action"].check(context)
    assert not lifecycle.GUARDS["run_status_is_completed"].check(context)


class CancelsFromAChildTask(RunMachine):
    """A hook that starts a task which cancels: the trigger queues behind the running one."""

    async def on_enter_requires_action(self, run: Any) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.request_cancel)


async def test_a_hook_may_fire_a_trigger_from_a_child_task() -> None:
    machine = CancelsFromAChildTask()
    await core_in_requires_action(machine.core, "call_1")
    assert machine.state == lifecycle.CANCELLING
    assert [r.trigger for r in machine.history][-2:] == [
        "thread.run.requires_action",
        lifecycle.CANCEL,
    ]


class Slow(RunMachine):
    """A hook that waits for the test to let it go, so a second task can act meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def on_enter_in_progress(self, run: Any) -> None:
        self.entered.set()
        await self.release.wait()


async def test_an_event_fed_from_another_task_waits_for_the_running_transition() -> None:
    machine = Slow()
    await machine.feed(run_event("thread.run.created"))
    order: list[str] = []

    async def first() -> None:
        await machine.feed(run_event("thread.run.in_progress"))
        order.append("in_progress done")

    async def second() -> None:
        await machine.entered.wait()
        order.append("feeding completed")
        machine.release.set()
        await machine.feed(run_event("thread.run.completed"))
        order.append("completed done")

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        tg.start_soon(second)
    assert machine.state == lifecycle.COMPLETED
    assert [r.dest for r in machine.history] == ["queued", "in_progress", "completed"]
    assert order[0] == "feeding completed"


async def test_two_concurrent_cancel_requests_cancel_once() -> None:
    machine = Slow()
    await machine.feed(run_event("thread.run.created"))
    results: list[bool] = []

    async def cancel() -> None:
        results.append(await machine.request_cancel())

    async with anyio.create_task_group() as tg:
        tg.start_soon(machine.feed, run_event("thread.run.in_progress"))
        await machine.entered.wait()
        tg.start_soon(cancel)
        tg.start_soon(cancel)
        await anyio.wait_all_tasks_blocked()
        machine.release.set()
    assert machine.state == lifecycle.CANCELLING
    assert [r.trigger for r in machine.history].count(lifecycle.CANCEL) == 1
    assert len(results) == 2


class FeedsFromAHook(RunMachine):
    async def on_enter_in_progress(self, run: Any) -> None:
        await self.feed(run_event("thread.run.completed"))


async def test_an_event_fed_from_inside_a_hook_fails_at_once_and_says_why() -> None:
    machine = FeedsFromAHook()
    await machine.feed(run_event("thread.run.created"))
    with pytest.raises(HookError) as info:
        await machine.feed(run_event("thread.run.in_progress"))
    cause = info.value.__cause__
    assert isinstance(cause, RunMachineError)
    assert "from inside a hook" in str(cause)


class RaisingTextHook(RunMachine):
    def on_event(self, event: Any) -> None:
        raise KeyError("from on_event")


async def test_every_hook_failure_is_a_hook_error() -> None:
    machine = RaisingTextHook()
    with pytest.raises(HookError) as info:
        await machine.feed(run_event("thread.run.created"))
    assert info.value.hook == "on_event"
    assert isinstance(info.value.__cause__, KeyError)


async def test_a_core_uses_the_engine_it_is_given() -> None:
    extra = lifecycle.TransitionSpec("review", lifecycle.COMPLETED, "reviewed")
    engine = engine_for((*lifecycle.TRANSITIONS, extra), frozenset(), "Reviewed")
    core = RunCore(engine=engine)
    for name in ("thread.run.created", "thread.run.in_progress", "thread.run.completed"):
        await core.feed(run_event(name))
    assert await core.engine.fire("review", core)
    assert core.state == "reviewed"


async def test_an_error_raised_to_the_caller_is_not_also_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Exploding(RunMachine):
        def on_enter_queued(self, run: Any) -> None:
            raise ValueError("boom")

    with caplog.at_level("DEBUG", logger="transitions"), pytest.raises(HookError):
        await Exploding().feed(run_event("thread.run.created"))
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []


async def test_the_engine_drives_machines_without_keeping_them() -> None:
    machines = [RunMachine() for _ in range(50)]
    for machine in machines:
        await machine.feed(run_event("thread.run.created"))
    engine = machines[0].core.engine
    assert engine is machines[-1].core.engine  # one engine for the class, shared
    assert engine.models == []  # ... holding none of the machines it drives


async def test_streamed_text_is_the_deltas_joined_and_every_snapshot_seen_stays_as_it_was() -> None:
    """The text is appended in place where nothing else holds it (linear over a long answer),
    and copied where something does: what a hook kept of ``snapshot.value`` never changes."""
    seen: list[tuple[str, str]] = []

    class Keeper:
        async def on_text_delta(self, delta: Any, snapshot: Any) -> None:
            seen.append((delta.value, snapshot.value))

    core = RunCore(Keeper(), hooks=frozenset({"on_text_delta"}))
    for name in ("thread.run.created", "thread.run.in_progress"):
        await core.feed(run_event(name))
    await core.feed(message_created())
    pieces = [f"piece {i}; " for i in range(500)]
    for i, piece in enumerate(pieces):
        await core.feed(text_delta(piece, first=i == 0))
    assert core.text() == "".join(pieces)
    assert [delta for delta, _ in seen] == pieces
    assert [value for _, value in seen] == ["".join(pieces[: i + 1]) for i in range(500)]

    # Without a hook nothing else holds the text: the same result.
    quiet = RunCore()
    for name in ("thread.run.created", "thread.run.in_progress"):
        await quiet.feed(run_event(name))
    await quiet.feed(message_created())
    for i, piece in enumerate(pieces):
        await quiet.feed(text_delta(piece, first=i == 0))
    snapshot = quiet.current_message_snapshot()
    assert snapshot is not None
    assert quiet.text() == "".join(pieces)
    assert snapshot.model_fields_set >= {"content"}


def test_append_text_keeps_the_model_whole_even_without_a_value() -> None:
    from openai.types.beta.threads import Text

    from runmachine.core import append_text

    text = Text(value="a", annotations=[])
    held = text.value
    append_text(text, "b")
    assert (text.value, held) == ("ab", "a")
    assert text.model_dump() == {"value": "ab", "annotations": []}
    bare = Text.construct(annotations=[])  # as the SDK constructs a payload that lacks it
    assert bare.value is None
    with pytest.raises(TypeError):
        append_text(bare, "x")  # what ``bare.value += "x"`` raises
    assert bare.__dict__["value"] is None  # put back as it was
