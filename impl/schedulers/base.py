"""Scheduler interface shared by the model core (:mod:`impl.director`) and the schedulers.

The model core owns the list of :class:`DestState` of each service, in kernel list order
(newest first: a new or revived dest is inserted at index 0). After changing that list it calls
the matching hook (``add_dest``/``del_dest``/``upd_dest``), exactly where the kernel calls the
scheduler's ``add_dest``/``del_dest``/``upd_dest`` (ctl.c). ``schedule`` sees the unmasked packet.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from impl.kernel_level import KernelLevel
from impl.types import Dest, Flow, Fwd, IPAddress, Service, SvcFlag


@dataclass(slots=True, eq=False)
class DestState:
    """A dest as the kernel holds it: configuration plus runtime flags and counters."""

    addr: IPAddress
    port: int
    weight: int
    fwd: Fwd
    u_threshold: int = 0
    l_threshold: int = 0
    last_weight: int = 0  # latest nonzero weight (mh)
    available: bool = True  # IP_VS_DEST_CF_AVAILABLE
    overloaded: bool = False  # IP_VS_DEST_F_OVERLOAD
    activeconns: int = 0
    totalconns: int = 0  # 6.1.183+/6.12.104+; older kernels keep inactconns instead
    persistconns: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def inactconns(self) -> int:
        return max(self.totalconns - self.activeconns, 0)

    @classmethod
    def from_dest(cls, dest: Dest) -> DestState:
        return cls(
            dest.addr,
            dest.port,
            dest.weight,
            dest.fwd,
            dest.u_threshold,
            dest.l_threshold,
            last_weight=dest.weight,
        )

    def as_dest(self) -> Dest:
        return Dest(self.addr, self.port, self.weight, self.fwd, self.u_threshold, self.l_threshold)


class Scheduler(abc.ABC):
    """One scheduler instance per service (the kernel's ``svc->sched_data``)."""

    name: str = ""
    #: False for schedulers whose choice the kernel randomises (twos): the model picks *some*
    #: eligible dest deterministically, and the conformance suite grades by equivalence.
    exact: bool = True

    def __init__(self, service: Service, level: KernelLevel) -> None:
        self.service = service
        self.level = level
        #: The model clock (seconds). Schedulers with time-based state (lblc/lblcr cache
        #: expiry) read it; the core sets it before every ``schedule()`` call.
        self.now: float = 0.0

    @property
    def flags(self) -> SvcFlag:
        return self.service.flags

    def init_service(self, dests: list[DestState]) -> None:  # noqa: B027 (optional hook)
        """Called once when the service is created (``dests`` is empty then) or re-bound."""

    def add_dest(self, dests: list[DestState], dest: DestState) -> None:  # noqa: B027
        """``dest`` was just inserted (at the head) of ``dests``."""

    def del_dest(self, dests: list[DestState], dest: DestState) -> None:  # noqa: B027
        """``dest`` was just unlinked; ``dests`` no longer contains it."""

    def upd_dest(self, dests: list[DestState], dest: DestState) -> None:  # noqa: B027
        """``dest`` was edited in place (any SET_DEST, even with unchanged values)."""

    @abc.abstractmethod
    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        """Pick a dest for ``flow`` (unmasked source), or None."""

    def overhead(self, d: DestState) -> int:
        """``ip_vs_dest_conn_overhead`` at this kernel's stable level."""
        if self.level.totalconns:
            return d.activeconns * 256 + d.totalconns
        return d.activeconns * 256 + d.inactconns


class TableScheduler(Scheduler):
    """A hashing scheduler whose lookup table is rebuilt from the dest list on every change.

    sh and mh rebuild on init, add, delete and any edit; dh has no ``upd_dest`` in the kernel,
    so an edit leaves its table alone (``rebuild_on_edit = False``).
    """

    rebuild_on_edit: bool = True

    @abc.abstractmethod
    def rebuild(self, dests: list[DestState]) -> None:
        """Recompute the table from ``dests`` (kernel list order)."""

    def init_service(self, dests: list[DestState]) -> None:
        self.rebuild(dests)

    def add_dest(self, dests: list[DestState], dest: DestState) -> None:
        self.rebuild(dests)

    def del_dest(self, dests: list[DestState], dest: DestState) -> None:
        self.rebuild(dests)

    def upd_dest(self, dests: list[DestState], dest: DestState) -> None:
        if self.rebuild_on_edit:
            self.rebuild(dests)


class UnknownScheduler(ValueError):
    """The scheduler name is not one IPVS knows."""
