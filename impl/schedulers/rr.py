"""rr — round robin (ip_vs_rr.c).

The kernel keeps ``svc->sched_data`` pointing at a list node: initially the list head, later
the last picked dest. A pick walks from the node after it, circularly, ending with the
pointer's own dest. Deleting the dest under the pointer moves the pointer to the entry before
it (``p->next->prev`` after unlink), so the next pick is the deleted dest's successor.
"""

from __future__ import annotations

from impl.kernel_level import KernelLevel
from impl.schedulers.base import DestState, Scheduler
from impl.types import Flow, Service


class RoundRobin(Scheduler):
    name = "rr"

    def __init__(self, service: Service, level: KernelLevel) -> None:
        super().__init__(service, level)
        self.last: DestState | None = None  # None = the list head
        self._order: list[DestState] = []  # list as of the last hook, to find a predecessor

    def init_service(self, dests: list[DestState]) -> None:
        self.last = None
        self._order = list(dests)

    def add_dest(self, dests: list[DestState], dest: DestState) -> None:
        self._order = list(dests)

    def upd_dest(self, dests: list[DestState], dest: DestState) -> None:
        self._order = list(dests)

    def del_dest(self, dests: list[DestState], dest: DestState) -> None:
        if self.last is dest:
            idx = next((i for i, d in enumerate(self._order) if d is dest), 0)
            self.last = self._order[idx - 1] if idx > 0 else None
        self._order = list(dests)

    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        n = len(dests)
        order: range | list[int]
        if self.last is None:
            order = range(n)  # from the head: one pass, no wrap
        else:
            try:
                i = next(k for k, d in enumerate(dests) if d is self.last)
            except StopIteration:  # pointer no longer in the list: start from the head
                order = range(n)
            else:
                order = [*range(i + 1, n), *range(0, i + 1)]
        for k in order:
            d = dests[k]
            if not d.overloaded and d.weight > 0:
                self.last = d
                return d
        return None
