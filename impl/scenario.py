"""A scenario: configuration plus an ordered list of steps, pure data.

The same scenario drives the reference model (with a virtual clock) and an implementation under
test in real namespaces (with a real clock), so both sides see the same sequence of events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from impl.types import (
    Dest,
    Flow,
    FwmarkRule,
    IPAddress,
    ProtoTimeouts,
    Service,
    ServiceKey,
    Sysctls,
)


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """A service and its dests, added in this order (so the kernel lists them newest first)."""

    service: Service
    dests: tuple[Dest, ...] = ()


@dataclass(frozen=True, slots=True)
class Send:
    """Send flows from the client. ``ordered``: confirm each flow before sending the next."""

    flows: tuple[Flow, ...]
    ordered: bool = True


@dataclass(frozen=True, slots=True)
class Advance:
    """Let ``seconds`` pass (a real wait on a live director, a clock step in the model)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class AddDest:
    key: ServiceKey
    dest: Dest


@dataclass(frozen=True, slots=True)
class EditDest:
    """Like ``ipvsadm -e``: the dest with this addr/port gets these values."""

    key: ServiceKey
    dest: Dest


@dataclass(frozen=True, slots=True)
class DelDest:
    key: ServiceKey
    addr: IPAddress
    port: int


@dataclass(frozen=True, slots=True)
class EditService:
    """Like ``ipvsadm -E``: the service with ``service.key`` gets these values."""

    service: Service


@dataclass(frozen=True, slots=True)
class SetSysctl:
    name: str
    value: int


Step = Send | Advance | AddDest | EditDest | DelDest | EditService | SetSysctl


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str = ""  # empty: the conformance runner names it after the case's rule
    services: tuple[ServiceConfig, ...] = ()
    steps: tuple[Step, ...] = ()
    fwmark_rules: tuple[FwmarkRule, ...] = ()
    sysctls: Sysctls = field(default_factory=Sysctls)
    timeouts: ProtoTimeouts = field(default_factory=ProtoTimeouts)

    def flows(self) -> list[Flow]:
        return [f for s in self.steps if isinstance(s, Send) for f in s.flows]

    def mark(self, flow: Flow) -> Flow:
        """``flow`` with the fwmark the scenario's first matching rule sets (nft semantics)."""
        for rule in self.fwmark_rules:
            if rule.matches(flow):
                return flow.with_mark(rule.mark)
        return flow
