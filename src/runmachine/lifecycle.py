"""The run lifecycle table: every state, trigger, transition and guard of an Assistants run.

Rules of this module, in the spirit of h11's ``_state.py``:

- Everything that decides which state a run is in, and which event may move it where, lives here,
  and as much of it as possible is plain data (``TRANSITIONS``). The machine (``RunMachine``), the
  diagrams and the driver's guards all read this table; none of them keeps a copy of it.
- Nothing here does I/O, knows about HTTP, or holds per-run data. The guards are pure functions of
  a ``GuardContext``, named in ``GUARDS``.
- Nothing else in the package spells a state, a status or an event name: every module (the core,
  the driver, the backends, the diagrams, the encoder, the demo) reads them from here.
- Triggers are named after what causes them: a server lifecycle event by its SSE event name
  (``"thread.run.requires_action"``), a local action by a verb (``"submit_tool_outputs"``,
  ``"cancel"``, ``"adopt"``).

Stream events that are not lifecycle events (message and step events, text and tool-call deltas)
never move the state; the table only says in which states they may arrive (``accepts_content``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Final, Literal, TypeAlias, get_args

import attrs

__all__ = [
    "ACTIVE_STATES",
    "ADOPT",
    "CANCEL",
    "CANCELLABLE_STATES",
    "CLOSES_TOOL_CALL",
    "CONTENT_EVENTS",
    "ERROR_EVENT",
    "EVENT_STATE",
    "GUARDS",
    "INITIAL_STATE",
    "LATE_WHILE_CANCELLING",
    "LIFECYCLE_EVENTS",
    "LOCAL_TRIGGERS",
    "NOT_ACCEPTED",
    "NOT_PROOF_OF_ACCEPTANCE",
    "SERVER_EVENT_TRANSITIONS",
    "STATES",
    "STREAM_MAY_END",
    "SUBMIT",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "EventKind",
    "Guard",
    "GuardContext",
    "RunStatus",
    "State",
    "TerminalState",
    "TransitionSpec",
    "accepts_content",
    "classify",
    "find_row",
    "outputs_match_required_calls",
    "path_to_status",
    "round_not_submitted_before",
    "rows_from",
    "run_still_requires_the_same_round",
    "targets",
]

# --------------------------------------------------------------------------------------------
# States and statuses
# --------------------------------------------------------------------------------------------

#: A run's status as the server reports it (the SDK's ``Run.status``).
RunStatus: TypeAlias = Literal[
    "queued",
    "in_progress",
    "requires_action",
    "cancelling",
    "cancelled",
    "failed",
    "completed",
    "incomplete",
    "expired",
]
#: A state of the machine: every server status, plus ``pending`` (no run on the server yet) and
#: ``submitting`` (outputs handed over, the server's answer not seen yet).
State: TypeAlias = Literal[
    "pending",
    "queued",
    "in_progress",
    "requires_action",
    "submitting",
    "cancelling",
    "completed",
    "failed",
    "cancelled",
    "expired",
    "incomplete",
]
#: The states a run ends in.
TerminalState: TypeAlias = Literal["completed", "failed", "cancelled", "expired", "incomplete"]

PENDING: Final = "pending"
QUEUED: Final = "queued"
IN_PROGRESS: Final = "in_progress"
REQUIRES_ACTION: Final = "requires_action"
SUBMITTING: Final = "submitting"
CANCELLING: Final = "cancelling"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
EXPIRED: Final = "expired"
INCOMPLETE: Final = "incomplete"

INITIAL_STATE: Final = PENDING
#: Every state, in the order a run usually meets them; ``pending``: the server has no run yet.
STATES: Final[tuple[str, ...]] = get_args(State)
TERMINAL_STATES: Final[frozenset[str]] = frozenset(get_args(TerminalState))
#: The states in which the server is working on the run (or waiting on the client for it).
ACTIVE_STATES: Final[tuple[str, ...]] = (QUEUED, IN_PROGRESS, REQUIRES_ACTION, SUBMITTING)
#: Where a local cancel request may be made; it moves the run to ``cancelling``.
CANCELLABLE_STATES: Final[tuple[str, ...]] = ACTIVE_STATES
#: States in which a stream may end without having been lost: the run is over, or it waits on
#: the client's tool outputs.
STREAM_MAY_END: Final[frozenset[str]] = TERMINAL_STATES | {REQUIRES_ACTION}
#: Statuses a run can reach without ever taking a pending submission: seeing one of them after a
#: submit is no proof that the server took the outputs.
NOT_PROOF_OF_ACCEPTANCE: Final[frozenset[str]] = frozenset({EXPIRED, CANCELLED, CANCELLING, FAILED})

# --------------------------------------------------------------------------------------------
# Events and triggers
# --------------------------------------------------------------------------------------------

RUN_CREATED: Final = "thread.run.created"
RUN_QUEUED: Final = "thread.run.queued"
RUN_IN_PROGRESS: Final = "thread.run.in_progress"
RUN_REQUIRES_ACTION: Final = "thread.run.requires_action"
RUN_COMPLETED: Final = "thread.run.completed"
RUN_FAILED: Final = "thread.run.failed"
RUN_CANCELLING: Final = "thread.run.cancelling"
RUN_CANCELLED: Final = "thread.run.cancelled"
RUN_EXPIRED: Final = "thread.run.expired"
RUN_INCOMPLETE: Final = "thread.run.incomplete"

#: The server's lifecycle events and the run status each one announces.
EVENT_STATE: Final[Mapping[str, str]] = {
    RUN_CREATED: QUEUED,
    RUN_QUEUED: QUEUED,
    RUN_IN_PROGRESS: IN_PROGRESS,
    RUN_REQUIRES_ACTION: REQUIRES_ACTION,
    RUN_COMPLETED: COMPLETED,
    RUN_FAILED: FAILED,
    RUN_CANCELLING: CANCELLING,
    RUN_CANCELLED: CANCELLED,
    RUN_EXPIRED: EXPIRED,
    RUN_INCOMPLETE: INCOMPLETE,
}
LIFECYCLE_EVENTS: Final[frozenset[str]] = frozenset(EVENT_STATE)
#: The lifecycle events that end a stream's part of the run (the SDK's handler closes the open
#: tool call on each of them): every terminal event, and ``requires_action``.
CLOSES_TOOL_CALL: Final[frozenset[str]] = frozenset(
    event for event, state in EVENT_STATE.items() if state in STREAM_MAY_END
)

#: Tool outputs handed to the server, all of them, in one request.
SUBMIT: Final = "submit_tool_outputs"
#: A local request to cancel the run (the driver then calls ``runs.cancel``).
CANCEL: Final = "cancel"
#: Picking up a run that already exists on the server, in whatever status it is (``resume``).
ADOPT: Final = "adopt"
#: A submission that failed in transit, when ``runs.retrieve`` shows the server still waits on
#: the same round: back to ``requires_action``, so that the round may be submitted again.
NOT_ACCEPTED: Final = "submission_not_accepted"
LOCAL_TRIGGERS: Final[tuple[str, ...]] = (SUBMIT, CANCEL, ADOPT, NOT_ACCEPTED)

THREAD_CREATED: Final = "thread.created"
STEP_CREATED: Final = "thread.run.step.created"
STEP_IN_PROGRESS: Final = "thread.run.step.in_progress"
STEP_DELTA: Final = "thread.run.step.delta"
STEP_COMPLETED: Final = "thread.run.step.completed"
STEP_FAILED: Final = "thread.run.step.failed"
STEP_CANCELLED: Final = "thread.run.step.cancelled"
STEP_EXPIRED: Final = "thread.run.step.expired"
MESSAGE_CREATED: Final = "thread.message.created"
MESSAGE_IN_PROGRESS: Final = "thread.message.in_progress"
MESSAGE_DELTA: Final = "thread.message.delta"
MESSAGE_COMPLETED: Final = "thread.message.completed"
MESSAGE_INCOMPLETE: Final = "thread.message.incomplete"
ERROR_EVENT: Final = "error"

#: Step events that end a run step.
STEP_DONE_EVENTS: Final[frozenset[str]] = frozenset(
    {STEP_COMPLETED, STEP_FAILED, STEP_CANCELLED, STEP_EXPIRED}
)
#: Message events that end a message.
MESSAGE_DONE_EVENTS: Final[frozenset[str]] = frozenset({MESSAGE_COMPLETED, MESSAGE_INCOMPLETE})
#: Stream events that carry content, never move the state, and take the fast path.
CONTENT_EVENTS: Final[frozenset[str]] = frozenset(
    {
        THREAD_CREATED,
        STEP_CREATED,
        STEP_IN_PROGRESS,
        STEP_DELTA,
        *STEP_DONE_EVENTS,
        MESSAGE_CREATED,
        MESSAGE_IN_PROGRESS,
        MESSAGE_DELTA,
        *MESSAGE_DONE_EVENTS,
        ERROR_EVENT,
    }
)
#: Content events that may arrive before the server has named the run.
BEFORE_RUN_EVENTS: Final[frozenset[str]] = frozenset({THREAD_CREATED, ERROR_EVENT})

# --------------------------------------------------------------------------------------------
# Guards
# --------------------------------------------------------------------------------------------


@attrs.frozen
class GuardContext:
    """What a guard may look at: the run as last reported, and the submission under way."""

    status: str | None
    """The run's status as the server last reported it (``None`` before any report)."""
    required: frozenset[str] = frozenset()
    """The call ids the run's ``requires_action`` asks for."""
    outputs: frozenset[str] = frozenset()
    """The call ids of the outputs being handed over (``submit_tool_outputs``)."""
    submitted: Collection[frozenset[str]] = frozenset()
    """The rounds (sets of call ids) submitted before."""


