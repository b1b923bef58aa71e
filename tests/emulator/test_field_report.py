"""Field report: the routes the emulator lacked, the ``runmachine emulator`` command's help, port
and Ctrl-C handling, and clients that go away in the middle of their request."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx2
import openai
import pytest

from runmachine.testing import Emulator, HTTPFault

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")

CLI = [sys.executable, "-m", "runmachine.cli", "emulator"]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def _body(exc: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    body: Any = exc.value.body
    assert set(body) == {"message", "type", "param", "code"}
    return dict(body)


# --- 1. assistants list / update / delete, models, and the routes the emulator lacks ----------


@pytest.mark.anyio
async def test_assistants_list_pages_like_the_other_lists(
    openai_client: openai.AsyncOpenAI,
) -> None:
    client = openai_client
    assert (await client.beta.assistants.list()).data == []
    ids = [(await client.beta.assistants.create(model="gpt-4o", name=f"a{i}")).id for i in range(3)]

    listing = await client.beta.assistants.list()
    assert [a.id for a in listing.data] == ids[::-1]  # newest first by default
    assert listing.first_id == ids[2] and listing.last_id == ids[0]
    assert listing.has_more is False

    page = await client.beta.assistants.list(limit=2, order="asc")
    assert [a.id for a in page.data] == ids[:2]
    assert page.has_more is True
    rest = await client.beta.assistants.list(limit=2, order="asc", after=ids[1])
    assert [a.id for a in rest.data] == ids[2:]
    assert rest.has_more is False
    before = await client.beta.assistants.list(order="asc", before=ids[2])
    assert [a.id for a in before.data] == ids[:2]

    everything = [a.id async for a in client.beta.assistants.list(limit=1, order="asc")]
    assert everything == ids  # the SDK's auto-pagination follows last_id


@pytest.mark.anyio
async def test_assistants_update_changes_the_given_fields(
    openai_client: openai.AsyncOpenAI,
) -> None:
    client = openai_client
    created = await client.beta.assistants.create(
        model="gpt-4o", name="before", instructions="Be brief.", metadata={"k": "1"}
    )
    tool: Any = {"type": "function", "function": {"name": "get_weather"}}
    updated = await client.beta.assistants.update(
        created.id, name="after", temperature=0.5, tools=[tool], metadata={"k": "2"}
    )
    assert updated.id == created.id and updated.created_at == created.created_at
    assert updated.name == "after" and updated.temperature == 0.5
    assert updated.metadata == {"k": "2"}
    assert updated.instructions == "Be brief." and updated.model == "gpt-4o"  # not given: kept
    assert updated.tools[0].type == "function"
    assert updated.tools[0].function.parameters == {"type": "object", "properties": {}}
    assert await client.beta.assistants.retrieve(created.id) == updated

    # A run of the updated assistant takes its new settings.
    run = await client.beta.threads.create_and_run(assistant_id=created.id)
    assert run.temperature == 0.5 and run.tools == updated.tools

    with pytest.raises(openai.BadRequestError) as refused:
        await client.beta.assistants.update(created.id, extra_body={"frobnicate": True})
    assert _body(refused)["message"] == "Unrecognized request argument supplied: frobnicate"
    with pytest.raises(openai.NotFoundError) as missing:
        await client.beta.assistants.update("asst_nope", name="x")
    assert _body(missing)["message"] == "No assistant found with id 'asst_nope'."


@pytest.mark.anyio
async def test_assistants_delete(openai_client: openai.AsyncOpenAI) -> None:
    client = openai_client
    keep = await client.beta.assistants.create(model="gpt-4o")
    gone = await client.beta.assistants.create(model="gpt-4o")
    deleted = await client.beta.assistants.delete(gone.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (gone.id, "assistant.deleted", True)
    assert [a.id for a in (await client.beta.assistants.list()).data] == [keep.id]
    for again in (
        client.beta.assistants.retrieve(gone.id),
        client.beta.assistants.delete(gone.id),
        client.beta.threads.create_and_run(assistant_id=gone.id),
    ):
        with pytest.raises(openai.NotFoundError) as missing:
            await again
        assert _body(missing)["message"] == f"No assistant found with id '{gone.id}'."


@pytest.mark.anyio
async def test_models_list_and_retrieve(openai_client: openai.AsyncOpenAI) -> None:
    client = openai_client
    models = [m async for m in client.models.list()]
    assert "gpt-4o" in [m.id for m in models]
    for model in models:
        assert model.object == "model" and model.owned_by
        assert isinstance(model.created, int)
        assert await client.models.retrieve(model.id) == model
    with pytest.raises(openai.NotFoundError) as missing:
        await client.models.retrieve("gpt-nope")
    body = _body(missing)
    assert body["message"] == "The model `gpt-nope` does not exist or you do not have access to it."
    assert body["code"] == "model_not_found"


@pytest.mark.anyio
async def test_new_endpoints_take_injected_faults(
    emulator: Emulator, openai_client: openai.AsyncOpenAI
) -> None:
    emulator.inject(HTTPFault("list_models", nth=1, status=503))
    emulator.inject(HTTPFault("list_assistants", nth=1, status=404))
    assert (await openai_client.models.list()).data  # retried past the 503
    with pytest.raises(openai.NotFoundError):
        await openai_client.beta.assistants.list()


@pytest.mark.anyio
async def test_unknown_routes_and_methods_answer_the_error_envelope(
    emulator: Emulator, openai_client: openai.AsyncOpenAI
) -> None:
    client = openai_client
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.get("/foo", cast_to=object)
    body = _body(unknown)
    assert body["message"].startswith("Unknown request URL: GET /v1/foo.")
    assert (body["type"], body["param"], body["code"]) == ("invalid_request_error", None, None)
    assert "Unknown request URL: GET /v1/foo." in str(unknown.value)

    with pytest.raises(openai.APIStatusError) as wrong:
        await client.models.delete("gpt-4o")  # the emulator serves GET /v1/models/{id} only
    assert wrong.value.status_code == 405
    body = _body(wrong)
    assert body["message"].startswith("Method not allowed: DELETE /v1/models/gpt-4o.")
    assert (body["type"], body["param"], body["code"]) == ("invalid_request_error", None, None)

    async with httpx2.AsyncClient(timeout=30) as http:
        for response in (
            await http.get(emulator.base_url + "/threads"),
            await http.put(emulator.base_url + "/assistants", json={}),
            await http.get(emulator.base_url.removesuffix("/v1") + "/"),
        ):
            assert response.status_code in (404, 405)
            assert response.headers["content-type"] == "application/json"
            assert response.headers["x-request-id"].startswith("req_")
            assert set(response.json()) == {"error"}
        wrong_method = await http.put(emulator.base_url + "/assistants")
        assert wrong_method.headers["allow"] == "GET, HEAD, POST"


# --- 2. and 3. the `runmachine emulator` command ---------------------------------------------


def test_cli_help_describes_the_command_and_shows_the_defaults() -> None:
    out = subprocess.run(
        [*CLI, "--help"], capture_output=True, text=True, env=ENV, check=True, timeout=60
    ).stdout
    assert "Serve the Assistants v2 API emulator" in out
    assert 'pip install "runmachine[emulator]"' in out
    assert 'base_url="http://127.0.0.1:8000/v1"' in out
    words = " ".join(out.split())  # as wrapped to any terminal's width
    assert "--port PORT TCP port (0: any free one) (default: 8000)" in words
    assert "(default: 127.0.0.1)" in words
    assert "(default: 600.0)" in words and "(default: 0.0)" in words


def test_cli_rejects_a_port_out_of_range() -> None:
    done = subprocess.run(
        [*CLI, "--port", "99999"], capture_output=True, text=True, env=ENV, timeout=60
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.splitlines()[-1] == (
        "runmachine emulator: error: argument --port: '99999' is not a port number (0 to 65535)"
    )


@pytest.mark.parametrize("port", ["-1", "65536", "eighty", ""])
def test_port_option_takes_0_to_65535_only(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    from runmachine.cli import build_parser

    parser = build_parser()
    for good in ("0", "8000", "65535"):
        assert parser.parse_args(["emulator", "--port", good]).port == int(good)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["emulator", "--port", port])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"runmachine emulator: error: argument --port: {port!r} is not a port number (0 to 65535)"
    )


def test_cli_port_in_use_is_a_one_line_error_before_any_banner() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*CLI, "--port", str(port)], capture_output=True, text=True, env=ENV, timeout=60
        )
    assert done.returncode == 1
    assert done.stdout == ""  # no banner: the socket is bound before anything is printed
    assert done.stderr == f"runmachine emulator: port {port} on 127.0.0.1 is already in use\n"


def test_cli_without_the_extra_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['uvicorn'] = None\n"
        "from runmachine.cli import main\n"
        "sys.exit(main(['emulator', '--port', '0']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        "runmachine emulator: uvicorn is not installed; the emulator needs its extra: "
        'pip install "runmachine[emulator]"\n'
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _interrupt(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Send SIGINT (Ctrl-C) to the running command and wait for it to end."""
    try:
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # pragma: no cover - only when it did not stop
            proc.kill()
            proc.communicate()


