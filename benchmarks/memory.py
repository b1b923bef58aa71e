"""Memory per concurrent run, every run held at the same point (issue 16, goal 2).

    python benchmarks/memory.py            # 1,000 runs held, asyncio and trio (a few minutes)
    python benchmarks/memory.py --quick    # 20 runs, asyncio only (a smoke run)
    python benchmarks/memory.py --json OUT # the results as JSON too

N runs start at once on one SDK client (unlimited connection limits, so no request waits for a
connection), on the replay server's scenario "many" (one tool round, then 200 text deltas) with
pace ``hold<K>``: the server stops every submit stream right after its K-th text delta and holds
it there (``_replay.py``). Once the server says all N are held, every byte before the hold point
handed to the kernel, and every task of the client is blocked (``anyio.wait_all_tasks_blocked``),
all N runs are at the very same point, mid submit stream: the measurement is taken there, then the
streams are released and every run must complete.

The paths:

- ``floor``: per run, the stream that creates the run read raw to its end through the SDK
  client's HTTP layer (``with_streaming_response``, ``aiter_bytes``), then the submit stream
  opened the same way and read raw to the hold point; nothing parsed. It holds what any client
  of the SDK's HTTP layer must hold at that point: a task, the open submit response (the SDK's
  response wrapper, httpx2's request and response, the byte iterators) and its connection
  (httpcore2, h11 with its receive buffer, the socket). The connection of the create stream goes
  back to the pool when that stream ends and the submit stream reuses it: one connection per
  run, the fewest a run can hold. Anything a run holds beyond that (decoded events, the machine,
  its driver, a second connection) is the run's own; ``connections`` in the results counts the
  pool's at the hold point.
- ``floor2``: the same bytes, but with the connections kept as runmachine keeps them: the submit
  stream is opened before the create stream (read to its end) is closed, so it takes a
  connection of its own while the other goes back to the pool idle (unless another run's submit
  takes it). The goal (``GOAL_FLOOR``) is stated against this floor: "two streams held through
  the same client, nothing parsed".
- ``runmachine``: ``_paths.BenchNoMark`` (a no-op ``on_text_delta``, the tools async), counting
  the text deltas it sees.
- ``recipe``: ``_paths.recipe``, its handlers counting text deltas: the SDK's documented recipe
  (an ``AsyncAssistantEventHandler``
  that submits from ``on_event``: its create stream stays open while the submit stream runs, two
  connections per run).

The measures, each path, backend and measure in a fresh process (``"kind": "memory"`` jobs, which
``run.py --worker`` hands to ``worker``):

- ``rss``: (RSS with all N held − RSS after a warm-up run, held and released, and a
  ``gc.collect()``) / N, untraced;
- ``traced``: tracemalloc's traced bytes at the same point, less those after the warm-up, / N;
  and the attribution: the bytes per run by where they were allocated (the allocating frame's
  package, or runmachine module);
- ``sites`` (runmachine only, ``sites_runs`` runs, deep tracebacks): runmachine's own allocation
  sites with their callers, and what runmachine code had libraries allocate (the innermost
  runmachine frame of each traceback).

Every path checks the point it is held at, and is measured only once its client has read up to
it (the server has handed every byte before it to the kernel, but a busy client may not have
read them yet): the floors' runs have read exactly the held bytes, runmachine's and the
recipe's handlers have seen exactly K text deltas each.
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import json
import linecache
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _paths  # noqa: E402
import _record  # noqa: E402
import anyio  # noqa: E402
import httpx2  # noqa: E402
import openai  # noqa: E402
import run as bench  # noqa: E402

import runmachine as package  # noqa: E402

#: Where runmachine is imported from (this checkout's ``src``, or another on ``PYTHONPATH``).
SRC = Path(package.__file__).resolve().parents[1]

BACKENDS = ("asyncio", "trio")
PATHS = ("floor", "floor2", "runmachine", "recipe")
#: Frames tracemalloc keeps per allocation, by measure: ``rss`` traces nothing; ``traced``
#: keeps the allocating frame only (deeper tracebacks slow every allocation several times over,
#: and 1,000 runs would time out); ``sites`` keeps enough to reach runmachine's frames from h11's
#: buffer, for runmachine's sites with their callers (on fewer runs).
MEASURE_FRAMES = {"rss": 0, "traced": 1, "sites": 30}

#: ``traced_runs``: the runs held for tracemalloc's figures and attribution (tracing slows every
#: allocation, and 1,000 recipe runs traced take minutes).
FULL: dict[str, Any] = {
    "runs": 1000,
    "traced_runs": 300,
    "hold_deltas": 3,
    "rss_reps": 2,
    "sites_runs": 100,
    "backends": BACKENDS,
}
#: ``sites_runs`` 0: no ``sites`` job.
QUICK: dict[str, Any] = {
    **FULL,
    "runs": 20,
    "traced_runs": 20,
    "rss_reps": 1,
    "sites_runs": 0,
    "backends": ("asyncio",),
}
#: The goal: runmachine's held RSS per run against the floor's and the recipe's.
FLOOR_RATIO, RECIPE_RATIO = 1.25, 0.65
#: The requests' timeouts: ``make_client``'s, but for connecting. A run's submit stream may need
#: a connection of its own (runmachine's and the recipe's do, while their create stream ends or
#: stays open), and 1,000 runs opening them at once on a loaded machine can take longer than
#: ``make_client``'s 30 s: memory is measured here, not connection latency.
TIMEOUT = httpx2.Timeout(600, connect=600, pool=600)
#: The longest wait for every run to be held (a failure, not a synchronisation: the SDK's own
#: read timeout is 600 s, and held streams that wait longer fail on it).
HOLD_TIMEOUT = 300
#: Attribution rows under this many bytes per run on every path are summed into one.
SMALL = 100
KIB = 1024


# --------------------------------------------------------------------------------------------
# The paths, each counting what tells the point it is held at
# --------------------------------------------------------------------------------------------


class Seen:
    """What the held paths have read: the floors' submit-stream bytes, runmachine's and the
    recipe's text deltas; and, once ``expect`` is called, an event set when one of those counts
    reaches its target (the server has every byte before the hold point in the kernel, but the
    client may not have read it all yet)."""

    floor_bytes = 0
    deltas = 0
    _target: tuple[str, int] | None = None
    _reached: anyio.Event | None = None

    @classmethod
    def add(cls, kind: str, amount: int) -> None:
        total = getattr(cls, kind) + amount
        setattr(cls, kind, total)
        if cls._target is not None and cls._target[0] == kind and total >= cls._target[1]:
            assert cls._reached is not None
            cls._reached.set()

    @classmethod
    async def expect(cls, kind: str, total: int) -> None:
        """Wait until the count ``kind`` is at least ``total``."""
        cls._target, cls._reached = (kind, total), anyio.Event()
        try:
            if getattr(cls, kind) < total:
                await cls._reached.wait()
        finally:
            cls._target = cls._reached = None


def _create(client: openai.AsyncOpenAI) -> Any:
    """The stream that creates a run, raw (``with_streaming_response``)."""
    return client.beta.threads.runs.with_streaming_response.create(
        thread_id=_paths.THREAD, assistant_id=_paths.ASSISTANT, stream=True
    )


def _submit(client: openai.AsyncOpenAI) -> Any:
    """The stream that answers a run's tool outputs, raw (the server ignores the ids)."""
    return client.beta.threads.runs.with_streaming_response.submit_tool_outputs(
        thread_id=_paths.THREAD,
        run_id="run_floor",
        tool_outputs=[{"tool_call_id": "call_floor", "output": "ok"}],
        stream=True,
    )


