"""The small interface every implementation under test provides (kernel, reference, third party).

An implementation is installed into a built topology's director namespace and configured from a
scenario. Users add their own by naming an object implementing :class:`Implementation`
(``--impl module:attr``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from impl.scenario import Scenario
from impl.types import Connection, Dest, IPAddress, Service, ServiceKey, Template

if TYPE_CHECKING:
    from harness.topology import Net


OutcomeKind = Literal["forward", "unreachable", "dropped", "local"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What really happened to one flow, learned from packets.

    forward: real server ``rs`` (0-based index) received it, addressed to ``addr``:``port``
    (``addr`` is the VIP for DR/TUN, the RIP for NAT); unreachable: an ICMP(v6) port
    unreachable reached the client; dropped: nothing arrived within the bound; local: the
    director's own stack answered (e.g. a TCP RST from the VIP), i.e. not balanced.
    """

    kind: OutcomeKind
    rs: int | None = None
    addr: IPAddress | None = None
    port: int | None = None
    encapsulated: bool = False
    elapsed: float = 0.0
    #: time.monotonic() just before the flow's frame was sent (None: not sent by the engine).
    #: The runner runs the model at this moment, so a slow harness between predicting and
    #: sending cannot skew the model's timers against the director's.
    sent_at: float | None = field(default=None, compare=False)

    def __str__(self) -> str:
        if self.kind == "forward":
            return f"rs{(self.rs or 0) + 1}:{self.port}"
        return self.kind


@runtime_checkable
class DirectorHandle(Protocol):
    """A configured, running director. Methods may be called while traffic flows."""

    def now(self) -> float:
        """The director-side monotonic clock, in seconds (the model's clock follows it).

        It must be CLOCK_MONOTONIC of the machine that sends the traffic (``time.monotonic()``;
        it is not namespaced): the runner places each flow on this clock by the engine's send
        timestamp (:attr:`Outcome.sent_at`)."""
        ...

    def add_dest(self, key: ServiceKey, dest: Dest) -> None: ...

    def edit_dest(self, key: ServiceKey, dest: Dest) -> None: ...

    def del_dest(self, key: ServiceKey, addr: IPAddress, port: int) -> None: ...

    def edit_service(self, service: Service) -> None: ...

    def set_sysctl(self, name: str, value: int) -> None: ...

    def templates(self) -> list[Template] | None:
        """The template table, or None when the implementation does not expose one."""
        ...

    def connections(self) -> list[Connection] | None: ...


@runtime_checkable
class Implementation(Protocol):
    """Something that can act as the director of a topology."""

    #: short stable name used in reports and ``--impl`` (``kernel``, ``reference``, ...)
    name: str
    #: True when the reference model predicts its decisions exactly (else: equivalence grading)
    exact: bool

    def unsupported(self, scenario: Scenario) -> str | None:
        """A reason when this implementation declares it lacks a feature the scenario needs."""
        ...

    def install(
        self, net: Net, scenario: Scenario
    ) -> contextlib.AbstractContextManager[DirectorHandle]:
        """Configure the director namespace of ``net`` for ``scenario``; undo on exit."""
        ...
