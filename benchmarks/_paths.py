"""The client paths the benchmarks compare, each reading one replayed emulator stream.

- ``floor``: the raw response bytes through the SDK's own HTTP layer, nothing parsed;
- ``sdk_iter`` (a): iterating ``runs.create(stream=True)``;
- ``sdk_handler`` (b): ``runs.stream()`` with a no-op ``AsyncAssistantEventHandler.on_text_delta``;
- ``recipe``: the documented SDK recipe for tools, an ``AsyncAssistantEventHandler`` that on
  ``thread.run.requires_action`` runs the tools one by one and calls
  ``submit_tool_outputs_stream`` (OpenAI's function-calling guide);
- ``runmachine`` (R): a ``RunMachine`` with a no-op ``on_text_delta`` hook and async tools;
- ``submit_floor``: the handoff's floor, a handler that on ``thread.run.requires_action`` only
  makes the submission (as runmachine makes it, outputs at hand): the SDK client's own request
  path.

Handoff marks, the same on both sides: "arrived" is taken in the ``on_event`` hook (the SDK
handler's and the ``RunMachine``'s), the first user code that sees the decoded
``thread.run.requires_action`` event; "left" is taken by an httpx ``request`` event hook on the
client's HTTP client when the ``submit_tool_outputs`` request is handed to the transport. Both
the wall time and the CPU time of the thread (``time.thread_time``) between the two are kept:
the CPU time does not count the moments the process was descheduled on a busy machine.
"""

from __future__ import annotations

import json
import time
import warnings
import weakref
from typing import Any, Literal, get_args

import anyio
import httpx2
import openai
from openai.lib.streaming import AsyncAssistantEventHandler

from runmachine import RunMachine, RunResult, tool
from runmachine.backends import AssistantsBackend
from runmachine.backends.base import RunRef

warnings.filterwarnings("ignore", category=DeprecationWarning)

THREAD = "thread_bench"
ASSISTANT = "asst_bench"


class Marks:
    """Timestamps of the latest handoff (runs are measured one at a time)."""

    def __init__(self) -> None:
        self.arrived = 0.0
        self.left = 0.0
        self.arrived_cpu = 0.0
        self.left_cpu = 0.0
        self.tool_times: list[float] = []

    def arrive(self) -> None:
        self.arrived_cpu = time.thread_time()
        self.arrived = time.perf_counter()

    async def on_request(self, request: httpx2.Request) -> None:
        if request.url.path.endswith("/submit_tool_outputs"):
            self.left = time.perf_counter()
            self.left_cpu = time.thread_time()


MARKS = Marks()
TOOL_SLEEP = [0.1]


Transport = Literal["httpx", "aiohttp"]
TRANSPORTS: tuple[Transport, ...] = get_args(Transport)


