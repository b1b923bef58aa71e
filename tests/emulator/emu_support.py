"""Helpers for the emulator's own tests: raw SSE capture, SDK setup, the OpenAPI schemas."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import httpx2
import openai

# Test data ships in the repository, so a fresh clone runs the suite on its own.
DATA = Path(__file__).resolve().parents[1] / "data"
RECORDINGS = DATA / "recordings"
OPENAPI = DATA / "openapi" / "openapi.yaml"

WEATHER_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_rain",
            "description": "Chance of rain",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "slow_report",
            "parameters": {"type": "object", "properties": {"verbose": {"type": "boolean"}}},
        },
    },
]


def parse_sse(text: str) -> list[tuple[str | None, str]]:
    """Split a raw SSE body into (event, data) pairs; comment lines are dropped."""
    events: list[tuple[str | None, str]] = []
    event: str | None = None
    data: list[str] = []
    for line in text.splitlines():
        if line == "":
            if event is not None or data:
                events.append((event, "\n".join(data)))
            event, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if event is not None or data:
        events.append((event, "\n".join(data)))
    return events


async def raw_post(base_url: str, path: str, body: dict[str, Any]) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(base_url + path, json=body)


async def raw_sse(base_url: str, path: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    """POST with ``stream: true`` and return every event with its data decoded."""
    response = await raw_post(base_url, path, {**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    out: list[tuple[str, Any]] = []
    for event, data in parse_sse(response.text):
        assert event is not None
        out.append((event, data if data == "[DONE]" else json.loads(data)))
    return out


async def raw_get(base_url: str, path: str) -> Any:
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.get(base_url + path)
    assert response.status_code == 200, response.text
    return response.json()


async def make_assistant(
    client: openai.AsyncOpenAI, tools: list[dict[str, Any]] | None = None
) -> str:
    assistant = await client.beta.assistants.create(
        model="gpt-4o",
        tools=WEATHER_TOOLS if tools is None else tools,  # type: ignore[arg-type]
    )
    return assistant.id


def collapse(names: list[str]) -> list[str]:
    """Event names with runs of delta events collapsed to one."""
    out: list[str] = []
    for name in names:
        if name.endswith(".delta") and out and out[-1] == name:
            continue
        out.append(name)
    return out


@functools.lru_cache(maxsize=1)
def openapi() -> dict[str, Any]:
    """The spec, loaded once per session, with OpenAPI 3.0 ``nullable: true`` made JSON Schema.

    The file declares OpenAPI 3.1 yet many schemas still mark nullability the 3.0 way, which a
    2020-12 validator ignores; ``_nullable`` applies the 3.0 meaning (``null`` is also valid).
    """
    import yaml

    with OPENAPI.open("rb") as fh:
        doc: dict[str, Any] = yaml.load(fh, Loader=yaml.CSafeLoader)
    result: dict[str, Any] = _nullable(doc)
    return result


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable(value) for key, value in node.items()}
    if out.pop("nullable", False) is True:
        kind = out.get("type")
        if isinstance(kind, str) and "$ref" not in out and "allOf" not in out:
            out["type"] = [kind, "null"]
            if isinstance(out.get("enum"), list) and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        else:
            return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def validator(schema_name: str) -> Any:
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    registry: Registry[Any] = Registry().with_resource(
        "urn:openapi", Resource.from_contents(openapi(), default_specification=DRAFT202012)
    )
    return jsonschema.Draft202012Validator(
        {"$ref": f"urn:openapi#/components/schemas/{schema_name}"}, registry=registry
    )
