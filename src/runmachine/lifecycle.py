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
    "DECISIONS",
    "DISMISS_SIGN_IN",
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
    "SESSION_BUDGET_REACHED",
    "SESSION_CREATED",
    "SESSION_FAILED",
    "SESSION_IDLE",
    "SESSION_IN_PROGRESS",
    "SESSION_LIFECYCLE_EVENTS",
    "SESSION_REQUIRES_ACTION",
    "STATES",
    "STREAM_MAY_END",
    "SUBMIT",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "TURN_ACTIVE_STATES",
    "TURN_ADOPTABLE_STATES",
    "TURN_CANCELLED",
    "TURN_COMPLETED",
    "TURN_CONTENT_EVENTS",
    "TURN_CONTENT_PART_ADDED",
    "TURN_CONTENT_PART_DONE",
    "TURN_CREATED",
    "TURN_EVENTS",
    "TURN_FAILED",
    "TURN_IN_PROGRESS",
    "TURN_ITEM_ADDED",
    "TURN_ITEM_DONE",
    "TURN_LATE_WHILE_CANCELLING",
    "TURN_LIFECYCLE_EVENTS",
    "TURN_SERVER_EVENT_TRANSITIONS",
    "TURN_STATES",
    "TURN_STATUS_STATE",
    "TURN_STREAM_MAY_END",
    "TURN_TERMINAL_STATES",
    "TURN_TEXT_DELTA",
    "TURN_TEXT_DONE",
    "TURN_TRANSITIONS",
    "Decision",
    "EventKind",
    "Guard",
    "GuardContext",
    "RunStatus",
    "State",
    "TerminalState",
    "TransitionSpec",
    "TurnState",
    "TurnStatus",
    "TurnTerminalState",
    "accepts_content",
    "classify",
    "classify_turn_event",
    "find_row",
    "outputs_match_required_calls",
    "path_to_status",
    "requires_a_new_round",
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


