"""Scheduler names IPVS knows, and :func:`make_scheduler` to instantiate one per service."""

from __future__ import annotations

from impl.kernel_level import KernelLevel
from impl.schedulers.base import Scheduler, UnknownScheduler
from impl.schedulers.dh import DestinationHashing
from impl.schedulers.fo import WeightedFailover
from impl.schedulers.lblc import LocalityLeastConnection
from impl.schedulers.lblcr import LocalityLeastConnectionReplicated
from impl.schedulers.lc import LeastConnection
from impl.schedulers.mh import MaglevHashing
from impl.schedulers.none import NoScheduler
from impl.schedulers.nq import NeverQueue
from impl.schedulers.ovf import WeightedOverflow
from impl.schedulers.rr import RoundRobin
from impl.schedulers.sed import ShortestExpectedDelay
from impl.schedulers.sh import SourceHashing
from impl.schedulers.twos import TwoChoices
from impl.schedulers.wlc import WeightedLeastConnection
from impl.schedulers.wrr import WeightedRoundRobin
from impl.types import Service

_CLASSES: dict[str, type[Scheduler]] = {
    cls.name: cls
    for cls in (
        RoundRobin,
        WeightedRoundRobin,
        LeastConnection,
        WeightedLeastConnection,
        LocalityLeastConnection,
        LocalityLeastConnectionReplicated,
        DestinationHashing,
        SourceHashing,
        ShortestExpectedDelay,
        NeverQueue,
        WeightedFailover,
        WeightedOverflow,
        MaglevHashing,
        TwoChoices,
        NoScheduler,
    )
}

#: Every scheduler name IPVS accepts (``none`` = a service without a scheduler).
SCHEDULERS: tuple[str, ...] = tuple(_CLASSES)


class SchedulerUnavailable(UnknownScheduler):
    """A scheduler that exists but is not in the modelled kernel (twos before Debian 6.11)."""


def check_scheduler(name: str, level: KernelLevel | None = None) -> None:
    """Raise :class:`UnknownScheduler` if ``name`` is not a scheduler of ``level``."""
    if name not in _CLASSES:
        raise UnknownScheduler(f"unknown scheduler {name!r}: IPVS knows {', '.join(SCHEDULERS)}")
    if name == "twos" and level is not None and not level.has_twos:
        raise SchedulerUnavailable(
            f"scheduler 'twos' is not in kernel {level.label} (Debian builds ip_vs_twos from 6.11;"
            " 5.10 has none); pick another scheduler or model a newer --kernel-release"
        )


def make_scheduler(name: str, service: Service, level: KernelLevel) -> Scheduler:
    """A fresh scheduler instance (the kernel's ``init_service`` is still for the core to call)."""
    check_scheduler(name, level)
    return _CLASSES[name](service, level)
