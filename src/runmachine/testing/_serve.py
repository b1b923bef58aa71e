"""Serving an :class:`Emulator` with uvicorn: in a background thread for tests, or blocking.

The background server binds its own socket on 127.0.0.1 port 0 (so the port is free by
construction), runs uvicorn's asyncio loop in a daemon thread, and waits until it accepts
connections. On exit it ends every open stream, asks uvicorn to stop and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runmachine.testing._server import Emulator

_ABORT_LOG = "ASGI callable returned without completing response."


class _QuietAborts(logging.Filter):
    """Dropping a connection on purpose is the point of a fault; do not log it as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _ABORT_LOG


_filter_installed = False


def _install_log_filter() -> None:
    global _filter_installed
    if not _filter_installed:
        logging.getLogger("uvicorn.error").addFilter(_QuietAborts())
        _filter_installed = True


def _config(emulator: Emulator, **kwargs: object) -> object:
    import uvicorn

    return uvicorn.Config(
        emulator.app,
        loop="asyncio",
        http="h11",
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
        date_header=False,  # the emulator sends its own, on its own clock
        **kwargs,  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def serve_in_thread(emulator: Emulator) -> Iterator[str]:
    import uvicorn

    _install_log_filter()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = _config(emulator)
    assert isinstance(config, uvicorn.Config)
    server = uvicorn.Server(config)
    loop = asyncio.new_event_loop()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        except BaseException as exc:  # pragma: no cover - surfaced to the caller below
            failure.append(exc)
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=run, name=f"runmachine-emulator-{port}", daemon=True)
    emulator._loop = loop
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the emulator server failed to start: {failure!r}")
            thread.join(0.01)
        emulator._base_url = f"http://127.0.0.1:{port}/v1"
        yield emulator._base_url
    finally:
        emulator._base_url = None
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(emulator.close_streams)
        server.should_exit = True
        thread.join(10)
        emulator._loop = None
        sock.close()


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    run_ttl: float = 600.0,
    delta_delay: float = 0.0,
) -> None:
    """Serve a fresh emulator until interrupted (``runmachine emulator``)."""
    import uvicorn

    from runmachine.testing._server import Emulator

    _install_log_filter()
    emulator = Emulator(run_ttl=run_ttl, delta_delay=delta_delay)
    config = _config(emulator, host=host, port=port)
    assert isinstance(config, uvicorn.Config)
    print(f"runmachine emulator: Assistants v2 API at http://{host}:{port}/v1", flush=True)
    uvicorn.Server(config).run()


@contextlib.contextmanager
def emulated(base_url: str | None = None, **options: Any) -> Iterator[str]:
    """``base_url`` when one is given; otherwise an :class:`Emulator` (built with ``options``)
    served on loopback for the block, and its URL. The switch a script needs between a real
    endpoint and the embedded emulator::

        with emulated(args.base_url) as base_url:
            client = openai.AsyncOpenAI(base_url=base_url, api_key=...)
    """
    if base_url is not None:
        yield base_url
        return
    from runmachine.testing._server import Emulator

    with Emulator(**options).serve() as url:
        yield url
