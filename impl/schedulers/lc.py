"""lc — least connection (ip_vs_lc.c): minimum overhead, OVERLOADed and weight-0 dests skipped,
ties keep the earlier list entry."""

from __future__ import annotations

from impl.schedulers.base import DestState, Scheduler
from impl.types import Flow


class LeastConnection(Scheduler):
    name = "lc"

    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        least: DestState | None = None
        loh = 0
        for d in dests:
            if d.overloaded or d.weight == 0:
                continue
            doh = self.overhead(d)
            if least is None or doh < loh:
                least, loh = d, doh
        return least
