"""Project test configuration: Hypothesis profiles chosen by LVSCONF_HYPOTHESIS (dev | ci)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=200, deadline=None)
settings.register_profile(
    "ci", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("LVSCONF_HYPOTHESIS", "dev"))
