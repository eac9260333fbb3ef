"""Protocols: which packets schedule, per protocol, and one-packet scheduling (docs/semantics.md
§1.3, §1.8, §3.6; §8 cases 11 and 45 and the SCTP triggers).

TCP triggers are in test_service_lookup.py (``tcp-nonsyn``) and UDP's in ``udp-any``; here are
ICMP echo (never scheduled), the SCTP triggers (kernels with SCTP only) and OPS, which applies
to UDP alone.
"""

from __future__ import annotations

import ipaddress

from conformance.runner.case import Case
from conformance.runner.rules import rule
from impl.scenario import Scenario, Send, ServiceConfig, SetSysctl
from impl.types import IPV4, Flow, FwmarkRule, PacketKind, Proto, Service

TCP, UDP, SCTP = Proto.TCP, Proto.UDP, Proto.SCTP


@rule(
    "ops",
    source="ip_vs_core.c ip_vs_schedule() 537-539 and ip_vs_sched_persist() 390-392 (OPS only "
    "for UDP); ip_vs_conn.c ip_vs_conn_put() 477, ip_vs_bind_dest() 595 (6.12.117)",
)
def test_ops(case: Case) -> None:
    """With OPS every UDP datagram is scheduled on its own (its connection is never kept):
    with rr, successive datagrams of one socket rotate across the servers; with OPS and
    persistence they all follow the template to one server; without OPS (control) they
    follow their connection."""
    rr_ops = case.key(UDP, 53)
    persist_ops = case.key(UDP, 53, vip=1)
    plain = case.key(UDP, 53, vip=2)

    def datagram(n: int) -> Send:
        # the same three sockets each time: separate steps keep (client, sport) unique per Send
        return Send(
            (
                case.flow(UDP, case.cip(0, 1), 40001, case.vip(0), 53, payload=b"d%d" % n),
                case.flow(UDP, case.cip(0, 2), 40002, case.vip(1), 53, payload=b"d%d" % n),
                case.flow(UDP, case.cip(0, 3), 40003, case.vip(2), 53, payload=b"d%d" % n),
            )
        )

    scenario = Scenario(
        services=(
            ServiceConfig(Service(rr_ops, "rr", ops=True), case.dests()),
            ServiceConfig(Service(persist_ops, "rr", timeout=30, ops=True), case.dests()),
            ServiceConfig(Service(plain, "rr"), case.dests()),
        ),
        steps=(datagram(1), datagram(2), datagram(3)),
    )
    r = case.play(scenario)
    r.assert_conforms()
    rotating = [r.rs(i) for i in (0, 3, 6)]
    sticky = [r.rs(i) for i in (1, 4, 7)]
    control = [r.rs(i) for i in (2, 5, 8)]
    assert set(rotating) == {0, 1, 2}, "OPS + rr: one datagram per server"
    assert sticky[0] is not None and len(set(sticky)) == 1, "OPS + persistence: one server"
    assert control[0] is not None and len(set(control)) == 1, "no OPS: the connection"