def requires_a_new_round(context: GuardContext) -> bool:
    """The turn asks for required actions that were not handed over before (a new round, not
    the round being answered, listed again)."""
    return bool(context.required) and context.required not in context.submitted


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
    "requires_a_new_round": Guard(
        "requires_a_new_round",
        "the session requires actions of this turn that were never answered before",
        "ProtocolViolation",
        requires_a_new_round,
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


def _build_transitions(
    server: Mapping[str, Mapping[str, str]],
    cancellable: Iterable[str],
    adoptable: Iterable[str],
    event_guards: Callable[[str, str], tuple[str, ...]] = lambda source, event: (),
) -> tuple[TransitionSpec, ...]:
    """A table's rows: its server events (``event_guards(source, event)`` names their
    guards), then the local triggers every table has: handing over the outputs, a submission
    the server did not take, a cancel from each cancellable state, adopting in each state."""
    rows: list[TransitionSpec] = []
    for source, events in server.items():
        rows.extend(
            TransitionSpec(event, source, dest, event_guards(source, event))
            for event, dest in events.items()
        )
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
    rows.extend(TransitionSpec(CANCEL, source, CANCELLING) for source in cancellable)
    rows.extend(
        TransitionSpec(ADOPT, PENDING, state, (f"run_status_is_{state}",)) for state in adoptable
    )
    return tuple(rows)


#: The whole table, as data. The core builds its ``transitions`` machine from these rows.
TRANSITIONS: Final[tuple[TransitionSpec, ...]] = _build_transitions(
    SERVER_EVENT_TRANSITIONS, CANCELLABLE_STATES, ADOPTABLE_STATES
)

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


def path_to_status(
    state: str,
    status: str,
    transitions: Mapping[str, Mapping[str, str]] = SERVER_EVENT_TRANSITIONS,
) -> list[str]:
    """The shortest chain of server lifecycle events that takes a run from ``state`` to ``status``.

    Polling sees statuses, not events: a run polled in ``queued`` and next in ``completed`` must
    have been ``in_progress`` in between. This finds the events such a jump implies, from the table
    itself (``transitions``: the Assistants table by default, ``TURN_SERVER_EVENT_TRANSITIONS``
    for a turn). Returns ``[]`` when already there; raises ``ValueError`` when there is no path.
    """
    if state == status:
        return []
    seen = {state}
    queue: deque[tuple[str, list[str]]] = deque([(state, [])])
    while queue:
        current, path = queue.popleft()
        for event, dest in transitions.get(current, {}).items():
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


# ============================================================================================
# The turn table: an agent-session turn (``client.beta.agents.sessions``)
# ============================================================================================
#
# A session holds turns; one root turn runs at a time. A turn pauses while the session
# ``requires_action`` (function calls to answer, approvals to give), and goes on once every
# required action of the turn has its answer (one input event each, on the session's single
# long-lived event stream). It has no ``expires_at``, no ``cancelling`` status (a cancel is an
# input event; the turn then ends ``cancelled``) and no ``incomplete`` end. The machine's states
# are the Assistants ones where the meaning is the same: ``waiting`` is ``requires_action``, and
# ``cancelling`` and ``submitting`` are the machine's own (a cancel sent, answers handed over).

#: What an approval request may be answered (the SDK's ``decision`` values).
Decision: TypeAlias = Literal["approve", "deny", "cancel"]
DECISIONS: Final[tuple[str, ...]] = get_args(Decision)
#: The answer to a sign-in form (``browser_authentication``) without credentials: dismissed.
DISMISS_SIGN_IN: Final[Mapping[str, str]] = {"action": CANCEL, "type": "browser_authentication"}

#: A turn's status as the server reports it (the SDK's ``Turn.status``).
TurnStatus: TypeAlias = Literal[
    "queued", "in_progress", "waiting", "completed", "failed", "cancelled"
]
#: A state of a turn's machine.
TurnState: TypeAlias = Literal[
    "pending",
    "queued",
    "in_progress",
    "requires_action",
    "submitting",
    "cancelling",
    "completed",
    "failed",
    "cancelled",
]
#: The states a turn ends in.
TurnTerminalState: TypeAlias = Literal["completed", "failed", "cancelled"]

TURN_STATES: Final[tuple[str, ...]] = get_args(TurnState)
TURN_TERMINAL_STATES: Final[frozenset[str]] = frozenset(get_args(TurnTerminalState))
TURN_ACTIVE_STATES: Final[tuple[str, ...]] = ACTIVE_STATES
#: A turn's status, as a state of its machine.
TURN_STATUS_STATE: Final[Mapping[str, str]] = {
    "queued": QUEUED,
    "in_progress": IN_PROGRESS,
    "waiting": REQUIRES_ACTION,
    "completed": COMPLETED,
    "failed": FAILED,
    "cancelled": CANCELLED,
}
#: States a turn found on the server may be adopted in.
TURN_ADOPTABLE_STATES: Final[tuple[str, ...]] = tuple(dict.fromkeys(TURN_STATUS_STATE.values()))

TURN_CREATED: Final = "agent.session.turn.created"
TURN_IN_PROGRESS: Final = "agent.session.turn.in_progress"
TURN_COMPLETED: Final = "agent.session.turn.completed"
TURN_FAILED: Final = "agent.session.turn.failed"
TURN_CANCELLED: Final = "agent.session.turn.cancelled"
SESSION_IN_PROGRESS: Final = "agent.session.in_progress"
SESSION_REQUIRES_ACTION: Final = "agent.session.requires_action"
SESSION_FAILED: Final = "agent.session.failed"
SESSION_CREATED: Final = "agent.session.created"
SESSION_IDLE: Final = "agent.session.idle"
#: Not in the SDK's event union; its own stream helper treats it as the end of the turn.
SESSION_BUDGET_REACHED: Final = "agent.session.budget_reached"
TURN_ITEM_ADDED: Final = "agent.session.turn.item.added"
TURN_ITEM_DONE: Final = "agent.session.turn.item.done"
TURN_CONTENT_PART_ADDED: Final = "agent.session.turn.content_part.added"
TURN_CONTENT_PART_DONE: Final = "agent.session.turn.content_part.done"
TURN_TEXT_DELTA: Final = "agent.session.turn.output_text.delta"
TURN_TEXT_DONE: Final = "agent.session.turn.output_text.done"

#: The turn's own events: they carry its ``turn_id`` (and the ``Turn``).
TURN_EVENTS: Final[frozenset[str]] = frozenset(
    {TURN_CREATED, TURN_IN_PROGRESS, TURN_COMPLETED, TURN_FAILED, TURN_CANCELLED}
)
#: Session events that move the active turn (they carry the session, not a turn id).
SESSION_LIFECYCLE_EVENTS: Final[frozenset[str]] = frozenset(
    {SESSION_IN_PROGRESS, SESSION_REQUIRES_ACTION, SESSION_FAILED}
)
TURN_LIFECYCLE_EVENTS: Final[frozenset[str]] = TURN_EVENTS | SESSION_LIFECYCLE_EVENTS
#: Every other event the SDK declares: content, the session's own news, environments,
#: subagents. They never move the turn.
TURN_CONTENT_EVENTS: Final[frozenset[str]] = frozenset(
    {
        ERROR_EVENT,
        SESSION_CREATED,
        SESSION_IDLE,
        TURN_ITEM_ADDED,
        TURN_ITEM_DONE,
        TURN_CONTENT_PART_ADDED,
        TURN_CONTENT_PART_DONE,
        TURN_TEXT_DELTA,
        TURN_TEXT_DONE,
        "agent.session.turn.reasoning_summary_part.added",
        "agent.session.turn.reasoning_summary_part.done",
        "agent.session.turn.reasoning_summary_text.delta",
        "agent.session.turn.reasoning_summary_text.done",
        "agent.output.command_execution_output.delta",
        "agent.session.environment.pending",
        "agent.session.environment.ready",
        "agent.session.environment.connected",
        "agent.session.environment.disconnected",
        "agent.session.environment.suspended",
        "agent.session.environment.expired",
        "agent.session.environment.reset",
        "agent.session.environment.failed",
        "agent.session.subagent.created",
        "agent.session.subagent.active",
        "agent.session.subagent.closed",
    }
)
#: Events that may come after the last requires_action of a cancelled turn, before the server
#: acted on the cancel: tolerated as late in ``cancelling``.
TURN_LATE_WHILE_CANCELLING: Final[frozenset[str]] = frozenset(
    {TURN_IN_PROGRESS, SESSION_IN_PROGRESS, SESSION_REQUIRES_ACTION}
)
#: A turn's stream is the session's: it never ends on its own. These states are where reading
#: it stops: the turn is over, or waits on the client.
TURN_STREAM_MAY_END: Final[frozenset[str]] = TURN_TERMINAL_STATES | {REQUIRES_ACTION}

_TURN_ENDS: Final[Mapping[str, str]] = {
    TURN_COMPLETED: COMPLETED,
    TURN_FAILED: FAILED,
    TURN_CANCELLED: CANCELLED,
    SESSION_FAILED: FAILED,
}
_TURN_FAILS: Final[Mapping[str, str]] = {
    TURN_FAILED: FAILED,
    TURN_CANCELLED: CANCELLED,
    SESSION_FAILED: FAILED,
}

#: state -> {server event -> next state}, for a turn.
TURN_SERVER_EVENT_TRANSITIONS: Final[Mapping[str, Mapping[str, str]]] = {
    PENDING: {TURN_CREATED: QUEUED},
    QUEUED: {
        TURN_IN_PROGRESS: IN_PROGRESS,
        SESSION_IN_PROGRESS: IN_PROGRESS,
        SESSION_REQUIRES_ACTION: REQUIRES_ACTION,
        **_TURN_ENDS,
    },
    IN_PROGRESS: {SESSION_REQUIRES_ACTION: REQUIRES_ACTION, **_TURN_ENDS},
    # Waiting on the client: only the answers (``submit_tool_outputs``) move it on, or its end.
    REQUIRES_ACTION: dict(_TURN_FAILS),
    # Left by the server's next news of the turn after the answers.
    SUBMITTING: {
        TURN_IN_PROGRESS: IN_PROGRESS,
        SESSION_IN_PROGRESS: IN_PROGRESS,
        SESSION_REQUIRES_ACTION: REQUIRES_ACTION,
        **_TURN_ENDS,
    },
    CANCELLING: dict(_TURN_ENDS),
}


def _turn_event_guards(source: str, event: str) -> tuple[str, ...]:
    # The session's stream is live only: after a reconnect it may still deliver the listing of
    # a round already answered. Only a round never handed over is news.
    return ("requires_a_new_round",) if event == SESSION_REQUIRES_ACTION else ()


#: The turn's table, as data: the core of a turn builds its engine from these rows.
TURN_TRANSITIONS: Final[tuple[TransitionSpec, ...]] = _build_transitions(
    TURN_SERVER_EVENT_TRANSITIONS, TURN_ACTIVE_STATES, TURN_ADOPTABLE_STATES, _turn_event_guards
)


def classify_turn_event(state: str, event: str) -> EventKind:
    """Say what an event *of this turn* means in ``state`` (as ``classify`` for a run).

    Events of other turns (subagents) are the caller's to set aside first. A lifecycle event
    that announces the state the turn is in is a ``"repeat"``; in ``cancelling`` the server's
    news from before it acted on the cancel is ``"late"``.
    """
    if event in TURN_LIFECYCLE_EVENTS:
        if state in TURN_TERMINAL_STATES:
            return "violation"
        if event in TURN_SERVER_EVENT_TRANSITIONS[state]:
            return "transition"
        if state == CANCELLING and event in TURN_LATE_WHILE_CANCELLING:
            return "late"
        announced = TURN_SERVER_EVENT_TRANSITIONS[QUEUED].get(event)
        if announced == state or (event == TURN_CREATED and state != PENDING):
            return "repeat"
        return "violation"
    if event in TURN_CONTENT_EVENTS:
        return "content"
    return "unknown"