def make_client(
    port: int,
    *,
    unlimited: bool = False,
    pool_timeout: float = 600,
    transport: Transport = "httpx",
) -> openai.AsyncOpenAI:
    """An SDK client of the replay server on ``port`` whose submit requests ``MARKS`` marks.

    ``transport`` is the SDK's HTTP client: ``"httpx"``, its default
    (``openai.DefaultAsyncHttpxClient``: httpx2, httpcore2, h11), or ``"aiohttp"``
    (``openai.DefaultAioHttpClient``, the ``openai[aiohttp]`` extra; asyncio only). Both keep
    the SDK's defaults (1,000 connections) unless ``unlimited``; ``pool_timeout`` bounds the wait
    for a free connection (on aiohttp, connecting included: its ``ClientTimeout.connect``).
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"make_client: transport must be one of {TRANSPORTS}, not {transport!r}")
    kwargs: dict[str, Any] = {"event_hooks": {"request": [MARKS.on_request]}}
    if unlimited:
        # aiohttp's connector takes no limit (None) to mean its own default of 100, and 0 none.
        most = 0 if transport == "aiohttp" else None
        kwargs["limits"] = httpx2.Limits(max_connections=most, max_keepalive_connections=None)
    if transport == "aiohttp":
        http_client = openai.DefaultAioHttpClient(**kwargs)
    else:
        http_client = openai.DefaultAsyncHttpxClient(**kwargs)
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/text/0/v1",
        api_key="bench",
        max_retries=0,
        timeout=httpx2.Timeout(600, connect=30, pool=pool_timeout),
        http_client=http_client,
    )


def scenario(client: openai.AsyncOpenAI, name: str, pace_ms: int = 0) -> openai.AsyncOpenAI:
    port = client.base_url.port
    return client.with_options(base_url=f"http://127.0.0.1:{port}/{name}/{pace_ms}/v1")


# --- the tools -----------------------------------------------------------------------------


async def echo(i: int = 0) -> str:
    return "ok"


async def nap(i: int = 0) -> str:
    started = time.perf_counter()
    await anyio.sleep(TOOL_SLEEP[0])
    MARKS.tool_times.append(time.perf_counter() - started)
    return "ok"


RECIPE_TOOLS = {"echo": echo, "nap": nap}


# --- paths ---------------------------------------------------------------------------------


async def floor(client: openai.AsyncOpenAI) -> int:
    runs = client.beta.threads.runs
    n = 0
    async with runs.with_streaming_response.create(
        thread_id=THREAD, assistant_id=ASSISTANT, stream=True
    ) as response:
        async for chunk in response.http_response.aiter_bytes():
            n += len(chunk)
    return n


async def socket_floor(port: int, path: str) -> int:
    """The replay server's own floor: one stream read off a bare socket, no HTTP client."""
    request = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        "content-length: 2\r\n\r\n{}"
    ).encode()
    n = 0
    tail = b""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        while not tail.endswith(b"\r\n0\r\n\r\n"):
            chunk = await stream.receive()
            n += len(chunk)
            tail = (tail + chunk)[-7:]
    return n


async def sdk_iter(client: openai.AsyncOpenAI) -> int:
    n = 0
    stream = await client.beta.threads.runs.create(
        thread_id=THREAD, assistant_id=ASSISTANT, stream=True
    )
    async with stream:
        async for _event in stream:
            n += 1
    return n


class NoopHandler(AsyncAssistantEventHandler):
    async def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        return None


async def sdk_handler(client: openai.AsyncOpenAI) -> int:
    async with client.beta.threads.runs.stream(
        thread_id=THREAD, assistant_id=ASSISTANT, event_handler=NoopHandler()
    ) as stream:
        await stream.until_done()
        run = await stream.get_final_run()
    assert run.status == "completed", run.status
    return 1


