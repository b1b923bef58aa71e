"""A lean HTTP/1.1 server that replays recorded emulator streams, pre-rendered, byte for byte
(but for their timestamps).

Run as its own process (``python benchmarks/_replay.py RECORDING``): it prints its port on the
first line of stdout and serves until its stdin closes. The benchmark clients point the SDK at
``http://127.0.0.1:PORT/<scenario>/<pace>/v1``:

- ``POST .../runs`` (and ``.../threads/runs``) answer with segment 0 of the scenario, and
  ``POST .../submit_tool_outputs`` with segment 1 (every benchmark scenario has at most one
  tool round);
- with ``pace`` 0, each SSE event is written on its own and the server yields to its loop
  between events, as a live server does; with ``pace`` a number of milliseconds > 0, the
  ``thread.message.delta`` events go out one per tick of a single process-wide ticker, that far
  apart (one timer for every open stream, so thousands of paced streams cost one write each per
  tick);
- with ``pace`` ``hold<K>`` (``hold3``), streams go out unpaced, but segment 1 stops right after
  its ``K``-th text delta and is held there until ``POST /release``: thousands of runs can be
  held at the very same point of their submit stream at once (``benchmarks/memory.py``).
  ``GET /held`` answers how many streams are held (a JSON object: ``held``, and ``bytes``, the
  body bytes each held stream has been sent); ``GET /held?n=N`` answers once at least ``N``
  are, every byte before the hold point handed to the kernel. ``POST /release`` lets every held
  stream finish and answers how many it released (``released``).

Every response carries a ``Date`` header, as a live server's do (the driver reads the server's
clock from it), and the run objects' timestamps (``created_at``, ``expires_at``, ...) are
re-stamped as each response starts, shifted by the time since the recording: a round's deadline
is as far off as on a live server however long the benchmark has been running (the recording's
own ``expires_at`` passes ten minutes after it was made).

Responses use chunked transfer encoding so the SDK's connections stay alive between requests.
``GET .../runs`` (a client listing a thread's runs after a lost stream) is answered with an empty
list. Anything else is answered 404. Nothing is parsed from request bodies: the bytes are the
emulator's, recorded by ``_record.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import re
import sys
import time
from email.utils import formatdate
from typing import Any

DELTA = b"event: thread.message.delta\n"
END = b"0\r\n\r\n"
HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n"
    b"x-request-id: req_replay\r\n"
    b"date: %s\r\n"
    b"\r\n"
)
EMPTY_LIST = b'{"object":"list","data":[],"first_id":null,"last_id":null,"has_more":false}'
NOT_FOUND_BODY = b'{"error":{"message":"not found","type":"invalid_request_error"}}'
NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
    + f"content-length: {len(NOT_FOUND_BODY)}\r\n\r\n".encode()
    + NOT_FOUND_BODY
)


JSON_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"

#: A Unix timestamp field of a run, step or message object, as the emulator writes it.
STAMP = re.compile(rb'"([a-z_]+_at)":(\d{9,})')


def _chunk(frame: bytes) -> bytes:
    return b"%x\r\n" % len(frame) + frame + b"\r\n"


def _restamped(frame: bytes, shift: int) -> bytes:
    return STAMP.sub(lambda m: b'"%s":%d' % (m[1], int(m[2]) + shift), frame)


class Segment:
    """One recorded stream, ready to serve at any time: its timestamps shifted by the time since
    it was recorded (``at``), rendered once per second at most."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        stamps = [int(m[2]) for f in frames for m in STAMP.finditer(f) if m[1] == b"created_at"]
        self.recorded_at = max(stamps) if stamps else None
        self._rendered: tuple[int, Rendered] | None = None

    def at(self, now: float) -> Rendered:
        shift = 0 if self.recorded_at is None else max(int(now) - self.recorded_at, 0)
        if self._rendered is None or self._rendered[0] != shift:
            frames = [_restamped(f, shift) for f in self.frames] if shift else self.frames
            self._rendered = (shift, Rendered(frames))
        return self._rendered[1]


def hold_index(frames: list[bytes], deltas: int) -> int:
    """How many frames come before the hold point ``deltas`` text deltas into ``frames``."""
    seen = 0
    for i, frame in enumerate(frames):
        if frame.startswith(DELTA):
            seen += 1
            if seen == deltas:
                return i + 1
    raise ValueError(f"a hold after {deltas} text deltas: the stream has only {seen}")


class Rendered:
    """One stream's chunks, split for pacing: ``head`` before the first delta, then ``steps``
    (each delta with the non-delta frames that follow it up to the next delta)."""

    def __init__(self, frames: list[bytes]) -> None:
        chunks = [_chunk(f) for f in frames]
        self.frames = frames
        self.all = chunks
        first = next((i for i, f in enumerate(frames) if f.startswith(DELTA)), len(frames))
        self.head = b"".join(chunks[:first])
        self.steps: list[bytes] = []
        for i in range(first, len(frames)):
            if frames[i].startswith(DELTA) or not self.steps:
                self.steps.append(chunks[i])
            else:
                self.steps[-1] += chunks[i]

    def held(self, deltas: int) -> tuple[list[bytes], list[bytes], int]:
        """The chunks before and after the hold point ``deltas`` text deltas in, and the body
        bytes before it."""
        index = hold_index(self.frames, deltas)
        return self.all[:index], self.all[index:], sum(map(len, self.frames[:index]))


