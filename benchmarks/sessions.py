"""Benchmark rows for agent-session turns (issue 16, goal 6): event throughput, handoff latency
and memory per held turn, runmachine's ``turn()`` against the SDK's own helper,
``client.beta.agents.sessions.stream(tool_handlers=...)``, on the same replayed bytes.

    python benchmarks/sessions.py            # full sizes; writes benchmarks/results-sessions.json
    python benchmarks/sessions.py --quick    # smaller; results-sessions-quick.json

The turns are recorded once from ``runmachine.testing.Emulator`` (``_record.record_sessions``)
and replayed byte for byte by a lean server in its own process (``_replay_sessions.py``), which
holds the rest of a tool turn's stream back until the client has sent every result, as a live
server does. The paths, each driving one whole turn (subscribe, send the input, read to the end):

- ``floor``: the raw bytes of the session's stream through the SDK's HTTP layer, nothing parsed
  (the input, and a tool turn's results, sent with ``events.create``);
- ``sdk_helper``: ``sessions.stream(session_id, input=..., tool_handlers=...)`` iterated, a no-op
  for each ``output_text.delta`` (the helper has no handler class: its events are the hook);
- ``runmachine`` (R): ``RunMachine.turn()`` with a no-op ``on_text_delta`` and async tools;
- ``runmachine_stream``: ``RunMachine.stream(session_id=..., input=...)`` iterated (throughput
  only; no goal).

Handoff: "arrived" is the moment user code sees the decoded event that starts the handoff; "left"
the moment the last ``tool_result`` POST of the round is handed to httpx (an httpx ``request``
hook, as ``_paths.Marks``). For runmachine that event is ``agent.session.requires_action`` (its
``on_event`` hook); the SDK helper runs each call as it iterates past the call's
``turn.item.added`` (its results are all sent before ``requires_action`` reaches user code), so
its first user-visible moment is the first ``function_call`` item it yields. runmachine is also
timed over the SDK helper's window (from that first item), the ``same window`` figure.

Memory: ``memory_turns`` turns of one call each, each on a session of its own, are held at once,
each after its result was taken, the rest of its stream held back by the server; once every
task is blocked, RSS (and, in a second round, tracemalloc) above the process's own after a
warm-up held turn per SDK client, per turn, in a fresh process per path and backend.

Every measured turn fails the benchmark if it took an error path (``_paths.ErrorPath``, or the
replay's 400 for a failed tool's result, or its 404 for a request it does not serve): a turn that
did not complete, a tool's error output, a call not run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _paths  # noqa: E402
import _record  # noqa: E402
import anyio  # noqa: E402
import httpx2  # noqa: E402
import openai  # noqa: E402

from runmachine import RunMachine, RunResult  # noqa: E402

BACKENDS = ("asyncio", "trio")

FULL: dict[str, Any] = {
    "deltas": 20000,
    "reps": 5,
    "warmup": 1,
    "handoff_samples": 200,
    "handoff_warmup": 5,
    "memory_turns": 1000,
    "backends": BACKENDS,
}
QUICK: dict[str, Any] = {
    **FULL,
    "deltas": 500,
    "handoff_samples": 10,
    "memory_turns": 20,
    "backends": ("asyncio",),
}

INPUT = "benchmark"
DELTA = "agent.session.turn.output_text.delta"
RESULT = b'"agent.session.input.tool_result"'
THROUGHPUT_PATHS = ("floor", "sdk_helper", "runmachine", "runmachine_stream")
MEMORY_PATHS = ("floor", "sdk_helper", "runmachine")
#: The memory goal: runmachine's held RSS per turn against the floor's (as ``memory.py``'s for
#: runs) and the SDK helper's (never more than the SDK's own helper, as for the handoff).
FLOOR_RATIO, SDK_RATIO = 1.25, 1.0
#: Turns held at once on one SDK client (``worker_memory``).
TURNS_PER_CLIENT = 50


def median(values: list[float]) -> float:
    return statistics.median(values)


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


# --------------------------------------------------------------------------------------------
# What a path needs to know of a recorded turn
# --------------------------------------------------------------------------------------------


def turn_info(recording: _record.SessionRecording, name: str) -> dict[str, Any]:
    """What a client path needs of recorded turn ``name`` (JSON, for the worker processes): the
    session id, the number of calls, the stream's length before and after its results, the
    result events the floor sends, and the number of events of the stream."""
    turn = recording[name]
    parts = turn["stream"]
    results = []
    for frame in parts[1][-1:] if turn["calls"] else []:
        for action in json.loads(frame[6:])["session"]["required_actions"]:
            results.append(
                {
                    "type": "agent.session.input.tool_result",
                    "turn_id": action["turn_id"],
                    "call_id": action["call_id"],
                    "success": True,
                    "output": "ok",
                }
            )
    return {
        "name": name,
        "session_id": turn["session_id"],
        "calls": turn["calls"],
        "head_bytes": sum(len(f) for f in parts[0] + parts[1]),
        "total_bytes": sum(len(f) for part in parts for f in part),
        "events": sum(len(part) for part in parts),
        "results": results,
    }


# --------------------------------------------------------------------------------------------
# Clients and marks
# --------------------------------------------------------------------------------------------


class TurnMarks:
    """Timestamps of the latest handoff (turns are measured one at a time): wall and thread CPU
    time at the handoff's start (``arrived``: runmachine's ``requires_action``; ``call_seen``:
    the first ``function_call`` item user code sees) and when the round's first and last result
    POSTs are handed to httpx."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.arrived = self.call_seen = self.first_left = self.left = 0.0
        self.arrived_cpu = self.call_seen_cpu = self.left_cpu = 0.0
        self.posts = 0

    def arrive(self) -> None:
        self.arrived_cpu = time.thread_time()
        self.arrived = time.perf_counter()

    def see_call(self) -> None:
        if not self.call_seen:
            self.call_seen_cpu = time.thread_time()
            self.call_seen = time.perf_counter()

    async def on_request(self, request: httpx2.Request) -> None:
        if request.method == "POST" and RESULT in request.content:
            self.left = time.perf_counter()
            self.left_cpu = time.thread_time()
            self.first_left = self.first_left or self.left
            self.posts += 1