async def _read(stream: Any, *, submit: bool) -> int:
    """The bytes of a raw stream (``_create`` or ``_submit``), read to its end and closed (a
    submit stream's counted in ``Seen``)."""
    n = 0
    async with stream as response:
        async for chunk in response.http_response.aiter_bytes():
            n += len(chunk)
            if submit:
                Seen.add("floor_bytes", len(chunk))
    return n


async def floor(client: openai.AsyncOpenAI) -> int:
    """A run's two streams through the SDK's HTTP layer, read raw, one after the other: the
    create stream to its end and closed, then the submit stream (on the same connection)."""
    return await _read(_create(client), submit=False) + await _read(_submit(client), submit=True)


#: The event that ends a create stream's work: a run that waits on its tools.
ACTION = b"event: thread.run.requires_action\n"


async def floor2(client: openai.AsyncOpenAI) -> int:
    """As ``floor``, with the connections kept as runmachine keeps them: the create stream is
    read up to the event that asks for the tool outputs (a byte search, nothing parsed), the
    submit stream is opened, and only then is the create stream read to its end and closed, so
    the submit stream takes a connection of its own and the other goes back to the pool idle."""
    n = 0
    async with AsyncExitStack() as stack:
        async with _create(client) as created:
            chunks = created.http_response.aiter_bytes()
            seen = b""
            async for chunk in chunks:
                n += len(chunk)
                seen = seen[-len(ACTION) :] + chunk
                if ACTION in seen:
                    break
            submitted = await stack.enter_async_context(_submit(client))
            async for chunk in chunks:  # the create stream's end
                n += len(chunk)
        del created, chunks, seen  # held by nothing now, as a run's are
        async for chunk in submitted.http_response.aiter_bytes():
            n += len(chunk)
            Seen.add("floor_bytes", len(chunk))
    return n


