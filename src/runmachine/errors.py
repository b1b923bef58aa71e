"""Every exception runmachine raises, under one base class.

Each error names what was wrong and where: the event, the state, the run id, the round. Errors that
end a driven run carry the partial result so that nothing observed so far is lost.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runmachine.result import RunResult

__all__ = [
    "DuplicateSubmission",
    "GraphvizNotFound",
    "HandedOff",
    "HookError",
    "LeaseLost",
    "LedgerError",
    "MachineBusy",
    "OptionError",
    "ProtocolViolation",
    "RequiresActionLoop",
    "ResultConflict",
    "RunAborted",
    "RunHeld",
    "RunMachineError",
    "TooManyRounds",
    "ToolError",
    "ToolFailed",
    "TurnTimedOut",
]


class RunMachineError(Exception):
    """Base class of every error raised by runmachine."""


class OptionError(RunMachineError, TypeError, ValueError):
    """An option given to ``RunMachine(...)`` (or another constructor) that is unknown, of the
    wrong type or out of range. The message names the option, what was given and what is
    accepted; raised at construction, before anything runs."""


class MachineBusy(RunMachineError):
    """A ``RunMachine`` was asked to drive a run while it is driving another one."""


class LedgerError(RunMachineError):
    """A ledger that cannot be used: a file from a newer runmachine, a corrupt file, a file that
    is not a ledger; or a write that failed during a run (the run is then cancelled). The
    message names the ledger and what is wrong. When the failed write was a tool's output,
    ``call_id`` and ``output`` keep what the tool returned."""

    call_id: str | None = None
    output: str | None = None


class RunHeld(LedgerError):
    """The run is held by another holder's lease: it is being driven elsewhere. Nothing was
    done to it."""

    def __init__(self, run_id: str, holder: str, until: float) -> None:
        self.run_id = run_id
        self.holder = holder
        self.until = until
        if until == float("inf"):
            when = "it releases it (a lease of this process, without expiry)"
        else:
            when = datetime.datetime.fromtimestamp(until, datetime.timezone.utc).isoformat(
                timespec="seconds"
            )
        super().__init__(
            f"run {run_id} is held by {holder} until {when} (its lease); it is being driven "
            "there, and nothing was done to it here"
        )


class LeaseLost(LedgerError):
    """This holder's lease on the run was taken over (it expired while this process was paused
    or cut off, and another holder claimed the run): nothing more is recorded or submitted
    here, and the run is left to its new holder."""


class HandedOff(RunMachineError):
    """``hand_off()`` stopped the drive: the run is left, not cancelled, for another holder to
    take over (its lease was released for that)."""


class ToolError(RunMachineError):
    """A tool call that could not produce a normal output; ``kind`` says why (``invalid_json``,
    ``invalid_arguments``, ``unknown_tool``, ``interrupted``, ...). The driver turns it into the
    call's structured error output; it never escapes a run."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(f"{kind}: {message}")


class GraphvizNotFound(RunMachineError):
    """Rendering SVG or PNG needs Graphviz's ``dot`` program, and it is not on ``PATH``."""

    def __init__(self, format: str) -> None:
        self.format = format
        super().__init__(
            f"rendering a diagram as {format!r} needs Graphviz's 'dot' program, which is not on "
            "PATH; install the graphviz system package (e.g. 'apt-get install graphviz', "
            "'brew install graphviz'), or draw the 'mermaid' or 'dot' text format instead"
        )


class ProtocolViolation(RunMachineError):
    """A stream event arrived that the lifecycle table does not allow in the current state."""

    def __init__(self, event: str, state: str, run_id: str | None, detail: str = "") -> None:
        self.event = event
        self.state = state
        self.run_id = run_id
        where = f"run {run_id}" if run_id else "a run the server has not created yet"
        message = f"event {event!r} is not allowed in state {state!r} ({where})"
        if detail:
            message = f"{message}: {detail}"
        super().__init__(message)


class HookError(RunMachineError):
    """A user hook raised. The original exception is chained as ``__cause__``."""

    def __init__(self, hook: str, state: str, run_id: str | None, error: BaseException) -> None:
        self.hook = hook
        self.state = state
        self.run_id = run_id
        self.error = error
        super().__init__(
            f"hook {hook} raised {type(error).__name__}: {error} "
            f"(state {state!r}, run {run_id or '<none>'})"
        )


class RunAborted(RunMachineError):
    """A driven run ended early because of a guard or a fault; ``result`` holds what was seen."""

    def __init__(self, message: str, result: RunResult | None = None) -> None:
        self.result = result
        super().__init__(message)


class DuplicateSubmission(RunAborted):
    """A second submission for a round that was already submitted; nothing was sent."""

    def __init__(self, run_id: str, call_ids: Any, result: RunResult | None = None) -> None:
        self.run_id = run_id
        self.call_ids = tuple(sorted(call_ids))
        super().__init__(
            f"tool outputs for run {run_id}, calls {list(self.call_ids)}, were already submitted; "
            "refusing to submit them again",
            result,
        )


class RequiresActionLoop(RunAborted):
    """The server kept asking for the same tool calls; the run was cancelled."""


class TooManyRounds(RunAborted):
    """The run asked for more tool rounds than ``max_rounds`` allows; the run was cancelled."""


class ToolFailed(RunAborted):
    """``on_tool_error`` chose to fail the run because of a tool's error; the run was cancelled."""


class TurnTimedOut(RunAborted):
    """An agent-session turn took longer than ``turn_timeout``; it was cancelled."""


class ResultConflict(RunAborted):
    """The server already holds a different answer for a required action (a 409): nothing was
    applied twice, and the turn was cancelled, since its answers are no longer this machine's."""
