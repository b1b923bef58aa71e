"""Scale: thousands of concurrent unpaced runs on one client in one process (issue 16, goal 3).

    python benchmarks/scale.py             # 1,000 and 10,000 runs, asyncio and trio (minutes)
    python benchmarks/scale.py --quick     # 50 and 150 runs, asyncio (a smoke run)
    python benchmarks/scale.py --profile   # cProfile at both sizes: the calls whose cost grows

Every measurement runs in a fresh worker process (``run.py --worker`` dispatches ``"kind":
"scale"`` jobs to ``worker``; standalone too) against the replay server
of ``run.py``, on the scenario "many": one tool round, then 200 text deltas.

- runs: N simultaneous runs, CPU per run (``process_time`` / N), wall, completed, errors, for
  runmachine and for its floor: the same two streams per run (the one that creates the run and
  the one that answers the tool outputs) through the same SDK client, read raw, nothing parsed.
  The client has unlimited connection limits, so no request queues for a connection and both
  paths hold one connection per run. A last row starts the large number of runmachine runs at
  once under an ``Admission`` of the small number: the pool then never holds more than that.
- creation: creating a machine, feeding it a whole run (created to completed) and dropping it,
  with no other machine alive and with ``creation`` machines alive mid-run.
- leak: tracemalloc-traced memory and RSS after the runs end and a ``gc.collect()``, against a
  baseline taken after a warm-up batch of the same size: a second batch must leave nothing.
- starts: simultaneous starts on a client with the SDK's default timeouts and connection limits
  (``max_retries=0``, so every timeout is counted), without and with ``runmachine.Admission``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _paths  # noqa: E402
import _record  # noqa: E402
import anyio  # noqa: E402
import httpx2  # noqa: E402
import openai  # noqa: E402
import run as bench  # noqa: E402

from runmachine import Admission, RunMachine  # noqa: E402

BACKENDS = ("asyncio", "trio")

FULL: dict[str, Any] = {
    "sizes": (1000, 10000),
    "creation": 10000,
    "leak_runs": 1000,
    "starts": 5000,
    # The SDK's default keep-alive pool (``max_keepalive_connections=100``): at most that many
    # runs in flight keep reusing its connections, so its one short timeout (connect, 5 s)
    # never runs; above it, connections are closed and reopened while the loop is busy.
    "admission": 100,
    "backends": BACKENDS,
}
QUICK: dict[str, Any] = {
    **FULL,
    "sizes": (50, 150),
    "creation": 500,
    "leak_runs": 50,
    "starts": 150,
    "admission": 50,
    "backends": ("asyncio",),
}

#: The growth allowed, 10k against 1k: runmachine's within 1.2 × of the floor's and CPU per run
#: within 1.2 × of its own at the small size.
GROWTH = 1.2
#: Every timeout of the clients that measure CPU: longer than the largest batch takes.
BATCH_TIMEOUT = 3600.0


# --------------------------------------------------------------------------------------------
# The paths
# --------------------------------------------------------------------------------------------


async def floor(client: openai.AsyncOpenAI) -> int:
    """A run's two streams through the SDK's HTTP layer, read as bytes: nothing is parsed, no
    tool runs (the replay server ignores the ids and the outputs)."""
    runs = client.beta.threads.runs
    n = await _paths.floor(client)
    async with runs.with_streaming_response.submit_tool_outputs(
        thread_id=_paths.THREAD,
        run_id="run_floor",
        tool_outputs=[{"tool_call_id": "call_floor", "output": "ok"}],
        stream=True,
    ) as response:
        async for chunk in response.http_response.aiter_bytes():
            n += len(chunk)
    return n


PATHS: dict[str, Callable[..., Awaitable[int]]] = {"runmachine": _paths.runmachine, "floor": floor}


def default_client(port: int) -> openai.AsyncOpenAI:
    """``_paths.make_client`` with the SDK's default timeouts and connection limits."""
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/many/0/v1",
        api_key="bench",
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(),
    )