class Counted(_paths.BenchNoMark):
    """The runmachine path of the benchmarks, counting the text deltas it sees."""

    async def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        Seen.add("deltas", 1)


class CountedRecipe(_paths.Recipe):
    """The SDK recipe of the benchmarks, counting the text deltas its handlers see."""

    async def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        Seen.add("deltas", 1)


async def recipe(client: openai.AsyncOpenAI) -> int:
    """``_paths.recipe``, its handlers counting."""
    handler = CountedRecipe(client)
    async with client.beta.threads.runs.stream(
        thread_id=_paths.THREAD, assistant_id=_paths.ASSISTANT, event_handler=handler
    ) as stream:
        await stream.until_done()
    if handler.final_status != "completed":
        raise _paths.ErrorPath(f"a recipe run ended {handler.final_status}")
    return 1


async def runmachine(client: openai.AsyncOpenAI) -> int:
    return _paths.checked(
        await Counted(client).run(thread_id=_paths.THREAD, assistant_id=_paths.ASSISTANT)
    )


PATH_FNS: dict[str, Callable[[openai.AsyncOpenAI], Awaitable[int]]] = {
    "floor": floor,
    "floor2": floor2,
    "runmachine": runmachine,
    "recipe": recipe,
}


# --------------------------------------------------------------------------------------------
# Attribution
# --------------------------------------------------------------------------------------------


@functools.cache
def group(filename: str) -> str:
    """Who a source file belongs to: a runmachine module, an openai module (``openai._models``),
    another installed package, a standard-library module, or the benchmark's own code."""
    path = Path(filename)
    if path.is_relative_to(SRC):
        return ".".join(path.relative_to(SRC).with_suffix("").parts)
    if path.is_relative_to(HERE):
        return "benchmark code"
    if "site-packages" in path.parts:
        parts = path.parts[path.parts.index("site-packages") + 1 :]
        package = parts[0].removesuffix(".py")
        if package == "openai" and len(parts) > 1:
            return f"openai.{parts[1].removesuffix('.py')}"
        return package
    for i, part in enumerate(path.parts):
        if part.startswith("python3") and i + 1 < len(path.parts):
            return path.parts[i + 1].removesuffix(".py")
    return filename.strip("<>").split()[-1] if filename.startswith("<") else filename


