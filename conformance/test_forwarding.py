"""Forwarding: which address and port a real server receives (docs/semantics.md §1.5.7, §2.5;
§8 case 18 and the DR/NAT/TUN transmitters).

DR keeps the packet as sent to the VIP, NAT rewrites the destination to the real server's
address and the forwarded port, TUN encapsulates the untouched packet. The forwarded port is
the dest's port or the packet's own, by the rules of ip_vs_schedule / ip_vs_sched_persist.
"""

from __future__ import annotations

import ipaddress

from conformance.runner.case import Case
from conformance.runner.rules import rule
from impl.scenario import Scenario, Send, ServiceConfig
from impl.types import Dest, Fwd, FwmarkRule, IPAddress, IPNetwork, Proto, Service

TCP, UDP = Proto.TCP, Proto.UDP


def _host(addr: IPAddress) -> IPNetwork:
    """The one-address network of ``addr`` (a fwmark rule that covers a single VIP)."""
    return ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")


@rule(
    "dport",
    source="ip_vs_core.c ip_vs_sched_persist() 386-414 (persistent: dest->port only "
    "if dst_port == svc->port) and ip_vs_schedule() 550 (non-persistent: dest->port if set) "
    "(6.12.117)",
)
def test_dport(case: Case) -> None:
    """The forwarded port: a persistent fwmark or port-zero service ignores the dest's
    configured port and keeps the packet's; a normal persistent service forwards to the dest
    port; a non-persistent fwmark service forwards to the dest port when one is set. NAT dests
    on port 8080 make the forwarded port visible."""
    fam = case.family
    nat = Fwd.NAT
    scenario = Scenario(
        services=(
            ServiceConfig(
                Service(case.fwmark_key(6), "rr", timeout=30),
                (Dest(case.rip(0), 8080, fwd=nat),),
            ),
            ServiceConfig(
                Service(case.key(TCP, 0, vip=2), "rr", timeout=30),
                (Dest(case.rip(1), 8080, fwd=nat),),
            ),
            ServiceConfig(
                Service(case.key(TCP, 80), "rr", timeout=30),
                (Dest(case.rip(2), 8080, fwd=nat),),
            ),
            ServiceConfig(Service(case.fwmark_key(7), "rr"), (Dest(case.rip(0), 8080, fwd=nat),)),
        ),
        fwmark_rules=(
            FwmarkRule(6, fam, _host(case.vip(1))),
            FwmarkRule(7, fam, _host(case.vip(3))),
        ),
        steps=(
            Send(
                (
                    case.flow(TCP, case.cip(0, 1), 40001, case.vip(1), 80),  # persistent fwmark
                    case.flow(TCP, case.cip(0, 1), 40002, case.vip(2), 22),  # persistent port zero
                    case.flow(TCP, case.cip(0, 1), 40003, case.vip(0), 80),  # normal persistent
                    case.flow(TCP, case.cip(0, 1), 40004, case.vip(3), 80),  # non-persistent fwmark
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    got = [(o.kind, o.rs, o.port) for o in r.observed]
    assert got == [
        ("forward", 0, 80),
        ("forward", 1, 22),
        ("forward", 2, 8080),
        ("forward", 0, 8080),
    ], "forwarded ports"


@rule(
    "nat-rewrite",
    source="ip_vs_xmit.c ip_vs_nat_xmit() / ip_vs_nat_xmit_v6() (6.12.117): "
    "daddr and dport rewritten to cp->daddr:cp->dport",
)
def test_nat_rewrite(case: Case) -> None:
    """NAT rewrites the destination to the real server's address and the forwarded port (the
    dest's port, or the packet's when the dest port is 0), without encapsulation."""
    scenario = Scenario(
        services=(
            ServiceConfig(
                Service(case.key(TCP, 80), "rr"),
                (Dest(case.rip(0), 8080, fwd=Fwd.NAT),),
            ),
            ServiceConfig(
                Service(case.key(UDP, 53), "rr"),
                (Dest(case.rip(1), 0, fwd=Fwd.NAT),),
            ),
        ),
        steps=(
            Send(
                (
                    case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 80),
                    case.flow(UDP, case.cip(0, 1), 40002, case.vip(0), 53),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    tcp, udp = r.observed
    assert (tcp.kind, tcp.rs, tcp.addr, tcp.port, tcp.encapsulated) == (
        "forward",
        0,
        case.rip(0),
        8080,
        False,
    ), "TCP rewritten to rs1:8080"
    assert (udp.kind, udp.rs, udp.addr, udp.port, udp.encapsulated) == (
        "forward",
        1,
        case.rip(1),
        53,
        False,
    ), "UDP rewritten to rs2:53"


@rule(
    "dr-keeps-vip",
    source="ip_vs_xmit.c ip_vs_dr_xmit() / ip_vs_dr_xmit_v6() (6.12.117): the "
    "packet is sent unchanged to the real server's link address",
)
def test_dr_keeps_vip(case: Case) -> None:
    """DR hands the real server the packet as the client sent it: still addressed to VIP:port,
    not encapsulated."""
    scenario = Scenario(
        services=(
            ServiceConfig(
                Service(case.key(TCP, 80), "rr"),
                (Dest(case.rip(0), fwd=Fwd.DR),),
            ),
            ServiceConfig(
                Service(case.key(UDP, 53, vip=1), "rr"),
                (Dest(case.rip(1), fwd=Fwd.DR),),
            ),
        ),
        steps=(
            Send(
                (
                    case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 80),
                    case.flow(UDP, case.cip(0, 1), 40002, case.vip(1), 53),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    tcp, udp = r.observed
    assert (tcp.kind, tcp.rs, tcp.addr, tcp.port, tcp.encapsulated) == (
        "forward",
        0,
        case.vip(0),
        80,
        False,
    ), "TCP arrives for VIP0:80"
    assert (udp.kind, udp.rs, udp.addr, udp.port, udp.encapsulated) == (
        "forward",
        1,
        case.vip(1),
        53,
        False,
    ), "UDP arrives for VIP1:53"


@rule(
    "tun-encap",
    source="ip_vs_xmit.c ip_vs_tunnel_xmit() / ip_vs_tunnel_xmit_v6() (6.12.117): "
    "IPIP / IPv6-in-IPv6 header to the real server, inner packet unchanged",
)
def test_tun_encap(case: Case) -> None:
    """TUN encapsulates the unchanged packet (inner destination VIP:port) in an IP header to
    the real server. Observed by capture at the real server, so it needs no ipip/ip6tnl
    decapsulation there (the director's transmitter builds the outer header itself)."""
    scenario = Scenario(
        services=(
            ServiceConfig(
                Service(case.key(TCP, 80), "rr", timeout=30),
                (Dest(case.rip(2), fwd=Fwd.TUN),),
            ),
        ),
        steps=(
            Send(
                (
                    case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 80),
                    case.flow(TCP, case.cip(0, 1), 40002, case.vip(0), 80),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    for o in r.observed:
        assert (o.kind, o.rs, o.addr, o.port, o.encapsulated) == (
            "forward",
            2,
            case.vip(0),
            80,
            True,
        ), "encapsulated VIP0:80 at rs3"
