"""``quiet_deprecation()``: silence the SDK's Assistants API deprecation warnings for a block.

The openai SDK marks every Assistants call deprecated and warns on each one, at call time. Code
that knowingly drives the Assistants API (runmachine's backend, its demo and examples, and user
code around them) wraps its calls in this context manager; every other warning is left alone.

Python's warning filters are global to the process, so ``warnings.catch_warnings()`` is not safe
to hold across an ``await``: two tasks that enter and leave it out of order restore each other's
snapshots, and the filters stay installed for good. This one counts its holders instead: the
first to enter installs the two filters, the last to leave takes exactly those two out again,
whatever else changed meanwhile. Nested, concurrent and threaded use are all safe.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

__all__ = ["quiet_deprecation"]

#: The SDK's two messages: the Assistants API's own, and the bare "deprecated" of the methods
#: marked with ``typing_extensions.deprecated``.
_MESSAGES = ("The Assistants API is deprecated", "deprecated$")

_lock = threading.Lock()
_holders = 0
_installed: list[Any] = []


def _install() -> None:
    # Inserted as ``filterwarnings`` would build them, but without its removal of an equal
    # filter someone else installed (which taking ours out again would then lose).
    filters = cast("list[Any]", warnings.filters)
    for message in _MESSAGES:
        mine = ("ignore", re.compile(message, re.I), DeprecationWarning, None, 0)
        filters.insert(0, mine)
        _installed.append(mine)


def _remove() -> None:
    # In place: the list is the one the interpreter reads. Only these two entries go; an ignore
    # filter leaves nothing in the modules' warning registries, so no cache is left stale.
    filters = cast("list[Any]", warnings.filters)
    filters[:] = [f for f in filters if not any(f is mine for mine in _installed)]
    _installed.clear()


@contextmanager
def quiet_deprecation() -> Iterator[None]:
    """Within the block, ignore the SDK's Assistants deprecation warnings (and only those)."""
    global _holders
    with _lock:
        _holders += 1
        if _holders == 1:
            _install()
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                _remove()
