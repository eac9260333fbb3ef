"""Running one conformance case: a scenario on an implementation and on the model, then grading.

:class:`Case` is what a conformance test receives (the ``case`` fixture). ``case.play(scenario)``
builds the reference model, installs the implementation into a fresh director, and walks the
scenario one step at a time on both: each Send is predicted by the model at the director's real
elapsed time and observed on the wire; Advance waits on the director's clock (a deadline wait);
dest/service/sysctl edits go to both. After every Send the template tables are compared.

Grading (:func:`grade`), strongest first:

- ``exact``: every flow's outcome and every template as the model says;
- ``equivalent``: for implementations or schedulers the model does not predict exactly
  (``exact=False``): the same non-forward outcomes, flows that the model puts on one template
  share one real server, and the same template keys;
- ``fail`` otherwise. ``diverges`` (declared, xfail strict), ``unsupported`` and ``skip`` are
  decided by the pytest plugin around the case.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import pytest

from conformance.runner.grading import CaseResult, grade, persistence_key
from conformance.runner.outcomes import expected_outcome
from conformance.runner.templates import TemplateCheck
from harness import addresses
from harness.api import DirectorHandle, Implementation, Outcome
from impl.kernel_level import DEFAULT, KernelLevel
from impl.scenario import (
    AddDest,
    Advance,
    DelDest,
    EditDest,
    EditService,
    Scenario,
    Send,
    SetSysctl,
)
from impl.types import (
    Decision,
    Dest,
    Family,
    Flow,
    IPAddress,
    PacketKind,
    Proto,
    Service,
    ServiceKey,
    Template,
)

if TYPE_CHECKING:
    from harness.topology import Net
    from harness.traffic.engine import Mode

TrafficFn = Callable[["Net", Sequence[Flow], "Mode"], list[Outcome]]


class Model(Protocol):
    """What the case needs of the reference model (:class:`impl.director.Director`)."""

    def packet(self, flow: Flow, now: float) -> Decision: ...
    def templates(self, now: float) -> list[Template]: ...
    def add_dest(self, key: ServiceKey, dest: Dest, now: float = 0.0) -> None: ...
    def edit_dest(self, key: ServiceKey, dest: Dest, now: float = 0.0) -> None: ...
    def del_dest(self, key: ServiceKey, addr: IPAddress, port: int, now: float = 0.0) -> None: ...
    def edit_service(self, service: Service, now: float = 0.0) -> None: ...
    def set_sysctl(self, name: str, value: int) -> None: ...
    def expire(self, now: float) -> None: ...


ModelFactory = Callable[[Scenario, KernelLevel], Model]


class Unsupported(pytest.skip.Exception):  # type: ignore[name-defined,misc]
    """The implementation declares it lacks a feature the scenario needs (verdict unsupported)."""


class ClockStalled(RuntimeError):
    """The director's clock did not reach an Advance target within its deadline."""


def _default_model_factory(scenario: Scenario, level: KernelLevel) -> Model:
    from impl.director import Director

    return Director.from_scenario(scenario, level)


def _default_traffic(
    net: Net, flows: Sequence[Flow], mode: Mode, *, allow_ftpdata: bool = False
) -> list[Outcome]:
    from harness.traffic.engine import send_flows

    return [r.outcome for r in send_flows(net, list(flows), mode=mode, allow_ftpdata=allow_ftpdata)]


def scheduler_is_exact(service: Service, level: KernelLevel) -> bool:
    """Whether the model predicts this service's scheduler exactly (``twos`` is random)."""
    try:
        from impl.schedulers.registry import make_scheduler
    except ImportError:
        return True
    try:
        return bool(make_scheduler(service.scheduler, service, level).exact)
    except ValueError:  # an unknown scheduler: building the model reports it clearly
        return True