MARKS = TurnMarks()


#: One TLS context for every client (the replay is plain HTTP): making one costs ~50 ms.
TLS = ssl.create_default_context()


def make_client(port: int) -> openai.AsyncOpenAI:
    """An SDK client of the replay server on ``port`` (no retries: an error is an error) whose
    result POSTs ``MARKS`` marks."""
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/none/0/v1",
        api_key="bench",
        max_retries=0,
        timeout=httpx2.Timeout(600),
        http_client=openai.DefaultAsyncHttpxClient(
            event_hooks={"request": [MARKS.on_request]}, verify=TLS
        ),
    )


def at(client: openai.AsyncOpenAI, name: str, hold: bool = False) -> Any:
    """``client`` on recorded turn ``name``; ``hold``: the server holds the rest of a tool turn's
    stream, after its results, until ``POST /release``."""
    port = client.base_url.port
    return client.with_options(base_url=f"http://127.0.0.1:{port}/{name}/{int(hold)}/v1")


def on_session(info: dict[str, Any], k: int) -> dict[str, Any]:
    """``info`` on a session of its own, numbered ``k``: the replay serves any session id as
    long as the recorded one as that session, so turns held at once each get their own
    stream."""
    tail = f"{k:06d}"
    return {**info, "session_id": info["session_id"][: -len(tail)] + tail}


# --------------------------------------------------------------------------------------------
# The paths: each drives one whole turn, and fails loudly if it took an error path
# --------------------------------------------------------------------------------------------