class Recipe(AsyncAssistantEventHandler):
    """OpenAI's function-calling guide, async: tools one by one, then
    ``submit_tool_outputs_stream`` from ``on_event``."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        super().__init__()
        self.client = client
        self.final_status: str | None = None

    async def on_event(self, event: Any) -> None:
        if event.event == "thread.run.requires_action":
            MARKS.arrive()
            await self.handle_requires_action(event.data)
        elif event.event in ("thread.run.completed", "thread.run.failed"):
            self.final_status = event.data.status

    async def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        return None

    async def handle_requires_action(self, run: Any) -> None:
        tool_outputs = []
        for call in run.required_action.submit_tool_outputs.tool_calls:
            function = RECIPE_TOOLS[call.function.name]
            output = await function(**json.loads(call.function.arguments))
            tool_outputs.append({"tool_call_id": call.id, "output": output})
        follow = type(self)(self.client)  # the same handler for the stream that follows
        async with self.client.beta.threads.runs.submit_tool_outputs_stream(
            thread_id=run.thread_id,
            run_id=run.id,
            tool_outputs=tool_outputs,
            event_handler=follow,
        ) as stream:
            await stream.until_done()
        self.final_status = follow.final_status


class SubmitFloor(AsyncAssistantEventHandler):
    """The handoff floor: on ``thread.run.requires_action``, nothing but the submission itself,
    made as runmachine makes it (the request of ``with_streaming_response.submit_tool_outputs``,
    sent with the client's ``post`` by ``AssistantsBackend.open_submission``, the SDK's retries
    off) with the outputs already at hand, its stream read raw. No client that submits through
    the SDK's HTTP layer can hand the request over much sooner."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        super().__init__()
        # One backend per client: it keeps the client's copy without retries, as a machine
        # does (a copy fetches its platform headers in a worker thread on its first request).
        self.backend = _BACKENDS.get(client) or _BACKENDS.setdefault(
            client, AssistantsBackend(client)
        )
        self.final_status: str | None = None

    async def on_event(self, event: Any) -> None:
        if event.event != "thread.run.requires_action":
            return
        MARKS.arrive()
        run = event.data
        outputs = {c.id: "ok" for c in run.required_action.submit_tool_outputs.tool_calls}
        opener = self.backend.open_submission(RunRef(run.id, run.thread_id), outputs)
        async with opener as events:
            statuses = [e.event async for e in events]
        if "thread.run.completed" in statuses:
            self.final_status = "completed"


_BACKENDS: weakref.WeakKeyDictionary[openai.AsyncOpenAI, AssistantsBackend] = (
    weakref.WeakKeyDictionary()
)


async def submit_floor(client: openai.AsyncOpenAI) -> int:
    handler = SubmitFloor(client)
    async with client.beta.threads.runs.stream(
        thread_id=THREAD, assistant_id=ASSISTANT, event_handler=handler
    ) as stream:
        await stream.until_done()
    if handler.final_status != "completed":
        raise ErrorPath(f"the floor's submission did not complete the run: {handler.final_status}")
    return 1


async def recipe(client: openai.AsyncOpenAI) -> int:
    handler = Recipe(client)
    async with client.beta.threads.runs.stream(
        thread_id=THREAD, assistant_id=ASSISTANT, event_handler=handler
    ) as stream:
        await stream.until_done()
    assert handler.final_status == "completed", handler.final_status
    return 1


class Bench(RunMachine):
    """The runmachine side: a no-op ``on_text_delta``, the two tools, the handoff mark."""

    @tool
    async def echo(self, i: int = 0) -> str:
        return "ok"

    @tool
    async def nap(self, i: int = 0) -> str:
        return await nap(i)

    async def on_event(self, event: Any) -> None:
        if event.event == "thread.run.requires_action":
            MARKS.arrive()

    async def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        return None


class BenchNoMark(Bench):
    """As ``Bench`` without ``on_event`` (the throughput path: one hook, ``on_text_delta``)."""

    on_event = RunMachine.on_event  # type: ignore[assignment]


class ErrorPath(AssertionError):
    """A measured run took an error path (a tool's error output, a run that did not complete):
    its figures would not measure what the benchmark says they do."""


def checked(result: RunResult) -> int:
    """1 for a run that completed with every tool output a plain answer; else ``ErrorPath``."""
    if result.status != "completed":
        raise ErrorPath(f"run {result.run_id} ended {result.status}: {result.error}")
    failed = [r for r in result.tool_calls if r.error is not None]
    if failed:
        raise ErrorPath(
            f"run {result.run_id}: {len(failed)} tool call(s) got an error output, e.g. "
            f"{failed[0].name}: {failed[0].error}"
        )
    return 1


async def runmachine(client: openai.AsyncOpenAI, **options: Any) -> int:
    return checked(
        await BenchNoMark(client, **options).run(thread_id=THREAD, assistant_id=ASSISTANT)
    )


async def runmachine_marked(client: openai.AsyncOpenAI, **options: Any) -> int:
    return checked(await Bench(client, **options).run(thread_id=THREAD, assistant_id=ASSISTANT))
