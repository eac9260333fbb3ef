"""mh — Maglev hashing (ip_vs_mh.c): a 4093-slot lookup table filled from per-dest
permutations (offset, skip) computed with SipHash-1-3 (``hsiphash`` on 64-bit).

Turns per dest use ``last_weight`` (the latest nonzero weight), divided by the gcd of the
last weights and shifted right by ``rshift = max(fls(maxw/gcd) - 6, 0)``
(``IP_VS_MH_TAB_BITS`` = CONFIG_IP_VS_MH_TAB_INDEX / 2 = 6). So weight 0 keeps a dest's slots:
its clients get NULL (or the fallback) and nobody else moves. Rebuilt on add, delete, edit.
"""

from __future__ import annotations

from impl.kernel_level import KernelLevel
from impl.schedulers.base import DestState, TableScheduler
from impl.siphash import fold_addr, hsiphash_u32
from impl.types import Flow, Service, SvcFlag

MH_TAB_SIZE = 4093  # primes[CONFIG_IP_VS_MH_TAB_INDEX(12) - 8]
MH_TAB_BITS = 12 // 2
HASH1 = (2654435761, 2654435761)  # generate_hash_secret
HASH2 = (2654446892, 2654446892)


def mh_hashkey(addr_fold: int, port: int, key: tuple[int, int], offset: int = 0) -> int:
    """``ip_vs_mh_hashkey``: hsiphash of the u32 ``offset + port + addr``."""
    return hsiphash_u32(offset + port + addr_fold, key)


def dest_offset_skip(d: DestState) -> tuple[int, int]:
    """(offset, skip) of a dest's permutation (``ip_vs_mh_permutate``)."""
    v = fold_addr(d.addr)
    return (
        mh_hashkey(v, d.port, HASH1) % MH_TAB_SIZE,
        mh_hashkey(v, d.port, HASH2) % (MH_TAB_SIZE - 1) + 1,
    )


def _unavailable(d: DestState) -> bool:
    return d.weight <= 0 or d.overloaded


class MaglevHashing(TableScheduler):
    name = "mh"

    def __init__(self, service: Service, level: KernelLevel) -> None:
        super().__init__(service, level)
        self.lookup: list[DestState | None] = [None] * MH_TAB_SIZE
        self.gcd = 0
        self.rshift = 0
        self._perm_cache: dict[tuple[int, int], tuple[int, int]] = {}

    def _offset_skip(self, d: DestState) -> tuple[int, int]:
        k = (fold_addr(d.addr), d.port)
        r = self._perm_cache.get(k)
        if r is None:
            r = self._perm_cache[k] = dest_offset_skip(d)
        return r

    def rebuild(self, dests: list[DestState]) -> None:
        g = 0
        for d in dests:
            if d.last_weight > 0:
                g = _gcd(d.last_weight, g) if g > 0 else d.last_weight
        self.gcd = g
        if g < 1:
            self.rshift = 0
            self.lookup = [None] * MH_TAB_SIZE
            return
        mw = max(d.last_weight for d in dests) // g
        self.rshift = max(mw.bit_length() - MH_TAB_BITS, 0)  # fls(mw) == bit_length
        self._populate(dests)

    def _populate(self, dests: list[DestState]) -> None:
        perm: list[int] = []
        skip: list[int] = []
        turns: list[int] = []
        for d in dests:
            off, sk = self._offset_skip(d)
            perm.append(off)
            skip.append(sk)
            lw = d.last_weight
            turns.append((lw // self.gcd) >> self.rshift or (1 if lw != 0 else 0))
        taken = bytearray(MH_TAB_SIZE)
        table: list[DestState | None] = [None] * MH_TAB_SIZE
        n = 0
        i = 0  # position in the list; the sweep restarts at the head
        dt_count = 0
        while n < MH_TAB_SIZE:
            if i >= len(dests):
                i = 0
            while i < len(dests):
                if turns[i] < 1:  # added with weight 0: owns no slot
                    i += 1
                    continue
                c = perm[i]
                while taken[c]:
                    c += skip[i]
                    if c >= MH_TAB_SIZE:
                        c -= MH_TAB_SIZE
                perm[i] = c
                taken[c] = 1
                table[c] = dests[i]
                n += 1
                if n == MH_TAB_SIZE:
                    break
                dt_count += 1
                if dt_count >= turns[i]:
                    dt_count = 0
                    i += 1
        self.lookup = table

    def slot_of(self, flow: Flow) -> int:
        port = flow.sport if self.flags & SvcFlag.SCHED2 else 0
        return mh_hashkey(fold_addr(flow.saddr), port, HASH1) % MH_TAB_SIZE

    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        port = flow.sport if self.flags & SvcFlag.SCHED2 else 0
        fold = fold_addr(flow.saddr)
        ihash = mh_hashkey(fold, port, HASH1) % MH_TAB_SIZE
        d = self.lookup[ihash]
        if d is None:
            return None
        if not _unavailable(d):
            return d
        if not self.flags & SvcFlag.SCHED1:
            return None
        for offset in range(MH_TAB_SIZE):
            roffset = (offset + ihash) % MH_TAB_SIZE
            d = self.lookup[mh_hashkey(fold, port, HASH1, roffset) % MH_TAB_SIZE]
            if d is None:
                break
            if not _unavailable(d):
                return d
        return None


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a
