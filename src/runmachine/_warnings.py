"""``quiet_deprecation()``: silence the SDK's Assistants API deprecation warnings for a block.

The openai SDK marks every Assistants call deprecated and warns on each one, at call time. Code
that knowingly drives the Assistants API (runmachine's driver, its demo and examples, and user
code around them) wraps its calls in this context manager; every other warning is left alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_deprecation"]

#: The SDK's two messages: the Assistants API's own, and the bare "deprecated" of the methods
#: marked with ``typing_extensions.deprecated``.
_MESSAGES = ("The Assistants API is deprecated", "deprecated$")


@contextmanager
def quiet_deprecation() -> Iterator[None]:
    """Within the block, ignore the SDK's Assistants deprecation warnings (and only those)."""
    with warnings.catch_warnings():
        for message in _MESSAGES:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        yield