class Case:
    """One conformance case on one implementation and family (the ``case`` fixture)."""

    def __init__(
        self,
        *,
        rule_id: str,
        impl: Implementation,
        family: Family,
        net_provider: Callable[[], Net],
        level: KernelLevel = DEFAULT,
        traffic: TrafficFn = _default_traffic,
        model_factory: ModelFactory = _default_model_factory,
        sleep: Callable[[float], None] = time.sleep,
        advance_slack: float = 5.0,
    ) -> None:
        self.rule_id = rule_id
        self.impl = impl
        self.family = family
        self.level = level
        self._net_provider = net_provider
        self._traffic = traffic
        self._sending: TrafficFn = traffic  # what play() sends with (see its allow_ftpdata)
        self._model_factory = model_factory
        self._sleep = sleep
        self._advance_slack = advance_slack
        #: every result of this case, in order (the plugin records the last one)
        self.results: list[CaseResult] = []
        self.unsupported_reason: str | None = None

    # addressing plan, in this case's family
    def vip(self, i: int = 0) -> IPAddress:
        return addresses.vip(self.family, i)

    def cip(self, net: int = 0, host: int = 1) -> IPAddress:
        return addresses.cip(self.family, net, host)

    def rip(self, i: int) -> IPAddress:
        return addresses.rip(self.family, i)

    def dests(self, *weights: int) -> tuple[Dest, ...]:
        """DR dests rs1, rs2, ... with these weights (default: the three real servers, weight
        1), added in this order: the kernel lists them newest first, so rr's first pick is the
        last one (rule ``order``)."""
        return tuple(Dest(self.rip(i), weight=w) for i, w in enumerate(weights or (1, 1, 1)))

    def key(self, proto: Proto, port: int, vip: int = 0) -> ServiceKey:
        """The key of a service on ``proto`` VIP ``vip``:``port`` in this case's family."""
        return ServiceKey(self.family, proto, self.vip(vip), port)

    def fwmark_key(self, mark: int) -> ServiceKey:
        """The key of a fwmark service in this case's family."""
        return ServiceKey(self.family, fwmark=mark)

    def flow(
        self,
        proto: Proto,
        client: IPAddress,
        sport: int,
        vaddr: IPAddress,
        dport: int,
        kind: PacketKind | None = None,
        payload: bytes = b"",
    ) -> Flow:
        return Flow(proto, client, sport, vaddr, dport, kind, 0, payload)

    @property
    def result(self) -> CaseResult | None:
        return self.results[-1] if self.results else None

    def play(self, scenario: Scenario, *, allow_ftpdata: bool = False) -> CaseResult:
        """Run ``scenario`` on the implementation and on the model, step by step, and grade.

        ``allow_ftpdata``: the traffic engine sends source port 20, which it refuses by default
        (IPVS never schedules it, docs/semantics.md §1.5); only the case about that rule asks.
        An injected traffic function (the runner's own tests) is not the engine and is used
        as it is.
        """
        if not scenario.name:  # a case's scenario is named after its rule unless it says
            scenario = dataclasses.replace(scenario, name=self.rule_id)
        self._sending = self._traffic
        if allow_ftpdata and self._traffic is _default_traffic:
            self._sending = functools.partial(_default_traffic, allow_ftpdata=True)
        reason = self.impl.unsupported(scenario)
        if reason:
            self.unsupported_reason = reason
            raise Unsupported(f"unsupported by {self.impl.name}: {reason}")
        programs = getattr(self.impl, "programs", None)
        if programs is not None:  # what it really configures, e.g. keepalived's dest ports
            scenario = programs(scenario)
        level = self.level
        result = CaseResult(self.rule_id, self.impl.name, self.family, scenario)
        result.equivalence = not self.impl.exact or not all(
            scheduler_is_exact(c.service, level) for c in scenario.services
        )
        self.results.append(result)
        started = time.monotonic()
        model = self._model_factory(scenario, level)
        net = self._net_provider()
        result.timings["setup"] = time.monotonic() - started
        install_started = time.monotonic()
        with self.impl.install(net, scenario) as handle:
            result.timings["install"] = time.monotonic() - install_started
            steps_started = time.monotonic()
            self._walk(scenario, model, net, handle, result)
            result.timings["steps"] = time.monotonic() - steps_started
        result.timings["total"] = time.monotonic() - started
        result.verdict, result.problems = grade(result)
        return result

    def _walk(
        self, scenario: Scenario, model: Model, net: Net, handle: DirectorHandle, result: CaseResult
    ) -> None:
        t0 = handle.now()

        def clock() -> float:
            return handle.now() - t0

        def sent_time(observed: Outcome) -> float:
            # an injected traffic function (the runner's own tests) may not stamp its sends
            return clock() if observed.sent_at is None else observed.sent_at - t0

        services = {c.service.key: c.service for c in scenario.services}
        unpriv = scenario.sysctls.ip_unprivileged_port_start
        stretch = 0  # bumped by every step that may change which template a flow finds
        for index, step in enumerate(scenario.steps):
            if isinstance(step, Send):
                flows = [scenario.mark(f) for f in step.flows]
                # The model decides each flow at the moment the engine sent it (on the director's
                # clock), not when the runner got there: a slow first send in a fresh guest
                # must not shift the model's timers against the director's.
                if step.ordered:
                    for flow in flows:
                        (observed,) = self._send(net, [flow], "ordered")
                        verdict = model.packet(flow, sent_time(observed))
                        self._record(result, flow, verdict, observed, services, unpriv, stretch)
                else:
                    for flow, observed in zip(flows, self._send(net, flows, "batch"), strict=True):
                        verdict = model.packet(flow, sent_time(observed))
                        self._record(result, flow, verdict, observed, services, unpriv, stretch)
                now = clock()
                observed_table = handle.templates()
                result.template_checks.append(
                    TemplateCheck(
                        index,
                        now,
                        tuple(model.templates(now)),
                        None if observed_table is None else tuple(observed_table),
                    )
                )
                continue
            stretch += 1
            if isinstance(step, Advance):
                self._advance(clock, step.seconds)
                model.expire(clock())
            # edits: the implementation first, then the model at the director's time of the edit
            elif isinstance(step, AddDest):
                handle.add_dest(step.key, step.dest)
                model.add_dest(step.key, step.dest, clock())
            elif isinstance(step, EditDest):
                handle.edit_dest(step.key, step.dest)
                model.edit_dest(step.key, step.dest, clock())
            elif isinstance(step, DelDest):
                handle.del_dest(step.key, step.addr, step.port)
                model.del_dest(step.key, step.addr, step.port, clock())
            elif isinstance(step, EditService):
                handle.edit_service(step.service)
                model.edit_service(step.service, clock())
                services[step.service.key] = step.service
            elif isinstance(step, SetSysctl):
                handle.set_sysctl(step.name, step.value)
                model.set_sysctl(step.name, step.value)
                if step.name == "ip_unprivileged_port_start":
                    unpriv = step.value
            else:
                raise TypeError(f"scenario {scenario.name}: unknown step {step!r}")

    def _send(self, net: Net, flows: Sequence[Flow], mode: Mode) -> list[Outcome]:
        outcomes = self._sending(net, flows, mode)
        if len(outcomes) != len(flows):
            raise RuntimeError(
                f"traffic engine returned {len(outcomes)} outcomes for {len(flows)} flows"
            )
        return outcomes

    @staticmethod
    def _record(
        result: CaseResult,
        flow: Flow,
        verdict: Decision,
        observed: Outcome,
        services: dict[ServiceKey, Service],
        unpriv: int,
        stretch: int,
    ) -> None:
        expected = expected_outcome(verdict, flow)
        key = persistence_key(services, flow, unpriv)
        result.flows.append(flow)
        result.model_decisions.append(verdict)
        result.expected.append(expected)
        result.observed.append(observed)
        # Flows share a group when they share a key, a stretch and the model's server: then
        # any implementation must give them one real server too.
        result.groups.append(
            None if key is None or verdict.kind != "forward" else (key, stretch, expected.rs)
        )

    def _advance(self, clock: Callable[[], float], seconds: float) -> None:
        """Wait on the director's clock until ``seconds`` have passed (a deadline wait)."""
        target = clock() + seconds
        limit = seconds + self._advance_slack
        deadline = time.monotonic() + limit
        while (left := target - clock()) > 0:
            if time.monotonic() > deadline:
                raise ClockStalled(
                    f"director clock did not advance {seconds}s within {limit}s; "
                    "is the implementation's now() monotonic and running?"
                )
            self._sleep(min(left, 0.05))