def _where(frame: tracemalloc.Frame) -> str:
    return f"{group(frame.filename)}:{frame.lineno}"


def _ours(name: str) -> bool:
    return name == "runmachine" or name.startswith("runmachine.")


class Tally:
    """A snapshot's traced bytes (and blocks) three ways: by the group of the frame that
    allocated them; at runmachine's own sites, keyed by the site and its two callers; and, for
    blocks allocated outside runmachine on its behalf, by the innermost runmachine frame and the
    allocating group."""

    def __init__(self, snapshot: tracemalloc.Snapshot) -> None:
        self.groups: Counter[str] = Counter()
        self.sites: Counter[tuple[str, ...]] = Counter()
        self.site_blocks: Counter[tuple[str, ...]] = Counter()
        self.via: Counter[tuple[str, str]] = Counter()
        for stat in snapshot.statistics("traceback"):
            frames = list(reversed(stat.traceback))  # the allocating frame first
            where = group(frames[0].filename)
            self.groups[where] += stat.size
            if _ours(where):
                key = tuple(_where(f) for f in frames[:3])
                self.sites[key] += stat.size
                self.site_blocks[key] += stat.count
                continue
            for frame in frames[1:]:
                if _ours(group(frame.filename)):
                    self.via[(_where(frame), where)] += stat.size
                    break

    def per_run(self, baseline: Tally, n: int) -> dict[str, Any]:
        """What this tally holds beyond ``baseline``, per run (bytes)."""

        def diff(now: Counter[Any], then: Counter[Any]) -> dict[Any, float]:
            return {k: (v - then.get(k, 0)) / n for k, v in now.items() if v != then.get(k, 0)}

        sites = diff(self.sites, baseline.sites)
        blocks = diff(self.site_blocks, baseline.site_blocks)
        via = diff(self.via, baseline.via)
        top = sorted(sites, key=lambda k: -sites[k])[:15]
        return {
            "groups": dict(sorted(diff(self.groups, baseline.groups).items())),
            "sites": [
                {
                    "site": list(key),
                    "source": _source(key[0]),
                    "bytes": sites[key],
                    "blocks": blocks.get(key, 0.0),
                }
                for key in top
            ],
            "via": [
                {"frame": frame, "source": _source(frame), "allocated_in": where, "bytes": b}
                for (frame, where), b in sorted(via.items(), key=lambda kv: -kv[1])[:15]
            ],
        }


def _source(where: str) -> str:
    """The source line at ``module:line`` (a runmachine module's)."""
    module, _, line = where.rpartition(":")
    if not _ours(module):
        return ""
    path = SRC.joinpath(*module.split("."))
    filename = str(path / "__init__.py" if path.is_dir() else path.with_suffix(".py"))
    return linecache.getline(filename, int(line)).strip()


# --------------------------------------------------------------------------------------------
# The worker: one path, backend and measure, in a fresh process
# --------------------------------------------------------------------------------------------


def _pool(client: openai.AsyncOpenAI) -> tuple[int, int]:
    """The connections in the client's pool, and how many of them are idle."""
    connections = client._client._transport._pool.connections  # type: ignore[attr-defined]
    return len(connections), sum(c.is_idle() for c in connections)


