"""Persistence keys: which flows share a template (docs/semantics.md §2.1-2.4, §8 cases 13-20).

A persistent service keys its templates on <proto, masked client, 0, vaddr, vport> (plus the SIP
Call-ID with pe sip); the real server is not part of the key. Each case picks flows so that a
fresh scheduling decision would differ from the persistent one (another client moves rr on
first), so "same real server" on the wire really shows the template at work.

§8 case 18 (dport rules) lives in test_forwarding.py.
"""

from __future__ import annotations

import ipaddress

from conformance.runner.case import Case
from conformance.runner.rules import rule
from harness.addresses import VIP_NET
from impl.scenario import Scenario, Send, ServiceConfig
from impl.types import (
    IPV4,
    IPV6,
    Dest,
    Family,
    Fwd,
    FwmarkRule,
    IPAddress,
    Proto,
    Service,
    Template,
)

TCP, UDP = Proto.TCP, Proto.UDP


def mark_vaddr(family: Family, mark: int) -> IPAddress:
    """The vaddr of a fwmark template: the 32-bit mark in the address's first 32 bits."""
    if family is IPV4:
        return ipaddress.IPv4Address(mark)
    return ipaddress.IPv6Address(mark << 96)


def live(templates: list[Template] | None) -> list[Template]:
    """Templates that can still be found (not invalidated with vport FFFF)."""
    return [t for t in templates or [] if not t.invalidated]


