"""Differential fuzzing: Hypothesis scenarios on an implementation against the reference model.

:func:`scenarios` draws whole timelines inside the lab's addressing plan: one or two services
of every kind (normal, port zero, FTP with its fallback ports, fwmark through nft rules;
persistent or not, with IPv4 netmasks (non-contiguous too) or IPv6 prefixes, OPS on UDP and
fwmark services), 1-3 dests with weights, methods (DR, NAT, TUN) and a scheduler the model
predicts exactly, the sysctls that change outcomes, then flows from a small client pool (so
connection and template keys collide) interleaved with dest edits (weight 0, delete, re-add,
``-E``), sysctl changes and waits.

Timer slack: the model is evaluated at the director's own clock, so only an expiry close to a
packet can differ by a timer's lateness. Short persistence timeouts (:data:`SHORT_TIMEOUT`) are
drawn only when ``short_timers`` is on, and then every wait is either short (:data:`SHORT_WAIT`,
at most :data:`MAX_SHORT_WAITS` per example) or long enough (:data:`LONG_WAIT`) to clear a short
template by two seconds; everything else (300 s templates, 60 s+ connection timers) never
expires within an example.

:func:`fuzz` runs the examples through a :class:`conformance.runner.case.Case` (each on a fresh
director), stops at the first divergence, lets Hypothesis shrink it (bounded by
``shrink_budget`` runs) and returns the minimal scenario as a scenario file.
:func:`fuzz_test` makes the ``@rule("fuzz")`` test that ``lvsconf fuzz`` runs through pytest, so
kernel lanes (VMs) work unchanged.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from conformance.runner.case import Case, Unsupported
from conformance.runner.rules import rule
from harness import addresses
from impl.errors import ModelError
from impl.scenario import (
    AddDest,
    Advance,
    DelDest,
    EditDest,
    EditService,
    Scenario,
    Send,
    ServiceConfig,
    SetSysctl,
    Step,
)
from impl.timeline import Timeline, render_timeline
from impl.types import (
    IPV4,
    IPV6,
    Dest,
    Family,
    Flow,
    Fwd,
    FwmarkRule,
    Proto,
    Service,
    ServiceKey,
    Sysctls,
)

#: schedulers the model predicts exactly (``twos`` is random in the kernel)
SCHEDULERS = ("rr", "wrr", "sh", "mh", "dh", "lc", "wlc", "sed", "nq", "fo", "ovf", "lblc", "lblcr")
LONG_TIMEOUT = 300
SHORT_TIMEOUT = 3
SHORT_WAIT = 0.2
MAX_SHORT_WAITS = 3
LONG_WAIT = SHORT_TIMEOUT + 2.0
MAX_EVENTS = 12
SPORTS = (40001, 40002, 40003)
NETMASKS = {IPV4: (None, 0xFFFFFF00, 0xFFFF0000, 0xFFFF00FF), IPV6: (None, 120, 64, 48)}
SYSCTLS = ("expire_nodest_conn", "expire_quiescent_template", "sloppy_tcp")
FIRST_LINE = "# fuzz: "


class Divergence(AssertionError):
    """An example on which the implementation and the model disagree."""

    def __init__(self, scenario: Scenario, explain: str) -> None:
        super().__init__(explain)
        self.scenario = scenario
        self.explain = explain


@dataclass(frozen=True, slots=True)
class FuzzOutcome:
    examples: int
    scenario: Scenario | None = None
    explain: str = ""

    @property
    def diverged(self) -> bool:
        return self.scenario is not None


# ---------------------------------------------------------------- strategies


def _service(draw: Any, family: Family, index: int, short_timers: bool) -> tuple[Service, list]:
    """One service of a drawn kind and the flow targets it serves: (proto, vaddr, dport)."""
    kind = draw(st.sampled_from(("normal", "port-zero", "ftp", "fwmark")))
    vip = addresses.vip(family, index)
    timeouts = (LONG_TIMEOUT, SHORT_TIMEOUT) if short_timers else (LONG_TIMEOUT,)
    timeout = draw(st.sampled_from(timeouts))
    if kind == "normal" and draw(st.booleans()):
        timeout = None
    netmask = draw(st.sampled_from(NETMASKS[family]))
    scheduler = draw(st.sampled_from(SCHEDULERS))
    proto = draw(st.sampled_from((Proto.TCP, Proto.UDP)))
    if kind == "fwmark":
        key = ServiceKey(family, Proto.TCP, None, 0, index + 1)
        targets = [(p, vip, port) for p in (Proto.TCP, Proto.UDP) for port in (80, 443)]
    elif kind == "port-zero":
        key = ServiceKey(family, proto, vip, 0)
        targets = [(proto, vip, port) for port in (80, 443)]
    elif kind == "ftp":
        proto = Proto.TCP
        key = ServiceKey(family, proto, vip, 21)
        targets = [(proto, vip, port) for port in (21, 2000)]
    else:
        key = ServiceKey(family, proto, vip, 80)
        targets = [(proto, vip, 80)]
    ops = (key.fwmark != 0 or proto is Proto.UDP) and draw(st.booleans())
    service = Service(key, scheduler, timeout, netmask, ops)
    return service, targets


def _dest(draw: Any, service: Service, rs: int) -> Dest:
    addr = addresses.rip(service.family, rs)
    fwd = draw(st.sampled_from((Fwd.DR, Fwd.NAT, Fwd.TUN)))
    port = service.key.vport
    if fwd is Fwd.NAT and service.key.vport and draw(st.booleans()):
        port = 8080
    return Dest(addr, port, draw(st.integers(0, 3)), fwd)


@st.composite
def scenarios(draw: Any, family: Family = IPV4, short_timers: bool = True) -> Scenario:
    """A whole scenario (see the module docstring)."""
    services: list[ServiceConfig] = []
    rules: list[FwmarkRule] = []
    targets: list[tuple[Proto, Any, int]] = []
    for index in range(draw(st.integers(1, 2))):
        service, served = _service(draw, family, index, short_timers)
        rss = draw(st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True))
        services.append(ServiceConfig(service, tuple(_dest(draw, service, rs) for rs in rss)))
        targets += served
        if service.key.fwmark:
            vip = addresses.vip(family, index)
            prefix = 32 if family is IPV4 else 128
            rules.append(
                FwmarkRule(
                    service.key.fwmark,
                    family,
                    ipaddress.ip_network(f"{vip}/{prefix}"),
                    draw(st.sampled_from((None, Proto.TCP, Proto.UDP))),
                    draw(st.sampled_from((None, (80, 80), (1, 1000)))),
                )
            )
    sysctls = Sysctls(**{n: draw(st.sampled_from((0, 1))) for n in SYSCTLS})
    # the kernel default first: Hypothesis shrinks towards the first choice
    sysctls = replace(sysctls, conn_reuse_mode=draw(st.sampled_from((1, 0, 2))))
    clients = [
        addresses.cip(family, 0, 1),
        addresses.cip(family, 0, 2),
        addresses.cip(family, 1, 1),
    ]
    current = {c.service.key: list(c.dests) for c in services}
    removed: dict[Any, list[Dest]] = {c.service.key: [] for c in services}
    steps: list[Step] = []
    short_waits = 0
    for _ in range(draw(st.integers(1, MAX_EVENTS))):
        what = draw(
            st.sampled_from(("flow",) * 6 + ("edit", "delete", "readd", "E", "sysctl", "wait"))
        )
        key = draw(st.sampled_from(sorted(current, key=str)))
        if what == "edit" and current[key]:
            i = draw(st.integers(0, len(current[key]) - 1))
            d = replace(current[key][i], weight=draw(st.integers(0, 3)))
            current[key][i] = d
            steps.append(EditDest(key, d))
        elif what == "delete" and current[key]:
            d = current[key].pop(draw(st.integers(0, len(current[key]) - 1)))
            removed[key].append(d)
            steps.append(DelDest(key, d.addr, d.port))
        elif what == "readd" and removed[key]:
            d = removed[key].pop()
            current[key].append(d)
            steps.append(AddDest(key, d))
        elif what == "E":
            old = next(c.service for c in services if c.service.key == key)
            steps.append(EditService(replace(old, scheduler=draw(st.sampled_from(SCHEDULERS)))))
        elif what == "sysctl":
            steps.append(SetSysctl(draw(st.sampled_from(SYSCTLS)), draw(st.sampled_from((0, 1)))))
        elif what == "wait":
            long = short_timers and draw(st.booleans())
            if long or short_waits < MAX_SHORT_WAITS:
                short_waits += 0 if long else 1
                steps.append(Advance(LONG_WAIT if long else SHORT_WAIT))
        else:
            proto, vaddr, dport = draw(st.sampled_from(targets))
            kind = None
            if proto is Proto.TCP:
                kind = draw(st.sampled_from((None, None, None, "ack", "rst")))
            flow = Flow(
                proto,
                draw(st.sampled_from(clients)),
                draw(st.sampled_from(SPORTS)),
                vaddr,
                dport,
                kind,
            )
            last = steps[-1] if steps else None
            if isinstance(last, Send):
                steps[-1] = Send((*last.flows, flow))
            else:
                steps.append(Send((flow,)))
    if not any(isinstance(s, Send) for s in steps):
        steps.append(Send((Flow(*targets[0][:1], clients[0], SPORTS[0], *targets[0][1:]),)))
    return Scenario("fuzz", tuple(services), tuple(steps), tuple(rules), sysctls)


# ---------------------------------------------------------------- the loop


def fuzz(
    case: Case,
    family: Family,
    examples: int,
    seed: int = 0,
    *,
    short_timers: bool = True,
    shrink_budget: int = 150,
) -> FuzzOutcome:
    """Run up to ``examples`` scenarios on ``case``; the first divergence, shrunk."""
    failures: dict[str, str] = {}  # rendered scenario -> explanation
    state = {"examples": 0, "after_failure": 0}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.generate, Phase.shrink),
        print_blob=False,
        report_multiple_bugs=False,
    )
    @hypothesis_seed(seed)
    @given(scenarios(family, short_timers))
    def one(scenario: Scenario) -> None:
        text = render_timeline(scenario)
        if text in failures:  # Hypothesis replays the minimal example: answer from memory
            _diverge(scenario, failures[text])
        if failures:
            state["after_failure"] += 1
            if state["after_failure"] > shrink_budget:
                return  # budget spent: this candidate is not accepted as smaller
        else:
            state["examples"] += 1
        try:
            result = case.play(scenario, allow_ftpdata=any(f.sport == 20 for f in scenario.flows()))
        except Unsupported:
            reject()
        except ModelError:
            reject()  # a combination the model (like the kernel) refuses: not an example
        if result.verdict == "fail":
            failures[text] = result.explain()
            _diverge(scenario, failures[text])

    try:
        one()
    except Divergence as exc:
        return FuzzOutcome(state["examples"], exc.scenario, exc.explain)
    return FuzzOutcome(state["examples"])


def _diverge(scenario: Scenario, explain: str) -> None:
    # one raise site: Hypothesis tells bugs apart by where they are raised
    raise Divergence(scenario, explain)


def regression_file(outcome: FuzzOutcome, impl_name: str, seed: int) -> str:
    """The shrunk divergence as a scenario file (a leading comment says where it came from)."""
    assert outcome.scenario is not None
    lines = [line.strip() for line in outcome.explain.splitlines()]
    first = next((line[2:] for line in lines if line.startswith("- ")), "diverges")
    header = (
        f"{FIRST_LINE}lvsconf fuzz --impl {impl_name} --seed {seed} found this divergence\n"
        f"# from the reference model; first problem: {first[:200]}\n"
    )
    return header + render_timeline(Timeline(replace(outcome.scenario, name="")))


# ---------------------------------------------------------------- the pytest item

BEGIN, END = "----- begin scenario file -----", "----- end scenario file -----"


def fuzz_test(examples: int, seed: int, short_timers: bool = True) -> Any:
    """The ``@rule("fuzz")`` test for ``lvsconf fuzz`` (one item per implementation x family)."""

    def test_fuzz(case: Case) -> None:
        from harness.traffic.engine import slowdown

        # a slowed-down lane (a VM under TCG) stretches every step: no short timers there, and
        # fewer shrinking runs
        slow = slowdown() > 1
        outcome = fuzz(
            case,
            case.family,
            examples,
            seed,
            short_timers=short_timers and not slow,
            shrink_budget=30 if slow else 150,
        )
        print(f"examples={outcome.examples}")
        if outcome.diverged:
            pytest.fail(
                f"examples={outcome.examples} divergence found and shrunk:\n{BEGIN}\n"
                f"{regression_file(outcome, case.impl.name, seed)}{END}\n{outcome.explain}",
                pytrace=False,
            )
        if not case.results:  # every example rejected: never a vacuous green
            pytest.fail("no example ran (every drawn scenario was refused)", pytrace=False)

    test_fuzz.__doc__ = (
        "Hypothesis-generated timelines (services of every kind, dest edits, sysctls, waits) "
        "give the same outcomes and templates on the implementation as on the reference model."
    )
    return rule(
        "fuzz",
        source="generated scenarios; expected: the reference model (impl/)",
        families=(IPV4, IPV6),
    )(test_fuzz)
