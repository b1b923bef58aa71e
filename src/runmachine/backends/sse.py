"""Server-sent events off the SDK's HTTP layer, decoded into the SDK's event types by name.

The SDK validates every event against a 24-member union and, when that fails, builds the
variant the event names with its pure-Python, non-validating ``construct``. This module reads
the ``event:`` line first and builds only the type it names, each time giving what the SDK's
own decoding gives for the same bytes, in one pydantic-core call on the raw data (about ten
times cheaper than a ``json.loads`` and the SDK's construction) whenever it can:

- validated as declared: the payload is typed as the SDK class says;
- validated by a tolerant validator, derived once per class from the SDK class's own schema:
  every field of every model the SDK would construct reads ``null`` as ``construct`` reads it
  (the field's default, ``None`` when it has none) and every other value must be exactly of its
  declared type (unions are validated whole, as the SDK validates them). This is how every run
  event reads: the API sends ``instructions: null``, which the SDK's ``Run`` types as a string.
  The instances are of the exact SDK classes, nested ones included;
- else (a status this SDK version does not know, a value of another type, ...) built with the
  SDK's own ``construct``, so nothing the SDK would accept is refused here.

What cannot be decoded at all (bytes that are not UTF-8, data that is not JSON or is nested too
deeply, a payload that is not an object) is a ``StreamError``, which the driver treats as a
lost stream.

Line endings (LF, CR, CRLF), comments, multi-line data and ``[DONE]`` follow the SDK's decoder.
The parser is linear in the bytes it is fed, however they are split. No I/O happens here: the
backend hands in byte chunks.
"""

from __future__ import annotations

import functools
import json
import typing
from collections.abc import Callable
from typing import Any

import openai
from openai.types.beta import AssistantStreamEvent
from openai.types.beta import assistant_stream_event as ase
from openai.types.beta.agent_session_event import AgentSessionEvent
from pydantic import BaseModel, ValidationError
from pydantic_core import SchemaError, SchemaValidator, core_schema

from runmachine import lifecycle

__all__ = [
    "DONE",
    "EVENT_TYPES",
    "SESSION_EVENT_TYPES",
    "SSEParser",
    "StreamError",
    "build_event",
    "build_session_event",
]

DONE = "[DONE]"


def _event_types() -> dict[str, Any]:
    """Each SDK event class by the event name its ``event`` field declares."""
    union = typing.get_args(AssistantStreamEvent)[0]
    found: dict[str, Any] = {}
    for cls in typing.get_args(union):
        (name,) = typing.get_args(cls.model_fields["event"].annotation)
        found[name] = cls
    return found


EVENT_TYPES: dict[str, Any] = _event_types()
if set(EVENT_TYPES) != lifecycle.LIFECYCLE_EVENTS | lifecycle.CONTENT_EVENTS:  # pragma: no cover
    raise ImportError(
        "the openai SDK's stream events differ from runmachine's lifecycle table: "
        f"{sorted(set(EVENT_TYPES) ^ (lifecycle.LIFECYCLE_EVENTS | lifecycle.CONTENT_EVENTS))}"
    )


def _session_event_types() -> dict[str, Any]:
    """Each agent-session event class by the ``type`` its payload declares."""
    union = typing.get_args(AgentSessionEvent)[0]
    found: dict[str, Any] = {}
    for cls in typing.get_args(union):
        (name,) = typing.get_args(cls.model_fields["type"].annotation)
        found[name] = cls
    return found


SESSION_EVENT_TYPES: dict[str, Any] = _session_event_types()
_TURN_EVENTS = lifecycle.TURN_LIFECYCLE_EVENTS | lifecycle.TURN_CONTENT_EVENTS
if set(SESSION_EVENT_TYPES) != _TURN_EVENTS:  # pragma: no cover
    raise ImportError(
        "the openai SDK's agent-session events differ from runmachine's turn table: "
        f"{sorted(set(SESSION_EVENT_TYPES) ^ _TURN_EVENTS)}"
    )

_PREFIXES: dict[str, str] = {
    name: '{"event":' + json.dumps(name) + ',"data":' for name in EVENT_TYPES
}


