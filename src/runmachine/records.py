"""The frozen records that cross module boundaries: what happened to a run, step by step.

``TransitionRecord`` (one state change), ``ToleratedEvent`` (an event accepted without moving the
state) and ``ToolCallRecord`` (one tool call and what was answered). ``RunResult``, which gathers
them for a whole run, is in ``runmachine.result``. Records are validated when made and never
change afterwards.
"""

from __future__ import annotations

from typing import Literal

import attrs

__all__ = ["ToleratedEvent", "ToolCallRecord", "TransitionRecord"]

_str = attrs.validators.instance_of(str)
_opt_str = attrs.validators.optional(_str)
_opt_float = attrs.validators.optional(attrs.validators.instance_of(float))


@attrs.frozen
class TransitionRecord:
    """One step of a run's history: ``trigger`` moved the run from ``source`` to ``dest``."""

    source: str = attrs.field(validator=_str)
    dest: str = attrs.field(validator=_str)
    trigger: str = attrs.field(validator=_str)
    run_id: str | None = attrs.field(validator=_opt_str)
    at: float
    """``time.monotonic()`` when the state changed."""


@attrs.frozen
class ToleratedEvent:
    """An event that did not move the state and was accepted anyway: a repeat or an unknown name."""

    event: str = attrs.field(validator=_str)
    state: str = attrs.field(validator=_str)
    run_id: str | None = attrs.field(validator=_opt_str)
    at: float
    kind: Literal["repeat", "late", "unknown"] = attrs.field(
        validator=attrs.validators.in_(("repeat", "late", "unknown"))
    )
    """``"repeat"``, ``"late"`` (news from before a cancel took effect) or ``"unknown"``."""


@attrs.frozen
class ToolCallRecord:
    """One tool call the model asked for, and what runmachine answered."""

    id: str = attrs.field(validator=_str)
    name: str = attrs.field(validator=_str)
    arguments: str = attrs.field(validator=_str)
    """The arguments exactly as the model sent them (a JSON string, possibly invalid)."""
    output: str = attrs.field(validator=_str)
    """The string submitted to the server for this call."""
    error: str | None
    """Why the tool did not produce a normal output (bad arguments, unknown tool, raised,
    timed out, deadline), or ``None``."""
    round: int = attrs.field(validator=attrs.validators.ge(0))
    """The ``requires_action`` round this call belonged to, from 1."""
    started_at: float | None
    finished_at: float | None
    """``time.monotonic()`` readings; ``None`` when the tool never ran."""
    abandoned: bool = False
    """The call was cut (its ``timeout``, the round's deadline, a cancel) while a plain-function
    tool ran in its worker thread. A thread cannot be stopped: the function was left running
    and may still finish, after its error output was sent. Async tools are cancelled."""

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at
