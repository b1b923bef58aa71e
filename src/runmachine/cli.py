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
    import errno

    try:
        from runmachine.testing import serve

        serve(host=args.host, port=args.port, run_ttl=args.run_ttl, delta_delay=args.delta_delay)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in ("uvicorn", "starlette", "h11"):
            raise
        print(
            f"runmachine emulator: {exc.name} is not installed; the emulator needs its extra: "
            'pip install "runmachine[emulator]"',
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = f"port {args.port} on {args.host} is already in use"
        else:
            reason = f"cannot listen on port {args.port} of {args.host}: {exc.strerror or exc}"
        print(f"runmachine emulator: {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("runmachine emulator: interrupted", file=sys.stderr)
        return 130
    return 0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return port


_EMULATOR_DESCRIPTION = """\
Serve the Assistants v2 API emulator (runmachine.testing) over HTTP until
Ctrl-C: assistants, threads, messages, runs (JSON or streamed as SSE), run
steps and models under /v1, with the real API's objects, events and error
envelopes. State lives in memory, in this process only. Runs follow the
emulator's deterministic toy model: a user message that names a function tool
of the run gets that tool called; any other message gets "You said: ...".

Needs the emulator extra: pip install "runmachine[emulator]"

Point any Assistants client at http://HOST:PORT/v1 with any API key:
  openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="emulator")
or set OPENAI_BASE_URL=http://127.0.0.1:8000/v1 and OPENAI_API_KEY=emulator.
"""

_EMULATOR_EPILOG = """\
exit status: 1 the port could not be bound (already in use, or not allowed),
or the emulator extra is missing; 2 bad options; 130 interrupted (Ctrl-C).
"""


class _EmulatorHelp(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description kept as written, and every option's default shown."""


def _cmd_diagram(args: argparse.Namespace) -> int:
    from runmachine.diagrams import (
        FORMATS,
        GraphvizNotFound,
        draw_lifecycle,
        format_for_path,
        require_graphviz,
    )

    format: str = args.format or "mermaid"
    if args.output is not None:
        try:
            from_name = format_for_path(args.output)
        except ValueError as exc:
            if args.format is None:
                print(f"runmachine diagram: {exc}", file=sys.stderr)
                return 2
        else:
            if args.format is not None and args.format != from_name:
                print(
                    f"runmachine diagram: --format {args.format} but {args.output} is named "
                    f"for {from_name}; drop --format, or name the file for {args.format}",
                    file=sys.stderr,
                )
                return 2
            format = from_name
    assert format in FORMATS
    # Before any work (importing the class, drawing): a missing Graphviz, with the install line.
    if format in ("svg", "png"):
        try:
            require_graphviz(format)
        except GraphvizNotFound as exc:
            print(f"runmachine diagram: {exc}", file=sys.stderr)
            return 1

    from runmachine.ledger_cli import load_machine_class
    from runmachine.machine import RunMachine

    cls: type[RunMachine] = RunMachine
    if args.target is not None:
        try:
            cls = load_machine_class(args.target)
        except ValueError as exc:
            print(f"runmachine diagram: {exc}", file=sys.stderr)
            return 2
    try:
        drawing = draw_lifecycle(cls, format=format, backend=args.backend, detail=args.detail)
    except GraphvizNotFound as exc:
        print(f"runmachine diagram: {exc}", file=sys.stderr)
        return 1
    if args.output is not None:
        with open(args.output, "wb") as out:
            out.write(drawing if isinstance(drawing, bytes) else drawing.encode())
    elif isinstance(drawing, bytes):
        sys.stdout.buffer.write(drawing)
        sys.stdout.buffer.flush()
    else:
        sys.stdout.write(drawing)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from runmachine.demo import main as demo_main
    from runmachine.demo import options_from

    return demo_main(options_from(args))


_DEMO_EPILOG = """\
--backend sessions drives agent-session turns (client.beta.agents.sessions) on the embedded
emulator: the same multi-round, parallel tool calls, and an MCP approval request answered by the
machine's on_approval_request.

exit status: 0 every run (or turn) completed; 1 a run or turn did not complete (a guard stopped
it, or it ended failed, expired, cancelled or incomplete, or waits on an approval); 2 bad
options; 3 the server could not be reached or refused a request; 130 interrupted.
"""


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    from runmachine.demo import add_arguments

    add_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runmachine",
        description="Drive OpenAI Assistants runs as an explicit state machine.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    emu = sub.add_parser(
        "emulator",
        help="serve the Assistants API emulator over HTTP (needs runmachine[emulator])",
        description=_EMULATOR_DESCRIPTION,
        epilog=_EMULATOR_EPILOG,
        formatter_class=_EmulatorHelp,
    )
    emu.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emu.add_argument("--port", type=_port, default=8000, help="TCP port (0: any free one)")
    emu.add_argument(
        "--run-ttl", type=float, default=600.0, help="seconds from a run's creation to its expiry"
    )
    emu.add_argument(
        "--delta-delay", type=float, default=0.0, help="seconds between streamed deltas"
    )
    emu.set_defaults(func=_cmd_emulator)

    demo = sub.add_parser(
        "demo",
        help="watch a multi-round tool-calling run on the embedded emulator",
        description="Watch a multi-round, parallel tool-calling conversation live: streamed "
        "text, tool calls, every state transition and the run's trace. No API key needed.",
        epilog=_DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _demo_arguments(demo)
    demo.set_defaults(func=_cmd_demo)

    diagram = sub.add_parser(
        "diagram",
        help="draw the lifecycle of RunMachine or of a subclass (module:Class) from its table",
        description="Draw the lifecycle of RunMachine or of a subclass (module:Class) from its "
        "table: an Assistants run's (the default), or with --backend sessions an agent-session "
        "turn's, with the hooks the class defines written on their states. The default view is "
        "a statechart (the active states in one composite state, each rule they share one "
        "arrow); --detail full draws one arrow per row.",
        epilog="-o FILE takes the format from the file's name: .mmd or .mermaid (mermaid), "
        ".dot or .gv (Graphviz text), .svg, .png. svg and png need Graphviz's dot program, "
        "checked before anything is drawn.",
    )
    diagram.add_argument(
        "target", nargs="?", default=None, metavar="module:Class", help="default: RunMachine"
    )
    diagram.add_argument(
        "--format",
        choices=("mermaid", "dot", "svg", "png"),
        default=None,
        help="default: from -o FILE's extension, else mermaid; svg and png need Graphviz's dot",
    )
    diagram.add_argument(
        "--detail",
        choices=("readable", "full"),
        default="readable",
        help="readable: the statechart (default); full: one arrow per row of the table",
    )
    diagram.add_argument(
        "--backend",
        choices=("assistants", "sessions"),
        default="assistants",
        help="whose table: an Assistants run's (default) or an agent-session turn's",
    )
    diagram.add_argument("-o", "--output", default=None, metavar="FILE", help="default: stdout")
    diagram.set_defaults(func=_cmd_diagram)

    from runmachine.ledger_cli import add_arguments as _ledger_arguments

    _ledger_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
