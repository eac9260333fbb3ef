"""Properties of the model (Hypothesis): persistence is keyed, the scheduler runs exactly when
no valid template exists, and services do not leak state into each other.

The persistence property is a :class:`~hypothesis.stateful.RuleBasedStateMachine`: Hypothesis
interleaves dest changes, new connections and clock advances, shrinks a failure to the shortest
sequence of rules and prints it as replayable code (docs/semantics.md §2.4, §3.2, §3.4).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from model_support import RIPS, VIP, cip, key, tcp

from impl.director import INVALID_PORT, Director, masked
from impl.kernel_level import KernelLevel
from impl.schedulers.base import DestState, Scheduler
from impl.schedulers.registry import make_scheduler
from impl.types import IPV4, Dest, Flow, Proto, Service, ServiceKey, Sysctls


class CountingScheduler(Scheduler):
    """Wraps a real scheduler and counts the calls to ``schedule``."""

    def __init__(self, inner: Scheduler) -> None:
        super().__init__(inner.service, inner.level)
        self.inner = inner
        self.calls = 0

    def init_service(self, dests: list[DestState]) -> None:
        self.inner.init_service(dests)

    def add_dest(self, dests: list[DestState], dest: DestState) -> None:
        self.inner.add_dest(dests, dest)

    def del_dest(self, dests: list[DestState], dest: DestState) -> None:
        self.inner.del_dest(dests, dest)

    def upd_dest(self, dests: list[DestState], dest: DestState) -> None:
        self.inner.upd_dest(dests, dest)

    def schedule(self, dests: list[DestState], flow: Flow) -> DestState | None:
        self.calls += 1
        return self.inner.schedule(dests, flow)


@dataclass
class Counting:
    made: list[CountingScheduler]

    def __call__(self, service: Service, level: KernelLevel) -> Scheduler:
        s = CountingScheduler(make_scheduler(service.scheduler, service, level))
        self.made.append(s)
        return s


RS = st.integers(0, len(RIPS) - 1)


class TemplateDecidesElseScheduler(RuleBasedStateMachine):
    """One persistent service on VIP:80 whose dests come and go, change weight, and clients
    that open new connections as the clock moves on.

    Claim (ip_vs_sched_persist, core.c 340-384, 6.12.117): a client group with a *valid*
    template goes to the template's dest and the scheduler is not asked; without one the
    scheduler is asked exactly once. Valid means its dest is still in the service, and with
    expire_quiescent_template=1 also weight > 0 (ip_vs_check_template, conn.c 756-798)."""

    @initialize(
        scheduler=st.sampled_from(["rr", "wlc", "sh", "lc"]),
        quiescent=st.booleans(),
        netmask=st.sampled_from([0xFFFFFFFF, 0xFFFFFFFC]),
    )
    def build(self, scheduler: str, quiescent: bool, netmask: int) -> None:
        self.quiescent = quiescent
        counting = Counting([])
        self.d = Director(
            sysctls=Sysctls(expire_quiescent_template=int(quiescent)), scheduler_factory=counting
        )
        self.svc = Service(key(80), scheduler, timeout=3, netmask=netmask)
        self.d.add_service(self.svc)
        for rip in RIPS:
            self.d.add_dest(self.svc.key, Dest(rip, 80))
        (self.spy,) = counting.made
        self.now = 0.0
        self.sport = 10000

    def _in_service(self, i: int) -> bool:
        return any(s.addr == RIPS[i] for s in self.d.dest_state(self.svc.key))

    @rule(i=RS)
    def add_dest(self, i: int) -> None:
        if not self._in_service(i):
            self.d.add_dest(self.svc.key, Dest(RIPS[i], 80), self.now)

    @rule(i=RS)
    def delete_dest(self, i: int) -> None:
        if self._in_service(i):
            self.d.del_dest(self.svc.key, RIPS[i], 80, self.now)

    @rule(i=RS, weight=st.integers(0, 2))
    def set_weight(self, i: int, weight: int) -> None:
        if self._in_service(i):
            self.d.edit_dest(self.svc.key, Dest(RIPS[i], 80, weight), self.now)

    @rule(seconds=st.floats(0, 4))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.d.expire(self.now)

    @rule(client=st.integers(1, 6))
    def send(self, client: int) -> None:
        """A new connection (a SYN from a fresh source port)."""
        self.sport += 1
        snet = masked(cip(client), self.svc)
        live = {s.addr: s for s in self.d.dest_state(self.svc.key)}
        valid = [
            t
            for t in self.d.templates(self.now)
            if t.caddr == snet
            and t.vport == 80
            and t.daddr in live
            and not (self.quiescent and live[t.daddr].weight == 0)
        ]
        before = self.spy.calls
        decision = self.d.packet(tcp(cip(client), self.sport), self.now)
        if valid:
            assert decision.dest == valid[0].daddr, "a valid template decides"
            assert self.spy.calls == before, "the scheduler was asked despite a valid template"
        else:
            assert self.spy.calls == before + 1, "no valid template: the scheduler, once"
            assert decision.kind in ("forward", "unreachable")

    @precondition(lambda self: hasattr(self, "d"))
    @invariant()
    def one_findable_template_per_client_group(self) -> None:
        """Invalid templates are re-keyed to FFFF, so a key never finds two (conn.c 756-798)."""
        keys = [
            (t.caddr, t.vport)
            for t in self.d.template_entries()
            if t.vport != INVALID_PORT and t.linked
        ]
        assert len(keys) == len(set(keys)), keys

    @precondition(lambda self: hasattr(self, "d"))
    @invariant()
    def templates_count_only_in_persistconns(self) -> None:
        """Each dest's persistconns is the number of templates on it (conn.c 630-642)."""
        templates = self.d.template_entries()
        dests = {id(t.dest): t.dest for t in templates if t.dest is not None}
        dests.update({id(s): s for s in self.d.dest_state(self.svc.key)})
        for ds in dests.values():
            assert ds.persistconns == sum(1 for t in templates if t.dest is ds), ds