class Ticker:
    """Writes the next delta of every paced stream once per period."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.streams: list[list[Any]] = []  # [transport, steps, index, done future]
        self.task: asyncio.Task[None] | None = None

    def add(self, transport: Any, steps: list[bytes]) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.streams.append([transport, steps, 0, done])
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._run())
        return done

    async def _run(self) -> None:
        due = time.monotonic() + self.period
        while self.streams:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            due += self.period
            keep = []
            for stream in self.streams:
                transport, steps, index, done = stream
                if transport.is_closing():
                    if not done.done():
                        done.set_result(None)
                    continue
                transport.write(steps[index])
                stream[2] = index + 1
                if index + 1 == len(steps):
                    done.set_result(None)
                else:
                    keep.append(stream)
            self.streams = keep


class Hold:
    """The streams held mid-way, until ``release``."""

    def __init__(self) -> None:
        self.held = 0
        self.bytes = 0
        self.released = asyncio.Event()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def hold(self, body_bytes: int) -> None:
        """Count one more stream held (``body_bytes`` sent), and wait for the next release."""
        released = self.released
        self.held += 1
        self.bytes = body_bytes
        for n, waiter in self._waiters:
            if self.held >= n and not waiter.done():
                waiter.set_result(None)
        self._waiters = [(n, w) for n, w in self._waiters if not w.done()]
        await released.wait()

    async def until(self, n: int) -> None:
        """Wait until at least ``n`` streams are held."""
        if self.held < n:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append((n, waiter))
            await waiter

    def release(self) -> int:
        """Let every held stream go on; how many there were."""
        released, self.held = self.held, 0
        self.released.set()
        self.released = asyncio.Event()
        return released


class Server:
    def __init__(self, recording: dict[str, list[list[bytes]]]) -> None:
        self.segments = {name: [Segment(s) for s in segs] for name, segs in recording.items()}
        self.tickers: dict[int, Ticker] = {}
        self.holds = Hold()

    def _route(self, path: str) -> tuple[Segment, int, int | None] | None:
        """The segment ``path`` asks for, its pace in ms, and its hold point (text deltas in),
        if it is held."""
        parts = path.split("?", 1)[0].strip("/").split("/")
        if len(parts) < 4 or parts[0] not in self.segments:
            return None
        segments = self.segments[parts[0]]
        if parts[-1] == "submit_tool_outputs":
            index = 1
        elif parts[-1] == "runs":
            index = 0
        else:
            return None
        if index >= len(segments):
            return None
        if parts[1].startswith("hold"):
            return segments[index], 0, int(parts[1][4:]) if index == 1 else None
        return segments[index], int(parts[1]), None

    async def _control(self, method: str, path: str) -> bytes | None:
        """The answer to a control request (``/held``, ``/release``), or None for another."""
        route, _, query = path.partition("?")
        if route == "/held" and method == "GET":
            if query.startswith("n="):
                await self.holds.until(int(query[2:]))
            body = json.dumps({"held": self.holds.held, "bytes": self.holds.bytes}).encode()
        elif route == "/release" and method == "POST":
            body = json.dumps({"released": self.holds.release()}).encode()
        else:
            return None
        return JSON_HEAD % len(body) + body

    @staticmethod
    async def _unpaced(writer: asyncio.StreamWriter, chunks: list[bytes]) -> None:
        """Each chunk written on its own, yielding to the loop between them."""
        transport = writer.transport
        for chunk in chunks:
            writer.write(chunk)
            if transport.get_write_buffer_size() > 65536:
                await writer.drain()
            else:
                await asyncio.sleep(0)

    @staticmethod
    async def _flushed(writer: asyncio.StreamWriter) -> None:
        """Wait until every byte written is handed to the kernel."""
        transport = writer.transport
        transport.set_write_buffer_limits(high=0)  # drain() now waits for an empty buffer
        try:
            await writer.drain()
        finally:
            transport.set_write_buffer_limits()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if length:
                    await reader.readexactly(length)
                control = await self._control(method, path)
                if control is not None:
                    writer.write(control)
                    continue
                route = self._route(path)
                if route is not None and method == "GET":
                    # Listing a thread's runs (a client reading back after a lost stream): this
                    # server keeps none.
                    writer.write(JSON_HEAD % len(EMPTY_LIST) + EMPTY_LIST)
                    continue
                if route is None:
                    writer.write(NOT_FOUND)
                    continue
                segment, pace, hold = route
                now = time.time()
                rendered = segment.at(now)
                writer.write(HEAD % formatdate(now, usegmt=True).encode())
                if pace:
                    writer.write(rendered.head)
                    ticker = self.tickers.get(pace)
                    if ticker is None:
                        ticker = self.tickers[pace] = Ticker(pace / 1000)
                    if rendered.steps:
                        await ticker.add(transport, rendered.steps)
                elif hold is not None:
                    before, after, sent = rendered.held(hold)
                    await self._unpaced(writer, before)
                    await self._flushed(writer)
                    await self.holds.hold(sent)
                    await self._unpaced(writer, after)
                else:
                    await self._unpaced(writer, rendered.all)
                writer.write(END)
                await writer.drain()
        writer.close()


async def main(recording: dict[str, list[list[bytes]]]) -> None:
    server = Server(recording)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, backlog=4096)
    port = srv.sockets[0].getsockname()[1]
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    # Serve until the parent closes our stdin.
    await loop.run_in_executor(None, sys.stdin.read)
    srv.close()


if __name__ == "__main__":
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with open(sys.argv[1], "rb") as f:
        loaded = pickle.load(f)
    asyncio.run(main(loaded))
