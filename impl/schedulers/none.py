"""none — a service without a scheduler (``ipvsadm -s none``): never picks a dest, so only
clients that already hold valid templates are served."""

from __future__ import annotations

from impl.schedulers.base import DestState, Scheduler
from impl.types import Flow


class NoScheduler(Scheduler):
    name = "none"

    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        return None