def _assert_stopped_cleanly(proc: subprocess.Popen[str], err: str) -> None:
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert len(err.splitlines()) <= 1
    assert err in ("", "runmachine emulator: interrupted\n")


posix_only = pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child is POSIX")


@posix_only
def test_cli_sigint_stops_the_server_cleanly() -> None:
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    proc = subprocess.Popen(
        [*CLI, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.monotonic() + 60  # a safety net only: the loop waits for an answer
    while True:
        try:
            response = httpx2.post(base_url + "/assistants", json={"model": "gpt-4o"}, timeout=60)
            break
        except httpx2.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the emulator did not answer: " + proc.communicate()[1])
            time.sleep(0.05)
    assert response.json()["object"] == "assistant"
    out, err = _interrupt(proc)
    _assert_stopped_cleanly(proc, err)
    assert out == f"runmachine emulator: Assistants v2 API at {base_url}\n"
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(base_url + "/models")


@posix_only
def test_cli_port_0_serves_on_a_free_port_named_in_the_banner() -> None:
    proc = subprocess.Popen(
        [*CLI, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    assert proc.stdout is not None
    banner = proc.stdout.readline()  # printed once the socket listens
    prefix = "runmachine emulator: Assistants v2 API at http://127.0.0.1:"
    if not banner.startswith(prefix):
        proc.kill()
        pytest.fail(banner + proc.communicate()[1])
    base_url = banner.removeprefix("runmachine emulator: Assistants v2 API at ").strip()
    assert _port_of(base_url) != 0
    # The socket listens before the banner is printed: no need to wait for it.
    assert httpx2.get(base_url + "/models", timeout=60).json()["object"] == "list"
    out, err = _interrupt(proc)
    _assert_stopped_cleanly(proc, err)
    assert out == ""


# --- 4. a client that goes away in the middle of its request ----------------------------------


@pytest.fixture
def server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], list[str]]]:
    """What the server logged at ERROR or above (uvicorn's loggers do not propagate to the
    root logger, so caplog's handler is attached to them too)."""
    logger = logging.getLogger("uvicorn")
    logger.addHandler(caplog.handler)
    try:
        yield lambda: [
            f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR
        ]
    finally:
        logger.removeHandler(caplog.handler)


def _request_tasks(emulator: Emulator) -> set[asyncio.Task[None]]:
    """The requests the server is handling (uvicorn's task per request; copied atomically)."""
    return set(emulator._server.server_state.tasks)


def _port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1].split("/", 1)[0])