TestTemplateDecidesElseScheduler = TemplateDecidesElseScheduler.TestCase


@given(
    st.lists(st.tuples(st.integers(1, 5), st.floats(0, 3)), max_size=25),
    st.lists(st.tuples(st.integers(1, 5), st.integers(0, 4)), max_size=25),
)
def test_services_do_not_leak(flows_a, noise) -> None:  # type: ignore[no-untyped-def]
    """Traffic to VIP:443 never changes what VIP:80 decides (separate templates, schedulers
    and dest objects)."""

    def run(with_noise: bool) -> list[object]:
        d = Director()
        for port in (80, 443):
            d.add_service(Service(key(port), "rr", timeout=2))
            for r in RIPS:
                d.add_dest(key(port), Dest(r, port))
        out, now, sport = [], 0.0, 20000
        for i, (n, dt) in enumerate(flows_a):
            now += dt
            if with_noise and i < len(noise):
                m, k = noise[i]
                for _ in range(k):
                    sport += 1
                    d.packet(tcp(cip(m), sport, VIP, 443), now)
            sport += 1
            out.append(d.packet(tcp(cip(n), sport, VIP, 80), now))
        return out

    assert run(False) == run(True)


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 2), st.floats(0, 2)), max_size=30))
def test_fwmark_one_server_per_client(flows) -> None:  # type: ignore[no-untyped-def]
    """All flows of one client carrying one mark reach one server while its template lives."""
    d = Director()
    svc = Service(ServiceKey(IPV4, fwmark=4), "rr", timeout=1000)
    d.add_service(svc)
    for r in RIPS:
        d.add_dest(svc.key, Dest(r, 0))
    seen: dict[int, object] = {}
    now, sport = 0.0, 30000
    for n, kind, dt in flows:
        now += dt
        sport += 1
        proto = (Proto.TCP, Proto.UDP, Proto.SCTP)[kind]
        first = {Proto.TCP: "syn", Proto.UDP: "udp", Proto.SCTP: "init"}[proto]
        v = d.packet(Flow(proto, cip(n), sport, VIP, 1000 + kind, first, 4), now)  # type: ignore[arg-type]
        assert seen.setdefault(n, v.dest) == v.dest