async def _held_round(
    path: Callable[[], Awaitable[int]],
    control: httpx2.AsyncClient,
    n: int,
    measure: Callable[[dict[str, Any]], dict[str, Any]],
    kind: str,
    per_run: Callable[[dict[str, Any]], int],
) -> dict[str, Any]:
    """``n`` runs of ``path`` at once, measured by ``measure(held)`` once all are held (``held``:
    the server's count) and the client has read up to the hold point (the count ``kind`` of
    ``Seen`` has grown by ``per_run(held)`` per run), then released; with the runs that
    completed and the first errors. Not every run held within ``HOLD_TIMEOUT`` seconds is an
    error."""
    base = getattr(Seen, kind)
    done = 0
    errors: list[str] = []
    waiting = anyio.CancelScope(deadline=anyio.current_time() + HOLD_TIMEOUT)

    async def one() -> None:
        nonlocal done
        try:
            await path()
            done += 1
        except _paths.ErrorPath:
            raise  # the figures would measure another path: fail loudly
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            waiting.cancel()  # this run will never be held

    reading: dict[str, Any] | None = None
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
        with waiting:
            held = (await control.get("/held", params={"n": n})).json()
            await Seen.expect(kind, base + n * per_run(held))
            await anyio.wait_all_tasks_blocked()
            reading = {"held": held, "held_after_s": time.perf_counter() - started}
            reading |= measure(held)
        if reading is None and waiting.cancelled_caught and not errors:
            held = (await control.get("/held")).json()
            errors.append(f"{held['held']} of {n} streams held after {HOLD_TIMEOUT} s")
        released = (await control.post("/release")).json()["released"]
    return {
        **(reading or {"held": None}),
        "released": released,
        "completed": done,
        "errors": errors[:3],
    }


async def worker(job: dict[str, Any]) -> dict[str, Any]:
    """One ``"kind": "memory"`` job (``path``, ``backend``, ``measure``, ``runs``,
    ``hold_deltas``, ``port``), in the fresh process ``run.py --worker`` started."""
    n, hold = job["runs"], job["hold_deltas"]
    frames = MEASURE_FRAMES[job["measure"]]
    client = _paths.make_client(job["port"], unlimited=True)
    scenario = _paths.scenario(client, "many", f"hold{hold}").with_options(  # type: ignore[arg-type]
        timeout=TIMEOUT
    )
    control = httpx2.AsyncClient(base_url=f"http://127.0.0.1:{job['port']}", timeout=None)
    fn = PATH_FNS[job["path"]]

    def path() -> Awaitable[int]:
        return fn(scenario)

    # What tells that a run's client has read up to the hold point: the floors' bytes, the
    # others' text deltas.
    if job["path"] in ("floor", "floor2"):
        kind, per_run = "floor_bytes", lambda held: int(held["bytes"])
    else:
        kind, per_run = "deltas", lambda held: int(hold)

    if frames:
        tracemalloc.start(frames)
    try:
        warm = await _held_round(path, control, 1, lambda held: {}, kind, per_run)
        if warm["completed"] != 1:
            raise RuntimeError(f"the warm-up run of {job['path']} failed: {warm['errors']}")
        gc.collect()
        baseline_rss = bench._rss_now()
        baseline = Tally(tracemalloc.take_snapshot()) if frames else None
        gc.collect()
        traced0 = tracemalloc.get_traced_memory()[0]
        seen0 = (Seen.floor_bytes, Seen.deltas)

        def measure(held: dict[str, Any]) -> dict[str, Any]:
            gc.collect()
            out: dict[str, Any] = {}
            if baseline is None:
                out["rss"] = bench._rss_now()
                out["rss_per_run"] = (out["rss"] - baseline_rss) / n
            else:
                out["traced_per_run"] = (tracemalloc.get_traced_memory()[0] - traced0) / n
            out["connections"], out["idle_connections"] = _pool(client)
            out["check"] = _check(job["path"], held, n, hold, seen0)
            if baseline is not None:
                out["attribution"] = Tally(tracemalloc.take_snapshot()).per_run(baseline, n)
            return out

        result = await _held_round(path, control, n, measure, kind, per_run)
        if "check" not in result:
            raise RuntimeError(f"not every run of {job['path']} was held: {result['errors']}")
    finally:
        tracemalloc.stop()
        await client.close()
        await control.aclose()
    return {
        "path": job["path"],
        "backend": job["backend"],
        "measure": job["measure"],
        "frames": frames,
        "runs": n,
        "baseline_rss": baseline_rss,
        **result,
    }


