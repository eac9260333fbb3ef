"""wrr — weighted round robin (ip_vs_wrr.c), with ``cl``, ``cw``, ``mw``, ``di`` exactly.

``ip_vs_wrr_dest_changed`` runs on every add, delete and edit: ``cl`` back to the head, di and
mw recomputed, cw clamped. A service built dest by dest therefore starts from whatever cw those
calls left (a lone first dest of weight 4 gives di 4, mw 1, cw 1).
"""

from __future__ import annotations

from math import gcd

from impl.kernel_level import KernelLevel
from impl.schedulers.base import DestState, Scheduler
from impl.types import Flow, Service

_HEAD = -1  # index standing for the list head (the kernel's &svc->destinations)


class WeightedRoundRobin(Scheduler):
    name = "wrr"

    def __init__(self, service: Service, level: KernelLevel) -> None:
        super().__init__(service, level)
        self.cl: DestState | None = None  # None = head
        self.cw = 0
        self.mw = 0
        self.di = 1

    @staticmethod
    def _gcd_weight(dests: list[DestState]) -> int:
        g = 0
        for d in dests:
            if d.weight > 0:
                g = gcd(d.weight, g) if g > 0 else d.weight
        return g or 1

    @staticmethod
    def _max_weight(dests: list[DestState]) -> int:
        return max((d.weight for d in dests), default=0) if dests else 0

    def init_service(self, dests: list[DestState]) -> None:
        self.cl = None
        self.di = self._gcd_weight(dests)
        self.mw = max(self._max_weight(dests), 0) - (self.di - 1)
        self.cw = self.mw

    def _changed(self, dests: list[DestState]) -> None:
        self.cl = None
        self.di = self._gcd_weight(dests)
        self.mw = max(self._max_weight(dests), 0) - (self.di - 1)
        if self.cw > self.mw or self.cw == 0:
            self.cw = self.mw
        elif self.di > 1:
            self.cw = (self.cw // self.di) * self.di + 1

    def add_dest(self, dests: list[DestState], dest: DestState) -> None:
        self._changed(dests)

    def del_dest(self, dests: list[DestState], dest: DestState) -> None:
        self._changed(dests)

    def upd_dest(self, dests: list[DestState], dest: DestState) -> None:
        self._changed(dests)

    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        if self.mw == 0:
            return None
        n = len(dests)
        last = _HEAD
        if self.cl is not None:
            last = next((i for i, d in enumerate(dests) if d is self.cl), _HEAD)
        pos = last
        stop: int | None = None
        last_pass = restarted = False
        while True:
            # list_for_each_entry_continue from ``pos`` to the end of the list
            for k in range(pos + 1, n):
                d = dests[k]
                if not d.overloaded and d.weight >= self.cw:
                    self.cl = d
                    return d
                if k == stop:
                    self.cl = d
                    return None
            pos = _HEAD
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                # stop after one full pass at weight >= 1 (see the kernel comment)
                if last_pass or last == _HEAD:
                    self.cl = None
                    return None
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last != _HEAD:
                stop = last
