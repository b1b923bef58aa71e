"""``runmachine.backends.sse``: SSE bytes to SDK events, however the bytes are split, equal to
what the SDK's own decoding gives for the same bytes (real recordings and emulator streams)."""

from __future__ import annotations

import json
import re
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._models import construct_type
from openai._streaming import SSEDecoder
from openai.types.beta import AgentSessionEvent, AssistantStreamEvent
from openai.types.beta.threads import Run
from openai.types.beta.threads.required_action_function_tool_call import (
    Function,
    RequiredActionFunctionToolCall,
)
from openai.types.beta.threads.run import RequiredAction
from openai.types.beta.threads.run_submit_tool_outputs_params import ToolOutput
from pydantic import BaseModel

from runmachine import lifecycle
from runmachine.backends.sse import (
    EVENT_TYPES,
    SESSION_EVENT_TYPES,
    SSEParser,
    StreamError,
    _tolerant_validator,
    build_event,
    build_session_event,
)
from runmachine.testing import Emulator, Scenario, TurnScenario

from ..core.replay import RECORDINGS, load
from ..emulator.emu_support import make_assistant
from ..emulator.session_support import TOOLS, result

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


# --------------------------------------------------------------------------------------------
# Decoded as the SDK decodes: every frame of the recordings and of emulator streams
# --------------------------------------------------------------------------------------------


def _anatomy(value: Any, path: str = "$") -> list[tuple[str, type]]:
    """Every value's exact type, by path, nested models' fields and extra keys included."""
    found: list[tuple[str, type]] = [(path, type(value))]
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            found += _anatomy(getattr(value, name), f"{path}.{name}")
        for key, item in (value.model_extra or {}).items():
            found += _anatomy(item, f"{path}.{key}")
    elif isinstance(value, dict):
        for key, item in value.items():
            found += _anatomy(item, f"{path}[{key!r}]")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _anatomy(item, f"{path}[{index}]")
    return found


def _assert_same(ours: Any, theirs: Any, where: str) -> None:
    # (A constructed value of another type than declared is dumped as it is, with a warning.)
    assert ours.model_dump(warnings=False) == theirs.model_dump(warnings=False), where
    assert _anatomy(ours) == _anatomy(theirs), where


def _sdk_event(name: str, data: str) -> Any:
    """What the SDK's ``AsyncStream`` yields for an Assistants frame: ``_process_response_data``
    of a client without strict validation, ``construct_type`` against the whole union."""
    return construct_type(
        value={"data": json.loads(data), "event": name}, type_=AssistantStreamEvent
    )


def _sdk_session_event(data: str) -> Any:
    """The same for an agent-session frame (``stream_mode="events"``: the data is the event)."""
    return construct_type(value=json.loads(data), type_=AgentSessionEvent)


def _assert_decoded_as_the_sdk_decodes(body: bytes, where: str) -> int:
    """Every frame of ``body`` (framed by the SDK's own decoder) built as the SDK builds it."""
    count = 0
    for sse in SSEDecoder().iter_bytes(iter([body])):
        if sse.data.startswith("[DONE]"):
            break
        assert sse.event is not None
        _assert_same(build_event(sse.event, sse.data), _sdk_event(sse.event, sse.data), where)
        count += 1
    return count


def _recorded_bodies() -> list[tuple[str, bytes]]:
    return [
        (f"{path.name}#{index}", "".join(entry["ResponseBody"]).encode())
        for path in sorted(RECORDINGS.glob("*.json"))
        for index, entry in enumerate(load(path.name))
        if isinstance(entry["ResponseBody"], list)
    ]


@pytest.mark.parametrize(("where", "body"), _recorded_bodies(), ids=lambda v: str(v)[:40])
def test_every_recorded_frame_is_built_as_the_sdk_builds_it(where: str, body: bytes) -> None:
    assert _assert_decoded_as_the_sdk_decodes(body, where) > 0


async def _read(response: Any) -> bytes:
    return b"".join([chunk async for chunk in response.iter_bytes()])


