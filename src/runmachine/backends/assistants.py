"""``AssistantsBackend``: the Assistants API (threads and runs), through the openai SDK.

Streams are opened through the SDK's own HTTP layer (``with_streaming_response``), so auth,
``base_url``, Azure, headers, timeouts and the retries of the initial response stay the SDK's;
the bytes are decoded here (``runmachine.backends.sse``) into the SDK's event types. A submission
answers with a new stream (or, polling, an acknowledgement); it is sent with the SDK's retries
off, because a blind retry of a submission that the server took would submit it twice: the
driver decides what to retry, after reading the run back.
"""

from __future__ import annotations

import secrets
import time
import weakref
from collections.abc import Mapping
from typing import Any

import anyio
import attrs
import openai
from openai.types.beta.threads import Message, Run

from runmachine.backends.base import EventSource, RequiredCall, RunRef, ServerTime, SubmitMode
from runmachine.backends.http import ServerClock, sse_source
from runmachine.backends.sse import build_event
from runmachine.deprecation import quiet_deprecation

__all__ = ["REQUEST_KEY", "AssistantsBackend", "CreateRun", "CreateThreadAndRun"]

_NO_RETRY: weakref.WeakKeyDictionary[openai.AsyncOpenAI, openai.AsyncOpenAI] = (
    weakref.WeakKeyDictionary()
)


def _no_retry_client(client: openai.AsyncOpenAI) -> openai.AsyncOpenAI:
    """``client.with_options(max_retries=0)``, made once per client.

    Every copy the SDK makes starts without its platform headers and fetches them in a worker
    thread on its first request; a copy per run put that thread hop between ``requires_action``
    and the submit request of every run's first round.
    """
    copy = _NO_RETRY.get(client)
    if copy is None:
        copy = _NO_RETRY[client] = client.with_options(max_retries=0)
    return copy


#: The run metadata key that marks the run a request created, so that it can be found again
#: when the answer was lost (or never awaited): a random token per request.
REQUEST_KEY = "runmachine_request"
#: The API allows this many metadata keys on a run.
_METADATA_KEYS = 16


@attrs.frozen
class CreateRun:
    """A run on an existing thread (``runs.create``). ``token`` marks the run it creates (in
    its metadata, under ``REQUEST_KEY``, when the caller's metadata leaves room)."""

    thread_id: str
    assistant_id: str
    params: Mapping[str, Any] = attrs.field(factory=dict)
    token: str = attrs.field(factory=lambda: secrets.token_hex(12))

    def body(self) -> dict[str, Any]:
        params = dict(self.params)
        metadata = params.get("metadata")
        if metadata is None or isinstance(metadata, (openai.NotGiven, openai.Omit)):
            metadata = None
        if metadata is None or (isinstance(metadata, dict) and len(metadata) < _METADATA_KEYS):
            params["metadata"] = {**(metadata or {}), REQUEST_KEY: self.token}
        return params


@attrs.frozen
class CreateThreadAndRun:
    """A new thread and its first run at once (``threads.create_and_run``)."""

    assistant_id: str
    params: Mapping[str, Any] = attrs.field(factory=dict)


