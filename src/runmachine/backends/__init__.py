"""Backends: the servers a run can live on, each behind the seam ``runmachine.backends.base``.

``AssistantsBackend`` (the Assistants API: threads and runs) is the run machines'; agent
sessions' turns have their own, ``runmachine.backends.sessions.SessionsBackend``.
"""

from __future__ import annotations

from runmachine.backends.assistants import AssistantsBackend, CreateRun, CreateThreadAndRun
from runmachine.backends.base import Backend, RequiredCall, RunRef, StreamLost, SubmitMode

__all__ = [
    "AssistantsBackend",
    "Backend",
    "CreateRun",
    "CreateThreadAndRun",
    "RequiredCall",
    "RunRef",
    "StreamLost",
    "SubmitMode",
]
