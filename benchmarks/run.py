"""runmachine's benchmarks, each against the SDK (and a floor: the same bytes read raw through
the same client) measured side by side in the same run: handoff latency, memory per concurrent
run held mid-stream, scale to thousands of runs, paced streams on each transport, event
throughput and tool fan-out, the decode path, the machine itself, and agent-session turns.

    python benchmarks/run.py                  # everything; writes results.json and the README
    python benchmarks/run.py --quick          # the same, much smaller (a smoke run, a few minutes)
    python benchmarks/run.py --only memory    # some sections again, merged into the results file

The streams are recorded once from ``runmachine.testing.Emulator`` (``_record.py``) and replayed
byte for byte by a lean server in its own process (``_replay.py``), so every path reads the very
same emulator stream and the server is never the slow part. Figures are medians over at least 5
repetitions after a warm-up; every comparison is a ratio of two figures taken side by side.
Whatever measures a process's memory or many runs at once runs in fresh worker processes.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import pickle
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _paths  # noqa: E402
import _record  # noqa: E402
import anyio  # noqa: E402
import decode  # noqa: E402
import paced  # noqa: E402

BACKENDS = ("asyncio", "trio")
START, END = "<!-- performance:start -->", "<!-- performance:end -->"

FULL: dict[str, Any] = {
    "deltas": 20000,
    "reps": 5,
    "warmup": 1,
    "handoff_samples": 200,
    "fan_calls": 64,
    "fan_sleep": 0.1,
    "many_runs": 1000,
    "many_deltas": 200,
    "many_sdk_backends": ("asyncio",),
    "paced_deltas": 100,
    "pace_ms": 20,
    "paced_start": 50,
    "paced_max": 1600,
    "paced_bisect": 2,
    "paced_backends": BACKENDS,
    "paced_transports": ("httpx", "aiohttp"),
    "cost_machines": 2000,
    "creation_machines": 10000,
}
QUICK: dict[str, Any] = {
    **FULL,
    "deltas": 1000,
    "handoff_samples": 20,
    "fan_sleep": 0.01,
    "many_runs": 50,
    "paced_deltas": 50,
    "paced_start": 20,
    "paced_max": 40,
    "paced_bisect": 0,
    "paced_backends": ("asyncio",),
    "paced_transports": ("httpx",),
    "cost_machines": 200,
    "creation_machines": 1000,
}


def median(values: list[float]) -> float:
    return statistics.median(values)


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


# --------------------------------------------------------------------------------------------
# 1. Event throughput
# --------------------------------------------------------------------------------------------

THROUGHPUT_PATHS: dict[str, Callable[[Any], Awaitable[int]]] = {
    "floor": _paths.floor,
    "sdk_iter": _paths.sdk_iter,
    "sdk_handler": _paths.sdk_handler,
    "runmachine": _paths.runmachine,
}


async def throughput(port: int, cfg: dict[str, Any], events: int) -> dict[str, Any]:
    client = _paths.make_client(port)
    text = _paths.scenario(client, "text")
    times: dict[str, list[float]] = {name: [] for name in THROUGHPUT_PATHS}
    cpu: dict[str, list[float]] = {name: [] for name in THROUGHPUT_PATHS}
    try:
        for rep in range(cfg["warmup"] + cfg["reps"]):
            for name, path in THROUGHPUT_PATHS.items():
                gc.collect()
                started, cpu_started = time.perf_counter(), time.process_time()
                await path(text)
                elapsed = time.perf_counter() - started
                if rep >= cfg["warmup"]:
                    times[name].append(elapsed)
                    cpu[name].append(time.process_time() - cpu_started)
    finally:
        await client.close()
    out: dict[str, Any] = {"events": events, "paths": {}}
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
    out["r_vs_handler"] = r / out["paths"]["sdk_handler"]["median_s"]
    out["r_vs_floor"] = r / out["paths"]["floor"]["median_s"]
    out["r_vs_iter"] = r / out["paths"]["sdk_iter"]["median_s"]
    return out


# --------------------------------------------------------------------------------------------
# 2. Handoff latency, 3. fan-out
# --------------------------------------------------------------------------------------------


async def _alongside(client: Any) -> int:
    """runmachine with ``reuse_connection=False``: the submission is made at once, the end of
    the stream that stopped at ``requires_action`` read alongside it on another connection."""
    return await _paths.runmachine_marked(client, reuse_connection=False)


async def handoff(port: int, cfg: dict[str, Any]) -> dict[str, Any]:
    client = _paths.make_client(port)
    marks = _paths.MARKS
    out: dict[str, Any] = {}
    try:
        for calls in (1, 16):
            scenario = _paths.scenario(client, f"tools{calls}")
            paths = {
                "runmachine": _paths.runmachine_marked,
                "runmachine_alongside": _alongside,
                "recipe": _paths.recipe,
                "floor": _paths.submit_floor,
            }
            samples: dict[str, list[float]] = {name: [] for name in paths}
            cpu: dict[str, list[float]] = {name: [] for name in paths}
            for i in range(cfg["handoff_samples"] + 5):
                for name, path in paths.items():
                    marks.arrived = marks.left = 0.0
                    await path(scenario)
                    assert marks.left > marks.arrived > 0
                    if i >= 5:  # warm-up
                        samples[name].append((marks.left - marks.arrived) * 1e3)
                        cpu[name].append((marks.left_cpu - marks.arrived_cpu) * 1e3)
            out[str(calls)] = {
                name: {
                    "median_ms": median(v),
                    "p99_ms": p99(v),
                    "max_ms": max(v),
                    "cpu_median_ms": median(cpu[name]),
                    "cpu_p99_ms": p99(cpu[name]),
                    "samples": len(v),
                }
                for name, v in samples.items()
            }
    finally:
        await client.close()
    return out


async def fanout(port: int, cfg: dict[str, Any]) -> dict[str, Any]:
    client = _paths.make_client(port)
    marks = _paths.MARKS
    _paths.TOOL_SLEEP[0] = cfg["fan_sleep"]
    scenario = _paths.scenario(client, "tools64")
    paths: dict[str, Callable[[], Awaitable[int]]] = {
        "runmachine": lambda: _paths.runmachine_marked(scenario, tool_concurrency=64),
        "runmachine_default": lambda: _paths.runmachine_marked(scenario),
        "recipe": lambda: _paths.recipe(scenario),
    }
    rounds: dict[str, list[float]] = {name: [] for name in paths}
    slowest: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for rep in range(cfg["warmup"] + cfg["reps"]):
            for name, path in paths.items():
                if name == "recipe" and rep < cfg["warmup"]:
                    continue  # the recipe's warm-up is the runmachine paths' (same stream)
                marks.tool_times.clear()
                marks.arrived = marks.left = 0.0
                await path()
                if rep >= cfg["warmup"]:
                    rounds[name].append(marks.left - marks.arrived)
                    slowest[name].append(max(marks.tool_times))
    finally:
        await client.close()
    out: dict[str, Any] = {"calls": cfg["fan_calls"], "tool_sleep_s": cfg["fan_sleep"]}
    for name in paths:
        r, s = median(rounds[name]), median(slowest[name])
        out[name] = {"round_s": r, "slowest_tool_s": s, "ratio": r / s, "rounds_s": rounds[name]}
    return out


# --------------------------------------------------------------------------------------------
# 4. Many runs in one process (worker processes)
# --------------------------------------------------------------------------------------------


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so the peak is the measured phase's own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def _concurrently(path: Callable[[], Awaitable[int]], n: int) -> tuple[float, int, list[str]]:
    done = 0
    errors: list[str] = []

    async def one() -> None:
        nonlocal done
        try:
            await path()
            done += 1
        except _paths.ErrorPath:
            raise  # the figures would measure another path: fail loudly
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return time.perf_counter() - started, done, errors[:3]


async def worker_many(job: dict[str, Any]) -> dict[str, Any]:
    # The SDK's default connection limits (1,000). The recipe holds its stream's connection
    # while it opens the submit stream: past the pool size those wait for a slot that its own
    # streams hold, so a bounded pool wait turns that deadlock into counted failures.
    client = _paths.make_client(job["port"], pool_timeout=30)
    scenario = _paths.scenario(client, "many")
    fn = _paths.runmachine if job["path"] == "runmachine" else _paths.recipe
    await fn(scenario)  # warm-up: every lazy import and cache in place
    gc.collect()
    baseline = _rss_now()
    reset = _reset_peak()
    peak_before = _peak_rss()
    sampled = [baseline]
    stop = threading.Event()

    def sample() -> None:  # the fallback where VmHWM cannot be reset
        while not stop.wait(0.005):
            sampled.append(_rss_now())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu_started = time.process_time()
    wall, done, errors = await _concurrently(lambda: fn(scenario), job["n"])
    cpu = time.process_time() - cpu_started
    stop.set()
    sampler.join()
    peak = _peak_rss() if reset else max(sampled)
    await client.close()
    return {
        "runs": job["n"],
        "completed": done,
        "errors": errors,
        "wall_s": wall,
        "cpu_s": cpu,
        "baseline_rss": baseline,
        "peak_rss": peak,
        "peak_before": peak_before,
        "peak_reset": reset,
        "per_run_bytes": (peak - max(baseline, 0)) / job["n"],
    }


async def profiles(port: int, cfg: dict[str, Any]) -> str:
    """pyinstrument profiles of the runmachine side: one throughput stream, handoff rounds
    (wall time, awaits included) and many concurrent runs (CPU)."""
    from pyinstrument import Profiler

    client = _paths.make_client(port, unlimited=True)
    parts: list[str] = []

    async def profiled(title: str, work: Callable[[], Awaitable[Any]], async_mode: str) -> None:
        await work()  # warm-up
        profiler = Profiler(async_mode=async_mode, interval=0.0005)
        profiler.start()
        await work()
        profiler.stop()
        text = profiler.output_text(unicode=False, color=False, show_all=False)
        parts.append(f"## {title}\n\n{_clean(text)}")

    text = _paths.scenario(client, "text")
    tools16 = _paths.scenario(client, "tools16")
    many = _paths.scenario(client, "many")

    async def handoffs() -> None:
        for _ in range(50):
            await _paths.runmachine_marked(tools16)

    async def concurrent() -> None:
        await _concurrently(lambda: _paths.runmachine(many), 300)

    try:
        await profiled(
            "1. one throughput stream (runmachine)", lambda: _paths.runmachine(text), "disabled"
        )
        await profiled(
            "2. 50 handoff runs of 16 calls (runmachine, awaits included)", handoffs, "enabled"
        )
        await profiled(
            "4. 300 concurrent runs, one tool round each (runmachine)", concurrent, "disabled"
        )
    finally:
        await client.close()
    return "\n\n".join(parts)


def _clean(text: str) -> str:
    """Profiles name files relative to the project and the installed packages."""
    lines = [line for line in text.splitlines() if not line.startswith("Profile at ")]
    text = "\n".join(lines)
    for prefix in sorted(
        {str(ROOT) + "/", sys.prefix + "/", sys.base_prefix + "/"}, key=len, reverse=True
    ):
        text = text.replace(prefix, "")
    return text


#: Where ``run_worker`` runs a job: a fresh interpreter each (``None``: the full runs, whose
#: processes start as a user's does), or a process forked from one that has imported the
#: benchmarks already (``--quick``: its smoke run spends its time in the jobs, not in importing
#: the SDK two dozen times).
_FORKED: ProcessPoolExecutor | None = None


def _forked_workers() -> ProcessPoolExecutor:
    context = multiprocessing.get_context("forkserver")
    # The SDK imports its resources on first use (``client.beta``: half a second).
    context.set_forkserver_preload(["__main__", "memory", "scale", "openai.resources.beta.beta"])
    return ProcessPoolExecutor(1, mp_context=context, max_tasks_per_child=1)


def _job(job: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = anyio.run(_worker(job["kind"]), job, backend=job["backend"])
    return result


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    """``job`` run by its kind's worker in a process of its own; its results."""
    if _FORKED is not None:
        return _FORKED.submit(_job, job).result()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {job} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def many_runs(
    port: int, cfg: dict[str, Any], backends: tuple[str, ...] = BACKENDS
) -> dict[str, Any]:
    out: dict[str, Any] = {"unpaced": {}}
    for backend in backends:
        out["unpaced"][backend] = {
            path: run_worker(
                {
                    "kind": "many",
                    "backend": backend,
                    "port": port,
                    "path": path,
                    "n": cfg["many_runs"],
                }
            )
            for path in ("runmachine", "recipe")
            if path == "runmachine" or backend in cfg["many_sdk_backends"]
        }
    return out


