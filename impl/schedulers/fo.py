"""fo — weighted failover (ip_vs_fo.c): the highest weight among non-OVERLOADed dests with
weight > 0; ties keep the earlier list entry."""

from __future__ import annotations

from impl.schedulers.base import DestState, Scheduler
from impl.types import Flow


class WeightedFailover(Scheduler):
    name = "fo"

    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        best: DestState | None = None
        hw = 0
        for d in dests:
            if not d.overloaded and d.weight > hw:
                best, hw = d, d.weight
        return best
