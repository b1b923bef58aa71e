"""The SSE decode path alone, no I/O: the parser's cost per byte, and one run event's decode.

    python benchmarks/decode.py            # full
    python benchmarks/decode.py --quick    # the same, fewer repetitions

Prints, as JSON (the figures ``measure`` returns):

- ``parser``: CPU seconds for ``SSEParser`` to read one 1 MB ``data:`` line fed in 1 KiB chunks
  and in 64 KiB chunks, and a 4 MB line in 1 KiB chunks. A parser that re-scans its buffer on
  every feed is quadratic: the 1 KiB figure grows with the line (its ratio to the 64 KiB one
  was about 33 when it did: 0.56 s against 0.017 s), and so does the time per MB of the 4 MB
  line; a linear one pays only a small cost per feed, and its time per MB stays flat
  (``ratio_per_mb_4mb_over_1mb`` near 1).
- ``run_event``: one ``thread.run.requires_action`` frame recorded from the emulator, with
  ``instructions: null`` as the real API sends it (so the SDK's declared types refuse it),
  decoded by three paths: ``new`` (``build_event`` now: its tolerant tier), ``old`` (what
  ``build_event`` did before that tier: the refused validation, ``json.loads`` and the SDK
  class's ``construct``) and ``sdk`` (the SDK's own stream decoding: ``json.loads`` and
  ``construct_type`` against the ``AssistantStreamEvent`` union, as ``AsyncStream`` does for a
  client without strict validation). For each: CPU µs per event (each dropped once built, as a
  stream drops it), and the bytes tracemalloc sees held per decoded event while many are kept.

- ``text``: CPU µs per text delta for ``RunCore`` to take a message of ``small`` and of
  ``large`` (4 × as many) deltas of the recording, no hooks: the text is appended to the
  snapshot each time, and an append that copies the text so far is quadratic (``ratio`` well
  above 1; it was 8 × for 100,000 deltas against 25,000).

Figures are medians over repetitions; compare the ratios, taken side by side in one process.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import _record
import anyio
from openai._models import construct_type
from openai.types.beta import AssistantStreamEvent
from pydantic import ValidationError

from runmachine.backends.sse import EVENT_TYPES, SSEParser, build_event
from runmachine.core import RunCore

EVENT = "thread.run.requires_action"
KIB = 1024
MB = 1_000_000


def _median_cpu(work: Callable[[], object], reps: int) -> float:
    """The median CPU seconds of ``work()`` over ``reps`` runs, after one warm-up run."""
    work()
    times = []
    for _ in range(reps):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return statistics.median(times)


def _feed(size: int, chunk: int) -> Callable[[], object]:
    """Feeding a parser one ``size``-byte data line, ``chunk`` bytes at a time."""
    line = b"data: " + b"x" * size + b"\n\n"
    chunks = [line[i : i + chunk] for i in range(0, len(line), chunk)]

    def work() -> object:
        parser = SSEParser()
        out = [parser.feed(c) for c in chunks]
        if out[-1] != [(None, "x" * size)]:
            raise AssertionError("the parser did not return the line")
        return out

    return work


def parser_figures(reps: int) -> dict[str, float]:
    small = _median_cpu(_feed(MB, KIB), reps)
    large = _median_cpu(_feed(MB, 64 * KIB), reps)
    long = _median_cpu(_feed(4 * MB, KIB), reps)
    return {
        "chunk_1k_1mb_s": small,
        "chunk_64k_1mb_s": large,
        "ratio_1k_over_64k": small / large,
        "chunk_1k_4mb_s": long,
        "s_per_mb_4mb": long / 4,
        "ratio_per_mb_4mb_over_1mb": long / 4 / small,
    }


def _old_build_event(name: str, data: str) -> Any:
    """``build_event`` before its tolerant tier, for a frame its declared types refuse."""
    cls = EVENT_TYPES[name]
    try:
        return cls.model_validate_json('{"event":' + json.dumps(name) + ',"data":' + data + "}")
    except ValidationError:
        pass
    return cls.construct(event=name, data=json.loads(data))


def _sdk_decode(name: str, data: str) -> Any:
    """What the SDK's ``AsyncStream`` yields for the frame (``_process_response_data`` of a
    client without strict validation: ``construct_type`` against the whole union)."""
    return construct_type(
        value={"data": json.loads(data), "event": name}, type_=AssistantStreamEvent
    )


PATHS: dict[str, Callable[[str, str], Any]] = {
    "new": build_event,
    "old": _old_build_event,
    "sdk": _sdk_decode,
}


def _retained(decode: Callable[[str, str], Any], data: str, count: int) -> float:
    """Bytes tracemalloc sees held per event while ``count`` decoded events are kept."""
    decode(EVENT, data)  # validators built, caches warm: only the events themselves are counted
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [decode(EVENT, data) for _ in range(count)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del kept
    return held / count


def run_event_figures(data: str, reps: int, events: int) -> dict[str, Any]:
    cpu: dict[str, float] = {}
    held: dict[str, float] = {}
    for label, decode in PATHS.items():

        def work(decode: Callable[[str, str], Any] = decode) -> None:
            for _ in range(events):
                decode(EVENT, data)  # dropped, as a stream drops it: no garbage collector work

        cpu[label] = _median_cpu(work, reps) / events * 1e6
        held[label] = _retained(decode, data, events)
    return {
        "event": EVENT,
        "data_bytes": len(data.encode()),
        "cpu_us": cpu,
        "retained_bytes": held,
        "cpu_old_over_new": cpu["old"] / cpu["new"],
        "cpu_sdk_over_new": cpu["sdk"] / cpu["new"],
        "retained_old_over_new": held["old"] / held["new"],
    }


def requires_action_data(recording: _record.Recording) -> str:
    """The data of the ``requires_action`` frame of the one-call tool round (``tools1``)."""
    for name, data in SSEParser().feed(b"".join(recording["tools1"][0])):
        if name == EVENT:
            if '"instructions":null' not in data:
                raise AssertionError("the emulator no longer sends instructions: null")
            return data
    raise AssertionError(f"no {EVENT} frame in the tools1 recording")


def _text_events(recording: _record.Recording) -> tuple[list[Any], Any]:
    """The events of the recording's "text" scenario up to its first text delta, and a later
    delta (fed again and again: the core never changes an event)."""
    parser = SSEParser()
    events = [
        build_event(name, data)
        for frame in recording["text"][0]
        for name, data in parser.feed(frame)
        if not data.startswith("[DONE]")
    ]
    deltas = [i for i, e in enumerate(events) if e.event == "thread.message.delta"]
    return events[: deltas[0] + 1], events[deltas[1]]


def _cpu_per_delta(head: list[Any], delta: Any, count: int) -> float:
    async def work() -> float:
        core = RunCore()
        for event in head:
            await core.feed(event)
        feed = core.feed
        started = time.process_time()
        for _ in range(count):
            await feed(delta)
        elapsed = time.process_time() - started
        if len(core.text()) < count:
            raise AssertionError("the deltas were not all taken")
        return elapsed / count * 1e6

    return anyio.run(work)


def text_figures(recording: _record.Recording, reps: int, small: int) -> dict[str, float]:
    head, delta = _text_events(recording)
    a = statistics.median(_cpu_per_delta(head, delta, small) for _ in range(reps))
    b = statistics.median(_cpu_per_delta(head, delta, 4 * small) for _ in range(reps))
    return {"small": small, "large": 4 * small, "us_small": a, "us_large": b, "ratio": b / a}


def measure(quick: bool, recording: _record.Recording | None = None) -> dict[str, Any]:
    """Every figure of the module docstring; ``recording`` (``_record.record``'s) saves
    recording a small one from the emulator."""
    reps = 3 if quick else 7
    events = 500 if quick else 5000
    recording = recording or _record.record(10, 1, 1)
    data = requires_action_data(recording)
    return {
        "config": {"quick": quick, "reps": reps, "events": events},
        "parser": parser_figures(reps),
        "run_event": run_event_figures(data, reps, events),
        "text": text_figures(recording, reps, 10_000 if quick else 25_000),
    }


if __name__ == "__main__":
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--quick", action="store_true", help="fewer repetitions")
    print(json.dumps(measure(options.parse_args().quick), indent=2))
