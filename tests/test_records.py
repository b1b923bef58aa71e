"""Records are frozen and validated when made."""

from __future__ import annotations

import attrs
import pytest

from runmachine import ToleratedEvent, ToolCallRecord, TransitionRecord


def test_a_record_is_frozen() -> None:
    record = TransitionRecord("queued", "in_progress", "thread.run.in_progress", "run_1", 1.0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        record.dest = "completed"  # type: ignore[misc]


def test_a_record_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(TypeError, match="'source' must be <class 'str'>"):
        TransitionRecord(None, "queued", "thread.run.created", None, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'kind' must be in"):
        ToleratedEvent("x", "queued", None, 0.0, "other")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'round' must be >= 0"):
        ToolCallRecord("call_1", "f", "{}", "out", None, -1, None, None)


def test_a_tool_call_records_its_duration() -> None:
    record = ToolCallRecord("call_1", "f", "{}", "out", None, 1, 2.0, 2.5)
    assert record.duration == 0.5
    assert ToolCallRecord("call_1", "f", "{}", "out", None, 1, None, None).duration is None
