"""The ``runmachine`` command line: one sub-command per module, dispatched here.

This module only parses arguments and hands off; each sub-command's work lives with the feature it
belongs to, and heavy imports (the emulator's server, rendering) happen only when that sub-command
runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_emulator(args: argparse.Namespace) -> int:
    from runmachine.testing import serve

    serve(host=args.host, port=args.port, run_ttl=args.run_ttl, delta_delay=args.delta_delay)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runmachine",
        description="Drive OpenAI Assistants runs as an explicit state machine.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    emu = sub.add_parser(
        "emulator", help="serve the Assistants API emulator over HTTP (needs runmachine[emulator])"
    )
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=int, default=8000)
    emu.add_argument(
        "--run-ttl", type=float, default=600.0, help="seconds from a run's creation to its expiry"
    )
    emu.add_argument(
        "--delta-delay", type=float, default=0.0, help="seconds between streamed deltas"
    )
    emu.set_defaults(func=_cmd_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