def outputs_match_required_calls(required: Collection[str], outputs: Collection[str]) -> bool:
    """Every required call id has an output, and no output is for a call that was not asked for."""
    return len(outputs) == len(required) and set(outputs) == set(required)


def round_not_submitted_before(
    call_ids: Collection[str], submitted_rounds: Collection[frozenset[str]]
) -> bool:
    """This round (its set of call ids) has not been handed to the server before."""
    return frozenset(call_ids) not in submitted_rounds


def run_still_requires_the_same_round(context: GuardContext) -> bool:
    """The server still waits on the very round that was submitted."""
    return context.status == REQUIRES_ACTION and context.required in context.submitted


@attrs.frozen
class Guard:
    """A named condition on a transition. ``error`` names the exception raised when it fails
    (a class of ``runmachine.errors``); ``check`` is the pure function that decides."""

    name: str
    description: str
    error: str
    check: Callable[[GuardContext], bool] = attrs.field(eq=False, repr=False)


def _status_is(state: str) -> Callable[[GuardContext], bool]:
    def check(context: GuardContext) -> bool:
        return context.status == state

    check.__name__ = f"run_status_is_{state}"
    return check


#: States a run found on the server may be adopted in (``submitting`` is ours, not a status).
ADOPTABLE_STATES: Final[tuple[str, ...]] = tuple(
    state for state in STATES if state not in (PENDING, SUBMITTING)
)

