"""``runmachine.backends.sse``: SSE bytes to SDK events, however the bytes are split."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder

from runmachine import lifecycle
from runmachine.backends.sse import EVENT_TYPES, SSEParser, StreamError, build_event

STREAM = (
    b'event: thread.run.created\r\ndata: {"id": "run_1"}\r\n\r\n'
    b": a comment\n\n"
    b'event: thread.message.delta\ndata: {"a":\ndata: 1}\n\n'
    b"event: thread.run.completed\rdata: {}\r\r"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    ("thread.run.created", '{"id": "run_1"}'),
    ("thread.message.delta", '{"a":\n1}'),
    ("thread.run.completed", "{}"),
    (None, "[DONE]"),
]


def _parse(chunks: list[bytes]) -> list[tuple[str | None, str]]:
    parser = SSEParser()
    out = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out + parser.close()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_of_the_bytes_gives_the_same_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert _parse(chunks) == EXPECTED


def test_the_events_agree_with_the_sdks_own_decoder() -> None:
    theirs = [(e.event, e.data) for e in SSEDecoder().iter_bytes(iter([STREAM]))]
    assert _parse([STREAM]) == theirs


def test_an_event_without_its_blank_line_is_dispatched_at_the_end() -> None:
    assert _parse([b"event: x\ndata: 1"]) == [("x", "1")]
    assert _parse([b"event: x\ndata: 1\r"]) == [("x", "1")]


def test_the_parser_is_linear_in_the_bytes_it_is_fed() -> None:
    # A 1 MB data line read 1 KiB at a time: each feed looks only at the new bytes (counted, not
    # timed: the scan position must move forward by the chunk, never back to the start).
    parser = SSEParser()
    line = b"data: " + b"x" * 1_000_000
    for start in range(0, len(line), 1024):
        assert parser.feed(line[start : start + 1024]) == []
        assert parser._scan >= start
    assert parser.feed(b"\n\n") == [(None, "x" * 1_000_000)]


def test_bytes_that_are_not_utf8_are_a_stream_error_naming_the_line() -> None:
    with pytest.raises(StreamError, match=r"not UTF-8 .*data: \\xff"):
        _parse([b"event: thread.message.delta\ndata: \xff\xfe\n\n"])


@pytest.mark.parametrize("data", ["null", "[1, 2]", '"text"', "7"])
def test_a_run_event_whose_data_is_not_an_object_is_a_stream_error(data: str) -> None:
    with pytest.raises(StreamError, match=r"thread.run.requires_action.*not an object"):
        build_event("thread.run.requires_action", data)


def test_data_that_is_not_json_is_a_stream_error() -> None:
    with pytest.raises(StreamError, match="not JSON"):
        build_event("thread.run.created", "{nope")


@pytest.mark.parametrize("data", ['{"message": "boom"}', '{"error": {"message": "boom"}}'])
def test_an_error_event_is_a_stream_error_with_its_message(data: str) -> None:
    with pytest.raises(StreamError, match="boom"):
        build_event(lifecycle.ERROR_EVENT, data)


def test_every_event_the_table_knows_has_its_sdk_type() -> None:
    assert set(EVENT_TYPES) == lifecycle.LIFECYCLE_EVENTS | lifecycle.CONTENT_EVENTS


def test_a_payload_strict_typing_refuses_is_built_as_the_sdk_builds_it() -> None:
    payload = {"id": "run_1", "status": "queued", "instructions": None, "thread_id": "t"}
    event = build_event("thread.run.created", json.dumps(payload))
    assert event.event == "thread.run.created"
    assert event.data.id == "run_1"
    assert event.data.instructions is None


def test_an_unknown_event_is_passed_along() -> None:
    event = build_event("thread.run.future_thing", '{"x": 1}')
    assert event.event == "thread.run.future_thing"
