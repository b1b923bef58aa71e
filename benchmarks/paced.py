"""The paced benchmark: many concurrent runs whose text deltas arrive like real tokens, on each of
the SDK's HTTP transports.

Every run reads ``deltas`` text deltas sent ``pace_ms`` apart by the replay server (``_replay.py``),
so one run ideally takes ``deltas × pace_ms``. A path's score is the largest number of concurrent
runs that all complete within 1.25 × that ideal: doubling from ``start`` up to ``max``, then
``bisect`` bisection steps between the last passing and the first failing count. The paths:

- ``server``: bare socket readers, no HTTP client (the replay server's own floor);
- ``floor``: the raw response bytes through the SDK's HTTP layer on that transport, nothing parsed
  (the most any client reading through that layer can show);
- ``runmachine``: a ``RunMachine`` with a no-op ``on_text_delta``;
- ``sdk_handler``: the SDK's ``runs.stream()`` with a no-op handler.

Each is measured on each transport of ``_paths.make_client``: httpx (the SDK's default, httpx2 over
httpcore2 and h11) on asyncio and trio, and aiohttp (``openai.DefaultAioHttpClient()``, the
``openai[aiohttp]`` extra) on asyncio only, as aiohttp is built on asyncio. Each measurement runs in
a fresh worker process, so no path inherits another's connections, caches or heap.

    python benchmarks/paced.py            # full sizes; prints the goal rows and the table
    python benchmarks/paced.py --quick    # smaller sizes, asyncio only
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _paths  # noqa: E402
import anyio  # noqa: E402

PATHS = ("server", "floor", "runmachine", "sdk_handler")
#: The backends each transport runs on: aiohttp's transport is asyncio's own.
TRANSPORT_BACKENDS: dict[_paths.Transport, tuple[str, ...]] = {
    "httpx": ("asyncio", "trio"),
    "aiohttp": ("asyncio",),
}
#: The transport the README recommends for many concurrent streams, on which runmachine must
#: carry 2.5 × the SDK handler path's runs.
RECOMMENDED: _paths.Transport = "aiohttp"
TRANSPORT_LABELS = {
    "httpx": "httpx2 (the SDK's default)",
    "aiohttp": "aiohttp (`openai.DefaultAioHttpClient()`)",
}
PATH_LABELS = {
    "server": "server floor: bare socket readers",
    "floor": "floor: raw bytes through the transport",
    "runmachine": "runmachine",
    "sdk_handler": "(b) SDK handler path",
}
#: Within this factor of the ideal time a trial passes.
SLACK = 1.25
#: The goals (issue 16, goal 4): runmachine carries this share of its transport's floor's runs,
#: and this multiple of the SDK handler path's on the recommended transport.
FLOOR_SHARE = 0.8
SDK_MULTIPLE = 2.5

#: One run of a path: it takes the scenario's client.
Reader = Callable[[Any], Awaitable[int]]


def _reader(job: dict[str, Any]) -> Reader:
    """The coroutine function one run of ``job["path"]`` is (it takes the scenario's client)."""
    if job["path"] == "server":
        route = f"/paced/{job['pace_ms']}/v1/threads/{_paths.THREAD}/runs"

        async def server(_: Any) -> int:
            return await _paths.socket_floor(job["port"], route)

        return server
    paths: dict[str, Reader] = {
        "floor": _paths.floor,
        "runmachine": _paths.runmachine,
        "sdk_handler": _paths.sdk_handler,
    }
    return paths[job["path"]]


async def _together(read: Callable[[], Awaitable[int]], n: int) -> tuple[int, list[str]]:
    """Run ``read`` ``n`` times concurrently: how many completed, and the first errors. A run
    that took an error path (``_paths.ErrorPath``) fails the measurement: it measures another."""
    done = 0
    errors: list[str] = []

    async def one() -> None:
        nonlocal done
        try:
            await read()
        except _paths.ErrorPath:
            raise
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        done += 1

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return done, errors[:3]


async def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Measure one path on one transport and backend (the job's ``path``, ``transport``,
    ``backend``, ``port``, ``pace_ms``, ``deltas``, ``start``, ``max``, ``bisect``).

    Returns the best count (``best_runs``), the first failing count (None where even ``max``
    passed: ``capped``) and every trial, with its wall time and the process's CPU time."""
    transport, backend = job["transport"], job["backend"]
    if backend not in TRANSPORT_BACKENDS[transport]:
        raise ValueError(f"paced worker: the {transport} transport does not run on {backend}")
    client = _paths.make_client(job["port"], unlimited=True, transport=transport)
    scenario = _paths.scenario(client, "paced", job["pace_ms"])
    read = _reader(job)
    ideal = job["deltas"] * job["pace_ms"] / 1000
    trials: list[dict[str, Any]] = []

    async def trial(n: int) -> bool:
        gc.collect()
        started, cpu_started = time.perf_counter(), time.process_time()
        done, errors = await _together(lambda: read(scenario), n)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        ok = done == n and wall <= SLACK * ideal
        trials.append(
            {
                "runs": n,
                "wall_s": wall,
                "ratio": wall / ideal,
                "cpu_s": cpu,
                "us_cpu_per_delta": cpu / (n * job["deltas"]) * 1e6,
                "completed": done,
                "errors": errors,
                "ok": ok,
            }
        )
        return ok

    try:
        await read(scenario)  # warm-up: every lazy import and cache in place
        good: int = 0
        bad: int | None = None
        n = job["start"]
        while n <= job["max"]:
            if not await trial(n):
                bad = n
                break
            good, n = n, n * 2
        # Below ``start`` too: a path that cannot carry ``start`` runs still gets a figure.
        if bad is not None:
            for _ in range(job["bisect"]):
                mid = (good + bad) // 2
                if mid in (good, bad):
                    break
                if await trial(mid):
                    good = mid
                else:
                    bad = mid
    finally:
        await client.close()
    return {
        "ideal_s": ideal,
        "best_runs": good,
        "first_failing": bad,
        "capped": bad is None,
        "trials": trials,
    }


def run(
    port: int, cfg: dict[str, Any], run_worker: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """Every path on every transport and backend of ``cfg["paced_transports"]`` and
    ``cfg["paced_backends"]``, each in a fresh worker process by ``run_worker(job)``:
    ``{transport: {backend: {path: result}}}``."""
    out: dict[str, Any] = {}
    for transport, backends in TRANSPORT_BACKENDS.items():
        if transport not in cfg["paced_transports"]:
            continue
        for backend in backends:
            if backend not in cfg["paced_backends"]:
                continue
            out.setdefault(transport, {})[backend] = {
                path: run_worker(
                    {
                        "kind": "paced",
                        "transport": transport,
                        "backend": backend,
                        "port": port,
                        "path": path,
                        "pace_ms": cfg["pace_ms"],
                        "deltas": cfg["paced_deltas"],
                        "start": cfg["paced_start"],
                        "max": cfg["paced_max"],
                        "bisect": cfg["paced_bisect"],
                    }
                )
                for path in PATHS
            }
    return out


def _share(a: dict[str, Any], b: dict[str, Any]) -> float:
    """``a``'s best count over ``b``'s."""
    if b["best_runs"]:
        return float(a["best_runs"] / b["best_runs"])
    return float("inf") if a["best_runs"] else 0.0


def _runs(r: dict[str, Any]) -> str:
    return f"{r['best_runs']}{' (search cap)' if r['capped'] else ''}"


def goal_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The goal rows (shaped as ``run.py``'s ``goals()``): runmachine ≥ 0.8 × the floor of the
    same transport on every transport and backend, and ≥ 2.5 × the SDK handler path on the
    recommended transport."""
    rows: list[dict[str, Any]] = []
    for transport, by_backend in results.items():
        for backend, p in by_backend.items():
            rm, floor = p["runmachine"], p["floor"]
            share = _share(rm, floor)
            rows.append(
                {
                    "id": f"4-paced-floor-{transport}-{backend}",
                    "goal": f"4. paced on {transport}: runmachine ≥ {FLOOR_SHARE} × the floor "
                    "of the same transport",
                    "backend": backend,
                    "measured": f"{_runs(rm)} vs {_runs(floor)} runs ({share:.2f} ×)",
                    "verdict": "met" if share >= FLOOR_SHARE else "missed",
                }
            )
    for backend, p in results.get(RECOMMENDED, {}).items():
        rm, sdk = p["runmachine"], p["sdk_handler"]
        multiple = _share(rm, sdk)
        rows.append(
            {
                "id": f"4-paced-sdk-{RECOMMENDED}-{backend}",
                "goal": f"4. paced on {RECOMMENDED}: runmachine ≥ {SDK_MULTIPLE} × as many "
                "runs within 1.25 × ideal as the SDK handler path",
                "backend": backend,
                "measured": f"{_runs(rm)} vs {_runs(sdk)} runs ({multiple:.2f} ×)",
                "verdict": "met" if multiple >= SDK_MULTIPLE else "missed",
            }
        )
    return rows


def table_lines(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """The markdown of the paced section: what was measured, then one row per path, transport
    and backend, with its count against the floor of its transport and the client's CPU time per
    delta in its best trial."""
    ideal = cfg["paced_deltas"] * cfg["pace_ms"] / 1000
    lines = [
        f"**4. Many runs, paced**: {cfg['paced_deltas']} deltas {cfg['pace_ms']} ms apart per "
        f"run (ideal {ideal:.1f} s); the largest number of concurrent runs finishing within "
        f"{SLACK} × ideal (doubling from {cfg['paced_start']}, then {cfg['paced_bisect']} "
        f"bisection steps; search cap {cfg['paced_max']}), on each of the SDK's HTTP transports. "
        "The server row reads bare sockets (the replay server's own floor); the floor row reads "
        "raw bytes through the transport, nothing parsed: the most any client reading through it "
        "can show. CPU is the client process's in the best trial over the deltas it read (a run's "
        "fixed costs included).",
        "",
        "| path | transport | backend | runs within 1.25 × ideal | × floor | first failing "
        "| CPU per delta |",
        "|---|---|---|---|---|---|---|",
    ]
    for transport, by_backend in results.items():
        for backend, p in by_backend.items():
            for path, label in PATH_LABELS.items():
                r = p[path]
                best = [t for t in r["trials"] if t["ok"] and t["runs"] == r["best_runs"]]
                cpu = f"{best[0]['us_cpu_per_delta']:.0f} µs" if best else "-"
                lines.append(
                    f"| {label} | {TRANSPORT_LABELS[transport]} | {backend} | {_runs(r)} | "
                    f"{_share(r, p['floor']):.2f} | {r['first_failing'] or '-'} | {cpu} |"
                )
    return lines


def main() -> None:
    """Standalone: record the paced stream, serve it from a replay server, measure, print."""
    import _record
    import run as bench

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run.py's --quick sizes")
    parser.add_argument("--out", type=Path, help="also write the results (JSON) to this file")
    args = parser.parse_args()
    bench.raise_fd_limit()
    cfg = bench.QUICK if args.quick else bench.FULL
    recording = _record.record(1, 1, cfg["paced_deltas"])
    with tempfile.TemporaryDirectory() as tmp:
        server, port = bench.start_server(recording, Path(tmp))
        try:
            results = run(port, cfg, bench.run_worker)
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(10)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| goal | backend | measured | verdict |\n|---|---|---|---|")
    for g in goal_rows(results):
        print(f"| {g['goal']} | {g['backend']} | {g['measured']} | **{g['verdict']}** |")
    print("\n" + "\n".join(table_lines(results, cfg)))


if __name__ == "__main__":
    main()
