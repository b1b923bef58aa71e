"""The benchmarks run: ``python benchmarks/run.py --quick`` finishes and writes well-formed
results, with a met/missed verdict for every goal. No figure is asserted: timings are for the
README's Performance section, not for the test suite."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = {"asyncio", "trio"}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_quick_benchmarks_run_and_write_well_formed_results(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["schema"] == 3
    assert results["quick"] is True
    assert results["command"] == "python benchmarks/run.py --quick"
    assert set(results["sections"]) == set(run_module().SECTIONS)
    info = results["machine_info"]
    assert info["cores"] and info["python"] and info["os"]

    # 1. throughput: every path on both backends, positive medians over >= 5 repetitions
    assert set(results["throughput"]) == BACKENDS
    for t in results["throughput"].values():
        assert set(t["paths"]) == {"floor", "sdk_iter", "sdk_handler", "runmachine"}
        for p in t["paths"].values():
            assert len(p["times_s"]) >= 5
            assert all(_number(x) and x > 0 for x in p["times_s"])
            assert p["median_s"] > 0
        assert _number(t["r_vs_handler"]) and _number(t["r_vs_floor"])
    # 2. handoff: 1 and 16 calls, runmachine, the recipe and the floor
    for h in results["handoff"].values():
        assert set(h) == {"1", "16"}
        for d in h.values():
            for side in ("runmachine", "recipe", "floor"):
                assert d[side]["samples"] > 0 and _number(d[side]["median_ms"])
                assert d[side]["median_ms"] <= d[side]["p99_ms"] <= d[side]["max_ms"]
    # 3. fan-out
    for f in results["fanout"].values():
        for side in ("runmachine", "runmachine_default", "recipe"):
            assert f[side]["round_s"] > 0 and f[side]["slowest_tool_s"] > 0
    # 4. many runs: all completed (unpaced); the paced search tried something, on every
    # transport and backend the configuration names
    for u in results["many"]["unpaced"].values():
        for r in u.values():
            assert r["completed"] == r["runs"], r["errors"]
    config = results["config"]
    assert set(results["paced"]) == set(config["paced_transports"])
    for by_backend in results["paced"].values():
        assert set(by_backend) <= set(config["paced_backends"])
        for paths in by_backend.values():
            assert set(paths) == {"server", "floor", "runmachine", "sdk_handler"}
            assert all(r["trials"] for r in paths.values())
    # 5. the decode path: the parser's figures and one run event's, three ways
    decode = results["decode"]
    assert all(_number(v) and v > 0 for v in decode["parser"].values())
    assert all(_number(v) and v > 0 for v in decode["text"].values())
    for figures in (decode["run_event"]["cpu_us"], decode["run_event"]["retained_bytes"]):
        assert set(figures) == {"new", "old", "sdk"}
        assert all(_number(v) and v > 0 for v in figures.values())
    # 5. the machine itself
    for c in results["machine"].values():
        assert c["us_per_transition"] > 0 and c["bytes_per_machine"] > 0
        assert c["bytes_per_history_record"] > 0

    # memory held: every path held at the same point, then completed
    for by_backend in results["memory"]["backends"].values():
        for name, p in by_backend["paths"].items():
            assert p["all_completed"], (name, p["errors"])
            assert _number(p["rss_per_run"]) and p["traced_per_run"] > 0
            assert p["check"] or name == "recipe"
    # scale: both sizes of both paths, every run completed
    for by_path in results["scale"]["runs"].values():
        for name in ("runmachine", "floor"):
            for r in by_path[name].values():
                assert r["completed"] == r["runs"], r["errors"]
    # agent-session turns
    assert set(results["sessions"]["throughput"]) == set(results["sessions"]["config"]["backends"])

    # Every goal row is present with a verdict.
    ids = {g["id"] for g in results["goals"]}
    expected = {f"5-throughput-{b}" for b in BACKENDS} | {f"5-fanout-{b}" for b in BACKENDS}
    expected |= {f"1-handoff-{n}-{b}" for n in (1, 16) for b in BACKENDS}
    expected |= {f"1-handoff-bound-{n}-{b}" for n in (1, 16) for b in BACKENDS}
    expected |= {f"2-memory-held-{b}" for b in results["memory"]["backends"]}
    expected |= {
        f"3-{row}-{b}"
        for row in ("scale", "scale-admitted", "creation", "leak", "starts")
        for b in results["scale"]["runs"]
    }
    expected |= {
        f"4-paced-floor-{t}-{b}" for t, by_backend in results["paced"].items() for b in by_backend
    }
    expected |= {f"4-paced-sdk-aiohttp-{b}" for b in results["paced"].get("aiohttp", {})}
    expected |= {"5-parser-linear", "5-text-linear"}
    sessions = results["sessions"]
    expected |= {f"6-throughput-{b}" for b in sessions["throughput"]}
    expected |= {f"6-handoff-{n}-{b}" for b, h in sessions["handoff"].items() for n in h}
    expected |= {f"6-memory-{b}" for b in sessions["memory"]}
    assert ids == expected
    assert all(g["verdict"] in ("met", "missed") and g["measured"] for g in results["goals"])
    assert "| goal | backend | measured | verdict |" in proc.stdout


def run_module() -> Any:
    return _bench_modules()[2]


def _bench_modules() -> tuple[Any, Any, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _paths
    import _record
    import run

    return _paths, _record, run


def _aged(recording: dict[str, list[list[bytes]]], seconds: int) -> dict[str, list[list[bytes]]]:
    """The recording as if it had been made ``seconds`` ago."""
    import re

    def older(frame: bytes) -> bytes:
        return re.sub(
            rb'"([a-z_]+_at)":(\d{9,})', lambda m: b'"%s":%d' % (m[1], int(m[2]) - seconds), frame
        )

    return {k: [[older(f) for f in seg] for seg in segs] for k, segs in recording.items()}


@pytest.mark.anyio
async def test_a_replayed_round_is_never_past_its_deadline(tmp_path: Path) -> None:
    """A benchmark that has run for longer than the recorded ``expires_at`` allows still measures
    the plain path: the replay server re-stamps each run's times as it serves them. A run that
    takes an error path anyway (here: a deadline margin larger than the run's whole life) fails
    the benchmark loudly instead of being measured."""
    _paths, _record, run = _bench_modules()
    recording = _aged(_record.record(10, 10, 10), 3600)
    server, port = run.start_server(recording, tmp_path)
    client = _paths.make_client(port)
    _paths.TOOL_SLEEP[0] = 0.001  # the tools of "tools64" each sleep, so a deadline can cut them
    try:
        tools = _paths.scenario(client, "tools64")
        assert await _paths.runmachine_marked(tools) == 1
        with pytest.raises(_paths.ErrorPath, match=r"got an error output.*expires_at"):
            await _paths.runmachine_marked(tools, deadline_margin=3600)
    finally:
        await client.close()
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)
        assert server.stdout is not None
        server.stdout.close()


def test_one_backend_measured_again_replaces_its_figures_and_keeps_the_others() -> None:
    """``run.py --only scale --backend asyncio`` merges into the results file: asyncio's figures
    are the new ones, trio's stay as they were, at whatever depth the section keys backends."""
    run = run_module()
    old = {"runs": {"asyncio": {"n": 1}, "trio": {"n": 2}}, "config": {"backends": ["x"]}}
    new = {"runs": {"asyncio": {"n": 3}}, "config": {"backends": ["asyncio"]}}
    assert run._merged(old, new) == {
        "runs": {"asyncio": {"n": 3}, "trio": {"n": 2}},
        "config": {"backends": ["asyncio"]},
    }
    assert run._merged(None, new) == new
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--backend", "trio"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and "name them with --only" in proc.stderr