GUARDS: Final[Mapping[str, Guard]] = {
    "outputs_match_required_calls": Guard(
        "outputs_match_required_calls",
        "one output for every required call id, none for any other",
        "ProtocolViolation",
        lambda c: outputs_match_required_calls(c.required, c.outputs),
    ),
    "round_not_submitted_before": Guard(
        "round_not_submitted_before",
        "this round's call ids were never submitted before",
        "DuplicateSubmission",
        lambda c: round_not_submitted_before(c.outputs, c.submitted),
    ),
    "run_still_requires_the_same_round": Guard(
        "run_still_requires_the_same_round",
        "runs.retrieve shows the run in requires_action for the very calls just submitted",
        "ProtocolViolation",
        run_still_requires_the_same_round,
    ),
    **{
        f"run_status_is_{state}": Guard(
            f"run_status_is_{state}",
            f"the server reports the run as {state!r}",
            "ProtocolViolation",
            _status_is(state),
        )
        for state in ADOPTABLE_STATES
    },
}

# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


@attrs.frozen
class TransitionSpec:
    """One row of the table: ``trigger`` moves a run from ``source`` to ``dest`` if ``guards``
    hold."""

    trigger: str
    source: str
    dest: str
    guards: tuple[str, ...] = ()


# state -> {server lifecycle event -> next state}. Repeats of the current state's own event are
# not listed: ``classify`` tolerates them (``created`` is followed by ``queued`` with the same
# payload).
SERVER_EVENT_TRANSITIONS: Final[Mapping[str, Mapping[str, str]]] = {
    PENDING: {
        RUN_CREATED: QUEUED,
    },
    QUEUED: {
        RUN_IN_PROGRESS: IN_PROGRESS,
        RUN_FAILED: FAILED,
        RUN_CANCELLING: CANCELLING,
        RUN_EXPIRED: EXPIRED,
    },
    IN_PROGRESS: {
        RUN_REQUIRES_ACTION: REQUIRES_ACTION,
        RUN_COMPLETED: COMPLETED,
        RUN_FAILED: FAILED,
        RUN_INCOMPLETE: INCOMPLETE,
        RUN_CANCELLING: CANCELLING,
        RUN_EXPIRED: EXPIRED,
    },
    REQUIRES_ACTION: {
        RUN_FAILED: FAILED,
        RUN_CANCELLING: CANCELLING,
        RUN_EXPIRED: EXPIRED,
    },
    # ``submitting`` is left by the server's next lifecycle event after the submit.
    SUBMITTING: {
        RUN_QUEUED: QUEUED,
        RUN_IN_PROGRESS: IN_PROGRESS,
        RUN_FAILED: FAILED,
        RUN_CANCELLING: CANCELLING,
        RUN_EXPIRED: EXPIRED,
    },
    # Cancellation is best effort: a cancelling run may still finish some other way.
    CANCELLING: {
        RUN_CANCELLED: CANCELLED,
        RUN_COMPLETED: COMPLETED,
        RUN_FAILED: FAILED,
        RUN_INCOMPLETE: INCOMPLETE,
        RUN_EXPIRED: EXPIRED,
    },
}