def _check(path: str, held: dict[str, Any], n: int, hold: int, seen0: tuple[int, int]) -> str:
    """Whether every run is exactly at the hold point: what the path has read, as it says;
    raises if not."""
    if held["held"] != n:
        raise RuntimeError(f"{held['held']} streams held, not {n}")
    if path in ("floor", "floor2"):
        read = Seen.floor_bytes - seen0[0]
        if read != n * held["bytes"]:
            raise RuntimeError(f"the floor read {read} bytes, not {n} × {held['bytes']}")
        return f"{n} × {held['bytes']} bytes read"
    seen = Seen.deltas - seen0[1]
    if seen != n * hold:
        raise RuntimeError(f"{path} saw {seen} text deltas, not {n} × {hold}")
    return f"{n} × {hold} deltas seen"


# --------------------------------------------------------------------------------------------
# The parent: every job, the summary
# --------------------------------------------------------------------------------------------


def _library_state() -> dict[str, Any]:
    """Which runmachine was measured: where it is imported from and, when that is this
    checkout's ``src``, its commit and the files of ``src/runmachine`` changed in the working
    tree (with a digest of each, as other changes may be under way)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    # Named relative to the checkout, never by a path of this machine.
    inside = SRC.is_relative_to(ROOT)
    state: dict[str, Any] = {"src": str(SRC.relative_to(ROOT)) if inside else "another checkout"}
    head = git("rev-parse", "--short", "HEAD") if SRC == ROOT / "src" else ""
    if head:
        state["head"] = head
        changed = [line[3:] for line in git("status", "--porcelain", "src/runmachine").splitlines()]
        state["changed"] = {
            path: hashlib.sha256((ROOT / path).read_bytes()).hexdigest()[:12]
            for path in changed
            if (ROOT / path).is_file()
        }
    return state


def _library_note(state: dict[str, Any]) -> str:
    if "changed" not in state:
        return f"runmachine imported from `{state['src']}`"
    changed = ", ".join(f"`{Path(p).name}`" for p in state["changed"]) or "no file"
    return f"runmachine at {state['head']}, {changed} changed in the working tree"


def run(
    port: int, cfg: dict[str, Any], run_worker: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """Every job of ``cfg`` (``FULL`` or ``QUICK``) through ``run_worker`` (a fresh process
    each), and the summary: per backend and path, the median RSS held per run over the
    repetitions, the traced bytes per run and their attribution; runmachine's ratios to the
    floor and the recipe; runmachine's sites with their callers (``sites_runs`` runs)."""
    out: dict[str, Any] = {
        "runs": cfg["runs"],
        "traced_runs": cfg["traced_runs"],
        "hold_deltas": cfg["hold_deltas"],
        "rss_reps": cfg["rss_reps"],
        "sites_runs": cfg["sites_runs"],
        "library": _library_state(),
        "backends": {},
    }
    for backend in cfg["backends"]:
        paths: dict[str, Any] = {}
        sites: dict[str, Any] | None = None
        for name in PATHS:
            job = {
                "kind": "memory",
                "backend": backend,
                "port": port,
                "path": name,
                "runs": cfg["runs"],
                "hold_deltas": cfg["hold_deltas"],
            }
            rss = [run_worker({**job, "measure": "rss"}) for _ in range(cfg["rss_reps"])]
            traced = run_worker({**job, "measure": "traced", "runs": cfg["traced_runs"]})
            every = [*rss, traced]
            if name == "runmachine" and cfg["sites_runs"]:
                sites = run_worker({**job, "measure": "sites", "runs": cfg["sites_runs"]})
                every.append(sites)
            paths[name] = {
                "rss_per_run": statistics.median(r["rss_per_run"] for r in rss),
                "rss_reps": [r["rss_per_run"] for r in rss],
                "rss_connections": [r["connections"] for r in rss],
                "traced_per_run": traced["traced_per_run"],
                "connections": traced["connections"],
                "idle_connections": traced["idle_connections"],
                "check": traced["check"],
                "completed": min(r["completed"] for r in every if r["runs"] == cfg["runs"]),
                "all_completed": all(r["completed"] == r["runs"] for r in every),
                "errors": [e for r in every for e in r["errors"]][:3],
                "attribution": traced["attribution"],
            }
        summary: dict[str, Any] = {"paths": paths}
        if sites is not None:
            summary["runmachine_sites"] = sites["attribution"]
        rm = paths["runmachine"]
        for measure in ("rss", "traced"):
            key = f"{measure}_per_run"
            for other in ("floor", "floor2", "recipe"):
                summary[f"{measure}_vs_{other}"] = rm[key] / paths[other][key]
        out["backends"][backend] = summary
    return out