async def floor(client: openai.AsyncOpenAI, info: dict[str, Any]) -> int:
    events = client.beta.agents.sessions.events
    sid, n = info["session_id"], 0
    text = [{"type": "input_text", "text": INPUT}]
    message = {"type": "agent.session.input.message", "input": [{"role": "user", "content": text}]}
    async with events.with_streaming_response.stream(sid) as response:
        await events.create(sid, events=[message])  # type: ignore[list-item]
        async for chunk in response.http_response.aiter_bytes():
            before, n = n, n + len(chunk)
            if before < info["head_bytes"] <= n and info["results"]:
                await events.create(sid, events=info["results"])
            if n >= info["total_bytes"]:
                return n
    raise _paths.ErrorPath(f"the stream of session {sid} ended after {n} bytes")


async def sdk_echo(arguments: dict[str, Any]) -> str:
    return "ok"


def noop_text(event: Any) -> None:
    return None


async def sdk_helper(client: openai.AsyncOpenAI, info: dict[str, Any], mark: bool = False) -> int:
    """The SDK's own helper, a no-op for each text delta; ``mark``: mark the first call seen."""
    failures: list[str] = []
    completed = False
    sid = info["session_id"]

    def failed(error: Any) -> None:
        failures.append(f"{error.tool_name} ({error.stage}): {error.error!r}")

    async with client.beta.agents.sessions.stream(
        sid, input=INPUT, tool_handlers={"echo": sdk_echo}, on_tool_error=failed
    ) as stream:
        async for event in stream:
            kind = event.type
            if kind == DELTA:
                noop_text(event)
            elif kind == "agent.session.turn.completed":
                completed = True
            elif (
                mark
                and event.type == "agent.session.turn.item.added"
                and event.item.type == "function_call"
            ):
                MARKS.see_call()
    if failures or not completed:
        raise _paths.ErrorPath(
            f"the SDK helper's turn on session {sid} "
            + (f"had failed tools: {failures}" if failures else "did not complete")
        )
    return 1


class TurnBench(_paths.BenchNoMark):
    """runmachine's side of the handoff: ``BenchNoMark`` (the tools, a no-op ``on_text_delta``)
    with an ``on_event`` hook that marks the handoff."""

    async def on_event(self, event: Any) -> None:
        kind = event.type
        if kind == "agent.session.requires_action":
            MARKS.arrive()
        elif kind == "agent.session.turn.item.added" and event.item.type == "function_call":
            MARKS.see_call()


def checked(result: RunResult, info: dict[str, Any]) -> int:
    """1 for a turn that completed with every call answered plainly; else ``ErrorPath``."""
    where = f"turn {result.turn_id} of session {result.session_id}"
    if result.status != "completed":
        raise _paths.ErrorPath(f"{where} ended {result.status}: {result.error}")
    failed = [r for r in result.tool_calls if r.error is not None]
    if failed:
        raise _paths.ErrorPath(
            f"{where}: {len(failed)} tool call(s) got an error output, e.g. "
            f"{failed[0].name}: {failed[0].error}"
        )
    if len(result.tool_calls) != info["calls"]:
        raise _paths.ErrorPath(f"{where} ran {len(result.tool_calls)} of {info['calls']} calls")
    return 1


async def runmachine(client: openai.AsyncOpenAI, info: dict[str, Any]) -> int:
    machine = _paths.BenchNoMark(client)
    return checked(await machine.turn(session_id=info["session_id"], input=INPUT), info)


async def runmachine_marked(client: openai.AsyncOpenAI, info: dict[str, Any]) -> int:
    machine = TurnBench(client)
    return checked(await machine.turn(session_id=info["session_id"], input=INPUT), info)


async def runmachine_stream(client: openai.AsyncOpenAI, info: dict[str, Any]) -> int:
    machine: RunMachine = _paths.BenchNoMark(client)
    async with machine.stream(session_id=info["session_id"], input=INPUT) as events:
        async for _event in events:
            pass
    return checked(events.result, info)


#: A client path: ``path(client, info)`` drives one whole turn of ``info`` on ``client``.
TurnPath = Callable[[Any, dict[str, Any]], Coroutine[Any, Any, int]]
PATHS: dict[str, TurnPath] = {
    "floor": floor,
    "sdk_helper": sdk_helper,
    "runmachine": runmachine,
    "runmachine_stream": runmachine_stream,
}


