"""The run lifecycle table: every state, trigger, transition and guard of an Assistants run.

Rules of this module, in the spirit of h11's ``_state.py``:

- Everything that decides which state a run is in, and which event may move it where, lives here,
  and as much of it as possible is plain data (``TRANSITIONS``). The machine (``RunMachine``), the
  diagrams and the driver's guards all read this table; none of them keeps a copy of it.
- Nothing here does I/O, knows about HTTP, or holds per-run data. The guards are pure functions of
  the values they are given.
- Triggers are named after what causes them: a server lifecycle event by its SSE event name
  (``"thread.run.requires_action"``), a local action by a verb (``"submit_tool_outputs"``,
  ``"cancel"``, ``"adopt"``).

Stream events that are not lifecycle events (message and step events, text and tool-call deltas)
never move the state; the table only says in which states they may arrive (``accepts_content``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Mapping
from typing import Final, Literal

import attrs

__all__ = [
    "ADOPT",
    "CANCEL",
    "CONTENT_EVENTS",
    "EVENT_STATE",
    "GUARDS",
    "INITIAL_STATE",
    "LIFECYCLE_EVENTS",
    "LOCAL_TRIGGERS",
    "NOT_ACCEPTED",
    "STATES",
    "SUBMIT",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "EventKind",
    "Guard",
    "TransitionSpec",
    "accepts_content",
    "classify",
    "outputs_match_required_calls",
    "path_to_status",
    "round_not_submitted_before",
    "targets",
]

# --------------------------------------------------------------------------------------------
# States
# --------------------------------------------------------------------------------------------

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
STATES: Final[tuple[str, ...]] = (
    PENDING,
    QUEUED,
    IN_PROGRESS,
    REQUIRES_ACTION,
    SUBMITTING,
    CANCELLING,
    COMPLETED,
    FAILED,
    CANCELLED,
    EXPIRED,
    INCOMPLETE,
)
TERMINAL_STATES: Final[frozenset[str]] = frozenset(
    {COMPLETED, FAILED, CANCELLED, EXPIRED, INCOMPLETE}
)

# --------------------------------------------------------------------------------------------
# Triggers
# --------------------------------------------------------------------------------------------

#: The server's lifecycle events and the run status each one announces.
EVENT_STATE: Final[Mapping[str, str]] = {
    "thread.run.created": QUEUED,
    "thread.run.queued": QUEUED,
    "thread.run.in_progress": IN_PROGRESS,
    "thread.run.requires_action": REQUIRES_ACTION,
    "thread.run.completed": COMPLETED,
    "thread.run.failed": FAILED,
    "thread.run.cancelling": CANCELLING,
    "thread.run.cancelled": CANCELLED,
    "thread.run.expired": EXPIRED,
    "thread.run.incomplete": INCOMPLETE,
}
LIFECYCLE_EVENTS: Final[frozenset[str]] = frozenset(EVENT_STATE)

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

#: Stream events that carry content, never move the state, and take the fast path.
CONTENT_EVENTS: Final[frozenset[str]] = frozenset(
    {
        "thread.created",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.run.step.delta",
        "thread.run.step.completed",
        "thread.run.step.failed",
        "thread.run.step.cancelled",
        "thread.run.step.expired",
        "thread.message.created",
        "thread.message.in_progress",
        "thread.message.delta",
        "thread.message.completed",
        "thread.message.incomplete",
        "error",
    }
)

# --------------------------------------------------------------------------------------------
# Guards
# --------------------------------------------------------------------------------------------


@attrs.frozen
class Guard:
    """A named condition on a transition. ``error`` names the exception raised when it fails."""

    name: str
    description: str
    error: str


def outputs_match_required_calls(required: Collection[str], outputs: Collection[str]) -> bool:
    """Every required call id has an output, and no output is for a call that was not asked for."""
    return len(outputs) == len(required) and set(outputs) == set(required)


def round_not_submitted_before(
    call_ids: Collection[str], submitted_rounds: Collection[frozenset[str]]
) -> bool:
    """This round (its set of call ids) has not been handed to the server before."""
    return frozenset(call_ids) not in submitted_rounds


GUARDS: Final[Mapping[str, Guard]] = {
    "outputs_match_required_calls": Guard(
        "outputs_match_required_calls",
        "one output for every required call id, none for any other",
        "ProtocolViolation",
    ),
    "round_not_submitted_before": Guard(
        "round_not_submitted_before",
        "this round's call ids were never submitted before",
        "DuplicateSubmission",
    ),
    "run_still_requires_the_same_round": Guard(
        "run_still_requires_the_same_round",
        "runs.retrieve shows the run in requires_action for the very calls just submitted",
        "ProtocolViolation",
    ),
    **{
        f"run_status_is_{state}": Guard(
            f"run_status_is_{state}",
            f"the server reports the run as {state!r}",
            "ProtocolViolation",
        )
        for state in STATES
        if state not in (PENDING, SUBMITTING)
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
# not listed: ``classify`` tolerates them (PROTOCOL.md §4.0: ``created`` is followed by ``queued``
# with the same payload).
SERVER_EVENT_TRANSITIONS: Final[Mapping[str, Mapping[str, str]]] = {
    PENDING: {
        "thread.run.created": QUEUED,
    },
    QUEUED: {
        "thread.run.in_progress": IN_PROGRESS,
        "thread.run.failed": FAILED,
        "thread.run.cancelling": CANCELLING,
        "thread.run.expired": EXPIRED,
    },
    IN_PROGRESS: {
        "thread.run.requires_action": REQUIRES_ACTION,
        "thread.run.completed": COMPLETED,
        "thread.run.failed": FAILED,
        "thread.run.incomplete": INCOMPLETE,
        "thread.run.cancelling": CANCELLING,
        "thread.run.expired": EXPIRED,
    },
    REQUIRES_ACTION: {
        "thread.run.failed": FAILED,
        "thread.run.cancelling": CANCELLING,
        "thread.run.expired": EXPIRED,
    },
    # ``submitting`` is left by the server's next lifecycle event after the submit.
    SUBMITTING: {
        "thread.run.queued": QUEUED,
        "thread.run.in_progress": IN_PROGRESS,
        "thread.run.failed": FAILED,
        "thread.run.cancelling": CANCELLING,
        "thread.run.expired": EXPIRED,
    },
    # Cancellation is best effort: a cancelling run may still finish some other way.
    CANCELLING: {
        "thread.run.cancelled": CANCELLED,
        "thread.run.completed": COMPLETED,
        "thread.run.failed": FAILED,
        "thread.run.incomplete": INCOMPLETE,
        "thread.run.expired": EXPIRED,
    },
}

#: Where a local cancel request may be made; it moves the run to ``cancelling``.
CANCELLABLE_STATES: Final[tuple[str, ...]] = (QUEUED, IN_PROGRESS, REQUIRES_ACTION, SUBMITTING)


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
        for state in STATES
        if state not in (PENDING, SUBMITTING)
    )
    return tuple(rows)


#: The whole table, as data. ``RunMachine`` builds its ``transitions`` machine from these rows.
TRANSITIONS: Final[tuple[TransitionSpec, ...]] = _build_transitions()

# --------------------------------------------------------------------------------------------
# Reading the table
# --------------------------------------------------------------------------------------------

EventKind = Literal["transition", "repeat", "content", "unknown", "violation"]


def classify(state: str, event: str) -> EventKind:
    """Say what a stream event means in ``state``.

    - ``"transition"``: a lifecycle event the table allows here; it moves the state.
    - ``"repeat"``: the event announces the state the run is already in (``queued`` twice).
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
        if EVENT_STATE[event] == state and event != "thread.run.created":
            return "repeat"
        return "violation"
    if event in CONTENT_EVENTS:
        return "content" if accepts_content(state, event) else "violation"
    return "unknown"


def accepts_content(state: str, event: str) -> bool:
    """Content events need a run on the server; only ``thread.created`` may precede it."""
    if state in TERMINAL_STATES:
        return False
    if state == PENDING:
        return event in ("thread.created", "error")
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