def test_client_gone_mid_body_ends_the_request_quietly(
    emulator: Emulator, server_errors: Callable[[], list[str]]
) -> None:
    deadline = time.monotonic() + 30  # a safety net only: every wait below is on a condition
    before = _request_tasks(emulator)
    with socket.create_connection(("127.0.0.1", _port_of(emulator.base_url))) as raw:
        raw.sendall(
            b"POST /v1/assistants HTTP/1.1\r\nHost: emulator\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"model": "gpt-'
        )
        while not (started := _request_tasks(emulator) - before):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    (request,) = started
    while not request.done():  # uvicorn logs a failure before the request's task ends
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert server_errors() == []
    # The request did not happen, and the emulator serves the next one.
    response = httpx2.get(emulator.base_url + "/assistants", timeout=30)
    assert response.status_code == 200 and response.json()["data"] == []
    assert httpx2.post(emulator.base_url + "/threads", json={}, timeout=30).status_code == 200
    assert server_errors() == []


class _StalledBody:
    """A request body that sends its first bytes and then waits forever (not an async
    generator, which would warn when dropped unfinished)."""

    def __init__(self) -> None:
        self.sent = False

    def __aiter__(self) -> _StalledBody:
        return self

    async def __anext__(self) -> bytes:
        if not self.sent:
            self.sent = True
            return b'{"tool_outputs": ['
        await anyio.sleep_forever()
        raise StopAsyncIteration  # pragma: no cover


@pytest.mark.anyio
async def test_client_cancelled_while_its_body_is_read_ends_the_request_quietly(
    emulator: Emulator, openai_client: openai.AsyncOpenAI, server_errors: Callable[[], list[str]]
) -> None:
    thread = await openai_client.beta.threads.create()
    before = _request_tasks(emulator)
    with anyio.fail_after(30):  # a safety net only: every wait below is on a condition
        async with httpx2.AsyncClient(timeout=30) as http, anyio.create_task_group() as tg:
            url = f"{emulator.base_url}/threads/{thread.id}/messages"
            tg.start_soon(lambda: http.post(url, content=_StalledBody()))
            while not (started := _request_tasks(emulator) - before):
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()  # the client gives up while the server reads the body
        (request,) = started
        while not request.done():
            await anyio.sleep(0.01)
    assert server_errors() == []
    message = await openai_client.beta.threads.messages.create(
        thread.id, role="user", content="still here"
    )
    listing = await openai_client.beta.threads.messages.list(thread.id)
    assert [m.id for m in listing.data] == [message.id]
    assert server_errors() == []
