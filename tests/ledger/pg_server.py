"""A real PostgreSQL server for the test session, in a temporary directory.

``start()`` finds the server's programs (``$RUNMACHINE_PG_BINDIR``, ``pg_config --bindir``,
Debian's ``/usr/lib/postgresql/*/bin``, then ``PATH``), runs ``initdb`` into a new temporary
directory (trust authentication for 127.0.0.1 and the socket, no fsync), and ``pg_ctl start``s
the server on a free port of 127.0.0.1 with its unix socket in that directory. It then polls
until the server accepts a connection, within ``STARTUP_TIMEOUT`` seconds. ``stop()`` stops it
(``pg_ctl stop -m fast``, then ``immediate``, then a kill) and removes the directory.

PostgreSQL refuses to run as root: as root, every server program runs as an unprivileged user,
Debian's ``postgres`` (which its ``postgresql`` package creates), else ``nobody``, and the
temporary directory is given to that user.

``python tests/ledger/pg_server.py`` starts one and prints its DSN until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: How long the server may take to accept its first connection.
STARTUP_TIMEOUT = 60.0
#: The user the server's programs run as when the tests run as root, in order of preference.
SERVER_USERS = ("postgres", "nobody")
SUPERUSER = "postgres"


class ServerUnavailable(RuntimeError):
    """No PostgreSQL server programs here: the tests that need one skip (and fail in CI)."""


def find_bindir() -> Path | None:
    """The directory of ``initdb``, ``pg_ctl`` and ``postgres``, newest version first."""

    def usable(directory: str | Path | None) -> Path | None:
        if not directory:
            return None
        path = Path(directory)
        ok = all(os.access(path / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))
        return path if ok else None

    candidates: list[str | Path | None] = [os.environ.get("RUNMACHINE_PG_BINDIR")]
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            )
            candidates.append(done.stdout.strip())

    def version(path: str) -> tuple[int, ...]:
        number = Path(path).parent.name
        return tuple(int(p) for p in re.findall(r"\d+", number)) or (0,)

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    initdb = shutil.which("initdb")
    candidates.append(Path(initdb).parent if initdb else None)
    for candidate in candidates:
        found = usable(candidate)
        if found is not None:
            return found
    return None


def _server_user() -> pwd.struct_passwd | None:
    """``None`` when not root (the programs run as this user); else the user to run them as."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(
        "the tests run as root, and PostgreSQL refuses to: none of the users "
        f"{', '.join(SERVER_USERS)} exists to run it as (Debian's postgresql package creates "
        "'postgres')"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One running server: ``dsn(dbname)`` reaches it as its superuser, over TCP."""

    def __init__(self, bindir: Path, root: Path, user: pwd.struct_passwd | None) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.log = root / "server.log"
        self.port = 0
        self._user = user

    # The programs, as the server's user -------------------------------------------------------

    def _run(self, *argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        user = self._user
        env = {
            "PATH": f"{self.bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "LC_ALL": "C",
            "HOME": str(self.root),
        }
        return subprocess.run(
            [str(self.bindir / argv[0]), *argv[1:]],
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],
        )

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no server log)"

    # Lifecycle ---------------------------------------------------------------------------------

    def init(self) -> None:
        self.sockets.mkdir()
        if self._user is not None:
            for path in (self.root, self.sockets):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        done = self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self, attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):
            self.port = _free_port()
            options = " ".join(
                (
                    f"-p {self.port}",
                    "-c listen_addresses=127.0.0.1",
                    f"-c unix_socket_directories={self.sockets}",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=300",
                    "-c shared_buffers=32MB",
                )
            )
            done = self._run(
                "pg_ctl",
                "start",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                str(int(STARTUP_TIMEOUT)),
                "-o",
                options,
                timeout=STARTUP_TIMEOUT + 30,
            )
            if done.returncode == 0:
                self.wait_until_ready()
                return
            self.stop_server()
            # Another process took the port between the probe and the bind: try another one.
            if attempt == attempts or "could not bind" not in self._log_tail():
                raise RuntimeError(
                    f"pg_ctl start failed ({done.returncode}): {done.stdout}{done.stderr}\n"
                    f"server log:\n{self._log_tail()}"
                )

    def wait_until_ready(self) -> None:
        """Poll until a connection succeeds, within ``STARTUP_TIMEOUT`` seconds."""
        import psycopg

        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL on port {self.port} did not accept connections within "
                        f"{STARTUP_TIMEOUT:.0f}s ({exc}); server log:\n{self._log_tail()}"
                    ) from exc
            time.sleep(0.05)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A new, empty database; its DSN."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def stop_server(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        for mode in ("fast", "immediate"):
            done = self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "30")
            if done.returncode == 0:
                return
        # Last resort: the postmaster's pid is the first line of postmaster.pid.
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, 9)

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop_server()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start() -> PostgresServer:
    """A new server, running; ``ServerUnavailable`` when this machine has no PostgreSQL."""
    bindir = find_bindir()
    if bindir is None:
        raise ServerUnavailable(
            "no PostgreSQL server programs (initdb, pg_ctl, postgres) found: not in "
            "$RUNMACHINE_PG_BINDIR, `pg_config --bindir`, /usr/lib/postgresql/*/bin or PATH; "
            "install Debian's postgresql package (apt-get install postgresql)"
        )
    user = _server_user()
    # Not under pytest's tmp_path: its directories are private to root, and the server's user
    # must reach its own. A fresh directory of /tmp, given to that user.
    # (As root, /tmp itself: a $TMPDIR private to root would stop that user on the way in.)
    base = "/tmp" if user is not None and os.path.isdir("/tmp") else None
    root = Path(tempfile.mkdtemp(prefix="runmachine-pg-", dir=base))
    server = PostgresServer(bindir, root, user)
    try:
        server.init()
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


if __name__ == "__main__":
    running = start()
    print(running.dsn(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
    sys.exit(0)
