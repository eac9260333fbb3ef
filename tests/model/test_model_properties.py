"""Properties of the model (Hypothesis): persistence is keyed, the scheduler runs exactly when
no valid template exists, and services do not leak state into each other."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st
from model_support import RIPS, VIP, cip, key, tcp

from impl.director import Director, masked
from impl.kernel_level import KernelLevel
from impl.schedulers.base import DestState, Scheduler
from impl.schedulers.registry import make_scheduler
from impl.types import Dest, Flow, Proto, Service, Sysctls


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


# One step: ("flow", client n, dt) | ("weight", rs index, weight) | ("del"/"add", rs index)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("flow"), st.integers(1, 6), st.floats(0, 4)),
        st.tuples(st.just("weight"), st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.sampled_from(["del", "add"]), st.integers(0, 2)),
    ),
    max_size=40,
)


@given(
    steps,
    st.sampled_from(["rr", "wlc", "sh", "lc"]),
    st.booleans(),
    st.sampled_from([0xFFFFFFFF, 0xFFFFFFFC]),
)
def test_template_decides_else_scheduler(trace, sched, eqt, mask) -> None:  # type: ignore[no-untyped-def]
    """Same key + valid template => its dest, without asking the scheduler; no valid template
    => exactly one scheduler call."""
    counting = Counting([])
    d = Director(sysctls=Sysctls(expire_quiescent_template=int(eqt)), scheduler_factory=counting)
    svc = Service(key(80), sched, timeout=3, netmask=mask)
    d.add_service(svc)
    for r in RIPS:
        d.add_dest(svc.key, Dest(r, 80))
    (spy,) = counting.made
    now, sport = 0.0, 10000
    for step in trace:
        if step[0] == "flow":
            _, n, dt = step
            now += dt
            sport += 1
            snet = masked(cip(n), svc)
            live = {s.addr: s for s in d.dest_state(svc.key)}
            tpl = [t for t in d.templates(now) if t.caddr == snet and t.vport == 80]
            valid = [t for t in tpl if t.daddr in live and not (eqt and live[t.daddr].weight == 0)]
            before = spy.calls
            v = d.packet(tcp(cip(n), sport), now)
            if valid:
                assert v.dest == valid[0].daddr and spy.calls == before
            else:
                assert spy.calls == before + 1
                assert v.kind in ("forward", "unreachable")
        elif step[0] == "weight":
            _, i, w = step
            if any(s.addr == RIPS[i] for s in d.dest_state(svc.key)):
                d.edit_dest(svc.key, Dest(RIPS[i], 80, w), now)
        elif step[0] == "del":
            if any(s.addr == RIPS[step[1]] for s in d.dest_state(svc.key)):
                d.del_dest(svc.key, RIPS[step[1]], 80, now)
        elif not any(s.addr == RIPS[step[1]] for s in d.dest_state(svc.key)):
            d.add_dest(svc.key, Dest(RIPS[step[1]], 80), now)


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
    from impl.types import IPV4, ServiceKey

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
