"""sed — shortest expected delay (ip_vs_sed.c): wlc's loop with overhead ``activeconns + 1``."""

from __future__ import annotations

from impl.schedulers.base import DestState, Scheduler
from impl.schedulers.wlc import weighted_least
from impl.types import Flow


def sed_overhead(d: DestState) -> int:
    return d.activeconns + 1


class ShortestExpectedDelay(Scheduler):
    name = "sed"

    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        return weighted_least(dests, sed_overhead)
