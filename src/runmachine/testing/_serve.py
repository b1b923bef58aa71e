"""Serving an :class:`Emulator` with uvicorn: in a background thread for tests, or blocking.

The background server binds its own socket on 127.0.0.1 port 0 (so the port is free by
construction), runs uvicorn's asyncio loop in a daemon thread, and waits until it accepts
connections. On exit it ends every open stream, asks uvicorn to stop and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
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
    emulator._server = server
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
        emulator._server = None
        sock.close()


def listen(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` and listening (port 0 picks a free one).

    Raises the ``OSError`` of ``bind``: ``errno.EADDRINUSE`` when the port is taken.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name == "posix":  # a restart binds again at once (not on Windows: it would share)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    run_ttl: float = 600.0,
    delta_delay: float = 0.0,
) -> None:
    """Serve a fresh emulator until interrupted (``runmachine emulator``).

    The socket is bound before anything is printed: a port that cannot be bound raises the
    ``OSError`` of ``bind`` (``errno.EADDRINUSE`` when it is taken, see :func:`listen`) and
    nothing is served. Then one line names the URL (with the port bound, ``port=0`` picking a
    free one), and the server runs. Ctrl-C (SIGINT) stops it cleanly, ending the open streams
    first, and then raises ``KeyboardInterrupt`` to say that it was interrupted.
    """
    import uvicorn

    from runmachine.testing._server import Emulator

    sock = listen(host, port)
    try:
        _install_log_filter()
        emulator = Emulator(run_ttl=run_ttl, delta_delay=delta_delay)
        config = _config(emulator)
        assert isinstance(config, uvicorn.Config)
        shown = f"[{host}]" if ":" in host else host
        bound = sock.getsockname()[1]
        print(f"runmachine emulator: Assistants v2 API at http://{shown}:{bound}/v1", flush=True)
        _standalone_server_class()(config, emulator).run(sockets=[sock])
    finally:
        sock.close()


def _standalone_server_class() -> type[Any]:
    import uvicorn

    class StandaloneServer(uvicorn.Server):
        """uvicorn's server, ending the emulator's open streams before it waits for the
        connections to close (else a stream left open would only be cut by the timeout)."""

        def __init__(self, config: uvicorn.Config, emulator: Emulator) -> None:
            super().__init__(config)
            self.emulator = emulator

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            self.emulator.close_streams()
            await super().shutdown(sockets)

    return StandaloneServer


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
