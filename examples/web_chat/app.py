"""A web chat over an Assistants run, forwarded to the browser as Server-Sent Events.

One page (``index.html``, plain HTML and JavaScript) shows the assistant's text as it streams in,
each tool call as it runs (name, arguments, then its output), and the lifecycle diagram with the
current state lit. The server side is a few lines: ``runmachine.RunResponse``, an ASGI response,
drives the run and sends every SDK event, every state transition and the final result as
``{"event": ..., "data": ...}`` Server-Sent Events; when the browser goes away it cancels the run.

    python examples/web_chat/app.py                 # embedded emulator, no API key
    python examples/web_chat/app.py --base-url https://api.openai.com/v1 --api-key sk-...

Then open the printed address. ``--port 0`` picks a free port.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import socket
import sys
from pathlib import Path
from typing import Literal

import anyio
import openai
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from runmachine import RunMachine, RunResponse, quiet_deprecation, tool
from runmachine.diagrams import GraphvizNotFound
from runmachine.testing import emulated

PAGE = Path(__file__).with_name("index.html")


class ChatMachine(RunMachine):
    """The assistant's tools."""

    @tool
    async def get_current_temperature(self, location: str, unit: Literal["c", "f"] = "c") -> str:
        """Current temperature at a location."""
        return f"18 degrees {unit.upper()} in {location}"

    @tool(name="get_rain_probability", timeout=5.0)
    def rain(self, location: str) -> float:
        """Probability of rain at a location."""
        return 0.2

    @tool(timeout=10.0)
    async def slow_forecast(self, location: str) -> str:
        """A week's forecast; deliberately slow."""
        await anyio.sleep(1.0)
        return f"dry all week in {location}"


def lifecycle_svg() -> str:
    """The lifecycle diagram as inline SVG: each state is a ``<g id="state_<name>">``."""
    try:
        # Without the ``adopt`` rows (a resumed run's jumps from ``pending``): a chat never
        # resumes, and the picture stays readable.
        svg = str(ChatMachine.diagram("svg", omit=("adopt",)))
    except GraphvizNotFound as exc:  # the chat still works, without the diagram
        return f"<p class='note'>No diagram: {html.escape(str(exc))}</p>"
    return svg[svg.index("<svg") :]


def create_app(client: openai.AsyncOpenAI, assistant_id: str | None = None) -> Starlette:
    """The app. Without ``assistant_id`` an assistant with ``ChatMachine``'s tools is created
    on the first request."""
    page = PAGE.read_text(encoding="utf-8").replace("<!--diagram-->", lifecycle_svg())
    assistant: dict[str, str] = {}
    if assistant_id is not None:
        assistant["id"] = assistant_id
    lock = anyio.Lock()

    async def the_assistant() -> str:
        async with lock:
            if "id" not in assistant:
                with quiet_deprecation():
                    created = await client.beta.assistants.create(
                        model="gpt-4o",
                        name="web chat",
                        instructions="Answer with the tools you have.",
                        tools=ChatMachine.tool_definitions(),  # type: ignore[arg-type]
                    )
                assistant["id"] = created.id
            return assistant["id"]

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def chat(request: Request) -> Response:
        """``{"message": ..., "thread_id": ...?}`` in; the run as Server-Sent Events out."""
        body = await request.json()
        message = str(body.get("message", "")).strip()
        if not message:
            return JSONResponse({"error": "empty message"}, status_code=400)
        with quiet_deprecation():
            thread_id = body.get("thread_id") or (await client.beta.threads.create()).id
            await client.beta.threads.messages.create(
                thread_id=thread_id, role="user", content=message
            )
        return RunResponse(
            ChatMachine(client),
            thread_id=thread_id,
            assistant_id=await the_assistant(),
            headers={"x-thread-id": thread_id},
        )

    return Starlette(routes=[Route("/", index), Route("/api/chat", chat, methods=["POST"])])


async def serve(app: Starlette, sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    await uvicorn.Server(config).serve(sockets=[sock])


async def main_async(args: argparse.Namespace, base_url: str, sock: socket.socket) -> None:
    async with openai.AsyncOpenAI(base_url=base_url, api_key=args.api_key) as client:
        app = create_app(client, args.assistant_id)
        host, port = sock.getsockname()[:2]
        print(f"web chat at http://{host}:{port}/ (Assistants API at {base_url})", flush=True)
        await serve(app, sock)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base-url", help="an OpenAI-compatible API; default: the emulator")
    parser.add_argument("--api-key", default="emulator")
    parser.add_argument("--assistant-id", help="use this assistant instead of creating one")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args(argv)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    # The embedded emulator paces its deltas so the text visibly streams in.
    with (
        sock,
        emulated(args.base_url, delta_delay=0.03) as base_url,
        contextlib.suppress(KeyboardInterrupt),
    ):
        anyio.run(main_async, args, base_url, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