def _build_transitions() -> tuple[TransitionSpec, ...]:
    rows: list[TransitionSpec] = []
    for source, events in SERVER_EVENT_TRANSITIONS.items():
        rows.extend(TransitionSpec(event, source, dest) for event, dest in events.items())
    rows.append(
        TransitionSpec(
            SUBMIT,
            REQUIRES_ACTION,
            SUBMITTING,
            ("outputs_match_required_calls", "round_not_submitted_before"),
        )
    )
    rows.append(
        TransitionSpec(
            NOT_ACCEPTED, SUBMITTING, REQUIRES_ACTION, ("run_still_requires_the_same_round",)
        )
    )
    rows.extend(TransitionSpec(CANCEL, source, CANCELLING) for source in CANCELLABLE_STATES)
    rows.extend(
        TransitionSpec(ADOPT, PENDING, state, (f"run_status_is_{state}",))
        for state in ADOPTABLE_STATES
    )
    return tuple(rows)


#: The whole table, as data. The core builds its ``transitions`` machine from these rows.
TRANSITIONS: Final[tuple[TransitionSpec, ...]] = _build_transitions()

# --------------------------------------------------------------------------------------------
# Reading the table
# --------------------------------------------------------------------------------------------

EventKind: TypeAlias = Literal["transition", "repeat", "late", "content", "unknown", "violation"]

#: Statuses a run may still report after a cancel was asked for, before the server acts on it:
#: in ``cancelling`` their events are late news, tolerated, not violations.
LATE_WHILE_CANCELLING: Final[frozenset[str]] = frozenset({QUEUED, IN_PROGRESS, REQUIRES_ACTION})


def classify(state: str, event: str) -> EventKind:
    """Say what a stream event means in ``state``.

    - ``"transition"``: a lifecycle event the table allows here; it moves the state.
    - ``"repeat"``: the event announces the state the run is already in (``queued`` twice).
    - ``"late"``: in ``cancelling``, an event the server sent before it acted on the cancel
      (``in_progress``, ``requires_action``, ...); tolerated, it does not move the state.
    - ``"content"``: a message, step, delta or error event that may arrive in this state.
    - ``"unknown"``: an event name this table does not know; the API may add events, so it is
      tolerated.
    - ``"violation"``: impossible here (``completed`` while ``pending``, anything after the end).
    """
    if state in TERMINAL_STATES:
        return "violation" if event in LIFECYCLE_EVENTS or event in CONTENT_EVENTS else "unknown"
    if event in LIFECYCLE_EVENTS:
        if event in SERVER_EVENT_TRANSITIONS[state]:
            return "transition"
        if EVENT_STATE[event] == state and event != RUN_CREATED:
            return "repeat"
        if state == CANCELLING and EVENT_STATE[event] in LATE_WHILE_CANCELLING:
            return "late"
        return "violation"
    if event in CONTENT_EVENTS:
        return "content" if accepts_content(state, event) else "violation"
    return "unknown"


def accepts_content(state: str, event: str) -> bool:
    """Content events need a run on the server; only ``thread.created`` may precede it."""
    if state in TERMINAL_STATES:
        return False
    if state == PENDING:
        return event in BEFORE_RUN_EVENTS
    return True


def targets(state: str) -> dict[str, str]:
    """Every trigger allowed in ``state`` and where it leads (guarded triggers may lead to several
    states; the last row wins here, so use ``TRANSITIONS`` when that matters)."""
    return {row.trigger: row.dest for row in TRANSITIONS if row.source == state}


def path_to_status(state: str, status: str) -> list[str]:
    """The shortest chain of server lifecycle events that takes a run from ``state`` to ``status``.

    Polling sees statuses, not events: a run polled in ``queued`` and next in ``completed`` must
    have been ``in_progress`` in between. This finds the events such a jump implies, from the table
    itself. Returns ``[]`` when already there; raises ``ValueError`` when the table has no path.
    """
    if state == status:
        return []
    seen = {state}
    queue: deque[tuple[str, list[str]]] = deque([(state, [])])
    while queue:
        current, path = queue.popleft()
        for event, dest in SERVER_EVENT_TRANSITIONS.get(current, {}).items():
            if dest in seen:
                continue
            if dest == status:
                return [*path, event]
            seen.add(dest)
            queue.append((dest, [*path, event]))
    raise ValueError(f"the lifecycle has no path from {state!r} to status {status!r}")


def rows_from(source: str) -> Iterable[TransitionSpec]:
    """The table's rows that leave ``source``."""
    return (row for row in TRANSITIONS if row.source == source)


def find_row(
    trigger: str, source: str, rows: Iterable[TransitionSpec] = TRANSITIONS
) -> list[TransitionSpec]:
    """The rows of ``rows`` for ``trigger`` from ``source``, in table order."""
    return [row for row in rows if row.trigger == trigger and row.source == source]
