"""Pytest fixtures for testing against the emulator (registered as the ``runmachine`` plugin).

* ``emulator`` - an :class:`~runmachine.testing.Emulator` served over HTTP on 127.0.0.1, with
  fresh state for each test (one server per session, ``reset()`` before every test). Options can
  be set per test with ``@pytest.mark.emulator(run_ttl=1.0, delta_delay=0.01, ...)``.
* ``emulator_url`` - its base URL (``http://127.0.0.1:PORT/v1``).
* ``openai_client`` - an ``openai.AsyncOpenAI`` bound to it (``max_retries=2``), created and
  closed inside the test's event loop; it needs an async test run by anyio (``anyio_backend``).

This module imports nothing heavy: Starlette, uvicorn and openai are imported inside fixtures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import openai

    from runmachine.testing import Emulator


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "emulator(**options): options for the `emulator` fixture (run_ttl, delta_delay, "
        "error_shape, stream_cancelling, poll_after_ms, keepalive_interval)",
    )


@pytest.fixture(scope="session")
def _runmachine_emulator_server() -> Iterator[Emulator]:
    from runmachine.testing import Emulator

    emulator = Emulator()
    try:
        served = emulator.serve()
        served.__enter__()
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in ("uvicorn", "starlette", "h11"):
            raise
        pytest.fail(
            f"the emulator fixtures need {exc.name}, which is not installed: "
            'pip install "runmachine[emulator]"',
            pytrace=False,
        )
    try:
        yield emulator
    finally:
        served.__exit__(None, None, None)


@pytest.fixture
def emulator(
    _runmachine_emulator_server: Emulator, request: pytest.FixtureRequest
) -> Iterator[Emulator]:
    emu = _runmachine_emulator_server
    emu.reset()
    marker = request.node.get_closest_marker("emulator")
    if marker is not None:
        options: dict[str, Any] = dict(marker.kwargs)
        for key, value in options.items():
            if key not in emu.option_names:
                raise TypeError(f"unknown emulator option {key!r}")
            setattr(emu, key, value)
    yield emu
    emu.reset()


@pytest.fixture
def emulator_url(emulator: Emulator) -> str:
    return emulator.base_url


@pytest.fixture
async def openai_client(emulator_url: str, anyio_backend: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    import openai

    client = openai.AsyncOpenAI(base_url=emulator_url, api_key="test", max_retries=2)
    try:
        yield client
    finally:
        await client.close()