# --------------------------------------------------------------------------------------------
# 5. The machine itself, no I/O
# --------------------------------------------------------------------------------------------


def _decode(frames: list[bytes]) -> list[Any]:
    from runmachine.backends.sse import SSEParser, build_event

    parser = SSEParser()
    events = [build_event(n, d) for n, d in parser.feed(b"".join(frames))]
    return [e for e in events if e is not None]


async def _creation_cost(head: list[Any], count: int) -> dict[str, Any]:
    """Creating a machine, feeding it the first events of a run and dropping it mid-run, ``count``
    times: with no other machine alive, then with ``count`` alive; and the memory left after."""
    from runmachine import RunMachine

    async def churn() -> float:
        started = time.perf_counter()
        for _ in range(count):
            machine = RunMachine()
            for event in head:
                await machine.feed(event)
            del machine
        return (time.perf_counter() - started) / count

    gc.collect()
    alone = min([await churn() for _ in range(3)])
    alive = []
    for _ in range(count):
        machine = RunMachine()
        for event in head:
            await machine.feed(event)
        alive.append(machine)
    crowded = min([await churn() for _ in range(3)])
    del alive
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    await churn()
    gc.collect()
    left = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {
        "machines": count,
        "us_alone": alone * 1e6,
        "us_with_alive": crowded * 1e6,
        "ratio": crowded / alone,
        "bytes_left_after_churn": left,
    }


