"""ovf — weighted overflow (ip_vs_ovf.c): skip OVERLOADed dests, weight-0 dests and dests with
``activeconns > weight``; then the highest weight, ties keep the earlier list entry."""

from __future__ import annotations

from impl.schedulers.base import DestState, Scheduler
from impl.types import Flow


class WeightedOverflow(Scheduler):
    name = "ovf"

    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        h: DestState | None = None
        for d in dests:
            w = d.weight
            if d.overloaded or d.activeconns > w or w == 0:
                continue
            if h is None or w > h.weight:
                h = d
        return h
