"""A lean HTTP/1.1 server that replays recorded agent-session turns (``_record.record_sessions``)
byte for byte, but for their timestamps: the sessions counterpart of ``_replay.py``.

Run as its own process (``python benchmarks/_replay_sessions.py RECORDING``): it prints its port
on the first line of stdout and serves until its stdin closes. Clients point the SDK at
``http://127.0.0.1:PORT/<scenario>/<hold>/v1`` (``hold``: 0 or 1). Any session id of the length
of the recorded one is served as that session, the recorded id replaced by it in every body
(the lengths stay the same), so turns held at once each use a session of their own on one
client. The routes are the ones runmachine's ``turn()`` and the SDK's ``sessions.stream()``
request, and nothing else:

- ``GET .../agents/sessions/{id}``: the session, idle, as recorded;
- ``GET .../agents/sessions/{id}/turns``: the recorded page of its turns;
- ``GET .../agents/sessions/{id}/events``: the session's live stream, as a live server writes it:
  the status event of a new stream at once; once the session's input message has arrived, the
  frames it starts (for a tool turn, up to the ``agent.session.requires_action``); for a tool
  turn, once a result for every call has arrived (and, with ``hold`` 1, ``POST /release`` has
  come since), the rest of the turn. Then the stream stays open until the client leaves (a live
  stream never ends on its own). Each event is written on its own, the server yielding to its
  loop between events;
- ``POST .../agents/sessions/{id}/events``: ``202``, counted for the session's open stream by
  the input events it carries. A ``tool_result`` with ``"success":false`` is answered ``400``:
  a tool that failed is an error path, and the client's run must fail loudly;
- ``GET /held/<n>``: answered once ``n`` streams wait on ``POST /release``, which lets them go
  on.

Every response carries a ``Date`` header, and every ``*_at`` timestamp is shifted by the time
since the recording as each response starts (``_replay.py`` does the same for runs). Anything
else is answered 404, so a request the replay does not know fails the client's turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import pickle
import sys
import time
from email.utils import formatdate
from typing import Any

from _replay import HEAD, STAMP, _chunk, _restamped

MESSAGE = b'"agent.session.input.message"'
RESULT = b'"agent.session.input.tool_result"'


def _error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()


#: The answer to a failed tool's result: the run took an error path.
FAILED_RESULT = _error(
    "the benchmark replay got a tool_result with success false: a tool failed, so this run "
    "would measure an error path"
)
NO_STREAM = _error("no event stream of this session is open: subscribe before sending input")


def _response(status: bytes, body: bytes = b"") -> bytes:
    """A whole answer, JSON ``body`` (if any) included; an error is not to be retried."""
    head = [b"HTTP/1.1 " + status]
    if body:
        head.append(b"content-type: application/json")
    if not status.startswith(b"2"):
        head.append(b"x-should-retry: false")
    head += [b"content-length: %d" % len(body), b"x-request-id: req_replay"]
    head.append(b"date: " + _date(time.time()))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _not_served(method: str, path: str) -> bytes:
    return _response(
        b"404 Not Found", _error(f"the sessions replay does not serve {method} {path}")
    )


def _date(now: float) -> bytes:
    return formatdate(now, usegmt=True).encode()


class Recorded:
    """One recorded turn, ready to serve at any time: its ``*_at`` stamps shifted by the time
    since it was recorded (rendered once per second at most), for any session id."""

    def __init__(self, turn: dict[str, Any]) -> None:
        self.turn = turn
        self.calls: int = turn["calls"]
        self.session_id: bytes = turn["session_id"].encode()
        stamps = [
            int(m[2])
            for blob in [turn["session"], *(f for part in turn["stream"] for f in part)]
            for m in STAMP.finditer(blob)
        ]
        self.recorded_at = max(stamps) if stamps else None
        self._rendered: tuple[int, Rendered] | None = None

    def serves(self, session_id: str) -> bool:
        return len(session_id) == len(self.session_id) and session_id.startswith("sess_")

    def at(self, now: float, session_id: str) -> Rendered:
        shift = 0 if self.recorded_at is None else max(int(now) - self.recorded_at, 0)
        if self._rendered is None or self._rendered[0] != shift:
            self._rendered = (shift, Rendered(self.turn, shift))
        rendered = self._rendered[1]
        sid = session_id.encode()
        return rendered if sid == self.session_id else rendered.as_session(self.session_id, sid)


class Rendered:
    """A turn's bodies with their stamps shifted by ``shift`` seconds: the session, the turns
    page, and the stream's parts as HTTP chunks (one per event)."""

    def __init__(self, turn: dict[str, Any], shift: int) -> None:
        self.session: bytes = _restamped(turn["session"], shift)
        self.turns: bytes = turn["turns"]
        self.parts = [[_chunk(_restamped(f, shift)) for f in part] for part in turn["stream"]]

    def as_session(self, recorded: bytes, session_id: bytes) -> Rendered:
        """The same bodies for session ``session_id`` (as long as the ``recorded`` id)."""
        other = copy.copy(self)
        other.session = self.session.replace(recorded, session_id)
        other.parts = [[c.replace(recorded, session_id) for c in part] for part in self.parts]
        return other


