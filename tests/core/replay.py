"""Serve the raw SSE bodies of real recordings over real HTTP, so the SDK reads them off a socket.

A stdlib HTTP server in a thread: each POST whose path matches a recorded request answers with the
recorded status, headers and body bytes, chunk by chunk, as the real server sent them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

RECORDINGS = Path(__file__).resolve().parent.parent / "data" / "recordings"


def load(name: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((RECORDINGS / name).read_text())["Entries"]
    return entries


def sse_events(entry: dict[str, Any]) -> list[tuple[str, str]]:
    """(event name, data) pairs of a recorded SSE body, in order."""
    text = "".join(entry["ResponseBody"])
    pairs = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            pairs.append((lines["event"], lines.get("data", "")))
    return pairs


@contextmanager
def serve_recording(entries: list[dict[str, Any]]) -> Iterator[str]:
    """Serve ``entries`` on 127.0.0.1; yields the base URL (``http://127.0.0.1:PORT/v1``)."""
    by_path = {urlsplit(e["RequestUri"]).path: e for e in entries}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            entry = by_path.get(urlsplit(self.path).path)
            if entry is None:
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            body = entry["ResponseBody"]
            self.send_response(entry["StatusCode"])
            if isinstance(body, list):
                self.send_header("content-type", "text/event-stream; charset=utf-8")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for line in body:
                    chunk = line.encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            else:
                data = json.dumps(body).encode()
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        do_POST = _answer
        do_GET = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
