"""``quiet_deprecation()`` silences the SDK's Assistants warnings, safely across tasks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import anyio
import pytest

from runmachine import quiet_deprecation

pytestmark = pytest.mark.anyio


def _ours(filters: list[object], before: list[object]) -> list[object]:
    return [f for f in filters if not any(f is b for b in before)]


def test_it_silences_the_sdks_warnings_and_only_those() -> None:
    script = textwrap.dedent(
        """
        import warnings
        from runmachine import quiet_deprecation

        with quiet_deprecation():
            warnings.warn("The Assistants API is deprecated in favor of the Responses API",
                          DeprecationWarning)
            warnings.warn("deprecated", DeprecationWarning)
            try:
                warnings.warn("something else is deprecated", DeprecationWarning)
            except DeprecationWarning:
                print("others still raise")
        try:
            warnings.warn("deprecated", DeprecationWarning)
        except DeprecationWarning:
            print("outside, the SDK's raise again")
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", script],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["others still raise", "outside, the SDK's raise again"]


def test_nested_blocks_leave_the_filters_as_they_found_them() -> None:
    before = list(warnings.filters)
    with quiet_deprecation():
        inside = _ours(list(warnings.filters), before)
        assert len(inside) == 2
        with quiet_deprecation():
            assert _ours(list(warnings.filters), before) == inside
        assert _ours(list(warnings.filters), before) == inside  # the outer block still holds
    assert warnings.filters == before


async def test_blocks_held_across_awaits_in_concurrent_tasks_leave_nothing_installed() -> None:
    before = list(warnings.filters)
    entered = [anyio.Event() for _ in range(3)]
    leave = [anyio.Event() for _ in range(3)]

    async def hold(i: int) -> None:
        with quiet_deprecation():
            entered[i].set()
            await leave[i].wait()

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(hold, i)
        for event in entered:
            await event.wait()
        assert len(_ours(list(warnings.filters), before)) == 2
        # Leave out of order: the middle one first, then the first; the last still holds.
        for i in (1, 0):
            leave[i].set()
            await anyio.wait_all_tasks_blocked()
            assert len(_ours(list(warnings.filters), before)) == 2
        leave[2].set()
    assert warnings.filters == before