async def machine_cost(recording: _record.Recording, cfg: dict[str, Any]) -> dict[str, Any]:
    from runmachine import RunMachine
    from runmachine.backends.sse import SSEParser, build_event
    from runmachine.records import TransitionRecord

    text = _decode(recording["text"][0])
    lifecycle_events = [e for e in text if e.event.startswith("thread.run.")]
    lifecycle_events = [e for e in lifecycle_events if not e.event.startswith("thread.run.step")]
    head = [e for e in text if e.event != "thread.message.delta"]
    head = head[
        : next(i for i, e in enumerate(head) if e.event == "thread.message.in_progress") + 1
    ]
    deltas = [e for e in text if e.event == "thread.message.delta"]

    machines = [RunMachine() for _ in range(cfg["cost_machines"])]
    started = time.process_time()  # CPU time: these loops do no I/O
    for m in machines:
        for event in lifecycle_events:
            await m.feed(event)
    elapsed = time.process_time() - started
    transitions = sum(len(m.history) for m in machines)
    per_transition = elapsed / transitions

    per_delta: dict[str, float] = {}
    for label, cls in (("no hooks", RunMachine), ("no-op on_text_delta", _paths.BenchNoMark)):
        m = cls()
        for event in head:
            await m.feed(event)
        started = time.process_time()
        for event in deltas:
            await m.feed(event)
        per_delta[label] = (time.process_time() - started) / len(deltas)

    frames = recording["text"][0]
    delta_frames = [f for f in frames if f.startswith(b"event: thread.message.delta")][:2000]
    blob = b"".join(delta_frames)
    started = time.process_time()
    parser = SSEParser()
    for name, data in parser.feed(blob):
        build_event(name, data)
    decode = (time.process_time() - started) / len(delta_frames)

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [RunMachine() for _ in range(1000)]
    per_machine = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    before = tracemalloc.get_traced_memory()[0]
    records = [
        TransitionRecord("queued", "in_progress", "thread.run.in_progress", f"run_{i:024d}", 1.0)
        for i in range(10000)
    ]
    per_record = (tracemalloc.get_traced_memory()[0] - before) / len(records)
    tracemalloc.stop()
    del kept, records
    creation = await _creation_cost(lifecycle_events[:2], cfg["creation_machines"])
    return {
        "creation": creation,
        "us_per_transition": per_transition * 1e6,
        "transitions_measured": transitions,
        "us_per_delta": {k: v * 1e6 for k, v in per_delta.items()},
        "us_decode_per_delta": decode * 1e6,
        "bytes_per_machine": per_machine,
        "bytes_per_history_record": per_record,
    }


