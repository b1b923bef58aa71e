"""``runmachine runs`` and ``runmachine resume``: the ledger from the command line.

``runmachine runs --ledger runs.db`` lists the runs a ledger file knows, with their status, rounds
and calls. ``runmachine resume --ledger runs.db RUN_ID module:Class`` builds ``Class(client,
ledger=SQLiteLedger(...))`` and resumes the run after a restart: recorded outputs are submitted
without running their tools again, and a round the server already took is not submitted again.

Exit status: 0 the run completed; 1 it ended otherwise, or a guard stopped it; 2 bad options or an
unusable ledger; 3 the server could not be reached or refused a request; 4 another holder's lease
holds the run (``--wait`` waits for it to run out).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from runmachine import lifecycle
from runmachine.ledger import split_machine

if TYPE_CHECKING:
    import openai

    from runmachine.ledger import RunEntry
    from runmachine.machine import RunMachine

EXIT_OK, EXIT_NOT_COMPLETED, EXIT_USAGE, EXIT_SERVER = 0, 1, 2, 3
#: Another holder's lease holds the run: it is being driven elsewhere (``--wait`` to wait).
EXIT_HELD = 4


def load_machine_class(target: str) -> type[RunMachine]:
    """``module:Class`` to the class; the current directory is searched like ``python -m``."""
    from runmachine.machine import RunMachine

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected module:Class, got {target!r}")
    if module_name == "__main__":
        raise ValueError(
            f"{target} names a class of a script that was run directly, which cannot be "
            f"imported by that name; give its importable path instead: the script's file name "
            f"without .py, run from the script's directory (e.g. `runmachine resume RUN_ID "
            f"myscript:{attribute}`), or a module the class lives in"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load {target}: {exc}") from exc
    if not (isinstance(found, type) and issubclass(found, RunMachine)):
        raise ValueError(f"{target} is not a RunMachine class")
    return found


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the server (default: the SDK's OPENAI_* variables)")
    group.add_argument("--base-url", help="an OpenAI-compatible API (default: OPENAI_BASE_URL)")
    group.add_argument("--api-key", help="default: OPENAI_API_KEY (AZURE_OPENAI_API_KEY for Azure)")
    group.add_argument("--azure-endpoint", help="use AsyncAzureOpenAI with this endpoint")
    group.add_argument("--api-version", help="Azure API version (default: OPENAI_API_VERSION)")


def client_from(args: argparse.Namespace) -> openai.AsyncOpenAI:
    import openai

    if args.azure_endpoint:
        return openai.AsyncAzureOpenAI(
            azure_endpoint=args.azure_endpoint, api_version=args.api_version, api_key=args.api_key
        )
    return openai.AsyncOpenAI(base_url=args.base_url, api_key=args.api_key)


def add_arguments(sub: Any) -> None:
    runs = sub.add_parser("runs", help="list the runs a ledger file knows")
    runs.add_argument(
        "--ledger",
        required=True,
        metavar="LEDGER",
        help="a SQLiteLedger file or a postgresql:// DSN",
    )
    runs.add_argument("--json", action="store_true", help="one JSON object per line")
    runs.set_defaults(func=cmd_runs)

    resume = sub.add_parser(
        "resume",
        help="resume a run recorded in a ledger, after a restart",
        description="Resume a run recorded in a ledger: recorded outputs are submitted without "
        "running their tools again, and a round the server already took is not submitted again.",
        epilog="exit status: 0 the run completed; 1 it ended otherwise, or a guard stopped it; "
        "2 bad options or an unusable ledger; 3 the server could not be reached or refused a "
        "request.",
    )
    resume.add_argument(
        "--ledger",
        required=True,
        metavar="LEDGER",
        help="a SQLiteLedger file or a postgresql:// DSN",
    )
    resume.add_argument("run_id", metavar="RUN_ID")
    resume.add_argument("target", metavar="module:Class", help="the RunMachine subclass")
    resume.add_argument("--thread-id", help="default: the thread the ledger recorded")
    resume.add_argument(
        "--wait",
        action="store_true",
        help="when another holder's lease holds the run (its process may have died), wait for "
        "the lease to run out, then take the run over (default: say who holds it, and stop)",
    )
    for decision in ("approve", "deny"):
        resume.add_argument(
            f"--{decision}",
            action="append",
            default=[],
            metavar="REQUEST_ID",
            help=f"an agent-session turn: {decision} this approval request (repeatable)",
        )
    add_client_arguments(resume)
    resume.set_defaults(func=cmd_resume)
    add_worker_arguments(sub)


def add_worker_arguments(sub: Any) -> None:
    worker = sub.add_parser(
        "worker",
        help="take over the runs whose process died, and drive them to their end",
        description="Find runs (and agent-session turns) of module:Class whose lease ran out "
        "(their process died, was paused or cut off) and that are not finished, claim each, and "
        "resume it to its end; SIGTERM or Ctrl-C hands the runs still driven off to other "
        "workers (nothing is cancelled on the server).",
    )
    worker.add_argument(
        "--ledger",
        required=True,
        metavar="LEDGER",
        help="a SQLiteLedger file or a postgresql:// DSN",
    )
    worker.add_argument("target", metavar="module:Class", help="the RunMachine subclass")
    worker.add_argument("--concurrency", type=int, default=8, help="runs driven at once (8)")
    worker.add_argument("--holder", help="the name of this worker's leases (host:pid:random)")
    worker.add_argument("--lease-ttl", type=float, default=30.0, help="seconds (30)")
    worker.add_argument(
        "--poll-interval", type=float, default=1.0, help="seconds between looks (1)"
    )
    add_client_arguments(worker)
    worker.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    import signal

    import anyio

    from runmachine.errors import LedgerError
    from runmachine.worker import run_worker

    if args.concurrency < 1 or args.lease_ttl <= 0 or args.poll_interval <= 0:
        print(
            "runmachine worker: --concurrency must be at least 1, --lease-ttl and "
            "--poll-interval positive",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        cls = load_machine_class(args.target)
        ledger = _open_ledger(args.ledger)
    except (ValueError, LedgerError, FileNotFoundError) as exc:
        print(f"runmachine worker: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def main() -> int:
        stop = anyio.Event()

        async def on_signals(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                task_status.started()
                async for _ in signals:
                    print("runmachine worker: stopping (handing the runs off)", flush=True)
                    stop.set()
                    return

        async with client_from(args) as client, anyio.create_task_group() as tg:
            await tg.start(on_signals)
            # Said once SIGTERM is handled: from here on a stop hands the runs off.
            print(f"runmachine worker: taking over {args.target} runs", flush=True)
            stats = await run_worker(
                cls,
                ledger,
                client,
                concurrency=args.concurrency,
                holder=args.holder,
                lease_ttl=args.lease_ttl,
                poll_interval=args.poll_interval,
                stop=stop,
            )
            tg.cancel_scope.cancel()
        print(
            f"runmachine worker: took {stats.taken} run(s): {stats.finished} finished, "
            f"{stats.failed} failed, {stats.lost} taken by others, {stats.handed_off} handed off",
            flush=True,
        )
        return EXIT_OK

    try:
        return anyio.run(main)
    finally:
        ledger.close()


def _open_ledger(path: str) -> Any:
    """A ``postgresql://`` (or ``postgres://``) DSN opens a ``PostgresLedger``; anything else
    names an existing ``SQLiteLedger`` file."""
    if path.startswith(("postgresql://", "postgres://")):
        from runmachine.ledger import LedgerError

        try:
            from runmachine.postgres_ledger import PostgresLedger
        except ImportError as exc:
            raise LedgerError(str(exc)) from exc
        return PostgresLedger(path)

    from runmachine.sqlite_ledger import SQLiteLedger

    if not os.path.exists(path):
        raise FileNotFoundError(f"no ledger file {path!r}")
    return SQLiteLedger(path)


def describe(entry: RunEntry) -> dict[str, Any]:
    calls = list(entry.calls.values())
    machine, is_turn = split_machine(entry.machine)
    return {
        "kind": "turn" if is_turn else "run",
        "run_id": entry.run_id,
        "thread_id": entry.thread_id,
        "status": entry.status,
        "machine": machine,
        "rounds": len(entry.rounds),
        "rounds_accepted": sum(r.accepted for r in entry.rounds),
        "calls": len(calls),
        "calls_finished": sum(c.finished for c in calls),
        "calls_failed": sum(c.error is not None for c in calls),
        "updated_at": entry.updated_at,
    }


def cmd_runs(args: argparse.Namespace) -> int:
    import anyio

    from runmachine.ledger import LedgerError

    try:
        ledger = _open_ledger(args.ledger)
    except (LedgerError, FileNotFoundError) as exc:
        print(f"runmachine runs: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def read() -> list[dict[str, Any]]:
        rows = []
        for entry in await ledger.runs():
            row = describe(entry)
            lease = await ledger.lease_of(entry.run_id) if hasattr(ledger, "lease_of") else None
            row["holder"] = lease.holder if lease is not None else None
            row["lease_expires_at"] = lease.expires_at if lease is not None else None
            rows.append(row)
        return rows

    try:
        rows = anyio.run(read)
    finally:
        ledger.close()
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return EXIT_OK
    if not rows:
        print(f"no runs in {ledger!r}")
        return EXIT_OK
    header = ("RUN / TURN", "IN", "STATUS", "ROUNDS", "CALLS", "MACHINE", "HOLDER", "UPDATED")
    now = time.time()

    def holder(row: dict[str, Any]) -> str:
        if row["holder"] is None:
            return "-"
        until = time.strftime("%H:%M:%S", time.localtime(row["lease_expires_at"]))
        state = "until" if row["lease_expires_at"] > now else "expired at"
        return f"{row['holder']} ({state} {until})"

    table = [header] + [
        (
            r["run_id"],
            r["thread_id"],
            r["status"],
            f"{r['rounds_accepted']}/{r['rounds']} accepted",
            f"{r['calls_finished']}/{r['calls']} done"
            + (f", {r['calls_failed']} failed" if r["calls_failed"] else ""),
            r["machine"],
            holder(r),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["updated_at"])),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    import anyio
    import openai

    from runmachine.errors import RunAborted, RunHeld, RunMachineError
    from runmachine.ledger import LedgerError

    try:
        cls = load_machine_class(args.target)
        ledger = _open_ledger(args.ledger)
    except (ValueError, LedgerError, FileNotFoundError) as exc:
        print(f"runmachine resume: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def main() -> int:
        while True:
            try:
                return await attempt()
            except RunHeld as held:
                if not args.wait:
                    raise
                print(f"runmachine resume: {held}; waiting for its lease to run out", flush=True)
                # The lease's expiry is on the ledger's clock (the database server's, for
                # PostgresLedger), not this machine's.
                clock = getattr(ledger, "clock", None)
                now = await clock() if clock is not None else time.time()
                await anyio.sleep(min(max(held.until - now, 0.0), 3600.0) + 0.1)

    async def attempt() -> int:
        entry = await ledger.load(args.run_id)
        is_turn = entry is not None and split_machine(entry.machine)[1]
        async with client_from(args) as client:
            machine = cls(client, ledger=ledger)
            if is_turn:
                assert entry is not None
                approvals: dict[str, Any] = dict.fromkeys(args.approve, "approve")
                approvals.update(dict.fromkeys(args.deny, "deny"))
                result = await machine.resume(
                    session_id=entry.thread_id, turn_id=args.run_id, approvals=approvals
                )
            else:
                if args.approve or args.deny:
                    raise RunMachineError(
                        f"{args.run_id} is not an agent-session turn: it has no approvals"
                    )
                result = await machine.resume(run_id=args.run_id, thread_id=args.thread_id)
        errors = sum(c.error is not None for c in result.tool_calls)
        if result.pending_approvals:
            waiting = ", ".join(a.request_id for a in result.pending_approvals)
            print(f"turn {result.turn_id}: waiting on approval request(s) {waiting}")
            return EXIT_NOT_COMPLETED
        print(
            f"{'turn' if is_turn else 'run'} {args.run_id}: {result.status} after "
            f"{result.rounds} round(s), "
            f"{len(result.tool_calls)} tool call(s)"
            + (f", {errors} with an error output" if errors else "")
        )
        if result.text:
            print(result.text)
        return EXIT_OK if result.status == lifecycle.COMPLETED else EXIT_NOT_COMPLETED

    try:
        return anyio.run(main)
    except RunHeld as exc:
        print(f"runmachine resume: {exc}", file=sys.stderr)
        return EXIT_HELD
    except RunAborted as exc:
        print(f"runmachine resume: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_NOT_COMPLETED
    except (openai.APIConnectionError, openai.APIStatusError) as exc:
        print(f"runmachine resume: the server failed: {exc}", file=sys.stderr)
        return EXIT_SERVER
    except (RunMachineError, openai.OpenAIError) as exc:
        print(f"runmachine resume: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        ledger.close()
