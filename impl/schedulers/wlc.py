"""wlc — weighted least connection (ip_vs_wlc.c).

The first non-OVERLOADed dest with weight > 0 is the initial choice; each later non-OVERLOADed
dest replaces it when ``loh * w_d > doh * w_least`` (so ties keep the earlier entry and a
weight-0 dest never wins). :func:`wlc_pick` (the same loop, overhead inlined) is shared with
lblc/lblcr, whose fallback
(``__ip_vs_lblc_schedule``) is the same loop.
"""

from __future__ import annotations

from collections.abc import Callable

from impl.schedulers.base import DestState, Scheduler
from impl.types import Flow


def weighted_least(
    dests: list[DestState], overhead: Callable[[DestState], int], available_only: bool = False
) -> DestState | None:
    """The wlc choice; ``available_only`` also skips dests removed from their service (lblcr's
    ``ip_vs_dest_set_min``, whose set may still hold them)."""
    it = iter(dests)
    least: DestState | None = None
    for d in it:
        if not d.overloaded and d.weight > 0 and (d.available or not available_only):
            least = d
            break
    if least is None:
        return None
    loh = overhead(least)
    for d in it:
        if d.overloaded or (available_only and not d.available):
            continue
        doh = overhead(d)
        if loh * d.weight > doh * least.weight:
            least, loh = d, doh
    return least


def wlc_pick(dests: list[DestState], totalconns: bool) -> DestState | None:
    """:func:`weighted_least` with ``ip_vs_dest_conn_overhead`` inlined (the model's hot path):
    ``256*active + totalconns`` (6.1.183+/6.12.104+) or ``256*active + inactconns`` (older)."""
    least: DestState | None = None
    loh = lw = 0
    for d in dests:
        if d.overloaded:
            continue
        w = d.weight
        if least is None:
            if w > 0:
                a = d.activeconns
                least, lw = d, w
                loh = a * 256 + (d.totalconns if totalconns else max(d.totalconns - a, 0))
            continue
        a = d.activeconns
        doh = a * 256 + (d.totalconns if totalconns else max(d.totalconns - a, 0))
        if loh * w > doh * lw:
            least, loh, lw = d, doh, w
    return least


class WeightedLeastConnection(Scheduler):
    name = "wlc"

    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        return wlc_pick(dests, self.level.totalconns)
