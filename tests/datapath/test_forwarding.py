"""The reference director forwards real packets exactly as its model decides (DR, NAT, TUN).

Each test builds a topology (client ── director ══ rs1..rs3), starts the datapath process in
the director namespace, sends flows from several clients with the traffic engine, and compares
every flow's real server with a separate in-test Director fed the same flows.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from harness import addresses
from harness.implementations.reference import ReferenceDatapath
from harness.topology import Topology, build, wait_until
from harness.traffic import engine
from harness.traffic.servers import ask_name_udp, fetch_name, serve
from impl.director import Director
from impl.procfs import parse_ip_vs_conn
from impl.scenario import Scenario, ServiceConfig
from impl.types import (
    IPV4,
    IPV6,
    Connection,
    Dest,
    Family,
    Flow,
    Fwd,
    FwmarkRule,
    Proto,
    Service,
    ServiceKey,
    Template,
)

from .scenarios import VPORTS, client_flows, dest_port, explain, observed, persistent, predict

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]


def _keys(templates: list[Template]) -> list[tuple[object, ...]]:
    """Templates without their timer (the two clocks differ by the test's own run time)."""
    return sorted(
        (
            t.family,
            t.proto,
            str(t.caddr),
            t.cport,
            str(t.vaddr),
            t.vport,
            str(t.daddr),
            t.dport,
            t.state,
        )
        for t in templates
    )


def _conn_key(c: Connection) -> tuple[object, ...]:
    return (c.proto, str(c.caddr), c.cport, str(c.vaddr), c.vport, str(c.daddr), c.dport, c.state)


FAMILIES = [pytest.param(IPV4, id="ipv4"), pytest.param(IPV6, id="ipv6")]
METHODS = [pytest.param(f, id=f.value) for f in (Fwd.DR, Fwd.NAT, Fwd.TUN)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fwd", METHODS)
def test_every_flow_reaches_the_predicted_real_server(lvs_run, fwd: Fwd, family: Family) -> None:
    scenario = persistent(family, fwd)
    flows = client_flows(family)
    with (
        build(Topology(fwd=fwd, families=(family,)), lvs_run) as net,
        ReferenceDatapath().install(net, scenario) as director,
    ):
        results = engine.send_flows(net, flows)
        stats = director.stats()
        now = director.now()
        templates = director.templates()
        connections = director.connections()
        text = director.ip_vs_conn()
    model = Director.from_scenario(scenario)
    expected = predict(model, scenario, flows, now)
    seen = observed(r.outcome for r in results)
    assert seen == expected, explain(flows, expected, seen)
    assert templates is not None and _keys(templates) == _keys(model.templates(now))
    assert connections is not None
    assert sorted(map(_conn_key, connections)) == sorted(map(_conn_key, model.connections(now)))
    # the /proc/net/ip_vs_conn rendering carries the same table
    assert text is not None and text.startswith("Pro FromIP")
    parsed_templates, parsed_connections = parse_ip_vs_conn(text)
    assert _keys(parsed_templates) == _keys(templates)
    assert len(parsed_connections) == len(connections) == len(flows)
    # independent of the model: a persistent service keeps each client on one real server
    by_client: dict[tuple[object, Proto], set[int | None]] = {}
    for flow, (_, rs, _) in zip(flows, seen, strict=True):
        by_client.setdefault((flow.saddr, flow.proto), set()).add(rs)
    assert all(len(v) == 1 for v in by_client.values()), by_client
    assert len({rs for _, rs, _ in seen}) == 3, "rr over 3 real servers must use all of them"
    assert all(r.outcome.encapsulated is (fwd is Fwd.TUN) for r in results)
    assert stats.get(fwd.value) == len(flows), stats
    assert not {"model-error", "send-error", "malformed"} & set(stats), stats


@pytest.mark.parametrize("family", FAMILIES)
def test_nat_handshake_through_the_vip(lvs_run, family: Family) -> None:
    """Real TCP connections and UDP exchanges: replies reach the client from VIP:vport."""
    scenario = persistent(family, Fwd.NAT, protos=(Proto.TCP, Proto.UDP))
    model = Director.from_scenario(scenario)
    vip = addresses.vip(family, 0)
    tcp_port, udp_port = VPORTS[Proto.TCP], VPORTS[Proto.UDP]
    with (
        build(Topology(fwd=Fwd.NAT, families=(family,)), lvs_run) as net,
        ReferenceDatapath().install(net, scenario) as director,
        serve(
            net,
            tcp_ports=(dest_port(Fwd.NAT, tcp_port),),
            udp_ports=(dest_port(Fwd.NAT, udp_port),),
        ) as servers,
    ):
        for c in range(4):
            client = addresses.cip(family, c, 10 + c)
            for k in range(2):  # a second connection from the same client: same server
                sport = 41000 + 10 * c + k
                name = fetch_name(net, vip, tcp_port, saddr=client, sport=sport)
                verdict = model.packet(Flow(Proto.TCP, client, sport, vip, tcp_port), 1.0)
                assert verdict.dest is not None
                assert name == f"rs{addresses.rs_index(verdict.dest) + 1}"
            udp_name = ask_name_udp(net, vip, udp_port, saddr=client, sport=42000 + c)
            verdict = model.packet(Flow(Proto.UDP, client, 42000 + c, vip, udp_port), 1.0)
            assert verdict.dest is not None
            assert udp_name == f"rs{addresses.rs_index(verdict.dest) + 1}"
        stats = director.stats()
    # NAT keeps the client address; the real server sees the connection to RIP:dport
    tcp = [a for a in servers.accepted if a.proto == "tcp"]
    assert len(tcp) == 8
    for a in tcp:
        assert ipaddress.ip_address(a.local[0]) == addresses.rip(family, a.rs)
        assert a.local[1] == dest_port(Fwd.NAT, tcp_port)
        assert ipaddress.ip_address(a.peer[0]) in addresses.CLIENT_POOL[family]
    assert stats.get("snat", 0) >= 8 * 2 + 4, stats  # at least SYN-ACK + name per connection


@pytest.mark.parametrize("family", FAMILIES)
def test_tun_handshake_where_real_servers_decapsulate(lvs_run, family: Family) -> None:
    scenario = persistent(family, Fwd.TUN, protos=(Proto.TCP,))
    with build(Topology(fwd=Fwd.TUN, families=(family,)), lvs_run) as net:
        if not all(r.decap for r in net.real_servers):
            pytest.skip(
                "real servers cannot decapsulate here (no ipip/ip6tnl in this kernel); "
                "TUN arrival is checked by capture in test_every_flow_reaches_..."
            )
        vip = addresses.vip(family, 0)
        with ReferenceDatapath().install(net, scenario), serve(net, tcp_ports=(80,)):
            assert fetch_name(net, vip, 80).startswith("rs")


@pytest.mark.parametrize("family", FAMILIES)
def test_dest_changes_while_running_follow_the_model(lvs_run, family: Family) -> None:
    """A sysctl, weight 0, remove, a new dest and a re-add at run time: later decisions (old
    clients on their templates, new clients) match the model after every change."""
    scenario = persistent(family, Fwd.DR, protos=(Proto.TCP,), servers=3)
    key = scenario.services[0].service.key
    rip = [addresses.rip(family, i) for i in range(4)]
    steps: list[tuple[str, object]] = [
        ("set_sysctl", ("expire_quiescent_template", 1)),  # weight 0 now voids templates
        ("edit_dest", Dest(rip[0], 80, 0, Fwd.DR)),  # quiesce rs1
        ("del_dest", rip[1]),  # remove rs2: its templates die with it
        ("add_dest", Dest(rip[3], 80, 2, Fwd.DR)),  # a new, heavier rs4
        ("add_dest", Dest(rip[1], 80, 1, Fwd.DR)),  # rs2 back
    ]
    model = Director.from_scenario(scenario)
    with (
        build(Topology(real_servers=4, fwd=Fwd.DR, families=(family,)), lvs_run) as net,
        ReferenceDatapath().install(net, scenario) as director,
    ):
        phase_flows = client_flows(family, (Proto.TCP,), clients=3, per_client=1)
        for phase in range(len(steps) + 1):
            # old clients again (their templates), plus new clients (new templates)
            flows = phase_flows + client_flows(
                family, (Proto.TCP,), clients=3, per_client=1, first=3 + 3 * phase
            )
            flows = [Flow(f.proto, f.saddr, f.sport + phase, f.daddr, f.dport) for f in flows]
            now = director.now()
            expected = predict(model, scenario, flows, now)
            seen = observed(r.outcome for r in engine.send_flows(net, flows))
            assert seen == expected, f"phase {phase}\n" + explain(flows, expected, seen)
            if phase < len(steps):
                op, arg = steps[phase]
                now = director.now()
                if op == "del_dest":
                    director.del_dest(key, arg, 80)  # type: ignore[arg-type]
                    model.del_dest(key, arg, 80, now)  # type: ignore[arg-type]
                elif op == "set_sysctl":
                    director.set_sysctl(*arg)  # type: ignore[misc]
                    model.set_sysctl(*arg)  # type: ignore[misc]
                else:
                    getattr(director, op)(key, arg)
                    getattr(model, op)(key, arg, now)
        templates = director.templates()
    assert templates is not None and _keys(templates) == _keys(model.templates(now))


@pytest.mark.parametrize("family", FAMILIES)
def test_fwmark_service_balances_marked_packets(lvs_run, family: Family) -> None:
    """nft-like fwmark rules are evaluated per packet: every port of a client, one server."""
    vip = addresses.vip(family, 1)
    net_of_vip = ipaddress.ip_network(vip)
    rule = FwmarkRule(5, family, net_of_vip, Proto.TCP, (1000, 2000))
    service = Service(ServiceKey(family, fwmark=5), "rr", 300)
    dests = tuple(Dest(addresses.rip(family, i), 0, 1, Fwd.DR) for i in range(3))
    scenario = Scenario("fwmark", (ServiceConfig(service, dests),), (), fwmark_rules=(rule,))
    flows = [
        Flow(Proto.TCP, addresses.cip(family, c, 1), 43000 + p, vip, 1000 + 100 * p)
        for c in range(4)
        for p in range(3)
    ]
    unmarked = [Flow(Proto.TCP, addresses.cip(family, 0, 1), 44000, vip, 2500)]
    with (
        build(Topology(fwd=Fwd.DR, families=(family,)), lvs_run) as net,
        ReferenceDatapath().install(net, scenario) as director,
    ):
        results = engine.send_flows(net, flows + unmarked)
        now = director.now()
    expected = predict(Director.from_scenario(scenario), scenario, flows + unmarked, now)
    seen = observed(r.outcome for r in results)
    assert seen == expected, explain(flows + unmarked, expected, seen)
    assert seen[-1][0] == "local"  # no mark, no service: the director's stack (RST)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_dest_is_unreachable_and_no_service_is_local(lvs_run, family: Family) -> None:
    vip = addresses.vip(family, 0)
    service = Service(ServiceKey(family, Proto.TCP, vip, 80), "rr", 300)
    scenario = Scenario(
        "verdicts", (ServiceConfig(service, (Dest(addresses.rip(family, 0), 80, 0, Fwd.DR),)),), ()
    )  # weight 0 only
    flows = [
        Flow(Proto.TCP, addresses.cip(family, 0, 1), 45000, vip, 80),
        Flow(Proto.UDP, addresses.cip(family, 0, 1), 45001, vip, 80),
        Flow(Proto.TCP, addresses.cip(family, 0, 1), 45002, vip, 81),
    ]
    with (
        build(Topology(fwd=Fwd.DR, families=(family,)), lvs_run) as net,
        ReferenceDatapath().install(net, scenario) as director,
    ):
        results = engine.send_flows(net, flows)
        stats = director.stats()
    seen = observed(r.outcome for r in results)
    # TCP to a service without usable dest: ICMP port unreachable from the VIP (ip_vs_leave);
    # UDP to no service: the director's own stack answers port unreachable; TCP to no
    # service: the director's own stack resets it.
    assert seen == [
        ("unreachable", None, None),
        ("unreachable", None, None),
        ("local", None, None),
    ], seen
    assert stats.get("unreachable") == 1 and stats.get("local") == 2, stats


@pytest.mark.parametrize("family", FAMILIES)
def test_tun_too_big_teaches_the_client_the_tunnel_mtu(lvs_run, family: Family) -> None:
    """A don't-fragment packet that does not fit the tunnel: ICMP fragmentation needed / packet
    too big from the VIP, and the client's own stack lowers its path MTU to the VIP."""
    scenario = persistent(family, Fwd.TUN, protos=(Proto.UDP,))
    vip = addresses.vip(family, 0)
    v4 = family is IPV4
    af = socket.AF_INET if v4 else socket.AF_INET6
    level = socket.IPPROTO_IP if v4 else socket.IPPROTO_IPV6
    mtu_discover, mtu_opt = (10, 14) if v4 else (23, 24)  # IP(V6)_MTU_DISCOVER, IP(V6)_MTU
    with (
        build(Topology(fwd=Fwd.TUN, families=(family,)), lvs_run) as net,
        ReferenceDatapath().install(net, scenario) as director,
    ):
        with net.client.socket(af, socket.SOCK_DGRAM) as s:
            s.setsockopt(level, mtu_discover, 2)  # IP_PMTUDISC_DO: never fragment locally
            s.bind((str(addresses.cip(family, 0, 1)), 46000))
            s.connect((str(vip), VPORTS[Proto.UDP]))
            s.send(b"x" * (1500 - (28 if v4 else 48)))  # exactly the link MTU
            wait_until(
                lambda: s.getsockopt(level, mtu_opt) < 1500,
                5,
                "the client to learn the tunnel's MTU",
            )
            assert s.getsockopt(level, mtu_opt) == (1480 if v4 else 1460)
        stats = director.stats()
    assert stats.get("too-big") == 1, stats
