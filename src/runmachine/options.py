"""``DriverOptions``: how a machine drives its runs, validated when it is made.

Every field is also a keyword of ``RunMachine(...)``. A value of the wrong type or out of range
is refused at construction with an ``OptionError`` that names the option, what was given and
what is accepted, so that nothing fails deep inside a run (``tool_concurrency=0`` would wait for
ever, ``"lots"`` would fail at the first round).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any

import attrs

from runmachine.errors import OptionError

__all__ = ["DriverOptions", "check_integer", "unknown_option"]


def check_integer(name: str, value: object, minimum: int) -> int:
    """``value``, if it is an int (not a bool) of at least ``minimum``; otherwise the
    ``OptionError`` that names option ``name``, what was given and what is accepted."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(
            f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}"
        )
    if value < minimum:
        raise OptionError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _integer(minimum: int) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        check_integer(attribute.name, value, minimum)

    return check


def _seconds(*, positive: bool) -> Any:
    bound = "> 0" if positive else ">= 0"

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(
                f"{attribute.name} must be a number of seconds {bound}, got "
                f"{type(value).__name__} {value!r}"
            )
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise OptionError(
                f"{attribute.name} must be a finite number of seconds {bound}, got {value!r}"
            )

    return check


def _boolean(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise OptionError(
            f"{attribute.name} must be True or False, got {type(value).__name__} {value!r}"
        )


@attrs.frozen(kw_only=True)
class DriverOptions:
    """How a ``RunMachine`` drives its runs. Every field is a keyword of ``RunMachine(...)``."""

    tool_concurrency: int = attrs.field(default=16, validator=_integer(1))
    """How many tool calls run at once."""
    deadline_margin: float = attrs.field(default=5.0, validator=_seconds(positive=False))
    """Seconds before the run's ``expires_at`` by which the outputs must be submitted."""
    max_rounds: int = attrs.field(default=20, validator=_integer(1))
    """The most tool rounds one run may ask for; past it the run is cancelled."""
    max_identical_rounds: int = attrs.field(default=3, validator=_integer(1))
    """The most rounds in a row with the same tools and arguments; past it the run is cancelled."""
    stream: bool = attrs.field(default=True, validator=_boolean)
    """False drives the run by polling alone (state hooks fire; delta hooks do not)."""
    poll_interval: float = attrs.field(default=1.0, validator=_seconds(positive=True))
    """Seconds between polls when the server sends no ``openai-poll-after-ms``."""
    max_poll_interval: float = attrs.field(default=8.0, validator=_seconds(positive=True))
    """The longest wait between polls as the interval backs off."""
    reuse_connection: bool = attrs.field(default=True, validator=_boolean)
    """Read the end of the stream that stopped at ``requires_action`` alongside the tools, and
    let the submission wait for it (a server that keeps the stream open is waited for half a
    second at most), so that the submission reuses that stream's connection: one connection
    per run, which halves the sockets of many concurrent runs and saves about a sixth of the
    memory each holds. False: the submission is made at once and the end is read alongside it,
    the submission on a connection of its own (for tools that return at once, the request goes
    out 0.3-0.6 ms sooner; a connection opened for it costs far more against a remote server)."""
    submit_attempts: int = attrs.field(default=4, validator=_integer(1))
    """Attempts at one round's submission when the server did not take it."""
    recovery_attempts: int = attrs.field(default=6, validator=_integer(1))
    """Attempts in a row at reading a run back (polling, reconciling after a lost stream or a
    failed submit) through transient failures, with back-off, before giving the run up."""
    cancel_timeout: float = attrs.field(default=10.0, validator=_seconds(positive=True))
    """Bound on the shielded ``runs.cancel`` made when a run is abandoned."""
    lease_ttl: float = attrs.field(default=30.0, validator=_seconds(positive=True))
    """With a ledger that keeps leases (every ledger runmachine ships): how long a run's lease
    lasts unless renewed (it is renewed every third of it while the run is driven). A holder
    that stops (killed, paused, cut off) loses the run to another after at most this long."""
    lease_holder: str | None = attrs.field(default=None)
    """The name this machine's leases are held under (``host:pid:random`` by default)."""
    turn_timeout: float | None = attrs.field(default=None)
    """Agent-session turns (which have no ``expires_at``): seconds a turn may take, from its
    start to its end, tools included. When they pass, the tools are stopped, the turn is
    cancelled on the server and ``TurnTimedOut`` is raised. ``None``: no limit."""

    @lease_holder.validator
    def _check_holder(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise OptionError(f"lease_holder must be a non-empty string or None, got {value!r}")

    @turn_timeout.validator
    def _check_turn_timeout(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            _seconds(positive=True)(self, attribute, value)

    def __attrs_post_init__(self) -> None:
        if self.max_poll_interval < self.poll_interval:
            raise OptionError(
                f"max_poll_interval ({self.max_poll_interval!r}) must be at least poll_interval "
                f"({self.poll_interval!r})"
            )


def unknown_option(owner: str, names: Iterable[str], known: Iterable[str]) -> OptionError:
    """The error for keywords ``owner`` does not take, with the closest known name."""
    known = sorted(known)
    parts = []
    for name in sorted(names):
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        parts.append(f"{name!r}{hint}")
    return OptionError(
        f"{owner}() got an unknown option {', '.join(parts)}; its options are: {', '.join(known)}"
    )
