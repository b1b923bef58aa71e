"""The records a driven run leaves behind: ``RunResult`` and one ``ToolCallRecord`` per call.

Every terminal outcome the server can report (completed, failed, expired, cancelled, incomplete)
is a ``RunResult``, not an exception. Records are frozen; nothing changes them once made.
"""

from __future__ import annotations

import attrs
from openai.types.beta.threads import Message, Run
from openai.types.beta.threads.run import Usage
from openai.types.beta.threads.runs import RunStep

from runmachine.diagrams import draw_trace
from runmachine.lifecycle import State
from runmachine.records import ToolCallRecord, TransitionRecord

__all__ = ["RunResult", "ToolCallRecord"]


@attrs.frozen
class RunResult:
    """How a run ended and everything observed on the way."""

    status: State
    """The final state: ``completed``, ``failed``, ``expired``, ``cancelled`` or ``incomplete``
    (or the state a run stopped in when the result is attached to an error)."""
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

    def diagram(self, format: str = "mermaid") -> str | bytes:
        """Draw the path this run took on the lifecycle diagram (see ``runmachine.diagrams``)."""
        return draw_trace(
            self.transitions, final_state=self.status, error=self.error, format=format
        )

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    @property
    def thread_id(self) -> str | None:
        return self.run.thread_id if self.run is not None else None
