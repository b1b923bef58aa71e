"""The pytest plugin's fixtures, ``Emulator.serve()`` and the ``runmachine emulator`` command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from runmachine.testing import Emulator, Scenario


def test_plugin_imports_without_server_dependencies() -> None:
    code = (
        "import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None;"
        "import runmachine.testing.pytest_plugin, runmachine.testing;"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_fixture_gives_fresh_state(emulator: Emulator, emulator_url: str) -> None:
    assert emulator_url == emulator.base_url
    assert emulator_url.startswith("http://127.0.0.1:") and emulator_url.endswith("/v1")
    emulator.enqueue(Scenario.text("x"))
    assert emulator.run_ttl == 600.0


@pytest.mark.emulator(run_ttl=5.0)
def test_marker_sets_options(emulator: Emulator) -> None:
    assert emulator.run_ttl == 5.0
    assert emulator._queue == type(emulator._queue)()  # the previous test's scenario is gone


def test_serve_context_manager_stops_cleanly() -> None:
    emu = Emulator()
    with emu.serve() as base_url:
        response = httpx2.post(base_url + "/threads", json={})
        assert response.status_code == 200
        assert response.headers["openai-version"] == "2020-10-01"
        assert response.headers["x-request-id"].startswith("req_")
    with pytest.raises(RuntimeError):
        _ = emu.base_url
    with pytest.raises(httpx2.ConnectError):
        httpx2.post(base_url + "/threads", json={})


def test_cli_serves_standalone() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "runmachine.cli", "emulator", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx2.post(
                    f"http://127.0.0.1:{port}/v1/assistants", json={"model": "gpt-4o"}
                )
                break
            except httpx2.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert response.json()["object"] == "assistant"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_emulated_passes_a_given_url_through_or_serves_one() -> None:
    from runmachine.testing import emulated

    with emulated("https://api.example.test/v1") as url:
        assert url == "https://api.example.test/v1"
    with emulated(run_ttl=3.0) as url:
        assert url.startswith("http://127.0.0.1:")
        assistant = httpx2.post(f"{url}/assistants", json={"model": "gpt-4o"}).json()
        thread = httpx2.post(f"{url}/threads", json={}).json()
        run = httpx2.post(
            f"{url}/threads/{thread['id']}/runs", json={"assistant_id": assistant["id"]}
        ).json()
        assert run["expires_at"] - run["created_at"] == 3
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"{url}/assistants")


def test_quiet_deprecation_silences_only_the_sdks_assistants_warnings() -> None:
    import warnings

    import openai

    from runmachine import quiet_deprecation

    client = openai.AsyncOpenAI(api_key="x", base_url="http://127.0.0.1:9/v1")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_deprecation():
            client.beta.assistants.list()  # the SDK warns when the method is called
            warnings.warn("something else is deprecated soon", DeprecationWarning, stacklevel=1)
        client.beta.assistants.list()
    messages = [str(w.message) for w in seen]
    assert messages[0] == "something else is deprecated soon"
    assert len(messages) == 2 and "deprecated" in messages[1]


def test_10_the_fixtures_without_the_extra_say_what_to_install(tmp_path: Path) -> None:
    test = tmp_path / "test_user.py"
    test.write_text(
        "import sys\n"
        "sys.modules['uvicorn'] = None  # as on a bare `pip install runmachine`\n\n"
        "def test_uses_the_emulator(emulator):\n"
        "    pass\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert (
        "the emulator fixtures need uvicorn, which is not installed: "
        'pip install "runmachine[emulator]"' in done.stdout
    ), done.stdout
    assert "Traceback" not in done.stdout