class StreamError(Exception):
    """The stream carried something that cannot be decoded, or the server reported an error."""

    def __init__(self, message: str, *, event: str | None = None, body: Any = None) -> None:
        self.event = event
        self.body = body
        super().__init__(message)


# --------------------------------------------------------------------------------------------
# The tolerant tier
# --------------------------------------------------------------------------------------------

#: Schemas the tolerant validator keeps as declared: scalars, and unions (the SDK validates a
#: union whole before it constructs anything; a payload refused there goes to ``construct``).
_AS_DECLARED = frozenset(
    {"any", "bool", "float", "int", "literal", "none", "str", "tagged-union", "union"}
)
#: The suffix that keeps a tolerant definition apart from the SDK's own of the same ``ref``.
_TOLERANT_REF = ":tolerant"


class _Unsupported(Exception):
    """A schema the tolerant tier cannot read as the SDK's ``construct`` reads it."""


class _Shell:
    """What a tolerant model is validated into. pydantic-core validates a model schema that
    names an SDK class with that class's own validator (which refuses the ``null``), so the
    tolerant schema names this bare holder instead, and ``_adopt`` moves its state onto an
    instance of the SDK class."""

    __slots__ = (
        "__dict__",
        "__pydantic_extra__",
        "__pydantic_fields_set__",
        "__pydantic_private__",
    )
    __pydantic_extra__: dict[str, Any] | None
    __pydantic_fields_set__: set[str]


def _adopt(cls: type[BaseModel]) -> Callable[[_Shell], BaseModel]:
    """An instance of ``cls`` holding what was validated: the four attributes pydantic-core and
    the SDK's ``construct`` both set, and no ``__init__``, as neither calls one."""
    new = cls.__new__
    setattr_ = object.__setattr__

    def adopt(shell: _Shell) -> BaseModel:
        model = new(cls)
        setattr_(model, "__dict__", shell.__dict__)
        setattr_(model, "__pydantic_extra__", shell.__pydantic_extra__)
        setattr_(model, "__pydantic_fields_set__", shell.__pydantic_fields_set__)
        setattr_(model, "__pydantic_private__", None)
        return model

    return adopt


def _nullable(schema: Any) -> Any:
    """A field's schema reading ``null`` as the SDK's ``construct`` does: the field's default,
    ``None`` when it has none. (A field with another default keeps refusing ``null``.)"""
    kind = schema["type"]
    if kind == "nullable":
        return schema
    if kind == "default":
        if "default" in schema and schema["default"] is None:
            return {**schema, "schema": _nullable(schema["schema"])}
        return schema
    return core_schema.nullable_schema(schema)


def _tolerant(schema: Any, *, nullable: bool = True) -> Any:
    """``schema`` (a pydantic-core schema of an SDK model) read as the SDK's ``construct`` reads
    a payload: models, and the lists and dicts of them, with every field tolerating ``null``
    (not the outermost model's own fields when ``nullable`` is false); anything else as
    declared. Raises ``_Unsupported`` where ``construct`` would read a value otherwise than
    strict validation does (dates, tuples, models that run code when validated, ...)."""
    kind = schema["type"]
    if kind in _AS_DECLARED:
        return schema
    if kind == "definition-ref":
        return {**schema, "schema_ref": schema["schema_ref"] + _TOLERANT_REF}
    if kind == "definitions":
        # The SDK's own definitions stay, for the unions kept as declared.
        definitions = schema["definitions"]
        tolerant = [{**_tolerant(d), "ref": d["ref"] + _TOLERANT_REF} for d in definitions]
        body = _tolerant(schema["schema"], nullable=nullable)
        return {**schema, "schema": body, "definitions": definitions + tolerant}
    out: dict[str, Any]
    if kind == "model":
        if schema.get("custom_init") or schema.get("root_model") or schema.get("post_init"):
            raise _Unsupported(f"{schema['cls'].__name__} runs code when validated")
        inner = {key: value for key, value in schema.items() if key != "ref"}
        inner.update(cls=_Shell, schema=_tolerant(schema["schema"], nullable=nullable))
        out = dict(core_schema.no_info_after_validator_function(_adopt(schema["cls"]), inner))
    elif kind == "model-fields":
        fields = {}
        for name, field in schema["fields"].items():
            value = _tolerant(field["schema"])
            fields[name] = {**field, "schema": _nullable(value) if nullable else value}
        out = {**schema, "fields": fields}
    elif kind in ("default", "nullable"):
        out = {**schema, "schema": _tolerant(schema["schema"])}
    elif kind == "list":
        out = {**schema, "items_schema": _tolerant(schema["items_schema"])}
    elif kind == "dict":
        out = {**schema, "values_schema": _tolerant(schema["values_schema"])}
    else:
        raise _Unsupported(f"a {kind!r} schema")
    if "ref" in schema:
        out["ref"] = schema["ref"] + _TOLERANT_REF
    return out


