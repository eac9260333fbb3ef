"""dh — destination hashing (ip_vs_dh.c): 256 buckets filled one dest each, round robin in
list order; weights are ignored in the table. The key is the packet's *destination* address.
Rebuilt on add and delete only (dh has no ``upd_dest``)."""

from __future__ import annotations

from impl.kernel_level import KernelLevel
from impl.schedulers.base import DestState, TableScheduler
from impl.siphash import fold_addr, hash_32
from impl.types import Flow, Service

DH_TAB_BITS = 8
DH_TAB_SIZE = 1 << DH_TAB_BITS


class DestinationHashing(TableScheduler):
    name = "dh"
    rebuild_on_edit = False  # ip_vs_dh has no upd_dest: an edit keeps the table

    def __init__(self, service: Service, level: KernelLevel) -> None:
        super().__init__(service, level)
        self.buckets: list[DestState | None] = [None] * DH_TAB_SIZE

    def rebuild(self, dests: list[DestState]) -> None:
        n = len(dests)
        self.buckets = [dests[i % n] if n else None for i in range(DH_TAB_SIZE)]

    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        d = self.buckets[hash_32(fold_addr(flow.daddr), DH_TAB_BITS)]
        if d is None or not d.available or d.weight <= 0 or d.overloaded:
            return None
        return d
