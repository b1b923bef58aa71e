"""Function tools: the ``@tool`` decorator, JSON schemas from type hints, and calling a tool safely.

A tool is a plain or ``async`` function (or method of a ``RunMachine`` subclass). Its JSON schema
comes from its type hints and its description from its docstring, through pydantic (installed with
the openai SDK). Calling a tool never raises for bad input: arguments that are not JSON, that do
not match the schema, or that name an unknown tool become a ``ToolError`` that the driver turns
into a structured error output.
"""

from __future__ import annotations

import functools
import inspect
import json
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

import attrs
import pydantic
from openai.types.beta import FunctionToolParam

from runmachine.errors import ToolError

__all__ = ["ToolError", "ToolSpec", "encode_output", "tool"]

F = TypeVar("F", bound=Callable[..., Any])

_TOOL_ATTR = "__runmachine_tool__"


@attrs.frozen
class ToolSpec:
    """A registered tool: its name, schema, limits and the function that implements it."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    func: Callable[..., Any] = attrs.field(repr=False)
    timeout: float | None = None
    idempotent: bool = True
    is_method: bool = False
    arguments_model: type[pydantic.BaseModel] = attrs.field(repr=False, default=pydantic.BaseModel)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)

    def definition(self) -> FunctionToolParam:
        """The entry for ``tools=[...]`` of ``assistants.create``."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }

    def parse_arguments(self, arguments: str) -> dict[str, Any]:
        """Decode and validate the model's argument string; raises ``ToolError``."""
        try:
            raw = json.loads(arguments) if arguments.strip() else {}
        except RecursionError:
            raise ToolError(
                "invalid_json", f"arguments for {self.name} are nested too deeply to decode"
            ) from None
        except ValueError as exc:
            raise ToolError(
                "invalid_json", f"arguments for {self.name} are not valid JSON: {exc}"
            ) from exc
        if not isinstance(raw, dict):
            raise ToolError(
                "invalid_arguments",
                f"arguments for {self.name} must be a JSON object, got {type(raw).__name__}",
            )
        try:
            model = self.arguments_model.model_validate(raw)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ToolError(
                "invalid_arguments",
                f"arguments for {self.name} do not match its schema: {problems}",
            ) from exc
        return {name: getattr(model, name) for name in type(model).model_fields}

    def bind(self, owner: object) -> Callable[..., Any]:
        """The callable to invoke: bound to ``owner`` for methods of a ``RunMachine`` subclass."""
        return functools.partial(self.func, owner) if self.is_method else self.func


def _spec_for(
    func: Callable[..., Any],
    *,
    name: str | None,
    description: str | None,
    timeout: float | None,
    idempotent: bool,
) -> ToolSpec:
    signature = inspect.signature(func)
    params = list(signature.parameters.values())
    is_method = bool(params) and params[0].name == "self"
    if is_method:
        params = params[1:]
    tool_name = name or func.__name__
    where = f"tool {tool_name!r} ({func.__module__}.{func.__qualname__})"
    hints = _type_hints(func, where)
    fields: dict[str, Any] = {}
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"{where}: *args and **kwargs cannot be described")
        annotation = hints.get(param.name, Any)
        _check_describable(where, param.name, annotation)
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    try:
        model = pydantic.create_model(
            f"{func.__name__}_arguments",
            __config__=pydantic.ConfigDict(extra="forbid"),
            **fields,
        )
        schema = model.model_json_schema()
    except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError) as exc:
        raise TypeError(f"{where}: its parameters cannot be described as JSON: {exc}") from None
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    doc = inspect.getdoc(func) or ""
    return ToolSpec(
        name=name or func.__name__,
        description=description if description is not None else doc.strip(),
        parameters=schema,
        func=func,
        timeout=timeout,
        idempotent=idempotent,
        is_method=is_method,
        arguments_model=model,
    )


def _type_hints(func: Callable[..., Any], where: str) -> dict[str, Any]:
    """The resolved annotations; an unresolvable one is an error naming its parameter."""
    try:
        return typing.get_type_hints(func, include_extras=True)
    except Exception:
        pass
    hints: dict[str, Any] = {}
    namespace = getattr(func, "__globals__", {})
    for param, annotation in getattr(func, "__annotations__", {}).items():
        if param == "return":
            continue
        for _ in range(3):  # a quoted annotation under ``from __future__ import annotations``
            if not isinstance(annotation, str):
                break
            try:
                annotation = eval(annotation, namespace)  # as typing.get_type_hints does
            except Exception as exc:
                raise TypeError(
                    f"{where}: the type of parameter {param!r} ({annotation}) cannot be "
                    f"resolved ({type(exc).__name__}: {exc}); import the names it uses at the "
                    "module's top level"
                ) from None
        hints[param] = annotation
    return hints


