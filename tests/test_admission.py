"""Admission control: ``runmachine.Admission`` bounds the runs and turns in flight among the
machines that share it. The real SDK over real HTTP to the emulator, on asyncio and trio; every
wait is on an event (a tool that holds its run until the test opens a gate), never on time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import openai
import pytest

from runmachine import Admission, HandedOff, OptionError, RunMachine, ToolFailed, lifecycle, tool
from runmachine.testing import Emulator, Scenario, TurnScenario

pytestmark = pytest.mark.anyio

#: A safety net only: every wait in these tests is on a condition, never on time.
HANG_GUARD = 60


class Desk:
    """What the tools of one test share: how many are held inside a tool now and at most, and
    the gate they wait at (open: they return at once)."""

    def __init__(self, *, gate_open: bool = False) -> None:
        self.inside = 0
        self.most = 0
        self.entered = 0
        self.gate = anyio.Event()
        if gate_open:
            self.gate.set()
        self.reached: dict[int, anyio.Event] = {}

    def when_inside(self, count: int) -> anyio.Event:
        """An event set once ``count`` tools are inside at the same time."""
        return self.reached.setdefault(count, anyio.Event())

    async def hold(self) -> str:
        self.inside += 1
        self.entered += 1
        self.most = max(self.most, self.inside)
        event = self.reached.get(self.inside)
        if event is not None:
            event.set()
        try:
            await self.gate.wait()
        finally:
            self.inside -= 1
        return "held"


class Held(RunMachine):
    """One tool, ``hold``, that waits at its desk's gate."""

    def __init__(self, client: openai.AsyncOpenAI, desk: Desk, **options: Any) -> None:
        super().__init__(client, **options)
        self.desk = desk

    @tool
    async def hold(self) -> str:
        """Wait at the gate."""
        return await self.desk.hold()


class OtherHeld(Held):
    """Another class, for an admission shared across classes."""


HOLD_ONCE = Scenario().tool_round([("hold", {})]).reply("done")

Threads = Callable[[int], Awaitable[tuple[str, list[str]]]]


@pytest.fixture
def threads(openai_client: openai.AsyncOpenAI, emulator: Emulator) -> Threads:
    """``await threads(n)``: an assistant whose every run holds once, and ``n`` threads."""

    async def make(n: int) -> tuple[str, list[str]]:
        assistant = await openai_client.beta.assistants.create(
            model="gpt-4o",
            tools=Held.tool_definitions(),  # type: ignore[arg-type]
        )
        emulator.script(assistant.id, HOLD_ONCE)
        made = [await openai_client.beta.threads.create() for _ in range(n)]
        return assistant.id, [t.id for t in made]

    return make


async def runs_on(client: openai.AsyncOpenAI, thread_id: str) -> int:
    """How many runs the server has on ``thread_id``."""
    return len((await client.beta.threads.runs.list(thread_id=thread_id)).data)


async def test_the_limit_holds_exactly_and_every_queued_run_completes(
    openai_client: openai.AsyncOpenAI, threads: Threads
) -> None:
    assistant_id, thread_ids = await threads(5)
    admission = Admission(2)
    desk = Desk()
    results: list[Any] = []

    async def one(thread_id: str) -> None:
        machine = Held(openai_client, desk, admission=admission)
        results.append(await machine.run(thread_id=thread_id, assistant_id=assistant_id))

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            for thread_id in thread_ids:
                tg.start_soon(one, thread_id)
            await desk.when_inside(2).wait()
            # Two runs hold their slots inside their tools; the three others wait, unsent.
            assert (admission.in_flight, admission.waiting) == (2, 3)
            created = [await runs_on(openai_client, t) for t in thread_ids]
            assert sorted(created) == [0, 0, 0, 1, 1]
            desk.gate.set()
    assert [r.status for r in results] == ["completed"] * 5
    assert desk.most == 2 and desk.entered == 5
    assert (admission.in_flight, admission.waiting) == (0, 0)


