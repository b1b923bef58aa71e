"""The records a driven run leaves behind: ``RunResult`` and one ``ToolCallRecord`` per call.

Every terminal outcome the server can report (completed, failed, expired, cancelled, incomplete)
is a ``RunResult``, not an exception. Records are frozen; nothing changes them once made.
"""

from __future__ import annotations

from typing import Any

import attrs
from openai.types.beta.agent_session_assistant_message import AgentSessionAssistantMessage
from openai.types.beta.agent_session_message import AgentSessionMessage
from openai.types.beta.agents.sessions.turn import Turn
from openai.types.beta.threads import Message, Run
from openai.types.beta.threads.run import Usage
from openai.types.beta.threads.runs import RunStep

from runmachine.diagrams import Detail, draw_trace
from runmachine.lifecycle import State
from runmachine.records import ToolCallRecord, TransitionRecord

__all__ = ["RunResult", "ToolCallRecord"]


@attrs.frozen
class RunResult:
    """How a run (or an agent-session turn) ended and everything observed on the way.

    An Assistants run fills ``run`` (``run_id``, ``thread_id``), ``messages`` and ``run_steps``;
    a turn fills ``turn`` (``turn_id``, ``session_id``), ``turn_messages`` and, when it was left
    waiting on approvals nobody has answered yet, ``pending_approvals``.
    """

    status: State
    """The final state: ``completed``, ``failed``, ``expired``, ``cancelled`` or ``incomplete``
    (or the state a run stopped in when the result is attached to an error). A turn ends
    ``completed``, ``failed`` or ``cancelled``, or is ``requires_action`` when it was left
    waiting on ``pending_approvals``."""
    run: Run | None
    text: str
    messages: tuple[Message, ...]
    run_steps: tuple[RunStep, ...]
    tool_calls: tuple[ToolCallRecord, ...]
    rounds: int
    transitions: tuple[TransitionRecord, ...]
    usage: Usage | None
    error: str | None = None
    """For a result carried by an exception: what stopped the run."""
    turn: Turn | None = None
    """The turn as the server last reported it (agent sessions; its ``usage`` too)."""
    session_id: str | None = None
    """The session the turn belongs to (agent sessions)."""
    turn_messages: tuple[AgentSessionMessage | AgentSessionAssistantMessage, ...] = ()
    """The assistant messages of the turn (agent sessions)."""
    pending_approvals: tuple[Any, ...] = ()
    """The approval requests the turn waits on, unanswered (the SDK's required-action objects:
    ``mcp_approval_request``, ``computer_use_approval_request``). Answer them with
    ``resume(session_id=..., turn_id=..., approvals={request_id: "approve"})``."""

    def diagram(self, format: str = "mermaid", *, detail: Detail = "readable") -> str | bytes:
        """Draw the path this run took on the lifecycle diagram (see ``runmachine.diagrams``):
        by default on the readable statechart, its steps numbered in order on the arrows and the
        states it never visited faded; ``detail="full"`` on the every-row drawing."""
        return draw_trace(
            self.transitions,
            final_state=self.status,
            error=self.error,
            format=format,
            backend="sessions" if self.session_id is not None else "assistants",
            detail=detail,
        )

    @property
    def turn_id(self) -> str | None:
        return self.turn.id if self.turn is not None else None

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    @property
    def thread_id(self) -> str | None:
        return self.run.thread_id if self.run is not None else None
