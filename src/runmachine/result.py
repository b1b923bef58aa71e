"""The records a driven run leaves behind: ``RunResult`` and one ``ToolCallRecord`` per call.

Every terminal outcome the server can report (completed, failed, expired, cancelled, incomplete)
is a ``RunResult``, not an exception. Records are frozen; nothing changes them once made.
"""

from __future__ import annotations

from typing import Any

import attrs
from openai.types.beta.threads import Message, Run
from openai.types.beta.threads.runs import RunStep

from runmachine.machine import TransitionRecord

__all__ = ["RunResult", "ToolCallRecord"]


@attrs.frozen
class ToolCallRecord:
    """One tool call the model asked for, and what runmachine answered."""

    id: str
    name: str
    arguments: str
    """The arguments exactly as the model sent them (a JSON string, possibly invalid)."""
    output: str
    """The string submitted to the server for this call."""
    error: str | None
    """Why the tool did not produce a normal output (bad arguments, unknown tool, raised,
    timed out, deadline), or ``None``."""
    round: int
    """The ``requires_action`` round this call belonged to, from 1."""
    started_at: float | None
    finished_at: float | None
    """``time.monotonic()`` readings; ``None`` when the tool never ran."""

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@attrs.frozen
class RunResult:
    """How a run ended and everything observed on the way."""

    status: str
    """The final state: ``completed``, ``failed``, ``expired``, ``cancelled`` or ``incomplete``
    (or the state a run stopped in when the result is attached to an error)."""
    run: Run | None
    text: str
    messages: tuple[Message, ...]
    run_steps: tuple[RunStep, ...]
    tool_calls: tuple[ToolCallRecord, ...]
    rounds: int
    transitions: tuple[TransitionRecord, ...]
    usage: Any
    error: str | None = None
    """For a result carried by an exception: what stopped the run."""

    def diagram(self, format: str = "mermaid") -> str | bytes:
        """Draw the path this run took on the lifecycle diagram (see ``runmachine.diagrams``)."""
        from runmachine.diagrams import draw_trace

        return draw_trace(
            self.transitions, final_state=self.status, error=self.error, format=format
        )

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    @property
    def thread_id(self) -> str | None:
        return self.run.thread_id if self.run is not None else None