async def test_a_slot_is_released_when_a_run_fails(
    openai_client: openai.AsyncOpenAI, threads: Threads
) -> None:
    class Failing(Held):
        @tool
        async def hold(self) -> str:
            await self.desk.hold()
            raise ValueError("the tool broke")

        def on_tool_error(self, tool_call: Any, error: BaseException) -> bool:
            return True

    assistant_id, (first, second) = await threads(2)
    admission = Admission(1)
    desk = Desk()
    later: list[Any] = []

    async def fail() -> None:
        with pytest.raises(ToolFailed):
            await Failing(openai_client, desk, admission=admission).run(
                thread_id=first, assistant_id=assistant_id
            )

    async def succeed() -> None:
        machine = Held(openai_client, Desk(gate_open=True), admission=admission)
        later.append(await machine.run(thread_id=second, assistant_id=assistant_id))

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fail)
            await desk.when_inside(1).wait()
            tg.start_soon(succeed)
            await anyio.wait_all_tasks_blocked()
            assert (admission.in_flight, admission.waiting) == (1, 1)
            desk.gate.set()
    assert [r.status for r in later] == ["completed"]
    assert (admission.in_flight, admission.waiting) == (0, 0)


async def test_a_slot_is_released_when_a_run_is_cancelled(
    openai_client: openai.AsyncOpenAI, emulator: Emulator, threads: Threads
) -> None:
    assistant_id, (first, second) = await threads(2)
    admission = Admission(1)
    desk = Desk()
    cancelled = Held(openai_client, desk, admission=admission)
    later: list[Any] = []

    async def succeed() -> None:
        machine = Held(openai_client, Desk(gate_open=True), admission=admission)
        later.append(await machine.run(thread_id=second, assistant_id=assistant_id))

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            host = anyio.CancelScope()

            async def hosted() -> None:
                with host:
                    await cancelled.run(thread_id=first, assistant_id=assistant_id)

            tg.start_soon(hosted)
            await desk.when_inside(1).wait()
            tg.start_soon(succeed)
            await anyio.wait_all_tasks_blocked()
            assert admission.waiting == 1
            host.cancel()
    assert cancelled.run_id is not None
    assert emulator.run_stats(cancelled.run_id).cancel_requests == 1
    assert [r.status for r in later] == ["completed"]
    assert (admission.in_flight, admission.waiting) == (0, 0)


async def test_a_cancel_while_waiting_sends_nothing_and_leaves_no_run(
    openai_client: openai.AsyncOpenAI, threads: Threads
) -> None:
    assistant_id, (first, second, third) = await threads(3)
    admission = Admission(1)
    desk = Desk()
    waiting = Held(openai_client, desk, admission=admission)
    host = anyio.CancelScope()
    results: list[Any] = []

    async def hold_the_slot() -> None:
        machine = Held(openai_client, desk, admission=admission)
        results.append(await machine.run(thread_id=first, assistant_id=assistant_id))

    async def hosted() -> None:
        with host:
            await waiting.run(thread_id=second, assistant_id=assistant_id)

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold_the_slot)
            await desk.when_inside(1).wait()
            tg.start_soon(hosted)
            await anyio.wait_all_tasks_blocked()
            assert (admission.in_flight, admission.waiting) == (1, 1)
            host.cancel()
            await anyio.wait_all_tasks_blocked()
            assert (admission.in_flight, admission.waiting) == (1, 0)
            desk.gate.set()
    assert host.cancelled_caught
    assert await runs_on(openai_client, second) == 0
    assert waiting.run_id is None and waiting.state == lifecycle.INITIAL_STATE
    assert [r.status for r in results] == ["completed"]
    assert (admission.in_flight, admission.waiting) == (0, 0)
    # The machine is free again, and its next run takes a slot as usual.
    again = await waiting.run(thread_id=third, assistant_id=assistant_id)
    assert again.status == "completed"


