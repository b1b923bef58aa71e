"""``runmachine.tools``: schemas from type hints, safe argument parsing, outputs to send."""

from __future__ import annotations

import json
import socket
from typing import Literal

import pytest

from runmachine import RunMachine, tool
from runmachine.errors import ToolError
from runmachine.tools import as_spec, encode_output, spec_of


def test_a_schema_comes_from_the_type_hints_and_the_docstring() -> None:
    @tool
    def weather(city: str, unit: Literal["c", "f"] = "c", days: int = 1) -> str:
        """The forecast for a city."""
        return city

    spec = spec_of(weather)
    assert spec is not None
    definition = spec.definition()
    assert definition["function"]["name"] == "weather"
    assert definition["function"].get("description") == "The forecast for a city."
    parameters = definition["function"].get("parameters", {})
    assert parameters["required"] == ["city"]
    assert parameters["properties"]["unit"] == {
        "enum": ["c", "f"],
        "type": "string",
        "default": "c",
    }


def test_a_name_given_positionally_names_the_tool() -> None:
    @tool("get_weather")
    def weather(city: str) -> str:
        return city

    spec = spec_of(weather)
    assert spec is not None and spec.name == "get_weather"


def test_a_tool_decorator_given_something_else_says_what_it_needs() -> None:
    with pytest.raises(TypeError, match=r"@tool needs a function, got int 3"):
        tool(3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"timeout=\.\.\.\) must be a number of seconds > 0"):
        tool(timeout=0)


def test_an_unresolvable_hint_names_the_tool_and_the_parameter() -> None:
    def weird_arguments(when: "datetime") -> str:  # type: ignore[name-defined]  # noqa: F821, UP037
        return ""

    with pytest.raises(TypeError) as info:
        tool(weird_arguments)
    message = str(info.value)
    assert "tool 'weird_arguments'" in message
    assert "parameter 'when' (datetime) cannot be resolved" in message
    assert "model_rebuild" not in message


def test_a_type_without_a_json_schema_names_the_tool_and_the_parameter() -> None:
    with pytest.raises(TypeError) as info:

        class Net(RunMachine):
            @tool
            def connect(self, sock: socket.socket) -> str:
                return ""

    message = str(info.value)
    assert "tool 'connect'" in message and "Net.connect" in message
    assert "parameter 'sock' has type socket" in message
    assert "arbitrary_types_allowed" not in message


@pytest.mark.parametrize(
    ("arguments", "kind", "text"),
    [
        ("{not json", "invalid_json", "not valid JSON"),
        ("[1]", "invalid_arguments", "must be a JSON object, got list"),
        ('{"city": 3}', "invalid_arguments", "city: Input should be a valid string"),
        ('{"city": "x", "extra": 1}', "invalid_arguments", "extra: Extra inputs"),
        ("[" * 3000 + "]" * 3000, "invalid_json", "nested too deeply"),
    ],
)
def test_bad_arguments_are_a_tool_error_naming_the_problem(
    arguments: str, kind: str, text: str
) -> None:
    def weather(city: str) -> str:
        return city

    spec = as_spec(weather)
    with pytest.raises(ToolError) as info:
        spec.parse_arguments(arguments)
    assert info.value.kind == kind
    assert text in info.value.message


def test_an_output_is_text_as_is_and_anything_else_json() -> None:
    assert encode_output("plain") == "plain"
    assert json.loads(encode_output({"a": [1, 2.5], "b": None})) == {"a": [1, 2.5], "b": None}
    assert encode_output({"é": "ü"}) == '{"é": "ü"}'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (float("nan"), "not JSON"),
        ({"x": float("inf")}, "not JSON"),
        ("x\ud800y", "not valid text: surrogates not allowed at index 1"),
    ],
)
def test_an_output_that_cannot_be_sent_is_a_tool_error(value: object, text: str) -> None:
    with pytest.raises(ToolError) as info:
        encode_output(value)
    assert info.value.kind == "invalid_output"
    assert text in info.value.message