def _check_describable(where: str, param: str, annotation: Any) -> None:
    """The parameter's type has a JSON schema, or the error names the tool and the parameter."""
    try:
        pydantic.TypeAdapter(annotation).json_schema()
    except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError):
        shown = (
            f"{annotation.__module__}.{annotation.__qualname__}"
            if isinstance(annotation, type)
            else repr(annotation)
        )
        raise TypeError(
            f"{where}: parameter {param!r} has type {shown}, which has no JSON schema; use "
            "types that JSON describes (str, int, float, bool, None, list, dict, Literal, "
            "enums, dataclasses, TypedDicts, pydantic models)"
        ) from None


@overload
def tool(func: F, /) -> F: ...


@overload
def tool(
    name: str,
    /,
    *,
    description: str | None = None,
    timeout: float | None = None,
    idempotent: bool = True,
) -> Callable[[F], F]: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    idempotent: bool = True,
) -> Callable[[F], F]: ...


def tool(
    func: F | str | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    idempotent: bool = True,
) -> F | Callable[[F], F]:
    """Mark a function as a tool the model may call.

    ``name`` (also accepted as the only positional argument, ``@tool("name")``) defaults to the
    function's name and ``description`` to its docstring. ``timeout`` (seconds) bounds one call;
    past it the call gets an error output. ``idempotent=False`` marks a tool that must never run
    twice for one call. A parameter whose type has no JSON schema is refused here, naming the
    tool and the parameter.
    """
    if isinstance(func, str):
        if name is not None:
            raise TypeError(f"@tool({func!r}, name={name!r}): give the tool's name once")
        name, func = func, None
    if func is not None and not callable(func):
        raise TypeError(f"@tool needs a function, got {type(func).__name__} {func!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise TypeError(f"@tool(timeout=...) must be a number of seconds > 0, got {timeout!r}")

    def mark(f: F) -> F:
        spec = _spec_for(
            f, name=name, description=description, timeout=timeout, idempotent=idempotent
        )
        setattr(f, _TOOL_ATTR, spec)
        return f

    if func is not None:
        return mark(func)
    return mark


def spec_of(obj: Any) -> ToolSpec | None:
    """The ``ToolSpec`` of a function marked with ``@tool``, or ``None``."""
    spec = getattr(obj, _TOOL_ATTR, None)
    return spec if isinstance(spec, ToolSpec) else None


def as_spec(obj: Any) -> ToolSpec:
    """A ``ToolSpec`` for a ``@tool`` function, or for a plain function (described on the fly)."""
    if isinstance(obj, ToolSpec):
        return obj
    spec = spec_of(obj)
    if spec is not None:
        return spec
    if callable(obj):
        return _spec_for(obj, name=None, description=None, timeout=None, idempotent=True)
    raise TypeError(f"not a tool: {obj!r}")


def encode_output(value: Any) -> str:
    """A tool's return value as the output string: ``str`` as is, anything else as JSON.

    Raises ``ToolError("invalid_output")`` for what cannot be sent: a string that is not valid
    Unicode text (a lone surrogate), NaN or infinity (not JSON), a structure too deep to encode.
    """
    text: str
    if isinstance(value, str):
        text = value
    elif isinstance(value, pydantic.BaseModel):
        text = value.model_dump_json()
    else:
        try:
            text = json.dumps(value, default=_json_default, ensure_ascii=False, allow_nan=False)
        except ValueError as exc:
            raise ToolError(
                "invalid_output", f"the tool returned a value that is not JSON: {exc}"
            ) from exc
        except RecursionError:
            raise ToolError(
                "invalid_output", "the tool returned a structure nested too deeply to encode"
            ) from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ToolError(
            "invalid_output",
            f"the tool's output is not valid text: {exc.reason} at index {exc.start} "
            f"({text[max(exc.start - 10, 0) : exc.end + 10]!r})",
        ) from exc
    return text


def _json_default(value: Any) -> Any:
    if attrs.has(type(value)):
        return attrs.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def error_output(kind: str, message: str, tool_name: str | None) -> str:
    """The structured error output submitted for a call that failed."""
    return json.dumps({"error": {"type": kind, "message": message, "tool": tool_name}})
