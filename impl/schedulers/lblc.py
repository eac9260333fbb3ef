"""lblc — locality-based least connection (ip_vs_lblc.c): a cache maps the packet's
destination address to a dest.

A cached dest is used if it is AVAILABLE, has weight > 0 and is not "lblc-overloaded"
(``active > weight`` while some dest has ``2*active < weight``; the OVERLOAD flag is not
checked). Otherwise the wlc loop picks and the entry is replaced.

Expiry: the kernel drops entries unused for ``lblc_expiration`` (24 h) at a full check every
30 periodic ticks of 60 s, so an entry may live up to ~30 min longer than that; the model drops
it exactly at ``lastuse + expiration`` (tolerance documented). Table-pressure eviction (more
than 16384 entries) is not modelled.
"""

from __future__ import annotations

from impl.kernel_level import KernelLevel
from impl.schedulers.base import DestState, Scheduler
from impl.schedulers.wlc import wlc_pick
from impl.types import Flow, IPAddress, Service

DEFAULT_EXPIRATION = 24 * 60 * 60.0  # net.ipv4.vs.lblc_expiration / lblcr_expiration


def lblc_overloaded(dest: DestState, dests: list[DestState]) -> bool:
    """``is_overloaded`` of lblc.c/lblcr.c."""
    if dest.activeconns > dest.weight:
        return any(d.activeconns * 2 < d.weight for d in dests)
    return False


class _Entry:
    __slots__ = ("dest", "lastuse")

    def __init__(self, dest: DestState, lastuse: float) -> None:
        self.dest = dest
        self.lastuse = lastuse


class LocalityLeastConnection(Scheduler):
    name = "lblc"

    def __init__(self, service: Service, level: KernelLevel) -> None:
        super().__init__(service, level)
        self.expiration = DEFAULT_EXPIRATION
        self.cache: dict[IPAddress, _Entry] = {}

    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        en = self.cache.get(flow.daddr)
        if en is not None and self.now - en.lastuse >= self.expiration:
            del self.cache[flow.daddr]
            en = None
        if en is not None:
            en.lastuse = self.now
            d = en.dest
            if d.available and d.weight > 0 and not lblc_overloaded(d, dests):
                return d
        d2 = wlc_pick(dests, self.level.totalconns)
        if d2 is None:
            return None
        if en is not None:
            en.dest = d2  # ip_vs_lblc_new replaces the entry (fresh lastuse)
            en.lastuse = self.now
        else:
            self.cache[flow.daddr] = _Entry(d2, self.now)
        return d2
