"""``AssistantsBackend``: the Assistants API (threads and runs), through the openai SDK.

Streams are opened through the SDK's own HTTP layer (``with_streaming_response``; a streamed
submission through the client's ``post``, as the same request), so auth, ``base_url``, Azure,
headers, timeouts and the retries of the initial response stay the SDK's; the bytes are decoded
here (``runmachine.backends.sse``) into the SDK's event types. A submission answers with a new
stream (or, polling, an acknowledgement); it is sent with the SDK's retries off, because a blind
retry of a submission that the server took would submit it twice: the driver decides what to
retry, after reading the run back.
"""

from __future__ import annotations

import secrets
import time
import weakref
from collections.abc import Awaitable, Mapping
from typing import Any

import anyio
import attrs
import openai
from openai.types.beta import AssistantStreamEvent
from openai.types.beta.threads import Message, Run

from runmachine.backends.base import EventSource, RequiredCall, RunRef, ServerTime, SubmitMode
from runmachine.backends.http import ServerClock, path_segment, sse_source
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
        """The submission's stream: the request ``runs.with_streaming_response
        .submit_tool_outputs(..., stream=True)`` sends, made with the client's own ``post``.

        Everything the client applies to a request is applied (``post`` goes through its
        ``request``: base URL, auth and Azure's, default and extra headers, query, timeouts,
        the idempotency key); what the resource method adds is added here as it adds it (the
        beta header, the streamed raw response, its request options). Skipped are its
        per-call wrappers, its deprecation warning and its type-driven body transform, which
        the outputs (plain strings) do not need: a tenth or so of the cost of making the
        request (``benchmarks/submit_request.py``), in the window between ``requires_action``
        and the submission. The test suite checks the two requests byte for byte."""
        client = self._no_retry
        path = _submit_path(ref)
        body = {"stream": True, **_outputs_body(outputs)}

        def opener() -> _StreamedResponse:
            options: Any = {**_SUBMIT_OPTIONS, "headers": dict(_SUBMIT_HEADERS)}
            return _StreamedResponse(
                client.post(
                    path,
                    cast_to=Run,
                    body=body,
                    options=options,
                    stream=True,
                    stream_cls=openai.AsyncStream[AssistantStreamEvent],
                )
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


#: The request options ``runs.submit_tool_outputs`` builds for a streamed raw response
#: (``with_streaming_response``): the Assistants beta header, the header that asks the client
#: for the response unread, bearer auth and the SDK's event decoding options. They are copied
#: per request, as the client mutates what it is given.
_SUBMIT_HEADERS = {"OpenAI-Beta": "assistants=v2", "X-Stainless-Raw-Response": "stream"}
_SUBMIT_OPTIONS: Any = {
    "headers": _SUBMIT_HEADERS,
    "security": {"bearer_auth": True},
    "synthesize_event_and_data": True,
}


def _submit_path(ref: RunRef) -> str:
    """The submission's path, its ids quoted as the SDK quotes them; an empty id, or one that
    would make a dot-segment, is refused as the SDK refuses it (a ``ValueError``)."""
    thread = path_segment("thread_id", ref.scope_id)
    return f"/threads/{thread}/runs/{path_segment('run_id', ref.run_id)}/submit_tool_outputs"


class _StreamedResponse:
    """``async with`` over a response requested unread (as ``with_streaming_response`` gives
    it): the response, closed on the way out."""

    __slots__ = ("_pending", "_response")

    def __init__(self, pending: Awaitable[Any]) -> None:
        self._pending = pending
        self._response: Any = None

    async def __aenter__(self) -> Any:
        self._response = await self._pending
        return self._response

    async def __aexit__(self, *exc_info: object) -> None:
        if self._response is not None:
            await self._response.close()


def _outputs_body(outputs: Mapping[str, str]) -> dict[str, Any]:
    """The request body's ``tool_outputs``, passed as ``extra_body`` (which the SDK merges over
    the body it builds, so the bytes sent are the same): the SDK's own ``tool_outputs`` argument
    is walked output by output through its type-driven transform (about 25 µs per output, 400 µs
    for a round of 16) although plain strings need none."""
    return {"tool_outputs": [{"tool_call_id": cid, "output": out} for cid, out in outputs.items()]}