@functools.cache
def _tolerant_validator(cls: type[BaseModel]) -> SchemaValidator | None:
    """The tolerant validator of the SDK event class ``cls``, derived once; ``None`` when its
    schema has something the tier cannot read as ``construct`` does (such payloads are
    constructed). The event's own fields stay as declared: ``data: null`` is no event."""
    cls.model_rebuild()  # the SDK defers building its models' schemas to their first use
    try:
        return SchemaValidator(_tolerant(cls.__pydantic_core_schema__, nullable=False))
    except (_Unsupported, SchemaError):
        return None


def _tolerated(cls: type[BaseModel], data: str) -> Any:
    """``data`` (JSON) validated by the tolerant validator of ``cls``; ``None`` if refused.
    Strictly: ``construct`` keeps a value of another type as it is, so it is left to it."""
    validator = _tolerant_validator(cls)
    if validator is None:
        return None
    try:
        return validator.validate_json(data, strict=True)
    except ValidationError:
        return None


def _validated(cls: type[BaseModel], name: str, data: str) -> Any:
    """The event, validated in pydantic-core as declared or by the tolerant validator; ``None``
    when both refuse it. Either gives what the SDK gives whenever it accepts the payload, so
    the order is only a matter of cost: a run event (which the API sends with ``instructions:
    null``) goes to the tolerant validator first, the others (deltas: the hot path) to the
    declared types first."""
    text = _PREFIXES[name] + data + "}"
    tolerant_first = name in lifecycle.LIFECYCLE_EVENTS
    if tolerant_first and (event := _tolerated(cls, text)) is not None:
        return event
    try:
        return cls.model_validate_json(text)
    except ValidationError:
        return None if tolerant_first else _tolerated(cls, text)


class SSEParser:
    """Incremental SSE decoder: ``feed(chunk)`` returns the complete ``(event, data)`` pairs.

    Each byte is looked at a bounded number of times: line endings are normalised per chunk, and
    the search for the blank line that ends an event resumes where the last one stopped.
    """

    __slots__ = ("_buffer", "_cr", "_scan")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._cr = False
        self._scan = 0

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if b"\r" in chunk:
            # A CR at the very end may be the first half of a CRLF split across chunks.
            if chunk.endswith(b"\r"):
                chunk = chunk[:-1]
                self._cr = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer
        buffer += chunk
        out: list[tuple[str | None, str]] = []
        pos = 0
        scan = self._scan
        while True:
            end = buffer.find(b"\n\n", scan)
            if end < 0:
                break
            if end > pos:
                parsed = _parse_block(bytes(buffer[pos:end]))
                if parsed is not None:
                    out.append(parsed)
            pos = scan = end + 2
        if pos:
            del buffer[:pos]
            scan -= pos
        # Next time, resume one byte early: the blank line may straddle the chunks.
        self._scan = max(len(buffer) - 1, scan, 0)
        return out

    def close(self) -> list[tuple[str | None, str]]:
        """Dispatch what is left when the body ends (an event not followed by a blank line)."""
        rest = bytes(self._buffer).rstrip(b"\r\n")
        self._buffer = bytearray()
        self._scan = 0
        self._cr = False
        parsed = _parse_block(rest) if rest.strip() else None
        return [parsed] if parsed is not None else []


def _parse_block(block: bytes) -> tuple[str | None, str] | None:
    event: str | None = None
    data: list[str] = []
    for raw in block.split(b"\n"):
        if not raw or raw[:1] == b":":
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StreamError(
                f"the stream carried bytes that are not UTF-8 ({exc.reason} at byte {exc.start} "
                f"of the line {raw[:60]!r})"
            ) from exc
        field, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if event is None and not data:
        return None
    return event, "\n".join(data)


