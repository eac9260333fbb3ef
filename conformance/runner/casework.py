"""Running one conformance case: a scenario on an implementation and on the model, then grading.

:class:`Case` is what a conformance test receives (the ``case`` fixture). ``case.run(scenario)``
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

import functools
import ipaddress
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import pytest

from harness import addresses
from harness.api import DirectorHandle, Implementation, Outcome
from impl.kernel_level import DEFAULT, KernelLevel
from impl.lookup import find_service, table_key
from impl.scenario import (
    AddDest,
    Advance,
    DelDest,
    EditDest,
    EditService,
    Scenario,
    Send,
    SetSysctl,
    Step,
)
from impl.types import (
    Decision,
    Dest,
    Family,
    Flow,
    Fwd,
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

Grade = Literal["exact", "equivalent", "fail"]
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


# --------------------------------------------------------------------------- verdict -> outcome


def expected_outcome(verdict: Decision, flow: Flow) -> Outcome:
    """What the wire should show for the model's ``verdict`` on ``flow``.

    forward: the real server owning the dest address; NAT rewrites the port to the forwarded
    port, DR/TUN keep the packet's (and its VIP). local: TCP and SCTP are answered by the
    director's stack (RST / ABORT) unless the packet is itself a RST / ABORT (then nothing
    comes back: dropped), UDP gets the stack's ICMP port unreachable, a ping its echo reply.
    """
    if verdict.kind == "forward":
        assert verdict.dest is not None, "forward verdict without a dest"
        if verdict.fwd is Fwd.NAT:
            return Outcome(
                "forward",
                addresses.rs_index(verdict.dest),
                verdict.dest,
                verdict.dport if verdict.dport else flow.dport,
            )
        return Outcome("forward", addresses.rs_index(verdict.dest), flow.daddr, flow.dport)
    if verdict.kind == "unreachable":
        return Outcome("unreachable")
    if verdict.kind == "drop":
        return Outcome("dropped")
    # local: handed to the director's own stack, which answers like any host with no socket
    # there: UDP gets ICMP port unreachable, TCP a RST and SCTP an ABORT, except that a RST or
    # an ABORT is never answered (RFC 9293 3.10.7.1, RFC 9260 8.4): those are just dropped.
    if flow.proto is Proto.UDP:
        return Outcome("unreachable")
    if (flow.proto is Proto.TCP and flow.packet_kind == "rst") or (
        flow.proto is Proto.SCTP and flow.packet_kind == "abort"
    ):
        return Outcome("dropped")
    return Outcome("local")


def same_outcome(expected: Outcome, observed: Outcome) -> bool:
    """Equal as far as the wire can tell: kind, and for forwards real server, port, address."""
    if expected.kind != observed.kind:
        return False
    if expected.kind != "forward":
        return True
    if expected.rs != observed.rs or expected.port != observed.port:
        return False
    # An implementation may not report the address (None): only compare when both know it.
    return expected.addr is None or observed.addr is None or expected.addr == observed.addr


# --------------------------------------------------------------------------- templates


def expires_tolerance(expires: int) -> int:
    """Seconds by which an observed ``expires`` may differ from the model's.

    Kernel timers fire late by up to ~1/8 of the interval (ipvs-semantics §3.3), /proc rounds
    down, and the two tables are read a few milliseconds apart: 1 s plus 1/8 of the interval.
    """
    return 1 + expires // 8


def _template_fields(t: Template) -> tuple[object, ...]:
    """Every field compared exactly (all but ``expires``)."""
    return (
        t.family,
        t.proto,
        t.caddr,
        t.cport,
        t.vaddr,
        t.vport,
        t.daddr,
        t.dport,
        t.state,
        t.pe_name,
        t.pe_data,
    )


def _template_sort_key(t: Template) -> tuple[object, ...]:
    return (
        int(t.family),
        int(t.proto),
        int(t.caddr),
        int(t.vaddr),
        t.vport,
        int(t.daddr),
        t.dport,
        t.state,
        t.pe_data,
    )


def format_template(t: Template) -> str:
    """One readable line: ``TCP 198.18.16.0:0 > 198.19.0.1:80 => 198.18.10.11:80 NONE 59s``."""

    def ep(a: IPAddress, p: int) -> str:
        return f"[{a}]:{p}" if a.version == 6 else f"{a}:{p}"

    vport = "FFFF" if t.invalidated else str(t.vport)
    dport = "FFFF" if t.dport == 0xFFFF else str(t.dport)
    vaddr = str(t.vaddr)
    vhost = f"[{vaddr}]" if t.vaddr.version == 6 else vaddr
    pe = f" {t.pe_name} {t.pe_data}" if t.pe_name else ""
    expires = "?" if t.expires is None else f"{t.expires}s"
    daddr = f"[{t.daddr}]" if t.daddr.version == 6 else str(t.daddr)
    return (
        f"{t.proto.name} {ep(t.caddr, t.cport)} > {vhost}:{vport} => {daddr}:{dport} "
        f"{t.state} {expires}{pe}"
    )


def compare_templates(expected: Sequence[Template], observed: Sequence[Template]) -> list[str]:
    """Differences between two template tables, one line each (empty: they agree).

    Rows are matched on every field but ``expires``; a matched pair whose ``expires`` differ by
    more than :func:`expires_tolerance` is a difference too.
    """
    diffs: list[str] = []
    unmatched = list(observed)
    for exp in sorted(expected, key=_template_sort_key):
        match = next((o for o in unmatched if _template_fields(o) == _template_fields(exp)), None)
        if match is None:
            diffs.append(f"missing: {format_template(exp)}")
            continue
        unmatched.remove(match)
        if exp.expires is not None and match.expires is not None:
            tol = expires_tolerance(exp.expires)
            if abs(exp.expires - match.expires) > tol:
                diffs.append(
                    f"expires {match.expires}s, model {exp.expires}s (±{tol}s): "
                    f"{format_template(exp)}"
                )
    diffs.extend(
        f"unexpected: {format_template(o)}" for o in sorted(unmatched, key=_template_sort_key)
    )
    return diffs


def compare_template_keys(expected: Sequence[Template], observed: Sequence[Template]) -> list[str]:
    """Equivalence: the same persistence keys exist (real server and timers not compared)."""
    exp = Counter(t.key for t in expected if not t.invalidated)
    obs = Counter(t.key for t in observed if not t.invalidated)
    diffs = [
        f"missing key: {format_template(t)}"
        for t in expected
        if not t.invalidated and obs[t.key] < exp[t.key]
    ]
    diffs += [
        f"unexpected key: {format_template(t)}"
        for t in observed
        if not t.invalidated and exp[t.key] < obs[t.key]
    ]
    return diffs


@dataclass(frozen=True, slots=True)
class TemplateCheck:
    """Both template tables after one Send step."""

    step: int
    at: float  # seconds since install, director clock
    expected: tuple[Template, ...]
    observed: tuple[Template, ...] | None  # None: the implementation exposes no table


# --------------------------------------------------------------------------- persistence keys


def _masked(addr: IPAddress, service: Service) -> IPAddress:
    if addr.version == 4:
        return ipaddress.IPv4Address(int(addr) & service.mask)
    net = ipaddress.IPv6Network((addr, service.mask), strict=False)
    return net.network_address


def persistence_key(
    services: dict[ServiceKey, Service], flow: Flow, unpriv_start: int = 1024
) -> tuple[object, ...] | None:
    """The template key ``flow`` is scheduled under (ipvs-semantics §2.2), None if not persistent.

    Used for equivalence grading only: flows with one key (in one stretch of the scenario, with
    one model-predicted server) must share a real server. The SIP Call-ID is not modelled here.
    """
    table = {table_key(k): v for k, v in services.items()}
    found = find_service(
        table, flow.family, flow.mark, flow.proto, flow.daddr, flow.dport, unpriv_start
    )
    if found is None or not found[0].persistent:
        return None
    svc = found[0]
    snet = _masked(flow.saddr, svc)
    if flow.dport == svc.key.vport:
        vport = 0 if svc.key.vport == 21 else svc.key.vport
        return (flow.family, flow.proto, snet, flow.daddr, vport)
    if svc.key.fwmark:
        return (flow.family, Proto.IP, snet, svc.key.fwmark, 0)
    return (flow.family, flow.proto, snet, flow.daddr, 0)


# --------------------------------------------------------------------------- result and grading


@dataclass(slots=True)
class CaseResult:
    """What one run of a scenario produced on the implementation and on the model."""

    rule_id: str
    implementation: str
    family: Family
    scenario: Scenario
    flows: list[Flow] = field(default_factory=list)
    expected: list[Outcome] = field(default_factory=list)
    observed: list[Outcome] = field(default_factory=list)
    model_decisions: list[Decision] = field(default_factory=list)
    #: per flow: (persistence key, stretch of the scenario) or None (no persistence)
    groups: list[tuple[object, ...] | None] = field(default_factory=list)
    template_checks: list[TemplateCheck] = field(default_factory=list)
    equivalence: bool = False  # graded by equivalence (model not exact for this case)
    timings: dict[str, float] = field(default_factory=dict)
    verdict: Grade = "fail"
    problems: list[str] = field(default_factory=list)

    @property
    def templates_expected(self) -> list[list[Template]]:
        return [list(c.expected) for c in self.template_checks]

    @property
    def templates_observed(self) -> list[list[Template] | None]:
        return [None if c.observed is None else list(c.observed) for c in self.template_checks]

    def rs(self, i: int) -> int | None:
        """The real server (0-based) that received flow ``i``, None if it was not forwarded."""
        out = self.observed[i]
        return out.rs if out.kind == "forward" else None

    def assert_conforms(self) -> None:
        """Raise AssertionError with :meth:`explain` unless the verdict is exact or equivalent."""
        if self.verdict not in ("exact", "equivalent"):
            raise AssertionError(self.explain())

    def explain(self) -> str:
        """The evidence: scenario as ipvsadm script, flows, template tables side by side."""
        return explain(self)

    def to_record(self) -> dict[str, object]:
        """JSON-serialisable evidence for reports (survives xdist and the VM round trip)."""
        return {
            "verdict": self.verdict,
            "grading": "equivalence" if self.equivalence else "exact",
            "problems": list(self.problems),
            "flows": [str(f) for f in self.flows],
            "expected": [str(o) for o in self.expected],
            "observed": [str(o) for o in self.observed],
            "model_decisions": [str(v) for v in self.model_decisions],
            "templates": [
                {
                    "step": c.step,
                    "at": round(c.at, 3),
                    "expected": [
                        format_template(t) for t in sorted(c.expected, key=_template_sort_key)
                    ],
                    "observed": None
                    if c.observed is None
                    else [format_template(t) for t in sorted(c.observed, key=_template_sort_key)],
                }
                for c in self.template_checks
            ],
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "scenario": render_scenario(self.scenario),
        }


def grade(result: CaseResult) -> tuple[Grade, list[str]]:
    """Grade ``result``; the list names every problem found (empty for exact)."""
    flow_problems = [
        f"flow {i + 1} ({f}): expected {e}, observed {o}"
        for i, (f, e, o) in enumerate(
            zip(result.flows, result.expected, result.observed, strict=True)
        )
        if not same_outcome(e, o)
    ]
    table_problems = [
        f"templates after step {c.step + 1}: {d}"
        for c in result.template_checks
        if c.observed is not None
        for d in compare_templates(c.expected, c.observed)
    ]
    if not flow_problems and not table_problems:
        return "exact", []
    if not result.equivalence:
        return "fail", flow_problems + table_problems
    problems = _equivalence_problems(result)
    return ("equivalent", []) if not problems else ("fail", problems)


def _equivalence_problems(result: CaseResult) -> list[str]:
    problems: list[str] = []
    for i, (f, e, o) in enumerate(zip(result.flows, result.expected, result.observed, strict=True)):
        if e.kind != o.kind:
            problems.append(f"flow {i + 1} ({f}): expected {e.kind}, observed {o}")
        elif e.kind == "forward" and e.rs == o.rs and e.port != o.port:
            problems.append(f"flow {i + 1} ({f}): expected port {e.port}, observed {o}")
    first: dict[tuple[object, ...], int] = {}
    for i, group in enumerate(result.groups):
        if group is None or result.observed[i].kind != "forward":
            continue
        j = first.setdefault(group, i)
        if result.observed[j].rs != result.observed[i].rs:
            problems.append(
                f"flow {i + 1} ({result.flows[i]}) reached {result.observed[i]} but flow {j + 1} "
                f"with the same persistence template reached {result.observed[j]}"
            )
    for c in result.template_checks:
        if c.observed is not None:
            problems += [
                f"templates after step {c.step + 1}: {d}"
                for d in compare_template_keys(c.expected, c.observed)
            ]
    return problems


# --------------------------------------------------------------------------- explain


def _render_rules(scenario: Scenario) -> str:
    try:
        from impl.ipvsadm import render_rules
    except ImportError:  # the ipvsadm renderer is optional evidence; fall back to a plain list
        return "\n".join(
            f"service {c.service.key} {c.service.scheduler} timeout={c.service.timeout} "
            f"netmask={c.service.netmask} ops={c.service.ops}; dests "
            + ", ".join(f"{d} w={d.weight} {d.fwd.value}" for d in c.dests)
            for c in scenario.services
        )
    return render_rules(scenario.services).rstrip("\n")


def describe_step(step: Step) -> str:
    """One line per scenario step, for the evidence."""
    if isinstance(step, Send):
        mode = "ordered" if step.ordered else "batch"
        return f"send {len(step.flows)} flow(s) ({mode})"
    if isinstance(step, Advance):
        return f"advance {step.seconds:g}s"
    if isinstance(step, AddDest):
        return f"add dest {step.dest} w={step.dest.weight} {step.dest.fwd.value} to {step.key}"
    if isinstance(step, EditDest):
        return f"edit dest {step.dest} w={step.dest.weight} {step.dest.fwd.value} of {step.key}"
    if isinstance(step, DelDest):
        return f"delete dest {step.addr}:{step.port} of {step.key}"
    if isinstance(step, EditService):
        s = step.service
        return f"edit service {s.key} {s.scheduler} timeout={s.timeout} netmask={s.netmask}"
    if isinstance(step, SetSysctl):
        return f"sysctl {step.name}={step.value}"
    return repr(step)


def render_scenario(scenario: Scenario) -> str:
    """The scenario as an ipvsadm script plus fwmark rules, sysctls and steps."""
    lines = [f"# scenario {scenario.name}", _render_rules(scenario)]
    lines += [
        f"# fwmark {r.mark}: {r.proto.label if r.proto else 'any'} to {r.daddr}"
        f" ports {r.dports or 'any'}"
        for r in scenario.fwmark_rules
    ]
    lines += [f"# sysctl net.ipv4.vs.{k}={v}" for k, v in scenario.sysctls.changed().items()]
    lines += [f"# step {i + 1}: {describe_step(s)}" for i, s in enumerate(scenario.steps)]
    return "\n".join(lines)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]


def explain(result: CaseResult) -> str:
    """Human evidence for ``result`` (what a failing case prints)."""
    out = [
        f"rule {result.rule_id} on {result.implementation} ({result.family.label}): "
        f"{result.verdict}" + (" [graded by equivalence]" if result.equivalence else ""),
        "",
        render_scenario(result.scenario),
        "",
        "flows:",
    ]
    rows = [["#", "flow", "model", "expected", "observed", ""]]
    for i, f in enumerate(result.flows):
        e, o = result.expected[i], result.observed[i]
        mark = "" if same_outcome(e, o) else "<-- differs"
        rows.append([str(i + 1), str(f), str(result.model_decisions[i]), str(e), str(o), mark])
    out += ["  " + line for line in _table(rows)]
    for c in result.template_checks:
        out.append("")
        exp = [format_template(t) for t in sorted(c.expected, key=_template_sort_key)]
        if c.observed is None:
            out.append(
                f"templates after step {c.step + 1} (t={c.at:.2f}s): model only "
                "(the implementation exposes no table)"
            )
            out += ["  " + line for line in exp or ["(none)"]]
            continue
        obs = [format_template(t) for t in sorted(c.observed, key=_template_sort_key)]
        out.append(f"templates after step {c.step + 1} (t={c.at:.2f}s): model | implementation")
        height = max(len(exp), len(obs), 1)
        exp += [""] * (height - len(exp))
        obs += [""] * (height - len(obs))
        if not any(exp) and not any(obs):
            exp[0], obs[0] = "(none)", "(none)"
        width = max(len(x) for x in exp)
        out += [f"  {a.ljust(width)} | {b}".rstrip() for a, b in zip(exp, obs, strict=True)]
    if result.problems:
        out += ["", "problems:"] + [f"  - {p}" for p in result.problems]
    return "\n".join(out)


# --------------------------------------------------------------------------- the case


def _default_model_factory(scenario: Scenario, level: KernelLevel) -> Model:
    from impl.director import Director

    return Director.from_scenario(scenario, level)


def _default_traffic(
    net: Net, flows: Sequence[Flow], mode: Mode, *, allow_ftpdata: bool = False
) -> list[Outcome]:
    from harness.traffic.engine import run

    return [r.outcome for r in run(net, list(flows), mode=mode, allow_ftpdata=allow_ftpdata)]


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
        self._sending: TrafficFn = traffic  # what this run sends with (see run's allow_ftpdata)
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

    def run(self, scenario: Scenario, *, allow_ftpdata: bool = False) -> CaseResult:
        """Run ``scenario`` on the implementation and on the model, step by step, and grade.

        ``allow_ftpdata``: the traffic engine sends source port 20, which it refuses by default
        (IPVS never schedules it, ipvs-semantics §1.5); only the case about that rule asks.
        An injected traffic function (the runner's own tests) is not the engine and is used
        as it is.
        """
        self._sending = self._traffic
        if allow_ftpdata and self._traffic is _default_traffic:
            self._sending = functools.partial(_default_traffic, allow_ftpdata=True)
        reason = self.impl.unsupported(scenario)
        if reason:
            self.unsupported_reason = reason
            raise Unsupported(f"unsupported by {self.impl.name}: {reason}")
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

        services = {c.service.key: c.service for c in scenario.services}
        unpriv = scenario.sysctls.ip_unprivileged_port_start
        stretch = 0  # bumped by every step that may change which template a flow finds
        for index, step in enumerate(scenario.steps):
            if isinstance(step, Send):
                flows = [scenario.mark(f) for f in step.flows]
                if step.ordered:
                    for flow in flows:
                        verdict = model.packet(flow, clock())
                        (observed,) = self._send(net, [flow], "ordered")
                        self._record(result, flow, verdict, observed, services, unpriv, stretch)
                else:
                    now = clock()
                    verdicts = [model.packet(f, now) for f in flows]
                    for flow, verdict, observed in zip(
                        flows, verdicts, self._send(net, flows, "batch"), strict=True
                    ):
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