class AssistantsBackend:
    """The Assistants API of ``client`` (an ``AsyncOpenAI`` or ``AsyncAzureOpenAI``)."""

    name = "assistants"

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client
        self._no_retry = _no_retry_client(client)
        self._clock = ServerClock()

    def server_time(self) -> ServerTime | None:
        return self._clock.reading

    def submit_mode(self, streaming: bool) -> SubmitMode:
        return "new_stream" if streaming else "acknowledge"

    # ----------------------------------------------------------------------------------------
    # Creating
    # ----------------------------------------------------------------------------------------

    def open_run(self, request: CreateRun | CreateThreadAndRun) -> EventSource:
        if isinstance(request, CreateRun):
            runs = self.client.beta.threads.runs

            def opener() -> Any:
                with quiet_deprecation():
                    return runs.with_streaming_response.create(
                        thread_id=request.thread_id,
                        assistant_id=request.assistant_id,
                        stream=True,
                        **request.body(),
                    )

        else:
            threads = self.client.beta.threads

            def opener() -> Any:
                with quiet_deprecation():
                    return threads.with_streaming_response.create_and_run(
                        assistant_id=request.assistant_id, stream=True, **request.params
                    )

        return sse_source(opener, self._clock, build_event)

    async def create_run(self, request: CreateRun | CreateThreadAndRun) -> Run:
        with quiet_deprecation():
            if isinstance(request, CreateRun):
                pending = self.client.beta.threads.runs.create(
                    thread_id=request.thread_id,
                    assistant_id=request.assistant_id,
                    **request.body(),
                )
            else:
                pending = self.client.beta.threads.create_and_run(
                    assistant_id=request.assistant_id, **request.params
                )
        run: Run = await pending
        return run

    async def find_created(
        self, request: CreateRun | CreateThreadAndRun, since: float
    ) -> Run | None:
        if not isinstance(request, CreateRun):
            return None  # create-and-run gives no thread to look in
        with quiet_deprecation():
            pending = self.client.beta.threads.runs.list(
                thread_id=request.thread_id, order="desc", limit=20
            )
        page = await pending
        for run in page.data:
            if (run.metadata or {}).get(REQUEST_KEY) == request.token:
                return run
        if REQUEST_KEY in (request.body().get("metadata") or {}):
            return None  # marked, and not there: the request created no run
        # Unmarked (the caller's metadata was full): the newest run, if it is recent enough on
        # the server's clock (second-resolution timestamps: within the request's second).
        newest = page.data[0] if page.data else None
        server = self._clock.reading
        if server is None or newest is None:
            return None  # no reading of the server's clock: this machine's cannot decide
        at_request = server.seconds + (anyio.current_time() - server.local) - (time.time() - since)
        if newest.created_at >= int(at_request) - 1 and newest.assistant_id == request.assistant_id:
            return newest
        return None

    # ----------------------------------------------------------------------------------------
    # A run
    # ----------------------------------------------------------------------------------------

    def ref(self, run: Run) -> RunRef:
        return RunRef(run.id, run.thread_id)

    def required_calls(self, run: Run) -> list[RequiredCall]:
        if run.required_action is None:
            return []
        return [
            RequiredCall(call.id, call.function.name, call.function.arguments)
            for call in run.required_action.submit_tool_outputs.tool_calls
        ]

    def open_submission(self, ref: RunRef, outputs: Mapping[str, str]) -> EventSource:
        runs = self._no_retry.beta.threads.runs
        body = _outputs_body(outputs)

        def opener() -> Any:
            with quiet_deprecation():
                return runs.with_streaming_response.submit_tool_outputs(
                    run_id=ref.run_id,
                    thread_id=ref.scope_id,
                    tool_outputs=(),
                    stream=True,
                    extra_body=body,
                )

        return sse_source(opener, self._clock, build_event)

    async def submit(self, ref: RunRef, outputs: Mapping[str, str]) -> Run:
        with quiet_deprecation():
            pending = self._no_retry.beta.threads.runs.submit_tool_outputs(
                run_id=ref.run_id,
                thread_id=ref.scope_id,
                tool_outputs=(),
                extra_body=_outputs_body(outputs),
            )
        run: Run = await pending
        return run

    async def retrieve(self, ref: RunRef) -> tuple[Run, float | None]:
        runs = self.client.beta.threads.runs
        with quiet_deprecation():
            pending = runs.with_raw_response.retrieve(run_id=ref.run_id, thread_id=ref.scope_id)
        raw = await pending
        self._clock.saw(raw.headers)
        poll_after = raw.headers.get("openai-poll-after-ms")
        return raw.parse(), (float(poll_after) / 1000 if poll_after else None)

    async def cancel(self, ref: RunRef) -> Run:
        with quiet_deprecation():
            pending = self._no_retry.beta.threads.runs.cancel(
                run_id=ref.run_id, thread_id=ref.scope_id
            )
        run: Run = await pending
        return run

    async def messages(self, ref: RunRef) -> list[Message]:
        with quiet_deprecation():
            pages = self.client.beta.threads.messages.list(
                thread_id=ref.scope_id, run_id=ref.run_id, order="asc", limit=100
            )
        return [message async for message in pages]


def _outputs_body(outputs: Mapping[str, str]) -> dict[str, Any]:
    """The request body's ``tool_outputs``, passed as ``extra_body`` (which the SDK merges over
    the body it builds, so the bytes sent are the same): the SDK's own ``tool_outputs`` argument
    is walked output by output through its type-driven transform (about 25 µs per output, 400 µs
    for a round of 16) although plain strings need none."""
    return {"tool_outputs": [{"tool_call_id": cid, "output": out} for cid, out in outputs.items()]}
