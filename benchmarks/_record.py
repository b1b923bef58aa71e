"""Record the benchmark streams from the emulator, byte for byte, for the replay server.

Each scenario is played once on ``runmachine.testing.Emulator`` over real HTTP; the SSE bytes of
the stream that creates the run (segment 0) and of the stream that answers the tool outputs
(segment 1) are split into frames and kept. The replay server (``_replay.py``) then serves exactly
those frames, so every benchmark path reads the same emulator stream.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2

from runmachine.testing import Emulator, Scenario

Frames = list[bytes]
#: scenario name -> [segment 0 frames, segment 1 frames, ...]
Recording = dict[str, list[Frames]]


def words(n: int) -> str:
    """A reply the emulator streams as exactly ``n`` text deltas (one word each)."""
    return "".join(f" w{i % 1000}" for i in range(n)).lstrip()


def _frames(body: bytes) -> Frames:
    return [block + b"\n\n" for block in body.split(b"\n\n") if block.strip()]


def _event(frame: bytes) -> tuple[str, Any]:
    name = ""
    data = ""
    for line in frame.decode().splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
    return name, (json.loads(data) if data and data != "[DONE]" else None)


def _play(client: httpx2.Client, emulator: Emulator, scenario: Scenario) -> list[Frames]:
    tools = [
        {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
        for name in ("echo", "nap")
    ]
    assistant = client.post("/assistants", json={"model": "gpt-4o", "tools": tools}).json()
    thread = client.post("/threads", json={}).json()
    client.post(
        f"/threads/{thread['id']}/messages", json={"role": "user", "content": "benchmark"}
    ).raise_for_status()
    emulator.enqueue(scenario)
    segments: list[Frames] = []
    response = client.post(
        f"/threads/{thread['id']}/runs", json={"assistant_id": assistant["id"], "stream": True}
    )
    response.raise_for_status()
    segments.append(_frames(response.content))
    while True:
        name, data = _event(segments[-1][-2])  # the last frame is [DONE]
        if name != "thread.run.requires_action":
            break
        calls = data["required_action"]["submit_tool_outputs"]["tool_calls"]
        outputs = [{"tool_call_id": c["id"], "output": "ok"} for c in calls]
        response = client.post(
            f"/threads/{thread['id']}/runs/{data['id']}/submit_tool_outputs",
            json={"tool_outputs": outputs, "stream": True},
        )
        response.raise_for_status()
        segments.append(_frames(response.content))
    return segments


def record(deltas: int, many_deltas: int, paced_deltas: int) -> Recording:
    """Every stream the benchmarks use:

    - ``text``: one run replying with ``deltas`` text deltas (event throughput);
    - ``tools1`` / ``tools16`` / ``tools64``: one round of 1, 16 or 64 calls, then a short reply;
    - ``many``: one round of one call, then a reply of ``many_deltas`` deltas;
    - ``paced``: one run replying with ``paced_deltas`` deltas (paced by the replay server).
    """
    scenarios = {
        "text": Scenario().reply(words(deltas)),
        "tools1": Scenario().tool_round([("echo", {"i": 0})]).reply("Done."),
        "tools16": Scenario().tool_round([("echo", {"i": i}) for i in range(16)]).reply("Done."),
        "tools64": Scenario().tool_round([("nap", {"i": i}) for i in range(64)]).reply("Done."),
        "many": Scenario().tool_round([("echo", {"i": 0})]).reply(words(many_deltas)),
        "paced": Scenario().reply(words(paced_deltas)),
    }
    emulator = Emulator()
    out: Recording = {}
    with emulator.serve() as base_url, httpx2.Client(base_url=base_url, timeout=120) as client:
        for name, scenario in scenarios.items():
            out[name] = _play(client, emulator, scenario)
    return out


def count(frames: Frames, event: str) -> int:
    marker = f"event: {event}\n".encode()
    return sum(frame.startswith(marker) for frame in frames)
