"""Record the benchmark streams from the emulator, byte for byte, for the replay server.

Each scenario is played once on ``runmachine.testing.Emulator`` over real HTTP; the SSE bytes of
the stream that creates the run (segment 0) and of the stream that answers the tool outputs
(segment 1) are split into frames and kept. The replay server (``_replay.py``) then serves exactly
those frames, so every benchmark path reads the same emulator stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import httpx2

from runmachine.testing import Emulator, Scenario, TurnScenario

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


# --- agent-session turns -------------------------------------------------------------------

#: scenario name -> what the replay of one turn on its own fresh session needs (bytes as the
#: emulator sent them): ``session_id``; ``session`` and ``turns``, the bodies of
#: ``GET .../sessions/{id}`` and ``GET .../turns?limit=20&order=desc`` on the idle session;
#: ``stream``, the ``GET .../events`` frames split where the client acts: ``[connect]`` (the
#: status event a stream gets on connecting), then the frames the input starts (up to and with
#: the ``agent.session.requires_action`` of a tool round), then, for a tool round, the frames its
#: results start (to the ``agent.session.idle`` that ends the turn); ``calls``, the calls of the
#: round.
SessionRecording = dict[str, dict[str, Any]]

SESSION_TOOLS = [{"type": "function", "name": "echo", "parameters": {"type": "object"}}]


def _sse_events(chunks: Iterable[bytes]) -> Iterator[tuple[bytes, Any]]:
    """The ``data:`` frames of an SSE body with their decoded events (keep-alives dropped)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *blocks, pending = pending.split(b"\n\n")
        for block in blocks:
            if block.startswith(b"data: "):
                yield block + b"\n\n", json.loads(block[6:])
    raise RuntimeError("the session's event stream ended before the turn did")


def _play_turn(client: httpx2.Client, emulator: Emulator, scenario: TurnScenario) -> dict[str, Any]:
    """One turn of ``scenario`` on a fresh idle session, as a client drives it: subscribe, send
    the input, answer the round's calls ``"ok"`` (in one POST) when it requires action, read to
    the ``agent.session.idle`` that ends the turn. Returns its ``SessionRecording`` entry."""
    created = client.post(
        "/agents/sessions",
        json={
            "environment": {"type": "none"},
            "agent": {"model": "gpt-4o", "tools": SESSION_TOOLS},
        },
    )
    created.raise_for_status()
    sid = created.json()["id"]
    session = client.get(f"/agents/sessions/{sid}")
    turns = client.get(f"/agents/sessions/{sid}/turns", params={"limit": 20, "order": "desc"})
    session.raise_for_status()
    turns.raise_for_status()

    def post(*events: Any) -> None:
        client.post(f"/agents/sessions/{sid}/events", json={"events": events}).raise_for_status()

    emulator.enqueue_turn(scenario)
    parts: list[Frames] = [[]]
    calls: list[int] = []
    ended = False
    with client.stream("GET", f"/agents/sessions/{sid}/events") as response:
        response.raise_for_status()
        text = [{"type": "input_text", "text": "benchmark"}]
        post({"type": "agent.session.input.message", "input": [{"role": "user", "content": text}]})
        for frame, event in _sse_events(response.iter_bytes()):
            parts[-1].append(frame)
            kind = event["type"]
            if len(parts) == 1:  # the status event of a new stream is a part of its own
                parts.append([])
            elif kind == "agent.session.requires_action":
                actions = event["session"]["required_actions"]
                calls.append(len(actions))
                post(
                    *(
                        {
                            "type": "agent.session.input.tool_result",
                            "turn_id": a["turn_id"],
                            "call_id": a["call_id"],
                            "success": True,
                            "output": "ok",
                        }
                        for a in actions
                    )
                )
                parts.append([])
            elif kind == "agent.session.turn.completed":
                ended = True
            elif ended and kind == "agent.session.idle":
                break
    if len(calls) > 1:
        raise ValueError("a benchmark turn has at most one tool round")
    return {
        "session_id": sid,
        "session": session.content,
        "turns": turns.content,
        "stream": parts,
        "calls": calls[0] if calls else 0,
    }


def record_sessions(deltas: int) -> SessionRecording:
    """The agent-session turns the benchmarks use, each on its own fresh session:

    - ``text``: a turn replying with ``deltas`` text deltas (event throughput);
    - ``tools1`` / ``tools16``: one round of 1 or 16 calls of ``echo`` (answered ``"ok"``), then
      a short reply (handoff latency; ``tools1`` also for memory).
    """
    round16 = [("echo", {"i": i}) for i in range(16)]
    scenarios = {
        "text": TurnScenario().reply(words(deltas)),
        "tools1": TurnScenario().tool_round([("echo", {"i": 0})]).reply("Done."),
        "tools16": TurnScenario().tool_round(round16).reply("Done."),
    }
    emulator = Emulator()
    with emulator.serve() as base_url, httpx2.Client(base_url=base_url, timeout=120) as client:
        return {name: _play_turn(client, emulator, s) for name, s in scenarios.items()}