@pytest.mark.anyio
async def test_every_emulator_frame_is_built_as_the_sdk_builds_it(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    runs = openai_client.beta.threads.runs
    assistant_id = await make_assistant(openai_client)
    emulator.enqueue(
        Scenario()
        .tool_round([("get_weather", {"city": "Paris"}), ("get_rain", {"city": "Rome"})])
        .reply("Sunny, no rain.")
    )
    emulator.enqueue(Scenario().fail("rate_limit_exceeded", "Slow down."))
    bodies: list[bytes] = []
    for _ in range(2):
        thread = await openai_client.beta.threads.create(
            messages=[{"role": "user", "content": "?"}]
        )
        async with runs.with_streaming_response.create(
            thread_id=thread.id, assistant_id=assistant_id, stream=True
        ) as response:
            bodies.append(await _read(response))
    # The tool round's requires_action, answered: the stream of the submission too.
    run = next(
        build_event(name, data).data
        for name, data in SSEParser().feed(bodies[0])
        if name == "thread.run.requires_action"
    )
    outputs: list[ToolOutput] = [
        {"tool_call_id": call.id, "output": "ok"}
        for call in run.required_action.submit_tool_outputs.tool_calls
    ]
    async with runs.with_streaming_response.submit_tool_outputs(
        run_id=run.id, thread_id=run.thread_id, tool_outputs=outputs, stream=True
    ) as response:
        bodies.append(await _read(response))
    names = [name for body in bodies for name, _ in SSEParser().feed(body)]
    assert {"thread.run.requires_action", "thread.run.completed", "thread.run.failed"} <= set(names)
    for index, body in enumerate(bodies):
        assert _assert_decoded_as_the_sdk_decodes(body, f"stream {index}") > 0


@pytest.mark.anyio
async def test_every_emulator_session_frame_is_built_as_the_sdk_builds_it(
    openai_client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    sessions = openai_client.beta.agents.sessions
    emulator.enqueue_turn(
        TurnScenario().tool_round([("get_weather", {"city": "Paris"})]).reply("Sunny.")
    )
    frames: list[str] = []
    parser = SSEParser()
    # Read to its end (the creation stream ends with its turn): no generator left unfinished.
    async with sessions.with_streaming_response.create(  # type: ignore[call-overload]
        stream=True,
        environment={"type": "none"},
        agent={"model": "gpt-5", "tools": TOOLS},
        input="The weather in Paris?",
    ) as response:
        async for chunk in response.iter_bytes():
            for _, data in parser.feed(chunk):
                frames.append(data)
                event = build_session_event(data)
                if event.type == lifecycle.SESSION_REQUIRES_ACTION:
                    for action in event.session.required_actions:
                        answer = [result(action)]
                        await sessions.events.create(event.session.id, events=answer)  # type: ignore[arg-type]
    types = {json.loads(data)["type"] for data in frames}
    assert {"agent.session.requires_action", "agent.session.turn.completed"} <= types
    assert types <= set(SESSION_EVENT_TYPES)
    for data in frames:
        _assert_same(build_session_event(data), _sdk_session_event(data), data[:80])


# --------------------------------------------------------------------------------------------
# The tolerant tier: runs with ``instructions: null`` validated, not constructed
# --------------------------------------------------------------------------------------------

#: Validation records every key it is given in ``model_fields_set``, extra keys included; the
#: SDK's ``construct`` records only the fields its type declares. A key no SDK type declares,
#: added to a payload, tells which of the two built it.
WITNESS = "runmachine_witness"


def _witnessed(data: str) -> str:
    assert data.startswith("{")
    return "{" + json.dumps(WITNESS) + ": 1, " + data[1:]


def _recorded_run_events() -> list[tuple[str, str]]:
    return [
        (name, data)
        for _, body in _recorded_bodies()
        for name, data in SSEParser().feed(body)
        if name in lifecycle.LIFECYCLE_EVENTS
    ]


def test_recorded_run_events_take_the_tolerant_tier_not_construct() -> None:
    events = _recorded_run_events()
    assert {name for name, _ in events} >= {"thread.run.created", "thread.run.requires_action"}
    for name, data in events:
        assert '"instructions":null' in data  # what the SDK's strict typing refuses
        ours, theirs = build_event(name, _witnessed(data)), _sdk_event(name, _witnessed(data))
        _assert_same(ours, theirs, name)
        assert type(ours.data) is Run and ours.data.instructions is None
        assert WITNESS in ours.data.model_fields_set, f"{name} was constructed"
        assert WITNESS not in theirs.data.model_fields_set  # the witness tells them apart
        if name == "thread.run.requires_action":
            action = ours.data.required_action
            assert type(action) is RequiredAction
            call = action.submit_tool_outputs.tool_calls[0]
            assert type(call) is RequiredActionFunctionToolCall and type(call.function) is Function


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every value nested in a JSON value."""
    found = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


def _nulled(payload: Any, path: tuple[Any, ...]) -> Any:
    copy = json.loads(json.dumps(payload))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = None
    return copy


def test_null_anywhere_in_a_recorded_run_is_read_as_the_sdk_reads_it() -> None:
    # Nulls in the models the SDK constructs (the tolerant tier), in the unions it validates
    # whole (constructed here as there), in lists and dicts: each built as the SDK builds it.
    name, data = next(e for e in _recorded_run_events() if e[0] == "thread.run.requires_action")
    payload = json.loads(data)
    paths = _paths(payload)
    assert ("required_action", "submit_tool_outputs", "tool_calls", 0, "function") in paths
    for path in paths:
        nulled = json.dumps(_nulled(payload, path))
        _assert_same(build_event(name, nulled), _sdk_event(name, nulled), f"null at {path}")


@pytest.mark.parametrize(
    ("recorded", "refused"),
    [
        (r'"status":"requires_action"', '"status":"paused_for_review"'),  # an unknown status
        (r'"created_at":(\d+)', r'"created_at":"\1"'),  # a string for an int: kept, not coerced
    ],
)
def test_a_run_the_tolerant_tier_refuses_is_constructed_as_the_sdk_constructs_it(
    recorded: str, refused: str
) -> None:
    name, data = next(e for e in _recorded_run_events() if e[0] == "thread.run.requires_action")
    data, replaced = re.subn(recorded, refused, _witnessed(data), count=1)
    assert replaced == 1
    ours = build_event(name, data)
    _assert_same(ours, _sdk_event(name, data), name)
    assert WITNESS not in ours.data.model_fields_set  # constructed, as the SDK does


def test_every_sdk_event_type_has_a_tolerant_validator() -> None:
    # An SDK upgrade that brings a schema the tier cannot read (a date, a tuple) shows here,
    # not as run events silently constructed again.
    for cls in [*EVENT_TYPES.values(), *SESSION_EVENT_TYPES.values()]:
        assert _tolerant_validator(cls) is not None, cls.__name__


# --------------------------------------------------------------------------------------------
# Hostile data: a StreamError naming the event and what is wrong
# --------------------------------------------------------------------------------------------

HOSTILE = [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"a":' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
    ('{}, "event": "thread.run.completed"', "not JSON"),  # smuggles a key into the envelope
    ('{"id": "run_1", "instructions": null', "not JSON"),
    ('{"id": "run_1", "error": {"message": "boom"}}', "error event: boom"),
]


@pytest.mark.parametrize(("data", "message"), HOSTILE, ids=lambda v: str(v)[:24])
@pytest.mark.parametrize("name", ["thread.run.requires_action", "thread.message.delta"])
def test_hostile_data_is_a_stream_error(name: str, data: str, message: str) -> None:
    with pytest.raises(StreamError, match=re.escape(message)) as raised:
        build_event(name, data)
    assert raised.value.event == name


@pytest.mark.parametrize(("data", "message"), HOSTILE[:4], ids=lambda v: str(v)[:24])
def test_hostile_session_data_is_a_stream_error(data: str, message: str) -> None:
    with pytest.raises(StreamError, match=f"a session event carried .*{message}"):
        build_session_event(data)


#: Session frames whose data starts as the hot path reads it (``{"type":"``) but that it must
#: not decide: the built event is the one the SDK builds, as if that path had not been tried.
MISLEADING_SESSION_FRAMES = {
    # a second "type" key: JSON's last one wins, in the SDK's decoding and here
    "two types": '{"type":"agent.session.turn.output_text.delta","event_id":"e1",'
    '"type":"agent.session.idle","session":{"id":"s1"}}',
    # NaN is not JSON for pydantic-core, but Python's decoder (the SDK's) reads it
    "NaN": '{"type":"agent.session.turn.output_text.delta","event_id":"e2","session_id":"s",'
    '"turn_id":"t","item_id":"i","output_index":0,"content_index":0,"delta":"x",'
    '"sequence_number":NaN}',
    # an escaped type name
    "escaped type": '{"type":"agent.session.turn.output_text.delt\\u0061","event_id":"e3",'
    '"session_id":"s","turn_id":"t","item_id":"i","output_index":0,"content_index":0,'
    '"delta":"x","sequence_number":1}',
    # a payload the declared type refuses (tolerated, or constructed, as the SDK constructs)
    "refused": '{"type":"agent.session.turn.output_text.delta","event_id":"e4","delta":7}',
}


@pytest.mark.parametrize(
    "data", MISLEADING_SESSION_FRAMES.values(), ids=list(MISLEADING_SESSION_FRAMES)
)
def test_a_session_frame_the_hot_path_cannot_decide_is_built_as_the_sdk_builds_it(
    data: str,
) -> None:
    ours, theirs = build_session_event(data), _sdk_session_event(data)
    assert type(ours) is type(theirs)
    # (repr: NaN is no equal of itself)
    assert repr(ours.model_dump(warnings=False)) == repr(theirs.model_dump(warnings=False))
    assert _anatomy(ours) == _anatomy(theirs)
