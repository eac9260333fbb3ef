"""twos — weighted random "power of two choices" (ip_vs_twos.c, kernel 6.2+).

The kernel draws two random weights (``get_random_u32_below``), so its choice cannot be
predicted. The model draws them from a PRNG seeded per service: deterministic, and always an
eligible dest, but graded by equivalence only (``exact = False``).
"""

from __future__ import annotations

import random

from impl.kernel_level import KernelLevel
from impl.schedulers.base import DestState, Scheduler
from impl.types import Flow, Service


class TwoChoices(Scheduler):
    name = "twos"
    exact = False

    def __init__(self, service: Service, level: KernelLevel) -> None:
        super().__init__(service, level)
        self.rng = random.Random(0)

    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        eligible = [d for d in dests if not d.overloaded and d.weight > 0]
        if not eligible:
            return None
        total = sum(d.weight for d in eligible) + 1
        r1, r2 = self.rng.randrange(total), self.rng.randrange(total)
        c1 = c2 = eligible[-1]  # kernel: choice1 starts as the last eligible dest
        w1 = w2 = -1
        for d in eligible:
            r1 -= d.weight
            r2 -= d.weight
            if r1 <= 0 and w1 == -1:
                c1, w1 = d, d.weight
            if r2 <= 0 and w2 == -1:
                c2, w2 = d, d.weight
            if w1 != -1 and w2 != -1:
                break
        if w1 == -1:
            w1 = c1.weight
        if w2 == -1:
            return c1
        if w2 * self.overhead(c1) > w1 * self.overhead(c2):
            return c2
        return c1
