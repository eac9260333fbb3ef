"""sh — source hashing (ip_vs_sh.c): 256 buckets, ``weight`` consecutive buckets per dest.

Rebuilt (``ip_vs_sh_reassign``) on every add, delete and edit. A weight-0 dest still takes one
bucket per sweep. Lookup hashes the packet source (and its source port with SCHED2,
``sh-port``); with SCHED1 (``sh-fallback``) an unavailable bucket makes it probe
``(2*h + k) mod 256`` -- twice the hash, because ``ip_vs_sh_hashkey`` adds the offset to a
hash that is then added again.
"""

from __future__ import annotations

from impl.kernel_level import KernelLevel
from impl.schedulers.base import DestState, TableScheduler
from impl.siphash import fold_addr, hash_32
from impl.types import Flow, Service, SvcFlag

SH_TAB_BITS = 8  # CONFIG_IP_VS_SH_TAB_BITS on Debian
SH_TAB_SIZE = 1 << SH_TAB_BITS
SH_TAB_MASK = SH_TAB_SIZE - 1


def sh_hashkey(addr_fold: int, port: int, offset: int = 0) -> int:
    """``ip_vs_sh_hashkey``: (offset + hash_32(port + addr, 8)) & 255."""
    return (offset + hash_32(port + addr_fold, SH_TAB_BITS)) & SH_TAB_MASK


def _unavailable(d: DestState) -> bool:
    return d.weight <= 0 or d.overloaded


class SourceHashing(TableScheduler):
    name = "sh"

    def __init__(self, service: Service, level: KernelLevel) -> None:
        super().__init__(service, level)
        self.buckets: list[DestState | None] = [None] * SH_TAB_SIZE

    def rebuild(self, dests: list[DestState]) -> None:
        if not dests:
            self.buckets = [None] * SH_TAB_SIZE
            return
        table: list[DestState | None] = []
        i = count = 0
        for _ in range(SH_TAB_SIZE):
            d = dests[i]
            table.append(d)
            count += 1
            if count >= d.weight:
                i = (i + 1) % len(dests)
                count = 0
        self.buckets = table

    def bucket_of(self, flow: Flow) -> int:
        """The bucket a flow hashes to (without fallback)."""
        port = flow.sport if self.flags & SvcFlag.SCHED2 else 0
        return sh_hashkey(fold_addr(flow.saddr), port)

    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        port = flow.sport if self.flags & SvcFlag.SCHED2 else 0
        fold = fold_addr(flow.saddr)
        ihash = sh_hashkey(fold, port)
        d = self.buckets[ihash]
        if d is None:
            return None
        if not _unavailable(d):
            return d
        if not self.flags & SvcFlag.SCHED1:
            return None
        for offset in range(SH_TAB_SIZE):
            roffset = (offset + ihash) % SH_TAB_SIZE
            d = self.buckets[sh_hashkey(fold, port, roffset)]
            if d is None:
                break
            if not _unavailable(d):
                return d
        return None
