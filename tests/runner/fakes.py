"""In-process fakes for testing the conformance runner itself (not a conformance verdict).

``FakeImpl`` is a tiny Implementation whose director is a model :class:`impl.director.Director`
on a virtual clock; :func:`fake_traffic` answers each flow from that director, optionally
perturbed, so the runner's stepping, grading and reporting can be checked without namespaces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from conformance.runner.case import Case
from conformance.runner.outcomes import expected_outcome
from harness.api import Outcome
from impl.director import Director
from impl.kernel_level import DEFAULT, KernelLevel
from impl.scenario import Scenario, ServiceConfig
from impl.types import (
    IPV4,
    Dest,
    Family,
    Flow,
    Fwd,
    IPAddress,
    Proto,
    Service,
    ServiceKey,
    Template,
)

Perturb = Callable[[int, Flow, Outcome], Outcome]


class VirtualClock:
    """A clock that moves only when slept on (and a little per packet)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


@dataclass(eq=False)
class FakeNet:
    """Stands for harness.topology.Net: remembers the installed handle for fake_traffic."""

    handle: FakeHandle | None = None
    installs: int = 0


@dataclass(eq=False)
class FakeHandle:
    model: Director
    clock: VirtualClock
    impl: FakeImpl
    sent: int = 0
    sysctls: dict[str, int] = field(default_factory=dict)

    def now(self) -> float:
        return self.clock.now()

    def _t(self) -> float:
        return self.clock.now() - self.impl.t0

    def add_dest(self, key: ServiceKey, dest: Dest) -> None:
        self.model.add_dest(key, dest, self._t())

    def edit_dest(self, key: ServiceKey, dest: Dest) -> None:
        self.model.edit_dest(key, dest, self._t())

    def del_dest(self, key: ServiceKey, addr: IPAddress, port: int) -> None:
        self.model.del_dest(key, addr, port, self._t())

    def edit_service(self, service: Service) -> None:
        self.model.edit_service(service, self._t())

    def set_sysctl(self, name: str, value: int) -> None:
        self.sysctls[name] = value
        self.model.set_sysctl(name, value)

    def templates(self) -> list[Template] | None:
        if not self.impl.expose_templates:
            return None
        return [self.impl.mangle_template(t) for t in self.model.templates(self._t())]

    def connections(self) -> None:
        return None

    def deliver(self, flow: Flow) -> Outcome:
        self.clock.sleep(0.001)  # a packet takes a little time on the wire
        outcome = expected_outcome(self.model.packet(flow, self._t()), flow)
        index = self.sent
        self.sent += 1
        return self.impl.perturb(index, flow, outcome) if self.impl.perturb else outcome


@dataclass(eq=False)
class FakeImpl:
    """An Implementation answering from its own model Director (see module docstring)."""

    name: str = "fake"
    exact: bool = True
    perturb: Perturb | None = None
    expose_templates: bool = True
    unsupported_reason: str | None = None
    mangle_template: Callable[[Template], Template] = lambda t: t
    clock: VirtualClock = field(default_factory=VirtualClock)
    level: KernelLevel = DEFAULT
    t0: float = 0.0

    def unsupported(self, scenario: Scenario) -> str | None:
        return self.unsupported_reason

    @contextlib.contextmanager
    def install(self, net: FakeNet, scenario: Scenario) -> Iterator[FakeHandle]:
        self.t0 = self.clock.now()
        handle = FakeHandle(Director.from_scenario(scenario, self.level), self.clock, self)
        net.handle = handle
        net.installs += 1
        try:
            yield handle
        finally:
            net.handle = None


def fake_traffic(net: FakeNet, flows: Sequence[Flow], mode: str) -> list[Outcome]:
    assert net.handle is not None, "traffic sent with no director installed"
    assert mode in ("ordered", "batch")
    return [net.handle.deliver(f) for f in flows]


def make_case(
    impl: FakeImpl, family: Family = IPV4, rule_id: str = "unit-rule"
) -> tuple[Case, FakeNet]:
    net = FakeNet()
    case = Case(
        rule_id=rule_id,
        impl=impl,
        family=family,
        level=impl.level,
        net_provider=lambda: net,
        traffic=fake_traffic,
        sleep=impl.clock.sleep,
        advance_slack=0.5,
    )
    return case, net


def persistent_scenario(
    case: Case,
    *,
    clients: int = 2,
    flows_per_client: int = 2,
    timeout: int = 30,
    scheduler: str = "rr",
    fwd: Fwd = Fwd.DR,
    steps: Sequence[object] = (),
) -> Scenario:
    """One persistent TCP service on VIP:80 with three dests; each client sends a few flows."""
    from impl.scenario import Send

    key = ServiceKey(case.family, Proto.TCP, case.vip(0), 80)
    service = Service(key, scheduler=scheduler, timeout=timeout)
    dests = tuple(Dest(case.rip(i), 80, 1, fwd) for i in range(3))
    flows = tuple(
        case.flow(Proto.TCP, case.cip(0, c + 1), 40000 + 10 * c + n, case.vip(0), 80)
        for n in range(flows_per_client)
        for c in range(clients)
    )
    return Scenario("unit", (ServiceConfig(service, dests),), (Send(flows), *steps))  # type: ignore[arg-type]


def relabel(mapping: dict[int, int]) -> Perturb:
    """A perturbation sending every forwarded flow to another real server (a consistent swap)."""

    def perturb(index: int, flow: Flow, outcome: Outcome) -> Outcome:
        if outcome.kind != "forward" or outcome.rs is None:
            return outcome
        return replace(outcome, rs=mapping.get(outcome.rs, outcome.rs))

    return perturb


FAKE = FakeImpl()
