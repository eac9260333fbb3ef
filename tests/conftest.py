"""Project test configuration: Hypothesis profiles chosen by LVSCONF_HYPOTHESIS (dev | ci);
the ``children`` fixture for tests that run child processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from childwatch import Children, watching
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=200, deadline=None)
settings.register_profile(
    "ci", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("LVSCONF_HYPOTHESIS", "dev"))


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    """Name: children. Scope: function. Child processes with default interrupt handling whose
    Python stacks go into the failure message when they miss a deadline (tests/childwatch.py);
    whatever still runs at the end is killed."""
    with watching(tmp_path) as watched:
        yield watched