async def test_hand_off_while_waiting_ends_the_wait_and_sends_nothing(
    openai_client: openai.AsyncOpenAI, threads: Threads
) -> None:
    assistant_id, (first, second) = await threads(2)
    admission = Admission(1)
    desk = Desk()
    waiting = Held(openai_client, desk, admission=admission)

    async def handed_off() -> None:
        with pytest.raises(HandedOff, match=r"waited for a slot of Admission.*nothing was sent"):
            await waiting.run(thread_id=second, assistant_id=assistant_id)

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: Held(openai_client, desk, admission=admission).run(
                    thread_id=first, assistant_id=assistant_id
                )
            )
            await desk.when_inside(1).wait()
            tg.start_soon(handed_off)
            await anyio.wait_all_tasks_blocked()
            assert waiting.hand_off()
            await anyio.wait_all_tasks_blocked()
            assert (admission.in_flight, admission.waiting) == (1, 0)
            desk.gate.set()
    assert await runs_on(openai_client, second) == 0
    assert not waiting.hand_off()  # nothing is driven any more


async def test_raising_the_limit_admits_waiting_runs_at_once(
    openai_client: openai.AsyncOpenAI, threads: Threads
) -> None:
    assistant_id, thread_ids = await threads(3)
    admission = Admission(1)
    desk = Desk()

    async def one(thread_id: str) -> None:
        await Held(openai_client, desk, admission=admission).run(
            thread_id=thread_id, assistant_id=assistant_id
        )

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            for thread_id in thread_ids:
                tg.start_soon(one, thread_id)
            await desk.when_inside(1).wait()
            await anyio.wait_all_tasks_blocked()
            assert (admission.in_flight, admission.waiting) == (1, 2)
            admission.limit = 3
            assert (admission.in_flight, admission.waiting) == (3, 0)
            await desk.when_inside(3).wait()
            desk.gate.set()
    assert desk.most == 3
    assert repr(admission) == "Admission(limit=3, in_flight=0, waiting=0)"


#: Made at import, outside any event loop, and used under both backends: one limit for two
#: unrelated classes (and their subclasses).
SHARED = Admission(1)


class Limited(Held):
    admission = SHARED


class OtherLimited(OtherHeld):
    admission = SHARED


async def test_one_admission_shared_by_machine_classes(
    openai_client: openai.AsyncOpenAI, threads: Threads
) -> None:
    assistant_id, (first, second, third) = await threads(3)
    desk = Desk()
    own = Admission(1)
    assert Limited(openai_client, desk).admission is SHARED
    assert Limited(openai_client, desk, admission=own).admission is own
    assert Held(openai_client, desk).admission is None
    results: list[Any] = []

    async def one(machine: Held, thread_id: str) -> None:
        results.append(await machine.run(thread_id=thread_id, assistant_id=assistant_id))

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, Limited(openai_client, desk), first)
            await desk.when_inside(1).wait()
            tg.start_soon(one, OtherLimited(openai_client, desk), second)
            # A machine given its own admission does not wait on the class's.
            tg.start_soon(one, Limited(openai_client, desk, admission=own), third)
            await desk.when_inside(2).wait()
            await anyio.wait_all_tasks_blocked()
            assert (SHARED.in_flight, SHARED.waiting) == (1, 1)
            assert (own.in_flight, own.waiting) == (1, 0)
            assert await runs_on(openai_client, second) == 0
            desk.gate.set()
    assert [r.status for r in results] == ["completed"] * 3
    assert desk.most == 2
    assert (SHARED.in_flight, SHARED.waiting) == (0, 0)