#: The goal's floor: both streams through the same client, their connections kept as a run
#: keeps them (``floor2``).
GOAL_FLOOR = "floor2"


def goal_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The goal's rows (``run.goals()``'s shape): runmachine's held RSS per run within
    ``FLOOR_RATIO`` × ``GOAL_FLOOR``'s and ``RECIPE_RATIO`` × the recipe's, every run
    completed."""
    rows = []
    for backend, b in results["backends"].items():
        p = b["paths"]
        rm, fl, rc = (p[name]["rss_per_run"] for name in ("runmachine", GOAL_FLOOR, "recipe"))
        complete = all(p[name]["all_completed"] for name in PATHS)
        ok = complete and rm <= FLOOR_RATIO * fl and rm <= RECIPE_RATIO * rc
        rows.append(
            {
                "id": f"2-memory-held-{backend}",
                "goal": f"2. memory per run, {results['runs']:,} runs held mid submit stream: "
                f"≤ {FLOOR_RATIO} × {GOAL_FLOOR}, ≤ {RECIPE_RATIO} × recipe",
                "backend": backend,
                "measured": f"{_kib(rm)} KiB = {rm / fl:.2f} × {GOAL_FLOOR} ({_kib(fl)}), "
                f"{rm / rc:.2f} × recipe ({_kib(rc)}); "
                f"{rm / p['floor']['rss_per_run']:.2f} × floor ({_kib(p['floor']['rss_per_run'])})"
                + ("" if complete else "; not every run completed"),
                "verdict": "met" if ok else "missed",
            }
        )
    return rows


def _kib(value: float) -> str:
    return f"{value / KIB:.1f}"


LABELS = {
    "floor": "floor: both streams raw, one after the other (one connection)",
    "floor2": "floor2: both streams raw, the submit opened before the create closes",
    "runmachine": "runmachine",
    "recipe": "SDK recipe",
}


def table_lines(results: dict[str, Any]) -> list[str]:
    """The per-path figures, then the attribution of traced bytes per run by allocating group,
    per backend (markdown)."""
    n, hold, reps = results["runs"], results["hold_deltas"], results["rss_reps"]
    out = [
        f"**Memory per concurrent run, held**: {n:,} runs at once on one client, every one held "
        f"by the server right after text delta {hold} of its submit stream (scenario "
        '"many"); RSS with all held less RSS after a warm-up run, per run (median of '
        f"{reps} fresh process{'es' if reps > 1 else ''}), and tracemalloc's traced bytes at "
        f"the same point ({results['traced_runs']:,} runs, another process); "
        f"{_library_note(results['library'])}.",
        "",
        "| path | backend | completed | pool connections (RSS runs) | RSS held per run "
        "| traced per run | × floor (RSS / traced) | × floor2 (RSS / traced) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend, b in results["backends"].items():
        p = b["paths"]
        for name, label in LABELS.items():
            r = p[name]
            ratios = [
                f"{r['rss_per_run'] / p[f]['rss_per_run']:.2f} / "
                f"{r['traced_per_run'] / p[f]['traced_per_run']:.2f}"
                for f in ("floor", "floor2")
            ]
            out.append(
                f"| {label} | {backend} | {r['completed']}/{n} | "
                f"{', '.join(f'{c:,}' for c in r['rss_connections'])} | "
                f"{_kib(r['rss_per_run'])} KiB | {_kib(r['traced_per_run'])} KiB | "
                f"{' | '.join(ratios)} |"
            )
    for backend, b in results["backends"].items():
        p = b["paths"]
        groups = {name: p[name]["attribution"]["groups"] for name in PATHS}
        names = sorted(
            set().union(*groups.values()),
            key=lambda g: -max(abs(groups[name].get(g, 0)) for name in ("runmachine", "floor")),
        )
        out += [
            "",
            f"Traced KiB per run by where it was allocated ({backend}; runmachine's `sse.py` "
            "decodes the SDK's event objects: pydantic-core builds them from there).",
            "",
            "| allocated in | floor | floor2 | runmachine | runmachine − floor2 | recipe |",
            "|---|---|---|---|---|---|",
        ]
        rest = dict.fromkeys(PATHS, 0.0)
        for g in names:
            values = {name: groups[name].get(g, 0.0) for name in PATHS}
            if all(abs(v) < SMALL for v in values.values()):
                for name in PATHS:
                    rest[name] += values[name]
                continue
            out.append(_group_row(g, values))
        out.append(_group_row("everything else", rest))
        totals = {name: p[name]["traced_per_run"] for name in PATHS}
        out.append(_group_row("**total traced**", totals))
    return out


def _group_row(label: str, values: dict[str, float]) -> str:
    kib = {name: value / KIB for name, value in values.items()}
    return (
        f"| {label} | {kib['floor']:.2f} | {kib['floor2']:.2f} | {kib['runmachine']:.2f} | "
        f"{kib['runmachine'] - kib['floor2']:+.2f} | {kib['recipe']:.2f} |"
    )


def site_lines(results: dict[str, Any]) -> list[str]:
    """runmachine's own allocation sites at the hold point, and what it had libraries allocate
    (markdown; for reports, not the README)."""
    out: list[str] = []
    for backend, b in results["backends"].items():
        a = b.get("runmachine_sites")
        if a is None:
            continue
        out += [
            "",
            f"runmachine's own allocation sites ({backend}, {results['sites_runs']} runs held), "
            "bytes per run:",
            "",
            "| bytes | blocks | site ← callers | source |",
            "|---|---|---|---|",
        ]
        out += [
            f"| {s['bytes']:.0f} | {s['blocks']:.1f} | {' ← '.join(s['site'])} | `{s['source']}` |"
            for s in a["sites"]
        ]
        out += [
            "",
            f"Allocated by libraries under runmachine's frames ({backend}), bytes per run:",
            "",
            "| bytes | innermost runmachine frame | allocated in | source |",
            "|---|---|---|---|",
        ]
        out += [
            f"| {v['bytes']:.0f} | {v['frame']} | {v['allocated_in']} | `{v['source']}` |"
            for v in a["via"]
        ]
    return out


# --------------------------------------------------------------------------------------------
# Standalone
# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 runs, asyncio, one repetition")
    parser.add_argument("--runs", type=int, help="runs held at once (default: 1,000; quick 20)")
    parser.add_argument("--hold", type=int, help="text deltas before the hold point (default 3)")
    parser.add_argument("--backend", choices=BACKENDS, help="one backend only")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    bench.raise_fd_limit()
    cfg = dict(QUICK if args.quick else FULL)
    if args.runs:
        cfg["runs"] = args.runs
        cfg["traced_runs"] = min(cfg["traced_runs"], args.runs)
    if args.hold:
        cfg["hold_deltas"] = args.hold
    if args.backend:
        cfg["backends"] = (args.backend,)
    recording = _record.record(10, 200, 10)
    with tempfile.TemporaryDirectory() as tmp:
        server, port = bench.start_server(recording, Path(tmp))
        try:
            results = run(port, cfg, bench.run_worker)  # run.py --worker: memory.worker
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(10)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    for row in goal_rows(results):
        print(f"| {row['goal']} | {row['backend']} | {row['measured']} | **{row['verdict']}** |")
    print("\n".join(["", *table_lines(results), *site_lines(results)]))


if __name__ == "__main__":
    main()