# --------------------------------------------------------------------------------------------
# Goals, tables, README
# --------------------------------------------------------------------------------------------


#: The handoff bound where parity with the recipe is out of reach (issue 16): calls -> ratio.
HANDOFF_BOUND = {"1": 1.25, "16": 1.6}


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def _handoff_rows(backend: str, calls: str, d: dict[str, Any]) -> list[dict[str, Any]]:
    rm, rc, fl, al = d["runmachine"], d["recipe"], d["floor"], d["runmachine_alongside"]
    med, tail = rm["median_ms"] / rc["median_ms"], rm["p99_ms"] / rc["p99_ms"]
    plural = "s" if calls != "1" else ""
    bound = HANDOFF_BOUND[calls]
    return [
        {
            "id": f"1-handoff-{calls}-{backend}",
            "goal": f"1. handoff, {calls} call{plural}: median and p99 ≤ 1.0 × the recipe",
            "backend": backend,
            "measured": f"median {rm['median_ms']:.2f} ms ({med:.2f} ×), p99 "
            f"{rm['p99_ms']:.2f} ms ({tail:.2f} ×); recipe {rc['median_ms']:.2f} / "
            f"{rc['p99_ms']:.2f} ms; floor {fl['median_ms']:.2f} / {fl['p99_ms']:.2f} ms; "
            f"`reuse_connection=False` {al['median_ms'] / rc['median_ms']:.2f} × / "
            f"{al['p99_ms'] / rc['p99_ms']:.2f} ×",
            "verdict": verdict(med <= 1.0 and tail <= 1.0),
        },
        {
            "id": f"1-handoff-bound-{calls}-{backend}",
            "goal": f"1. handoff, {calls} call{plural}, beside its floor row: median and "
            f"p99 ≤ {bound} × the recipe",
            "backend": backend,
            "measured": f"{med:.2f} × / {tail:.2f} ×; above the floor: runmachine "
            f"{rm['median_ms'] - fl['median_ms']:.2f} ms, recipe "
            f"{rc['median_ms'] - fl['median_ms']:.2f} ms",
            "verdict": verdict(med <= bound and tail <= bound),
        },
    ]


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every goal row of the sections in ``results``, numbered as the goals of issue 16: 1
    handoff, 2 memory held, 3 scale, 4 paced streams, 5 throughput, fan-out and the parser, 6
    agent-session turns."""
    import memory
    import scale

    import sessions

    rows: list[dict[str, Any]] = []
    for backend, h in results.get("handoff", {}).items():
        for calls, d in h.items():
            rows.extend(_handoff_rows(backend, calls, d))
    if "memory" in results:
        rows.extend(memory.goal_rows(results["memory"]))
    if "scale" in results:
        rows.extend(scale.goal_rows(results["scale"]))
    if "paced" in results:
        rows.extend(paced.goal_rows(results["paced"]))
    for backend, t in results.get("throughput", {}).items():
        ok = t["r_vs_handler"] <= 0.35 and t["r_vs_floor"] <= 4
        rows.append(
            {
                "id": f"5-throughput-{backend}",
                "goal": "5. throughput: R ≤ 0.35 × (b) and R ≤ 4 × floor",
                "backend": backend,
                "measured": f"R = {t['r_vs_handler']:.2f} × (b), {t['r_vs_floor']:.2f} × floor",
                "verdict": verdict(ok),
            }
        )
    for backend, f in results.get("fanout", {}).items():
        rm = f["runmachine"]
        rows.append(
            {
                "id": f"5-fanout-{backend}",
                "goal": f"5. fan-out of {f['calls']} calls ≤ 1.2 × the slowest tool",
                "backend": backend,
                "measured": f"{rm['ratio']:.2f} × (tool_concurrency=64); default 16: "
                f"{f['runmachine_default']['ratio']:.2f} ×; recipe {f['recipe']['ratio']:.1f} ×",
                "verdict": verdict(rm["ratio"] <= 1.2),
            }
        )
    if "decode" in results:
        rows.append(_parser_row(results["decode"]["parser"]))
        text = results["decode"]["text"]
        rows.append(
            {
                "id": "5-text-linear",
                "goal": "5. streamed text is linear: CPU per text delta of a "
                f"{text['large']:,}-delta message ≤ 1.2 × that of a {text['small']:,}-delta one",
                "backend": "asyncio",
                "measured": f"{text['ratio']:.2f} × ({text['us_small']:.2f} → "
                f"{text['us_large']:.2f} µs per delta)",
                "verdict": verdict(text["ratio"] <= 1.2),
            }
        )
    if "sessions" in results:
        rows.extend(sessions.goal_rows(results["sessions"]))
    return rows


def _parser_row(parser: dict[str, Any]) -> dict[str, Any]:
    growth = parser["ratio_per_mb_4mb_over_1mb"]
    return {
        "id": "5-parser-linear",
        "goal": "5. the SSE parser is linear: time per MB of a 4 MB line in 1 KiB chunks "
        "≤ 1.2 × that of a 1 MB line",
        "backend": "-",
        "measured": f"{growth:.2f} × ({parser['s_per_mb_4mb'] * 1e3:.1f} ms per MB; 1 MB in "
        f"1 KiB chunks {parser['chunk_1k_1mb_s'] * 1e3:.1f} ms, in 64 KiB chunks "
        f"{parser['chunk_64k_1mb_s'] * 1e3:.1f} ms)",
        "verdict": verdict(growth <= 1.2),
    }


def tables(results: dict[str, Any]) -> str:
    """The goal rows, then the tables of every section in ``results``, in the order of the
    goals (markdown)."""
    import memory
    import scale

    import sessions

    out = ["| goal | backend | measured | verdict |", "|---|---|---|---|"]
    for g in results["goals"]:
        out.append(f"| {g['goal']} | {g['backend']} | {g['measured']} | **{g['verdict']}** |")
    parts: list[list[str]] = []
    if "handoff" in results:
        parts.append(_handoff_lines(results))
    if "memory" in results:
        parts.append(memory.table_lines(results["memory"]))
    if "scale" in results:
        parts.append(scale.table_lines(results["scale"]))
    if "paced" in results:
        parts.append(paced.table_lines(results["paced"], results["config"]))
    if "throughput" in results:
        parts.append(_throughput_lines(results))
    if "fanout" in results:
        parts.append(_fanout_lines(results))
    if "many" in results:
        parts.append(_many_lines(results))
    if "machine" in results and "decode" in results:
        parts.append(_machine_lines(results))
    if "sessions" in results:
        parts.append(["**Agent-session turns**", "", *sessions.table_lines(results["sessions"])])
    for part in parts:
        out += ["", *part]
    return "\n".join(out)


def _throughput_lines(results: dict[str, Any]) -> list[str]:
    """Event throughput, each path on each backend (markdown)."""
    out: list[str] = []
    add = out.append
    t0 = next(iter(results["throughput"].values()))
    add(
        f"**Event throughput**: one run of {t0['events']:,} SSE events "
        f"({results['config']['deltas']:,} text deltas); medians of {results['config']['reps']}."
    )
    add("")
    add("| path | backend | time | events/s | × floor | × (b) | client CPU |")
    add("|---|---|---|---|---|---|---|")
    labels = {
        "floor": "floor: raw bytes, no parsing",
        "sdk_iter": "(a) `runs.create(stream=True)`",
        "sdk_handler": "(b) `runs.stream()` + no-op handler",
        "runmachine": "(R) runmachine, no-op `on_text_delta`",
    }
    for backend, t in results["throughput"].items():
        floor = t["paths"]["floor"]["median_s"]
        handler = t["paths"]["sdk_handler"]["median_s"]
        for name, label in labels.items():
            p = t["paths"][name]
            add(
                f"| {label} | {backend} | {p['median_s']:.3f} s | {p['events_per_s']:,.0f} | "
                f"{p['median_s'] / floor:.2f} | {p['median_s'] / handler:.2f} | "
                f"{p['cpu_median_s']:.3f} s |"
            )
    return out


def _handoff_lines(results: dict[str, Any]) -> list[str]:
    """Handoff latency, 1 and 16 calls, runmachine, the recipe and the floor."""
    out: list[str] = []
    add = out.append
    add(
        "**Handoff latency** (`requires_action` seen by `on_event` → submit request handed to "
        "httpx), tools that return at once; runmachine vs the SDK recipe. The floor is a handler "
        "that does nothing on `requires_action` but make the submission, outputs at hand, as "
        "runmachine makes it (the same request as the SDK's `submit_tool_outputs`, sent with the "
        "client's `post`): the SDK client's own request building, which every path pays. "
        "runmachine reads the end of the stream that stopped at `requires_action` before it "
        "submits, so that the submission reuses its connection (`reuse_connection=True`, the "
        "default); `reuse_connection=False` submits at once and reads that end alongside, on "
        "a second connection (opened then, unless the pool has one idle)."
    )
    add("")
    add(
        "| calls | backend | runmachine median / p99 / max | `reuse_connection=False` "
        "| recipe median / p99 / max | floor median / p99 / max "
        "| CPU median: runmachine, `False`, recipe, floor |"
    )
    add("|---|---|---|---|---|---|---|")
    sides = ("runmachine", "runmachine_alongside", "recipe", "floor")
    for backend, h in results["handoff"].items():
        for calls, d in h.items():
            cells = [
                f"{d[name]['median_ms']:.2f} / {d[name]['p99_ms']:.2f} / {d[name]['max_ms']:.2f} ms"
                for name in sides
            ]
            cpu = ", ".join(f"{d[name]['cpu_median_ms']:.2f}" for name in sides)
            add(f"| {calls} | {backend} | {' | '.join(cells)} | {cpu} ms |")
    return out


def _fanout_lines(results: dict[str, Any]) -> list[str]:
    """Tool fan-out of one round."""
    out: list[str] = []
    add = out.append
    f0 = next(iter(results["fanout"].values()))
    add(
        f"**Tool fan-out**: one round of {f0['calls']} async tools sleeping "
        f"{f0['tool_sleep_s'] * 1000:.0f} ms (requires_action → submit)."
    )
    add("")
    add("| path | backend | round | × slowest tool |")
    add("|---|---|---|---|")
    for backend, f in results["fanout"].items():
        for name, label in (
            ("runmachine", "runmachine, `tool_concurrency=64`"),
            ("runmachine_default", "runmachine, default `tool_concurrency=16`"),
            ("recipe", "SDK recipe (one by one)"),
        ):
            add(f"| {label} | {backend} | {f[name]['round_s']:.3f} s | {f[name]['ratio']:.2f} |")
    return out


def _many_lines(results: dict[str, Any]) -> list[str]:
    """Many unpaced runs at once, peak RSS."""
    out: list[str] = []
    add = out.append
    many = results["many"]
    add(
        f"**Many runs, unpaced**: {results['config']['many_runs']} concurrent runs on one "
        f"client, one tool round and {results['config']['many_deltas']} deltas each "
        "(a fresh process each; peak RSS above the process's RSS after a warm-up run, sampled "
        "every 5 ms where the kernel's peak mark cannot be reset)."
    )
    add("")
    add("| path | backend | completed | wall | client CPU | peak RSS above baseline per run |")
    add("|---|---|---|---|---|---|")
    for backend, u in many["unpaced"].items():
        for name, label in (("runmachine", "runmachine"), ("recipe", "SDK recipe")):
            if name not in u:
                continue
            r = u[name]
            add(
                f"| {label} | {backend} | {r['completed']}/{r['runs']} | {r['wall_s']:.2f} s | "
                f"{r['cpu_s']:.2f} s | {r['per_run_bytes'] / 1024:.1f} KiB |"
            )
    return out


def _machine_lines(results: dict[str, Any]) -> list[str]:
    """The machine itself and the decode path, no I/O."""
    out: list[str] = []
    add = out.append
    add("**The machine itself**, no I/O (CPU time of the benchmark process).")
    add("")
    add("| measure | backend | value |")
    add("|---|---|---|")
    for backend, c in results["machine"].items():
        add(f"| lifecycle transition (`feed`, FSM) | {backend} | {c['us_per_transition']:.1f} µs |")
        for label, v in c["us_per_delta"].items():
            add(f"| text delta on the fast path, {label} | {backend} | {v:.2f} µs |")
        add(
            f"| SSE decode + build one delta event | {backend} | "
            f"{c['us_decode_per_delta']:.2f} µs |"
        )
        made = c.get("creation")
        if made:
            add(
                f"| create, start and drop a machine, none alive / {made['machines']:,} alive | "
                f"{backend} | {made['us_alone']:.1f} / {made['us_with_alive']:.1f} µs "
                f"({made['ratio']:.2f} ×) |"
            )
            add(
                f"| memory left after {made['machines']:,} machines created and dropped | "
                f"{backend} | {made['bytes_left_after_churn']:,.0f} bytes |"
            )
    d = results["decode"]["run_event"]
    add(
        f"| decode one `{d['event']}` with `instructions: null` ({d['data_bytes']:,} bytes): "
        f"runmachine / before its tolerant tier / the SDK's own decoding | - | "
        f"{d['cpu_us']['new']:.0f} / {d['cpu_us']['old']:.0f} / {d['cpu_us']['sdk']:.0f} µs |"
    )
    add(
        f"| memory held per decoded run event, the same three | - | "
        f"{d['retained_bytes']['new']:,.0f} / {d['retained_bytes']['old']:,.0f} / "
        f"{d['retained_bytes']['sdk']:,.0f} bytes |"
    )
    c0 = next(iter(results["machine"].values()))
    add(f"| `RunMachine()` instance | - | {c0['bytes_per_machine']:,.0f} bytes |")
    add(f"| history record | - | {c0['bytes_per_history_record']:,.0f} bytes |")
    return out


def machine_info(backend_note: str) -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for name in ("openai", "httpx2", "aiohttp", "anyio", "trio", "pydantic", "transitions"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": platform.platform(),
        "backends": backend_note,
        "versions": versions,
    }


def _missed_note(results: dict[str, Any]) -> str:
    missed = [g for g in results["goals"] if g["verdict"] == "missed"]
    if not missed:
        return "Every goal was met in this run."
    labels = {
        "1-handoff": "1 (handoff latency)",
        "2-memory": "2 (memory per run held)",
        "3-": "3 (scale)",
        "4-paced": "4 (paced streams)",
        "5-throughput": "5 (event throughput)",
        "5-fanout": "5 (tool fan-out)",
        "5-parser": "5 (the SSE parser)",
        "5-text": "5 (streamed text)",
        "6-": "6 (agent-session turns)",
    }
    names = sorted(
        {
            labels[prefix] + (f" on {g['backend']}" if g["backend"] != "-" else "")
            for g in missed
            for prefix in labels
            if g["id"].startswith(prefix)
        }
    )
    return (
        f"Goals met in this run: {len(results['goals']) - len(missed)} of "
        f"{len(results['goals'])} rows; missed: {'; '.join(names)}. "
        "`python benchmarks/run.py --profile` writes pyinstrument profiles of the runmachine "
        "side to `benchmarks/profile.txt`."
    )


def readme_section(results: dict[str, Any]) -> str:
    m = results["machine_info"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    sections = results["sections"]
    days = sorted({s["started"][:10] for s in sections.values()})
    commands = sorted({s["command"] for s in sections.values()})
    took = sum(s["duration_s"] for s in sections.values())
    each = ", ".join(f"{name} {s['duration_s']:.0f} s" for name, s in sections.items())
    about = (
        f"Measured with {' and '.join(f'`{c}`' for c in commands)} on {', '.join(days)}: "
        f"{m['cpu']}, {m['cores']} cores, {m['implementation']} {m['python']}, {m['os']}; "
        f"{versions}. Backends: {m['backends']}. The sections took {took:.0f} s in all "
        f"({each}). "
        "Absolute figures depend on the machine and on what else it runs; the ratios, taken "
        "side by side in one process run on the same replayed emulator stream, are what to read."
    )
    return "\n".join(
        [
            START,
            textwrap.fill(about, 100, break_on_hyphens=False, break_long_words=False),
            "",
            tables(results),
            "",
            textwrap.fill(_missed_note(results), 100, break_on_hyphens=False),
            END,
        ]
    )


def update_readme(results: dict[str, Any]) -> None:
    path = ROOT / "README.md"
    text = path.read_text()
    block = readme_section(results)
    if START in text and END in text:
        before, rest = text.split(START, 1)
        _, after = rest.split(END, 1)
        text = before + block + after
    else:
        intro = textwrap.fill(
            "`python benchmarks/run.py` records the benchmark streams from the emulator, replays "
            "them byte for byte from a server in its own process, and compares runmachine with "
            "the SDK's own stream handling on the same bytes (`--quick` for a smaller run). The "
            "table below is written by that script from its last full run "
            "(`benchmarks/results.json`).",
            100,
        )
        marker = "## Honest limits"
        section = f"## Performance\n\n{intro}\n\n{block}\n\n"
        text = text.replace(marker, section + marker, 1) if marker in text else text + section
    path.write_text(text)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def start_server(recording: _record.Recording, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    path = tmp / "recording.pickle"
    path.write_bytes(pickle.dumps(recording))
    server = subprocess.Popen(
        [sys.executable, str(HERE / "_replay.py"), str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line:
        raise RuntimeError("the replay server did not start")
    return server, int(line)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _worker(kind: str) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    """The worker of a ``--worker`` job by its kind (the modules that import this one are
    imported here, once this one is)."""
    if kind == "many":
        return worker_many
    if kind == "paced":
        return paced.worker
    if kind == "memory":
        import memory

        return memory.worker
    if kind == "scale":
        import scale

        return scale.worker
    raise ValueError(f"no worker of kind {kind!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="much smaller sizes: a smoke run")
    parser.add_argument(
        "--out",
        type=Path,
        help="results file (default: benchmarks/results.json or results-quick.json)",
    )
    parser.add_argument(
        "--readme",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the README's Performance section (default: full runs only)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="only write pyinstrument profiles of the runmachine paths to benchmarks/profile.txt",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS",
        help="only print the tables of RESULTS (a results.json) again and write them to the README",
    )
    parser.add_argument(
        "--only",
        metavar="SECTIONS",
        help="only these sections (comma-separated: " + ", ".join(SECTIONS) + "), merged "
        "into the results file",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="only this anyio backend (the other's results in the file are kept: --only needed)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend and not args.only:
        parser.error("--backend measures some sections again: name them with --only")
    raise_fd_limit()
    if args.worker:
        print(json.dumps(_job(json.loads(args.worker))))
        return

    if args.render:
        results = json.loads(args.render.read_text())
        results["goals"] = goals(results)
        print(tables(results))
        update_readme(results)
        return

    cfg = QUICK if args.quick else FULL
    global _FORKED
    if args.quick:
        _FORKED = _forked_workers()
    out = args.out or HERE / ("results-quick.json" if args.quick else "results.json")
    only = _sections(args.only)
    write_readme = (not args.quick) if args.readme is None else args.readme
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "")
    backends = (args.backend,) if args.backend else BACKENDS
    t0 = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {message}", file=sys.stderr, flush=True)

    results: dict[str, Any] = {}
    if args.only and out.exists():
        results = json.loads(out.read_text())
        if results.get("schema") != SCHEMA or results.get("quick") != args.quick:
            raise SystemExit(f"{out} holds results of another kind: run every section instead")
    results.update(
        {
            "schema": SCHEMA,
            "command": command,
            "quick": args.quick,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "machine_info": machine_info("asyncio and trio (each row says which)"),
        }
    )
    results.setdefault("sections", {})
    log("recording the streams from the emulator")
    recording = _record.record(cfg["deltas"], cfg["many_deltas"], cfg["paced_deltas"])
    with tempfile.TemporaryDirectory() as tmp:
        server, port = start_server(recording, Path(tmp))
        try:
            if args.profile:
                log("profiling (asyncio)")
                text = anyio.run(profiles, port, cfg, backend="asyncio")
                (HERE / "profile.txt").write_text(f"# `{command} --profile`\n\n{text}\n")
                log("wrote benchmarks/profile.txt")
                return
            for name in only:
                log(f"{name}")
                started = datetime.now(timezone.utc)
                t1 = time.perf_counter()
                measured = _measure(name, port, cfg, recording, args.quick, log, backends)
                results[name] = _merged(results.get(name), measured) if args.backend else measured
                results["sections"][name] = {
                    "command": command
                    + (f" --only {args.only}" if args.only else "")
                    + (f" --backend {args.backend}" if args.backend else ""),
                    "started": started.isoformat(timespec="seconds"),
                    "duration_s": time.perf_counter() - t1,
                }
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(10)
            if _FORKED is not None:
                _FORKED.shutdown()
    results["goals"] = goals(results)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(tables(results))
    if write_readme:
        update_readme(results)
    log(f"wrote {out}" + (" and README.md" if write_readme else ""))


#: The results file's layout (``sections``: when and how each section was last measured).
SCHEMA = 3
#: Every section, in the order they run.
SECTIONS = (
    "handoff",
    "throughput",
    "fanout",
    "machine",
    "decode",
    "many",
    "paced",
    "memory",
    "scale",
    "sessions",
)


def _sections(only: str | None) -> tuple[str, ...]:
    """The sections ``--only`` names (all of them without it), in their order."""
    if not only:
        return SECTIONS
    names = {name.strip() for name in only.split(",") if name.strip()}
    unknown = names - set(SECTIONS)
    if unknown or not names:
        raise SystemExit(
            f"--only: no section {', '.join(sorted(unknown)) or '(none given)'}; "
            f"the sections are {', '.join(SECTIONS)}"
        )
    return tuple(name for name in SECTIONS if name in names)


def _merged(old: Any, new: Any) -> Any:
    """``new`` over ``old``, mapping by mapping: what one backend measured again replaces that
    backend's figures and keeps the other's."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    return {**old, **{key: _merged(old.get(key), value) for key, value in new.items()}}