def _loads(data: str, what: str, name: str | None) -> Any:
    """``data`` decoded as JSON, or a ``StreamError`` saying why it cannot be (``what`` carried
    it): not JSON, or nested deeper than Python's JSON decoder goes."""
    try:
        return json.loads(data)
    except ValueError as exc:
        message = f"{what} carried data that is not JSON: {data[:80]!r}"
        raise StreamError(message, event=name) from exc
    except RecursionError as exc:
        message = f"{what} carried JSON nested too deeply to decode: {data[:80]!r}"
        raise StreamError(message, event=name) from exc


def build_event(name: str | None, data: str) -> Any:
    """The SDK event for one SSE event, built as the SDK builds it but only for the named type.

    Returns ``None`` for ``[DONE]``. Raises ``StreamError`` for data that is not JSON (or is
    nested too deeply to decode), for a known event whose data is not an object (``data:
    null``), and for an error event or an ``{"error": ...}`` payload (the SDK raises
    ``APIError`` for the latter).
    """
    if data.startswith(DONE):
        return None
    cls = EVENT_TYPES.get(name) if name is not None else None
    if (
        cls is not None
        and name is not None
        and name != lifecycle.ERROR_EVENT
        and '"error"' not in data
    ):
        # One validation in pydantic-core, no intermediate dicts (tiers 1 and 2).
        event = _validated(cls, name, data)
        if event is not None:
            return event
    payload = _loads(data, f"event {name!r}", name)
    if name == lifecycle.ERROR_EVENT or (isinstance(payload, dict) and payload.get("error")):
        inner = (
            payload.get("error") if isinstance(payload, dict) and "error" in payload else payload
        )
        message = inner.get("message") if isinstance(inner, dict) else None
        raise StreamError(
            f"the server sent an error event: {message or 'an error occurred during streaming'}",
            event=name,
            body=inner,
        )
    if cls is None:
        # An event name this version does not know: passed along, as the SDK does.
        return ase.ThreadCreated.construct(event=name, data=payload)
    if not isinstance(payload, dict):
        raise StreamError(
            f"event {name!r} carried {type(payload).__name__} data, not an object: {data[:80]!r}",
            event=name,
        )
    return cls.construct(event=name, data=payload)


#: How a session event's data starts when its ``type`` comes first, as servers write it.
_TYPE_FIRST = '{"type":"'


def build_session_event(data: str) -> Any:
    """The SDK event for one frame of an agent-session stream (its ``type`` is in the data).

    Returns ``None`` for ``[DONE]``. Built in the three tiers of the module docstring (validated,
    tolerant, the SDK's ``construct``); a ``type`` this SDK does not declare
    (``agent.session.budget_reached``) is passed along as a plain SDK model. ``error`` events
    are values here, as the SDK yields them. Raises ``StreamError`` for data that is not JSON
    (or is nested too deeply to decode) or not an object with a ``type``.
    """
    if data.startswith(DONE):
        return None
    if data.startswith(_TYPE_FIRST):
        # The hot path (text deltas): the type as servers write it, first; one validation in
        # pydantic-core, no intermediate dicts. Whatever it refuses (another type after all, a
        # payload to tolerate, not JSON) takes the path below, as if this one had not been tried.
        start = len(_TYPE_FIRST)
        cls = SESSION_EVENT_TYPES.get(data[start : data.find('"', start)])
        if cls is not None:
            try:
                return cls.model_validate_json(data)
            except ValidationError:
                pass
    payload = _loads(data, "a session event", None)
    name = payload.get("type") if isinstance(payload, dict) else None
    if not isinstance(name, str):
        raise StreamError(f"a session event carried no type: {data[:80]!r}", event=None)
    cls = SESSION_EVENT_TYPES.get(name)
    if cls is None:
        return openai.BaseModel.construct(**payload)
    try:
        return cls.model_validate(payload)
    except ValidationError:
        pass
    event = _tolerated(cls, data)
    return event if event is not None else cls.construct(**payload)