class Stream:
    """What the open event stream of one session waits on."""

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.results = 0
        self.started = asyncio.Event()
        self.answered = asyncio.Event()


class Server:
    """The replay of a ``SessionRecording``: one open stream per (scenario, session), and the
    count of streams held for ``POST /release``."""

    def __init__(self, recording: dict[str, dict[str, Any]]) -> None:
        self.turns = {name: Recorded(turn) for name, turn in recording.items()}
        self.streams: dict[tuple[str, str], Stream] = {}
        self.release = asyncio.Event()
        self.held = 0
        self.holding = asyncio.Condition()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
                body = await reader.readexactly(length) if length else b""
                if not await self.answer(method, path.split("?", 1)[0], body, reader, writer):
                    break
        writer.close()

    async def answer(
        self,
        method: str,
        path: str,
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; False when the connection is done (a stream the client left)."""
        if path.startswith("/held/"):
            n = int(path[6:])
            async with self.holding:
                await self.holding.wait_for(lambda: self.held >= n)
            writer.write(_response(b"200 OK", b"{}"))
            return True
        if path == "/release" and method == "POST":
            self.release.set()
            self.release = asyncio.Event()
            writer.write(_response(b"200 OK", b"{}"))
            return True
        parts = path.strip("/").split("/")
        # <scenario>/<hold>/v1/agents/sessions/<id>[/events | /turns]
        recorded = self.turns.get(parts[0]) if len(parts) >= 6 else None
        if recorded is None or parts[2:5] != ["v1", "agents", "sessions"]:
            writer.write(_not_served(method, path))
            return True
        sid, rest = parts[5], parts[6:]
        if not recorded.serves(sid):
            writer.write(_not_served(method, path))
            return True
        key = (parts[0], sid)
        if method == "GET" and not rest:
            writer.write(_response(b"200 OK", recorded.at(time.time(), sid).session))
        elif method == "GET" and rest == ["turns"]:
            writer.write(_response(b"200 OK", recorded.at(time.time(), sid).turns))
        elif method == "POST" and rest == ["events"]:
            writer.write(self.take(key, body))
        elif method == "GET" and rest == ["events"]:
            stream = self.streams[key] = Stream(recorded.calls)
            try:
                rendered = recorded.at(time.time(), sid)
                await self.serve_stream(rendered, stream, parts[1] == "1", reader, writer)
            finally:
                if self.streams.get(key) is stream:
                    del self.streams[key]
            return False
        else:
            writer.write(_not_served(method, path))
        return True

    def take(self, key: tuple[str, str], body: bytes) -> bytes:
        """The answer to an input POST, counted for the open stream of ``key`` (scenario,
        session)."""
        stream = self.streams.get(key)
        if stream is None:
            return _response(b"409 Conflict", NO_STREAM)
        if RESULT in body and b'"success":false' in body.replace(b" ", b""):
            return _response(b"400 Bad Request", FAILED_RESULT)
        if MESSAGE in body:
            stream.started.set()
        stream.results += body.count(RESULT)
        if stream.calls and stream.results >= stream.calls:
            stream.answered.set()
        return _response(b"202 Accepted")

    async def serve_stream(
        self,
        rendered: Rendered,
        stream: Stream,
        hold: bool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        left = asyncio.ensure_future(reader.read(1))  # b"" once the client has gone
        try:
            writer.write(HEAD % _date(time.time()))
            parts = rendered.parts
            await self.write(writer, parts[0])
            if not await _first(stream.started.wait(), left):
                return
            await self.write(writer, parts[1])
            if len(parts) > 2:
                if not await _first(stream.answered.wait(), left):
                    return
                if hold:
                    async with self.holding:
                        self.held += 1
                        self.holding.notify_all()
                    try:
                        if not await _first(self.release.wait(), left):
                            return
                    finally:
                        self.held -= 1
                await self.write(writer, parts[2])
            await left
        finally:
            left.cancel()

    @staticmethod
    async def write(writer: asyncio.StreamWriter, chunks: list[bytes]) -> None:
        transport = writer.transport
        for chunk in chunks:
            writer.write(chunk)
            if transport.get_write_buffer_size() > 65536:
                await writer.drain()
            else:
                await asyncio.sleep(0)


async def _first(wait: Any, left: asyncio.Future[bytes]) -> bool:
    """Wait for ``wait`` or for the client to leave (``left``); True when ``wait`` came first."""
    waiting = asyncio.ensure_future(wait)
    await asyncio.wait({waiting, left}, return_when=asyncio.FIRST_COMPLETED)
    if waiting.done():
        return True
    waiting.cancel()
    return False


async def main(recording: dict[str, dict[str, Any]]) -> None:
    server = Server(recording)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, backlog=4096)
    print(srv.sockets[0].getsockname()[1], flush=True)
    # Serve until the parent closes our stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    srv.close()


if __name__ == "__main__":
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with open(sys.argv[1], "rb") as f:
        loaded = pickle.load(f)
    asyncio.run(main(loaded))