@rule(
    "ops-udp-only",
    source="ip_vs_core.c ip_vs_schedule() 537-539 (6.12.117): "
    "IP_VS_CONN_F_ONE_PACKET only when svc has ONEPACKET and the packet is UDP",
)
def test_ops_udp_only(case: Case) -> None:
    """OPS on a fwmark service that takes TCP and UDP applies to UDP only: a TCP connection is
    kept (its ACK follows it), while successive UDP datagrams of one socket are each scheduled."""
    fam = case.family
    key = case.fwmark_key(8)
    vip = case.vip(0)
    tcp = case.cip(0, 1)
    udp = case.cip(0, 2)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr", ops=True), case.dests()),),
        fwmark_rules=(FwmarkRule(8, fam, ipaddress.ip_network(f"{vip}/{vip.max_prefixlen}")),),
        steps=(
            Send((case.flow(TCP, tcp, 40001, vip, 80), case.flow(UDP, udp, 40002, vip, 53))),
            Send(
                (
                    case.flow(TCP, tcp, 40001, vip, 80, kind="ack"),
                    case.flow(UDP, udp, 40002, vip, 53),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) is not None and r.rs(2) == r.rs(0), "TCP keeps its connection"
    assert None not in (r.rs(1), r.rs(3)) and r.rs(1) != r.rs(3), (
        "each UDP datagram is scheduled (rr moves on)"
    )


def _ping(case: Case, client_host: int, ident: int, vip_index: int) -> Flow:
    """An ICMP (IPv4) / ICMPv6 (IPv6) echo request from client ``client_host`` to a VIP;
    ``ident`` is the echo identifier (a ping has no ports: dport 0)."""
    proto = Proto.ICMP if case.family is IPV4 else Proto.ICMPV6
    return case.flow(proto, case.cip(0, client_host), ident, case.vip(vip_index), 0, kind="echo")


@rule(
    "icmp",
    source="ip_vs_core.c ip_vs_in_hook() 1973-1990: ICMP goes to ip_vs_in_icmp(), "
    "ip_vs_in_icmp_v6(); ip_vs_in_icmp() 1625-1630 and ip_vs_in_icmp_v6() 1844-1847: an echo "
    "is not related (only DEST_UNREACH, SOURCE_QUENCH, TIME_EXCEEDED / ICMPv6 errors are); "
    "ip_vs_in_hook() 1993-2003: no IPVS protocol for ICMP -> NF_ACCEPT (6.12.117)",
)
def test_icmp(case: Case) -> None:
    """A ping to a VIP is answered by the director itself and creates no connection or
    template: ip_vs_in_icmp treats only ICMP errors as related, and an echo request then finds
    no IPVS protocol and is accepted to the local stack, which replies. That holds for a VIP
    with a persistent TCP service and for a VIP a persistent fwmark service covers entirely
    (the mark is set on the ping too, but no lookup happens). Afterwards the same client's first
    SYN is scheduled as new and creates the only template (the control)."""
    fam = case.family
    web = case.key(TCP, 80)
    marked = case.fwmark_key(9)
    vip1 = case.vip(1)
    scenario = Scenario(
        services=(
            ServiceConfig(Service(web, "rr", timeout=60), case.dests()),
            ServiceConfig(Service(marked, "rr", timeout=60), case.dests()),
        ),
        # proto None: every packet to VIP1 is marked, the ping included
        fwmark_rules=(FwmarkRule(9, fam, ipaddress.ip_network(f"{vip1}/{vip1.max_prefixlen}")),),
        steps=(
            Send((_ping(case, 1, 4001, 0), _ping(case, 2, 4002, 1), _ping(case, 1, 4001, 0))),
            Send((case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 80),)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert [o.kind for o in r.observed[:3]] == ["local"] * 3, (
        "every ping is answered by the director (echo reply from the VIP)"
    )
    assert r.flows[1].mark == 9, "the fwmark rule marks the ping too"
    assert r.observed[3].kind == "forward", "the control SYN is balanced"
    after_pings = [r.templates_expected[0], r.templates_observed[0]]
    after_syn = [r.templates_expected[1], r.templates_observed[1]]
    for table in after_pings:
        if table is not None:
            assert table == [], "a ping creates no template"
    for table in after_syn:
        if table is not None:
            assert [(t.caddr, t.vport) for t in table] == [(case.cip(0, 1), 80)], (
                "only the control SYN's template"
            )


def _sctp(case: Case, sport: int, kind: PacketKind) -> Flow:
    return case.flow(SCTP, case.cip(0, 1), sport, case.vip(0), 5000, kind=kind)


@rule(
    "sctp-init",
    source="ip_vs_proto_sctp.c sctp_conn_schedule() 17-82 (6.12.117): the first "
    "chunk must be INIT unless sloppy_sctp",
    needs=("sctp",),
)
def test_sctp_init(case: Case) -> None:
    """An SCTP INIT creates a connection; a DATA chunk with no connection is not scheduled
    (sloppy_sctp=0) but is once sloppy_sctp=1."""
    key = case.key(SCTP, 5000)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr"), case.dests()),),
        steps=(
            Send((_sctp(case, 40001, "init"), _sctp(case, 40002, "data"))),
            SetSysctl("sloppy_sctp", 1),
            Send((_sctp(case, 40003, "data"),)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    kinds = [o.kind for o in r.observed]
    assert kinds[0] == "forward", "INIT is scheduled"
    assert kinds[1] != "forward", "DATA without sloppy_sctp is not"
    assert kinds[2] == "forward", "DATA with sloppy_sctp=1 is"


@rule(
    "sctp-abort-never",
    source="ip_vs_proto_sctp.c sctp_conn_schedule() 17-82 (6.12.117): "
    "an ABORT chunk never creates a connection, sloppy or not",
    needs=("sctp",),
)
def test_sctp_abort_never(case: Case) -> None:
    """An SCTP ABORT with no connection is never scheduled, with sloppy_sctp=0 or 1; the
    director's stack does not answer an ABORT (RFC 9260 8.4), so nothing comes back."""
    key = case.key(SCTP, 5000)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr"), case.dests()),),
        steps=(
            Send((_sctp(case, 40001, "abort"),)),
            SetSysctl("sloppy_sctp", 1),
            Send((_sctp(case, 40002, "abort"),)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert [o.kind for o in r.observed] == ["dropped", "dropped"], (
        "an ABORT is never balanced nor answered"
    )