@rule(
    "normal-key",
    source="ip_vs_core.c ip_vs_sched_persist() 305-338 (6.12.117): "
    "<proto, snet, 0, vaddr, svc->port>",
)
def test_normal_key(case: Case) -> None:
    """A persistent VIP:80 service sends one client's connections (different source ports) to
    one real server; a second persistent service on VIP:443 has its own key and chooses for
    that client independently."""
    web = case.key(TCP, 80)
    tls = case.key(TCP, 443)
    scenario = Scenario(
        services=(
            # added rs1, rs2, rs3: rr picks rs3 first
            ServiceConfig(
                Service(web, "rr", timeout=60),
                case.dests(),
            ),
            # added rs3, rs2, rs1: rr picks rs1 first
            ServiceConfig(
                Service(tls, "rr", timeout=60),
                (Dest(case.rip(2)), Dest(case.rip(1)), Dest(case.rip(0))),
            ),
        ),
        steps=(
            Send(
                (
                    case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 80),
                    case.flow(TCP, case.cip(0, 2), 40002, case.vip(0), 80),  # moves rr on
                    case.flow(TCP, case.cip(0, 1), 40003, case.vip(0), 80),
                    case.flow(TCP, case.cip(0, 1), 40004, case.vip(0), 443),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) is not None and r.rs(2) == r.rs(0), "same client, same server"
    assert r.rs(3) is not None and r.rs(3) != r.rs(0), (
        "VIP:443 is keyed separately (its own rr gives rs1, not the :80 server)"
    )
    observed = r.templates_observed[0]
    if observed is not None:
        ports = sorted(t.vport for t in live(observed) if t.caddr == case.cip(0, 1))
        assert ports == [80, 443], "one template per service for the client"


@rule(
    "netmask-v4",
    source="ip_vs_core.c ip_vs_sched_persist() 276-285 (6.12.117): snet = saddr & svc->netmask",
    families=(IPV4,),
)
def test_netmask_v4(case: Case) -> None:
    """With netmask 255.255.255.0 two clients of one /24 share a template (FromIP is the masked
    network, e.g. 0A000000 for 10.0.0.x), and a client of another /24 is scheduled separately.
    IPv4 only: an IPv6 service holds a prefix length instead (netmask-v6)."""
    _check_masked_grouping(case, "netmask-v4", netmask=0xFFFFFF00, plen=24)


@rule(
    "netmask-v6",
    source="ip_vs_core.c ip_vs_sched_persist() 276-285 (6.12.117): IPv6 "
    "svc->netmask is a prefix length (ip_vs_addr_copy + ipv6_addr_prefix)",
    families=(IPV6,),
)
def test_netmask_v6(case: Case) -> None:
    """An IPv6 persistent service with prefix length 64 groups clients by /64: two clients of
    one /64 share a real server, a client of another /64 is scheduled separately.
    IPv6 only: IPv4 services take a 32-bit mask (netmask-v4)."""
    _check_masked_grouping(case, "netmask-v6", netmask=64, plen=64)


def _check_masked_grouping(case: Case, name: str, netmask: int, plen: int) -> None:
    """Clients 0.1 and 0.2 share one masked network, 1.1 is in another: the first two share a
    template (FromIP = the masked network), the third is scheduled on its own."""
    key = case.key(TCP, 80)
    scenario = Scenario(
        name=name,
        services=(
            ServiceConfig(
                Service(key, "rr", timeout=60, netmask=netmask),
                case.dests(),
            ),
        ),
        steps=(
            Send(
                (
                    case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 80),
                    case.flow(TCP, case.cip(1, 1), 40002, case.vip(0), 80),
                    case.flow(TCP, case.cip(0, 2), 40003, case.vip(0), 80),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) is not None and r.rs(2) == r.rs(0), f"same /{plen}, same server"
    assert r.rs(1) is not None and r.rs(1) != r.rs(0), f"another /{plen}, own template"
    observed = r.templates_observed[0]
    if observed is not None:
        net0 = ipaddress.ip_network(f"{case.cip(0, 1)}/{plen}", strict=False).network_address
        assert net0 in {t.caddr for t in live(observed)}, (
            f"the template's FromIP is the masked client {net0}"
        )


@rule(
    "fwmark-any-port-same-rs",
    source="ip_vs_core.c ip_vs_sched_persist() 305-338 (6.12.117): "
    "fwmark key <IPPROTO_IP, snet, 0, htonl(fwmark), 0>",
)
def test_fwmark_any_port_same_rs(case: Case) -> None:
    """A persistent fwmark service keys templates on <IP, client, 0, MARK, 0>: one client's
    marked TCP to VIP1:80, TCP to VIP2:8080 and UDP to VIP1:53 all reach one real server, under
    exactly one template whose proto is IP and whose ToIP is the mark."""
    fam = case.family
    key = case.fwmark_key(3)
    client = case.cip(0, 1)
    scenario = Scenario(
        services=(
            ServiceConfig(
                Service(key, "rr", timeout=60),
                case.dests(),
            ),
        ),
        fwmark_rules=(FwmarkRule(3, fam, VIP_NET[fam]),),
        steps=(
            Send(
                (
                    case.flow(TCP, client, 40001, case.vip(0), 80),
                    case.flow(TCP, case.cip(1, 1), 40002, case.vip(0), 80),  # moves rr on
                    case.flow(TCP, client, 40003, case.vip(1), 8080),
                    case.flow(UDP, client, 40004, case.vip(0), 53),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) is not None and r.rs(0) == r.rs(2) == r.rs(3), (
        "every marked flow of the client reaches one server"
    )
    assert r.rs(1) != r.rs(0), "another client is scheduled on its own"
    observed = r.templates_observed[0]
    if observed is not None:
        mine = [t for t in live(observed) if t.caddr == client]
        assert len(mine) == 1, "exactly one template for the client"
        t = mine[0]
        assert (t.proto, t.vaddr, t.vport) == (Proto.IP, mark_vaddr(fam, 3), 0), (
            "fwmark template is <IP, client, 0, mark 3, 0>"
        )


@rule(
    "port-zero",
    source="ip_vs_core.c ip_vs_sched_persist() 305-338 and 386-414 (6.12.117): "
    "port-zero key <proto, snet, 0, vaddr, 0>, connection keeps the packet's port",
)
def test_port_zero(case: Case) -> None:
    """A persistent port-zero service: one client's flows to VIP:22 and VIP:3306 share the
    <TCP, client, VIP, 0> template and reach one real server, each still addressed to its own
    port."""
    key = case.key(TCP, 0)
    scenario = Scenario(
        services=(
            ServiceConfig(
                Service(key, "rr", timeout=60),
                case.dests(),
            ),
        ),
        steps=(
            Send(
                (
                    case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 22),
                    case.flow(TCP, case.cip(1, 1), 40002, case.vip(0), 22),  # moves rr on
                    case.flow(TCP, case.cip(0, 1), 40003, case.vip(0), 3306),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) is not None and r.rs(2) == r.rs(0), "one server for the client"
    assert (r.observed[0].port, r.observed[2].port) == (22, 3306), "each flow keeps its own port"
    observed = r.templates_observed[0]
    if observed is not None:
        mine = [t for t in live(observed) if t.caddr == case.cip(0, 1)]
        assert [(t.proto, t.vport) for t in mine] == [(TCP, 0)]


@rule(
    "ftp-key",
    source="ip_vs_core.c ip_vs_sched_persist() 305-338, 364-379 (6.12.117): FTP "
    "control uses vport 0 and the template dport is dest->port only in the normal case",
)
def test_ftp_key(case: Case) -> None:
    """A persistent FTP service's template has TPrt 0 and DPrt 0 (the port-21 key is the
    port-zero key); a normal persistent service's template has TPrt = the service port and
    DPrt = the dest's port (here NAT to 8080, so the two differ)."""
    ftp = case.key(TCP, 21)
    web = case.key(TCP, 80, vip=1)
    scenario = Scenario(
        services=(
            ServiceConfig(Service(ftp, "rr", timeout=60), (Dest(case.rip(0), 21),)),
            ServiceConfig(Service(web, "rr", timeout=60), (Dest(case.rip(1), 8080, fwd=Fwd.NAT),)),
        ),
        steps=(
            Send(
                (
                    case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 21),
                    case.flow(TCP, case.cip(0, 1), 40002, case.vip(1), 80),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert (r.rs(0), r.rs(1)) == (0, 1)
    assert r.observed[1].port == 8080, "NAT forwards to the dest port"
    observed = r.templates_observed[0]
    if observed is not None:
        by_vaddr = {t.vaddr: t for t in live(observed)}
        f, w = by_vaddr.get(case.vip(0)), by_vaddr.get(case.vip(1))
        assert f is not None and (f.vport, f.dport) == (0, 0), "FTP template: TPrt 0000, DPrt 0000"
        assert w is not None and (w.vport, w.dport) == (80, 8080), (
            "normal template: TPrt 80, DPrt 8080"
        )


def sip_invite(call_id: str | None, branch: str) -> bytes:
    """A minimal SIP INVITE; the Call-ID header is left out when ``call_id`` is None."""
    lines = [
        "INVITE sip:bob@example.invalid SIP/2.0",
        f"Via: SIP/2.0/UDP client.example.invalid;branch=z9hG4bK{branch}",
        "Max-Forwards: 70",
        "From: <sip:alice@example.invalid>;tag=1",
        "To: <sip:bob@example.invalid>",
    ]
    if call_id is not None:
        lines.append(f"Call-ID: {call_id}")
    lines += ["CSeq: 1 INVITE", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


@rule(
    "sip",
    source="ip_vs_pe_sip.c ip_vs_sip_fill_param() 67-105, ip_vs_sip_ct_match() 107-133 "
    "(6.12.117); ip_vs_core.c ip_vs_sched_persist() 333-337 (fill_param < 0 -> NF_DROP)",
)
def test_sip(case: Case) -> None:
    """On a persistent UDP service with pe sip the template key adds the Call-ID, and the
    client network is still compared: two clients of different networks with one Call-ID get
    separate templates, a client's second datagram with its Call-ID sticks, and a datagram
    without a Call-ID is dropped."""
    key = case.key(UDP, 5060)
    scenario = Scenario(
        services=(
            ServiceConfig(
                Service(key, "rr", timeout=60, pe="sip"),
                case.dests(),
            ),
        ),
        steps=(
            Send(
                (
                    case.flow(
                        UDP,
                        case.cip(0, 1),
                        40001,
                        case.vip(0),
                        5060,
                        payload=sip_invite("call-1", "a"),
                    ),
                    case.flow(
                        UDP,
                        case.cip(1, 1),
                        40002,
                        case.vip(0),
                        5060,
                        payload=sip_invite("call-1", "b"),
                    ),
                    case.flow(
                        UDP,
                        case.cip(0, 1),
                        40003,
                        case.vip(0),
                        5060,
                        payload=sip_invite("call-1", "c"),
                    ),
                    case.flow(
                        UDP, case.cip(2, 1), 40004, case.vip(0), 5060, payload=sip_invite(None, "d")
                    ),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) is not None and r.rs(1) is not None and r.rs(1) != r.rs(0), (
        "same Call-ID from another network: own template, rr moves on"
    )
    assert r.rs(2) == r.rs(0), "same client and Call-ID: same server"
    assert r.observed[3].kind == "dropped", "no Call-ID: dropped"
    observed = r.templates_observed[0]
    if observed is not None:
        sip = [t for t in live(observed) if t.pe_name == "sip"]
        assert len(sip) == 2 and {t.pe_data for t in sip} == {"call-1"}, (
            "two sip templates with Call-ID call-1"
        )
