"""runmachine: the run lifecycle of OpenAI's server-side agents (Assistants runs, agent-session
turns) as an explicit, tested state machine.

The public names live here. ``runmachine.lifecycle`` holds the lifecycle tables themselves,
``runmachine.errors`` every exception, and ``runmachine.testing`` the emulator of both APIs.
"""

from __future__ import annotations

from runmachine import lifecycle
from runmachine.admission import Admission
from runmachine.core import RunCore
from runmachine.deprecation import quiet_deprecation
from runmachine.driver import EventStream
from runmachine.encoding import (
    RunResponse,
    encode_event,
    encoded,
    ndjson_line,
    sse_event,
    stream_run,
)
from runmachine.errors import (
    DuplicateSubmission,
    HandedOff,
    HookError,
    LeaseLost,
    LedgerError,
    MachineBusy,
    OptionError,
    ProtocolViolation,
    RequiresActionLoop,
    ResultConflict,
    RunAborted,
    RunHeld,
    RunMachineError,
    ToolFailed,
    TooManyRounds,
    TurnTimedOut,
)
from runmachine.ledger import Ledger, MemoryLedger
from runmachine.machine import RunMachine
from runmachine.options import DriverOptions
from runmachine.records import ToleratedEvent, ToolCallRecord, TransitionRecord
from runmachine.result import RunResult
from runmachine.sqlite_ledger import SQLiteLedger
from runmachine.tools import ToolSpec, tool
from runmachine.turn_core import TurnCore

__all__ = [
    "Admission",
    "DriverOptions",
    "DuplicateSubmission",
    "EventStream",
    "HandedOff",
    "HookError",
    "LeaseLost",
    "Ledger",
    "LedgerError",
    "MachineBusy",
    "MemoryLedger",
    "OptionError",
    "ProtocolViolation",
    "RequiresActionLoop",
    "ResultConflict",
    "RunAborted",
    "RunCore",
    "RunHeld",
    "RunMachine",
    "RunMachineError",
    "RunResponse",
    "RunResult",
    "SQLiteLedger",
    "ToleratedEvent",
    "TooManyRounds",
    "ToolCallRecord",
    "ToolFailed",
    "ToolSpec",
    "TransitionRecord",
    "TurnCore",
    "TurnTimedOut",
    "encode_event",
    "encoded",
    "lifecycle",
    "ndjson_line",
    "quiet_deprecation",
    "sse_event",
    "stream_run",
    "tool",
]

__version__ = "0.1.0"
