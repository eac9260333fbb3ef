"""lblcr — locality-based least connection with replication (ip_vs_lblcr.c): a cache maps the
packet's destination address to a *set* of dests (newest member first).

From the set the weighted-least-loaded AVAILABLE, non-OVERLOADed member is taken. If the set
has more than one member and was not modified for ``lblcr_expiration``, its most loaded member
is dropped. If there is no pick or it is lblc-overloaded, the wlc loop picks over all dests and
the result joins the set. Entry expiry as in :mod:`impl.schedulers.lblc`.
"""

from __future__ import annotations

from collections.abc import Callable

from impl.kernel_level import KernelLevel
from impl.schedulers.base import DestState, Scheduler
from impl.schedulers.lblc import DEFAULT_EXPIRATION, lblc_overloaded
from impl.schedulers.wlc import weighted_least, wlc_pick
from impl.types import Flow, IPAddress, Service


class _DestSet:
    __slots__ = ("members", "lastmod", "lastuse")

    def __init__(self, now: float) -> None:
        self.members: list[DestState] = []
        self.lastmod = now
        self.lastuse = now

    def insert(self, dest: DestState, now: float) -> None:
        if any(m is dest for m in self.members):
            return
        self.members.insert(0, dest)  # list_add_rcu: head insertion
        self.lastmod = now

    def erase(self, dest: DestState, now: float) -> None:
        for i, m in enumerate(self.members):
            if m is dest:
                del self.members[i]
                self.lastmod = now
                return


def set_min(members: list[DestState], overhead: Callable[[DestState], int]) -> DestState | None:
    """``ip_vs_dest_set_min``: wlc over the set, skipping members no longer available."""
    return weighted_least(members, overhead, available_only=True)


def set_max(members: list[DestState], overhead: Callable[[DestState], int]) -> DestState | None:
    """``ip_vs_dest_set_max``."""
    it = iter(members)
    most: DestState | None = None
    for d in it:
        if d.weight > 0:
            most = d
            break
    if most is None:
        return None
    moh = overhead(most)
    for d in it:
        doh = overhead(d)
        if moh * d.weight < doh * most.weight and d.weight > 0:
            most, moh = d, doh
    return most


class LocalityLeastConnectionReplicated(Scheduler):
    name = "lblcr"

    def __init__(self, service: Service, level: KernelLevel) -> None:
        super().__init__(service, level)
        self.expiration = DEFAULT_EXPIRATION
        self.cache: dict[IPAddress, _DestSet] = {}

    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        now = self.now
        en = self.cache.get(flow.daddr)
        if en is not None and now - en.lastuse >= self.expiration:
            del self.cache[flow.daddr]
            en = None
        if en is not None:
            en.lastuse = now
            d = set_min(en.members, self.overhead)
            if len(en.members) > 1 and now > en.lastmod + self.expiration:
                m = set_max(en.members, self.overhead)
                if m is not None:
                    en.erase(m, now)
            if d is not None and not lblc_overloaded(d, dests):
                return d
            d = wlc_pick(dests, self.level.totalconns)
            if d is None:
                return None
            en.insert(d, now)
            return d
        d = wlc_pick(dests, self.level.totalconns)
        if d is None:
            return None
        entry = _DestSet(now)
        entry.insert(d, now)
        self.cache[flow.daddr] = entry
        return d