def unlimited_client(port: int) -> openai.AsyncOpenAI:
    """No connection limits and timeouts longer than any batch: every run holds a connection of
    its own at once, and no request fails while 10,000 of them share the loop."""
    limits = httpx2.Limits(max_connections=None, max_keepalive_connections=None)
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/many/0/v1",
        api_key="bench",
        max_retries=0,
        timeout=httpx2.Timeout(BATCH_TIMEOUT),
        http_client=openai.DefaultAsyncHttpxClient(limits=limits),
    )


# --------------------------------------------------------------------------------------------
# The worker's cases, each in a fresh process
# --------------------------------------------------------------------------------------------


def _pool_size(client: openai.AsyncOpenAI) -> int:
    pool = client._client._transport._pool  # type: ignore[attr-defined]
    return len(pool.connections)


async def _warm(client: openai.AsyncOpenAI, path: Callable[..., Awaitable[int]]) -> None:
    """Every lazy import and cache in place, and a few connections in the pool."""
    await bench._concurrently(lambda: path(client), 10)
    gc.collect()


def _path(job: dict[str, Any]) -> Callable[[openai.AsyncOpenAI], Awaitable[int]]:
    """The job's path; with ``limit``, runmachine's runs share an ``Admission(limit)``."""
    if not job.get("limit"):
        return PATHS[job["path"]]
    admission = Admission(job["limit"])
    return lambda client: _paths.runmachine(client, admission=admission)


async def case_runs(job: dict[str, Any]) -> dict[str, Any]:
    client = unlimited_client(job["port"])
    path = _path(job)
    n = job["n"]
    try:
        await _warm(client, path)
        rss_before = bench._rss_now()
        cpu_started = time.process_time()
        wall, done, errors = await bench._concurrently(lambda: path(client), n)
        cpu = time.process_time() - cpu_started
        gc.collect()
        rss_after = bench._rss_now()
        connections = _pool_size(client)
    finally:
        await client.close()
    return {
        "path": job["path"],
        "limit": job.get("limit"),
        "runs": n,
        "completed": done,
        "errors": errors,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_ms_per_run": cpu / n * 1e3,
        "rss_held_per_run": (rss_after - rss_before) / n,
        "connections": connections,
    }


async def case_profile(job: dict[str, Any]) -> dict[str, Any]:
    """cProfile of N concurrent runs: the functions by own time, with their cost per call."""
    client = unlimited_client(job["port"])
    path = _path(job)
    n = job["n"]
    try:
        await _warm(client, path)
        profiler = cProfile.Profile(time.process_time)  # CPU: the machine is shared
        profiler.enable()
        await bench._concurrently(lambda: path(client), n)
        profiler.disable()
    finally:
        await client.close()
    stats = pstats.Stats(profiler)
    if job.get("dump"):
        stats.dump_stats(job["dump"])
    rows = []
    for (file, line, name), (_cc, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{_short(file)}:{line}({name})",
                "calls_per_run": calls / n,
                "own_us_per_run": tottime / n * 1e6,
                "cum_us_per_run": cumtime / n * 1e6,
            }
        )
    rows.sort(key=lambda r: r["own_us_per_run"], reverse=True)
    return {"path": job["path"], "runs": n, "top": rows[:300]}