# --------------------------------------------------------------------------------------------
# 1. Throughput, 2. handoff (in the benchmark process)
# --------------------------------------------------------------------------------------------


async def throughput(port: int, info: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    client = make_client(port)
    text = at(client, "text")
    times: dict[str, list[float]] = {name: [] for name in THROUGHPUT_PATHS}
    cpu: dict[str, list[float]] = {name: [] for name in THROUGHPUT_PATHS}
    try:
        for rep in range(cfg["warmup"] + cfg["reps"]):
            for name in THROUGHPUT_PATHS:
                gc.collect()
                started, cpu_started = time.perf_counter(), time.process_time()
                await PATHS[name](text, info)
                elapsed = time.perf_counter() - started
                if rep >= cfg["warmup"]:
                    times[name].append(elapsed)
                    cpu[name].append(time.process_time() - cpu_started)
    finally:
        await client.close()
    events = info["events"]
    out: dict[str, Any] = {"events": events, "deltas": cfg["deltas"], "paths": {}}
    for name, values in times.items():
        m = median(values)
        out["paths"][name] = {
            "median_s": m,
            "times_s": values,
            "cpu_median_s": median(cpu[name]),
            "events_per_s": events / m,
            "us_per_event": m / events * 1e6,
        }
    r = out["paths"]["runmachine"]["median_s"]
    out["r_vs_sdk"] = r / out["paths"]["sdk_helper"]["median_s"]
    out["r_vs_floor"] = r / out["paths"]["floor"]["median_s"]
    return out


def _summary(wall: list[float], cpu: list[float]) -> dict[str, Any]:
    return {
        "median_ms": median(wall),
        "p99_ms": p99(wall),
        "max_ms": max(wall),
        "cpu_median_ms": median(cpu),
        "cpu_p99_ms": p99(cpu),
        "samples": len(wall),
    }


async def handoff(port: int, infos: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """Per round size: runmachine (from ``requires_action``, and over the SDK helper's window,
    from the first call seen) and the SDK helper (from the first call seen), to the round's
    last result POST."""
    client = make_client(port)
    out: dict[str, Any] = {}
    try:
        for calls in (1, 16):
            info = infos[f"tools{calls}"]
            scenario = at(client, info["name"])
            series: dict[str, tuple[list[float], list[float]]] = {
                name: ([], []) for name in ("runmachine", "runmachine_window", "sdk_helper")
            }
            first_post: dict[str, list[float]] = {"runmachine": [], "sdk_helper": []}
            for i in range(cfg["handoff_warmup"] + cfg["handoff_samples"]):
                for name in ("runmachine", "sdk_helper"):
                    MARKS.reset()
                    if name == "runmachine":
                        await runmachine_marked(scenario, info)
                    else:
                        await sdk_helper(scenario, info, mark=True)
                    start = MARKS.arrived if name == "runmachine" else MARKS.call_seen
                    if MARKS.posts != calls or not MARKS.left > start > 0:
                        raise _paths.ErrorPath(
                            f"{name}: {MARKS.posts} result POSTs for {calls} calls, or no mark"
                        )
                    if i < cfg["handoff_warmup"]:
                        continue
                    start_cpu = MARKS.arrived_cpu if name == "runmachine" else MARKS.call_seen_cpu
                    wall, cpu = series[name]
                    wall.append((MARKS.left - start) * 1e3)
                    cpu.append((MARKS.left_cpu - start_cpu) * 1e3)
                    first_post[name].append((MARKS.first_left - start) * 1e3)
                    if name == "runmachine":
                        wall, cpu = series["runmachine_window"]
                        wall.append((MARKS.left - MARKS.call_seen) * 1e3)
                        cpu.append((MARKS.left_cpu - MARKS.call_seen_cpu) * 1e3)
            out[str(calls)] = {
                name: {
                    **_summary(wall, cpu),
                    **(
                        {"first_post_median_ms": median(first_post[name])}
                        if name in first_post
                        else {}
                    ),
                }
                for name, (wall, cpu) in series.items()
            }
    finally:
        await client.close()
    return out


# --------------------------------------------------------------------------------------------
# 3. Memory per held turn (a fresh worker process per path and backend)
# --------------------------------------------------------------------------------------------


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _held(
    control: httpx2.AsyncClient,
    path: TurnPath,
    turns: list[tuple[Any, dict[str, Any]]],
    measure: Callable[[], int],
) -> tuple[int, float]:
    """Drive the ``turns`` (client, info) at once; once the server holds every one of them (each
    after its results, the rest of its stream held back) and every task here is blocked,
    ``measure()``; then let them finish. The measure, and the wall time of the round."""
    started = time.perf_counter()
    measured: list[int] = []

    async def watch() -> None:
        (await control.get(f"/held/{len(turns)}")).raise_for_status()
        await anyio.wait_all_tasks_blocked()
        gc.collect()
        measured.append(measure())
        (await control.post("/release")).raise_for_status()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        for client, info in turns:
            tg.start_soon(path, client, info)
    return measured[0], time.perf_counter() - started


async def worker_memory(job: dict[str, Any]) -> dict[str, Any]:
    """One memory job (``path``, ``backend``, ``n``, ``port``, ``info``) in a fresh process: the
    RSS round, then the tracemalloc round, each of ``n`` turns held at once, each on a session
    of its own.

    ``TURNS_PER_CLIENT`` turns share an SDK client, each client warmed by a held turn before
    the baseline (its resources are made on first use): httpcore2's pool scans every connection
    it holds on each request, so one pool holding the ``2 n`` connections of ``n`` held turns
    would make a round O(n²) in time (minutes for 1,000 turns)."""
    info, n = job["info"], job["n"]
    path = PATHS[job["path"]]
    own = [make_client(job["port"]) for _ in range(-(-n // TURNS_PER_CLIENT))]
    clients = [at(client, info["name"], hold=True) for client in own]
    turns = [(clients[k % len(clients)], on_session(info, k)) for k in range(n)]
    warm = [(client, on_session(info, n + j)) for j, client in enumerate(clients)]
    control = httpx2.AsyncClient(base_url=f"http://127.0.0.1:{job['port']}", timeout=600)
    try:
        await _held(control, path, warm, _rss_now)  # every lazy import and cache in place
        gc.collect()
        baseline = _rss_now()
        held_rss, wall = await _held(control, path, turns, _rss_now)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        traced, _ = await _held(
            control, path, turns, lambda: tracemalloc.get_traced_memory()[0] - before
        )
        tracemalloc.stop()
    finally:
        await control.aclose()
        for client in own:
            await client.close()
    return {
        "turns": n,
        "clients": len(own),
        "wall_s": wall,
        "baseline_rss": baseline,
        "held_rss": held_rss,
        "rss_per_turn_bytes": (held_rss - baseline) / n,
        "traced_per_turn_bytes": traced / n,
    }


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"worker {job['path']} on {job['backend']} failed:\n{proc.stderr[-3000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------
# The whole benchmark
# --------------------------------------------------------------------------------------------


def start_server(
    recording: _record.SessionRecording, tmp: Path
) -> tuple[subprocess.Popen[bytes], int]:
    path = tmp / "sessions.pickle"
    path.write_bytes(pickle.dumps(recording))
    server = subprocess.Popen(
        [sys.executable, str(HERE / "_replay_sessions.py"), str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line:
        raise RuntimeError("the sessions replay server did not start")
    return server, int(line)


def run(cfg: dict[str, Any], log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Record the turns, start the replay server, measure every row on every backend of
    ``cfg["backends"]``, stop the server. The results are plain JSON."""
    started = time.perf_counter()
    log("sessions: recording the turns from the emulator")
    recording = _record.record_sessions(cfg["deltas"])
    infos = {name: turn_info(recording, name) for name in recording}
    results: dict[str, Any] = {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "throughput": {},
        "handoff": {},
        "memory": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        server, port = start_server(recording, Path(tmp))
        try:
            for backend in cfg["backends"]:
                log(f"sessions: 1. throughput on {backend}")
                results["throughput"][backend] = anyio.run(
                    throughput, port, infos["text"], cfg, backend=backend
                )
                log(f"sessions: 2. handoff on {backend}")
                results["handoff"][backend] = anyio.run(handoff, port, infos, cfg, backend=backend)
            for backend in cfg["backends"]:
                log(f"sessions: 3. memory on {backend} (worker processes)")
                results["memory"][backend] = {
                    path: run_worker(
                        {
                            "backend": backend,
                            "port": port,
                            "path": path,
                            "n": cfg["memory_turns"],
                            "info": infos["tools1"],
                        }
                    )
                    for path in MEMORY_PATHS
                }
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(10)
    results["duration_s"] = time.perf_counter() - started
    return results


# --------------------------------------------------------------------------------------------
# Goals and tables
# --------------------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def goal_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows shaped as ``run.goals()``'s: id, goal, backend, measured, verdict."""
    rows: list[dict[str, Any]] = []
    for backend, t in results["throughput"].items():
        rows.append(
            {
                "id": f"6-throughput-{backend}",
                "goal": "6. session turn: R ≤ 0.35 × the SDK helper and R ≤ 4 × floor",
                "backend": backend,
                "measured": f"R = {t['r_vs_sdk']:.2f} × the SDK helper, "
                f"{t['r_vs_floor']:.2f} × floor",
                "verdict": _verdict(t["r_vs_sdk"] <= 0.35 and t["r_vs_floor"] <= 4),
            }
        )
    for backend, h in results["handoff"].items():
        for calls, d in h.items():
            rm, window, sdk = d["runmachine"], d["runmachine_window"], d["sdk_helper"]
            ok = rm["median_ms"] <= sdk["median_ms"] and rm["p99_ms"] <= sdk["p99_ms"]
            rows.append(
                {
                    "id": f"6-handoff-{calls}-{backend}",
                    "goal": f"6. session handoff, {calls} call{'s' if calls != '1' else ''}: "
                    "median and p99 ≤ 1.0 × the SDK helper's",
                    "backend": backend,
                    "measured": f"median {rm['median_ms']:.2f} ms, p99 {rm['p99_ms']:.2f} ms "
                    f"(SDK helper {sdk['median_ms']:.2f} / {sdk['p99_ms']:.2f} ms; runmachine "
                    f"over the helper's window {window['median_ms']:.2f} / "
                    f"{window['p99_ms']:.2f} ms)",
                    "verdict": _verdict(ok),
                }
            )
    for backend, m in results["memory"].items():
        rm, sdk, fl = (
            m[name]["rss_per_turn_bytes"] for name in ("runmachine", "sdk_helper", "floor")
        )
        rows.append(
            {
                "id": f"6-memory-{backend}",
                "goal": f"6. memory per session turn, {m['runmachine']['turns']:,} held after "
                f"their results: ≤ {FLOOR_RATIO} × floor, ≤ {SDK_RATIO} × the SDK helper",
                "backend": backend,
                "measured": f"{rm / 1024:.1f} KiB = {rm / fl:.2f} × floor ({fl / 1024:.1f}), "
                f"{rm / sdk:.2f} × the SDK helper ({sdk / 1024:.1f})",
                "verdict": _verdict(rm <= FLOOR_RATIO * fl and rm <= SDK_RATIO * sdk),
            }
        )
    return rows


LABELS = {
    "floor": "floor: raw bytes, no parsing",
    "sdk_helper": "SDK helper `sessions.stream()`, no-op per text delta",
    "runmachine": "(R) runmachine `turn()`, no-op `on_text_delta`",
    "runmachine_stream": "runmachine `stream(session_id=...)` iterated",
}


def goal_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The goal rows as a markdown table (``run.tables()`` writes its own from ``goals()``)."""
    out = ["| goal | backend | measured | verdict |", "|---|---|---|---|"]
    for g in rows:
        out.append(f"| {g['goal']} | {g['backend']} | {g['measured']} | **{g['verdict']}** |")
    return out


def table_lines(results: dict[str, Any]) -> list[str]:
    """The three tables (throughput, handoff, memory), as markdown lines."""
    t0 = next(iter(results["throughput"].values()))
    reps = results["config"]["reps"]
    out = [
        f"**6.1 Session turn throughput**: one turn of {t0['events']:,} SSE events "
        f"({t0['deltas']:,} text deltas); medians of {reps}.",
        "",
        "| path | backend | time | events/s | × floor | × SDK helper | client CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend, t in results["throughput"].items():
        floor_s = t["paths"]["floor"]["median_s"]
        sdk_s = t["paths"]["sdk_helper"]["median_s"]
        for name, label in LABELS.items():
            p = t["paths"][name]
            out.append(
                f"| {label} | {backend} | {p['median_s']:.3f} s | {p['events_per_s']:,.0f} | "
                f"{p['median_s'] / floor_s:.2f} | {p['median_s'] / sdk_s:.2f} | "
                f"{p['cpu_median_s']:.3f} s |"
            )
    out += [
        "",
        "**6.2 Session handoff latency** (to the round's last `tool_result` POST handed to "
        "httpx; tools that return at once): runmachine from `requires_action` seen by "
        "`on_event`; the SDK helper, and runmachine's same window, from the first "
        "`function_call` item user code sees (the helper runs each call as it passes it).",
        "",
        "| calls | backend | runmachine median / p99 / max | runmachine, same window | "
        "SDK helper median / p99 / max | to the first POST: runmachine, SDK helper | "
        "CPU median: runmachine, SDK helper |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend, h in results["handoff"].items():
        for calls, d in h.items():
            rm, w, sdk = d["runmachine"], d["runmachine_window"], d["sdk_helper"]
            out.append(
                f"| {calls} | {backend} | {rm['median_ms']:.2f} / {rm['p99_ms']:.2f} / "
                f"{rm['max_ms']:.2f} ms | {w['median_ms']:.2f} / {w['p99_ms']:.2f} / "
                f"{w['max_ms']:.2f} ms | {sdk['median_ms']:.2f} / {sdk['p99_ms']:.2f} / "
                f"{sdk['max_ms']:.2f} ms | {rm['first_post_median_ms']:.2f}, "
                f"{sdk['first_post_median_ms']:.2f} ms | {rm['cpu_median_ms']:.2f}, "
                f"{sdk['cpu_median_ms']:.2f} ms |"
            )
    m0 = next(iter(results["memory"].values()))
    out += [
        "",
        f"**6.3 Memory per held session turn**: {m0['runmachine']['turns']} turns of one call "
        "each held at once, each after its result was taken (the server holds the rest of its "
        "stream back); above the process's own after a warm-up turn per SDK client "
        f"({TURNS_PER_CLIENT} turns a client), a fresh process each.",
        "",
        "| path | backend | RSS per turn | tracemalloc per turn | wall (all turns) |",
        "|---|---|---|---|---|",
    ]
    for backend, m in results["memory"].items():
        for name in MEMORY_PATHS:
            r = m[name]
            out.append(
                f"| {LABELS[name]} | {backend} | {r['rss_per_turn_bytes'] / 1024:.1f} KiB | "
                f"{r['traced_per_turn_bytes'] / 1024:.1f} KiB | {r['wall_s']:.2f} s |"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--out", type=Path, help="results file")
    parser.add_argument(
        "--render", type=Path, metavar="RESULTS", help="only print the tables of RESULTS again"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(anyio.run(worker_memory, job, backend=job["backend"])))
        return
    if args.render:
        results = json.loads(args.render.read_text())
        print("\n".join([*goal_lines(goal_rows(results)), "", *table_lines(results)]))
        return
    t0 = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {message}", file=sys.stderr, flush=True)

    results = run(QUICK if args.quick else FULL, log)
    results["goals"] = goal_rows(results)
    name = "results-sessions-quick.json" if args.quick else "results-sessions.json"
    out = args.out or HERE / name
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join([*goal_lines(results["goals"]), "", *table_lines(results)]))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
