"""Suite-wide pytest configuration: every async test runs on asyncio and on trio."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# Hypothesis draws the same examples on every run unless asked otherwise, so a CI failure
# reproduces: `HYPOTHESIS_PROFILE=explore` (or `--hypothesis-profile=explore`) draws new ones.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