def _short(file: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


async def case_creation(job: dict[str, Any]) -> dict[str, Any]:
    """Create a machine, feed it a whole run, drop it: alone, then with ``count`` alive."""
    client = _paths.make_client(job["port"])
    try:
        async with client.beta.threads.runs.with_streaming_response.create(
            thread_id=_paths.THREAD, assistant_id=_paths.ASSISTANT, stream=True
        ) as response:
            body = await response.http_response.aread()
    finally:
        await client.close()
    events = [e for e in bench._decode([body]) if e.event != "thread.message.delta"]
    count = job["count"]
    head = events[:3]  # created, queued, in_progress: the alive machines stay mid-run

    async def churn(times: int) -> float:
        started = time.process_time()
        for _ in range(times):
            machine = RunMachine()
            for event in events:
                await machine.feed(event)
            assert machine.is_finished
            del machine
        return (time.process_time() - started) / times

    await churn(100)
    gc.collect()
    alone = min([await churn(count // 5) for _ in range(3)])
    alive = []
    for _ in range(count):
        machine = RunMachine()
        for event in head:
            await machine.feed(event)
        alive.append(machine)
    crowded = min([await churn(count // 5) for _ in range(3)])
    return {
        "alive": count,
        "events": len(events),
        "us_alone": alone * 1e6,
        "us_with_alive": crowded * 1e6,
        "ratio": crowded / alone,
    }


async def case_leak(job: dict[str, Any]) -> dict[str, Any]:
    """Traced memory and RSS after a batch of runs and a gc, against the baseline after a warm-up
    batch of the same size (which fills the pool with its connections): what a batch leaves."""
    client = unlimited_client(job["port"])
    n = job["n"]
    path = PATHS[job["path"]]
    tracemalloc.start()
    try:
        await _warm(client, path)
        rss0 = bench._rss_now()
        traced0 = tracemalloc.get_traced_memory()[0]
        _, warm_done, _ = await bench._concurrently(lambda: path(client), n)
        gc.collect()
        rss1 = bench._rss_now()
        traced1 = tracemalloc.get_traced_memory()[0]
        connections = _pool_size(client)
        _, done, errors = await bench._concurrently(lambda: path(client), n)
        gc.collect()
        rss2 = bench._rss_now()
        traced2 = tracemalloc.get_traced_memory()[0]
    finally:
        await client.close()
    gc.collect()
    traced3 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "path": job["path"],
        "runs": n,
        "completed": done + warm_done,
        "errors": errors,
        "connections_kept": connections,
        "first_batch_traced_per_run": (traced1 - traced0) / n,
        "first_batch_rss_per_run": (rss1 - rss0) / n,
        "traced_per_run": (traced2 - traced1) / n,
        "rss_per_run": (rss2 - rss1) / n,
        "closed_traced_per_run": (traced3 - traced0) / n,
    }


async def case_starts(job: dict[str, Any]) -> dict[str, Any]:
    """``n`` simultaneous starts on a client with the SDK's defaults, optionally admitted."""
    client = default_client(job["port"])
    limit = job.get("limit")
    admission = Admission(limit) if limit else None
    try:
        await _paths.runmachine(client)  # warm-up
        started = time.process_time()
        wall, done, errors, samples = await _gather(
            lambda: _paths.runmachine(client, admission=admission), job["n"]
        )
        cpu = time.process_time() - started
    finally:
        await client.close()
    return {
        "runs": job["n"],
        "limit": limit,
        "completed": done,
        "errors": errors,
        "error_samples": samples,
        "wall_s": wall,
        "cpu_s": cpu,
    }


async def _gather(
    path: Callable[[], Awaitable[int]], n: int
) -> tuple[float, int, dict[str, int], dict[str, str]]:
    """``run._concurrently``, counting the errors by type, with the first of each kind and
    where it was raised."""
    done = 0
    errors: Counter[str] = Counter()
    samples: dict[str, str] = {}

    async def one() -> None:
        nonlocal done
        try:
            await path()
            done += 1
        except Exception as exc:
            kind = type(exc).__name__
            errors[kind] += 1
            if kind not in samples:
                samples[kind] = _describe(exc)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return time.perf_counter() - started, done, dict(errors), samples


def _describe(exc: BaseException) -> str:
    """An error, the chain of its causes (``APITimeoutError`` < ``ConnectTimeout`` ...) and where
    the first of them was raised."""
    chain = [exc]
    while len(chain) < 8 and (chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
    where = traceback.extract_tb(chain[-1].__traceback__)[-1]
    causes = " < ".join(type(e).__name__ for e in chain)
    return f"{causes}: {exc} ({_short(where.filename)}:{where.lineno})"[:400]


CASES = {
    "runs": case_runs,
    "profile": case_profile,
    "creation": case_creation,
    "leak": case_leak,
    "starts": case_starts,
}


async def worker(job: dict[str, Any]) -> dict[str, Any]:
    """One ``"kind": "scale"`` job, in the worker process ``run.py --worker`` started."""
    return await CASES[job["case"]](job)


# --------------------------------------------------------------------------------------------
# The measurements, the goal rows, the tables
# --------------------------------------------------------------------------------------------


def run(
    port: int, cfg: dict[str, Any], run_worker: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """Every measurement, each job in a fresh process started by ``run_worker``."""

    def job(backend: str, case: str, **fields: Any) -> dict[str, Any]:
        return run_worker(
            {"kind": "scale", "backend": backend, "port": port, "case": case, **fields}
        )

    out: dict[str, Any] = {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "runs": {},
        "creation": {},
        "leak": {},
        "starts": {},
    }
    for backend in cfg["backends"]:
        out["runs"][backend] = {
            path: {str(n): job(backend, "runs", path=path, n=n) for n in cfg["sizes"]}
            for path in PATHS
        }
        small, large = cfg["sizes"]
        out["runs"][backend]["admitted"] = {
            str(large): job(backend, "runs", path="runmachine", n=large, limit=small)
        }
        out["creation"][backend] = job(backend, "creation", count=cfg["creation"])
        out["leak"][backend] = job(backend, "leak", path="runmachine", n=cfg["leak_runs"])
        out["starts"][backend] = {
            "default": job(backend, "starts", n=cfg["starts"]),
            "admitted": job(backend, "starts", n=cfg["starts"], limit=cfg["admission"]),
        }
    return out


def _growth(runs: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    small, large = (runs[str(n)] for n in sizes)
    return {
        "small": small["cpu_ms_per_run"],
        "large": large["cpu_ms_per_run"],
        "ratio": large["cpu_ms_per_run"] / small["cpu_ms_per_run"],
        "added_ms": large["cpu_ms_per_run"] - small["cpu_ms_per_run"],
        "complete": all(r["completed"] == r["runs"] for r in (small, large)),
    }


def goal_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The goal-3 rows, shaped like ``run.goals()``'s."""
    rows: list[dict[str, Any]] = []
    sizes = results["config"]["sizes"]
    small, large = (f"{n:,}" for n in sizes)
    for backend, paths in results["runs"].items():
        rm, fl = _growth(paths["runmachine"], sizes), _growth(paths["floor"], sizes)
        ok = rm["complete"] and (rm["ratio"] <= GROWTH or rm["ratio"] <= GROWTH * fl["ratio"])
        rows.append(
            {
                "id": f"3-scale-{backend}",
                "goal": f"3. {large} concurrent runs complete; CPU per run at {large} ≤ "
                f"{GROWTH} × at {small}, or within {GROWTH} × of the floor's growth",
                "backend": backend,
                "measured": f"runmachine {rm['small']:.1f} → {rm['large']:.1f} ms "
                f"({rm['ratio']:.2f} ×, +{rm['added_ms']:.1f} ms); floor {fl['small']:.1f} → "
                f"{fl['large']:.1f} ms ({fl['ratio']:.2f} ×, +{fl['added_ms']:.1f} ms): "
                f"{rm['ratio'] / fl['ratio']:.2f} × the floor's growth, "
                f"{rm['added_ms'] - fl['added_ms']:+.1f} ms per run of runmachine's own",
                "verdict": bench.verdict(ok),
            }
        )
        admitted = paths["admitted"][str(sizes[1])]
        ratio = admitted["cpu_ms_per_run"] / rm["small"]
        rows.append(
            {
                "id": f"3-scale-admitted-{backend}",
                "goal": f"3. {large} runs started at once under Admission({admitted['limit']:,}) "
                f"complete; CPU per run ≤ {GROWTH} × that of {small} runs",
                "backend": backend,
                "measured": f"{admitted['completed']:,}/{admitted['runs']:,}, "
                f"{admitted['cpu_ms_per_run']:.1f} ms per run ({ratio:.2f} ×)",
                "verdict": bench.verdict(
                    admitted["completed"] == admitted["runs"] and ratio <= GROWTH
                ),
            }
        )
    for backend, c in results["creation"].items():
        rows.append(
            {
                "id": f"3-creation-{backend}",
                "goal": f"3. create and finish a machine with {c['alive']:,} alive ≤ {GROWTH} × "
                "with none",
                "backend": backend,
                "measured": f"{c['us_alone']:.0f} µs alone, {c['us_with_alive']:.0f} µs with "
                f"{c['alive']:,} alive ({c['ratio']:.2f} ×)",
                "verdict": bench.verdict(c["ratio"] <= GROWTH),
            }
        )
    for backend, leak in results["leak"].items():
        ok = leak["completed"] == 2 * leak["runs"] and leak["traced_per_run"] <= LEAK_BYTES
        rows.append(
            {
                "id": f"3-leak-{backend}",
                "goal": f"3. memory back to its baseline after the runs (≤ {LEAK_BYTES:,} bytes "
                "traced left per run)",
                "backend": backend,
                "measured": f"{leak['traced_per_run']:,.0f} bytes traced, "
                f"{leak['rss_per_run'] / 1024:.1f} KiB RSS per run after a batch of "
                f"{leak['runs']:,}",
                "verdict": bench.verdict(ok),
            }
        )
    for backend, starts in results["starts"].items():
        plain, admitted = starts["default"], starts["admitted"]
        rows.append(
            {
                "id": f"3-starts-{backend}",
                "goal": f"3. {plain['runs']:,} simultaneous starts complete with the SDK's "
                "default timeouts (admission control)",
                "backend": backend,
                "measured": f"{admitted['completed']:,}/{admitted['runs']:,} with "
                f"Admission({admitted['limit']}); without: {plain['completed']:,}/"
                f"{plain['runs']:,}{_errors(plain)}",
                "verdict": bench.verdict(admitted["completed"] == admitted["runs"]),
            }
        )
    return rows


#: What a batch of runs may leave traced per run and still count as returned to its baseline.
LEAK_BYTES = 1024


def _errors(result: dict[str, Any]) -> str:
    if not result["errors"]:
        return ""
    return " (" + ", ".join(f"{n:,} {name}" for name, n in result["errors"].items()) + ")"


def table_lines(results: dict[str, Any]) -> list[str]:
    """The markdown tables of every figure."""
    sizes = results["config"]["sizes"]
    lines = [
        "**Scale**: simultaneous unpaced runs on one client (unlimited connection limits), one "
        "tool round and 200 deltas each, a fresh process per row. The floor reads the same two "
        "streams per run through the same client as raw bytes.",
        "",
        "| path | backend | runs | completed | wall | CPU per run | × at "
        f"{sizes[0]:,} | RSS held per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend, paths in results["runs"].items():
        for path, by_size in paths.items():
            own = path if path != "admitted" else "runmachine"
            base = paths[own][str(sizes[0])]["cpu_ms_per_run"]
            for n, r in by_size.items():
                label = f"runmachine, Admission({r['limit']:,})" if r["limit"] else path
                lines.append(
                    f"| {label} | {backend} | {int(n):,} | {r['completed']:,} | "
                    f"{r['wall_s']:.1f} s | {r['cpu_ms_per_run']:.1f} ms | "
                    f"{r['cpu_ms_per_run'] / base:.2f} | {r['rss_held_per_run'] / 1024:.1f} KiB |"
                )
    lines += ["", "| measure | backend | value |", "|---|---|---|"]
    for backend, c in results["creation"].items():
        lines.append(
            f"| create, feed a whole run ({c['events']} events), drop a machine: none alive / "
            f"{c['alive']:,} alive | {backend} | {c['us_alone']:.1f} / {c['us_with_alive']:.1f} "
            f"µs ({c['ratio']:.2f} ×) |"
        )
    for backend, leak in results["leak"].items():
        lines.append(
            f"| left per run by a batch of {leak['runs']:,} after a gc (traced / RSS) | {backend} "
            f"| {leak['traced_per_run']:,.0f} bytes / {leak['rss_per_run'] / 1024:.1f} KiB |"
        )
        lines.append(
            f"| kept per run by the first batch, the pool's {leak['connections_kept']:,} idle "
            f"connections included (traced / RSS) | {backend} | "
            f"{leak['first_batch_traced_per_run'] / 1024:.1f} KiB / "
            f"{leak['first_batch_rss_per_run'] / 1024:.1f} KiB |"
        )
        lines.append(
            f"| kept per run once the client is closed (traced) | {backend} | "
            f"{leak['closed_traced_per_run']:,.0f} bytes |"
        )
    for backend, starts in results["starts"].items():
        for label, r in (("no admission", starts["default"]), ("admitted", starts["admitted"])):
            limit = f"Admission({r['limit']})" if r["limit"] else label
            lines.append(
                f"| {r['runs']:,} simultaneous starts, SDK default timeouts, {limit} | {backend} "
                f"| {r['completed']:,} completed{_errors(r)}, {r['wall_s']:.0f} s |"
            )
    return lines


# --------------------------------------------------------------------------------------------
# Standalone
# --------------------------------------------------------------------------------------------


def growth_lines(small: dict[str, Any], large: dict[str, Any], top: int = 25) -> list[str]:
    """The functions whose own CPU per run grew the most from the small profile to the large."""
    before = {r["function"]: r for r in small["top"]}
    rows = []
    for r in large["top"]:
        b = before.get(r["function"], {"own_us_per_run": 0.0, "calls_per_run": 0.0})
        rows.append((r["own_us_per_run"] - b["own_us_per_run"], r, b))
    rows.sort(key=lambda row: row[0], reverse=True)
    lines = [
        f"{small['path']}: own CPU per run, {small['runs']:,} → {large['runs']:,} runs",
        "| function | µs per run | calls per run | µs per call |",
        "|---|---|---|---|",
    ]
    for grown, r, b in rows[:top]:
        per_call = [
            x["own_us_per_run"] / x["calls_per_run"] if x["calls_per_run"] else 0.0 for x in (b, r)
        ]
        lines.append(
            f"| {r['function']} | {b['own_us_per_run']:.0f} → {r['own_us_per_run']:.0f} "
            f"(+{grown:.0f}) | {b['calls_per_run']:.1f} → {r['calls_per_run']:.1f} | "
            f"{per_call[0]:.2f} → {per_call[1]:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 and 1,000 runs")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="only profile both paths at both sizes (asyncio) and print what grew",
    )
    parser.add_argument("--out", type=Path, help="write the results (JSON) here")
    parser.add_argument("--job", help="only run this job (JSON, without port); print its result")
    args = parser.parse_args()
    bench.raise_fd_limit()
    cfg = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    recording = _record.record(50, 200, 10)
    with tempfile.TemporaryDirectory() as tmp:
        server, port = bench.start_server(recording, Path(tmp))
        try:
            if args.job:
                print(
                    json.dumps(bench.run_worker({**json.loads(args.job), "port": port}), indent=1)
                )
                return
            if args.profile:
                for path in PATHS:
                    small, large = (
                        bench.run_worker(
                            {
                                "kind": "scale",
                                "case": "profile",
                                "backend": "asyncio",
                                "port": port,
                                "path": path,
                                "n": n,
                            }
                        )
                        for n in cfg["sizes"]
                    )
                    print("\n".join(growth_lines(small, large)) + "\n")
                return
            results = run(port, cfg, bench.run_worker)
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(10)
    results["duration_s"] = time.perf_counter() - t0
    results["goals"] = goal_rows(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| goal | backend | measured | verdict |\n|---|---|---|---|")
    for g in results["goals"]:
        print(f"| {g['goal']} | {g['backend']} | {g['measured']} | **{g['verdict']}** |")
    print("\n" + "\n".join(table_lines(results)))
    print(f"\n({results['duration_s']:.0f} s)")


if __name__ == "__main__":
    main()