def _measure(
    name: str,
    port: int,
    cfg: dict[str, Any],
    recording: _record.Recording,
    quick: bool,
    log: Callable[[str], None],
    backends: tuple[str, ...] = BACKENDS,
) -> Any:
    """One section's results (the per-backend ones measured on each of ``backends`` in turn)."""
    if name == "throughput":
        events = len(recording["text"][0]) - 1  # every frame but [DONE]
        return {b: anyio.run(throughput, port, cfg, events, backend=b) for b in backends}
    if name == "handoff":
        return {b: anyio.run(handoff, port, cfg, backend=b) for b in backends}
    if name == "fanout":
        return {b: anyio.run(fanout, port, cfg, backend=b) for b in backends}
    if name == "machine":
        return {b: anyio.run(machine_cost, recording, cfg, backend=b) for b in backends}
    if name == "decode":
        return decode.measure(quick, recording)
    if name == "many":
        return many_runs(port, cfg, backends)
    if name == "paced":
        paced_backends = tuple(b for b in cfg["paced_backends"] if b in backends)
        return paced.run(port, {**cfg, "paced_backends": paced_backends}, run_worker)
    if name == "memory":
        import memory

        return memory.run(port, _on(memory.QUICK if quick else memory.FULL, backends), run_worker)
    if name == "scale":
        import scale

        return scale.run(port, _on(scale.QUICK if quick else scale.FULL, backends), run_worker)
    if name == "sessions":
        import sessions

        return sessions.run(_on(sessions.QUICK if quick else sessions.FULL, backends), log)
    raise AssertionError(name)


def _on(cfg: dict[str, Any], backends: tuple[str, ...]) -> dict[str, Any]:
    """A section's config, narrowed to ``backends``."""
    return {**cfg, "backends": tuple(b for b in cfg["backends"] if b in backends)}


if __name__ == "__main__":
    main()