@pytest.mark.parametrize("entry", ["stream", "resume", "turn", "create_session"])
async def test_every_entry_point_takes_a_slot(
    openai_client: openai.AsyncOpenAI, emulator: Emulator, threads: Threads, entry: str
) -> None:
    assistant_id, (first, second) = await threads(2)
    admission = Admission(1)
    desk = Desk()
    machine = Held(openai_client, Desk(gate_open=True), admission=admission)
    agent: Any = {"model": "gpt-test", "tools": Held.agent_tool_definitions()}
    # What the entry point picks up is made first: the test waits for every task to block.
    run = await openai_client.beta.threads.runs.create(thread_id=second, assistant_id=assistant_id)
    session = await openai_client.beta.agents.sessions.create(
        environment={"type": "none"}, agent=agent
    )
    emulator.enqueue_turn(TurnScenario().tool_round([("hold", {})]).reply("done"))
    results: list[Any] = []

    async def drive() -> None:
        if entry == "stream":
            async with machine.stream(thread_id=first, assistant_id=assistant_id) as events:
                async for _ in events:
                    pass
            results.append(events.result)
        elif entry == "resume":
            results.append(await machine.resume(run_id=run.id, thread_id=second))
        elif entry == "turn":
            results.append(await machine.turn(session_id=session.id, input="hello"))
        else:
            results.append(
                await machine.create_session(
                    environment={"type": "none"}, agent=agent, input="hello"
                )
            )

    holder_thread = (await openai_client.beta.threads.create()).id
    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: Held(openai_client, desk, admission=admission).run(
                    thread_id=holder_thread, assistant_id=assistant_id
                )
            )
            await desk.when_inside(1).wait()
            tg.start_soon(drive)
            await anyio.wait_all_tasks_blocked()
            assert (admission.in_flight, admission.waiting) == (1, 1)
            desk.gate.set()
    assert [r.status for r in results] == ["completed"]
    assert (admission.in_flight, admission.waiting) == (0, 0)


async def test_a_run_started_by_a_tool_runs_under_its_parents_slot(
    openai_client: openai.AsyncOpenAI, emulator: Emulator, threads: Threads
) -> None:
    child_assistant, (parent_thread, child_thread) = await threads(2)
    admission = Admission(1)
    seen: list[tuple[int, int]] = []

    class Parent(RunMachine):
        @tool
        async def delegate(self) -> str:
            """Drive a run of another machine, under the same admission."""
            child = Held(openai_client, Desk(gate_open=True), admission=admission)
            seen.append((admission.in_flight, admission.waiting))
            result = await child.run(thread_id=child_thread, assistant_id=child_assistant)
            return result.text

    parent = await openai_client.beta.assistants.create(
        model="gpt-4o",
        tools=Parent.tool_definitions(),  # type: ignore[arg-type]
    )
    emulator.script(parent.id, Scenario().tool_round([("delegate", {})]).reply("delegated"))
    with anyio.fail_after(HANG_GUARD):
        result = await Parent(openai_client, admission=admission).run(
            thread_id=parent_thread, assistant_id=parent.id
        )
    assert result.status == "completed"
    assert [c.output for c in result.tool_calls] == ["done"]
    assert seen == [(1, 0)]
    assert (admission.in_flight, admission.waiting) == (0, 0)


# --------------------------------------------------------------------------------------------
# The option, validated at construction
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        (0, "Admission(): limit must be an int >= 1, got 0"),
        (-3, "Admission(): limit must be an int >= 1, got -3"),
        (2.0, "Admission(): limit must be an int >= 1, got float 2.0"),
        ("8", "Admission(): limit must be an int >= 1, got str '8'"),
        (True, "Admission(): limit must be an int >= 1, got bool True"),
        (None, "Admission(): limit must be an int >= 1, got NoneType None"),
    ],
)
def test_a_limit_that_is_not_a_positive_int_is_refused(limit: Any, message: str) -> None:
    with pytest.raises(OptionError) as info:
        Admission(limit)
    assert str(info.value) == message
    admission = Admission(4)
    with pytest.raises(OptionError) as info:
        admission.limit = limit
    assert str(info.value) == message
    assert admission.limit == 4


def test_admission_must_be_an_admission() -> None:
    with pytest.raises(OptionError) as info:
        RunMachine(admission=8)  # type: ignore[arg-type]
    assert str(info.value) == (
        "RunMachine(admission=...) must be a runmachine.Admission or None, got builtins.int "
        "(for a limit of 8 runs in flight, give Admission(8))"
    )
    with pytest.raises(OptionError, match="did you mean 'admission'"):
        RunMachine(admision=Admission(2))  # type: ignore[call-arg]
    with pytest.raises(OptionError) as info:

        class Wrong(RunMachine):
            admission = "many"  # type: ignore[assignment]

    assert str(info.value) == (
        "test_admission_must_be_an_admission.<locals>.Wrong.admission must be a "
        "runmachine.Admission or None, got builtins.str"
    )
