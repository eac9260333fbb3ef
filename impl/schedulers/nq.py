"""nq — never queue (ip_vs_nq.c): the first idle (activeconns == 0) eligible dest in list order
wins at once; otherwise the sed rule. OVERLOADed and weight-0 dests are skipped."""

from __future__ import annotations

from impl.schedulers.base import DestState, Scheduler
from impl.types import Flow


class NeverQueue(Scheduler):
    name = "nq"

    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        least: DestState | None = None
        loh = 0
        for d in dests:
            if d.overloaded or d.weight == 0:
                continue
            doh = d.activeconns + 1
            if d.activeconns == 0:
                return d
            if least is None or loh * d.weight > doh * least.weight:
                least, loh = d, doh
        return least
