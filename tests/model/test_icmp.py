"""ICMP echo towards a VIP (docs/semantics.md §1.8; §8 case 11): answered locally, no state."""

from __future__ import annotations

import ipaddress

import pytest
from model_support import VIP, VIP6, cip, dests, director, key, tcp, udp

from impl.icmp import ECHO_LOCAL, UnmodelledIcmp, icmp_verdict
from impl.types import Flow, Proto, Service, ServiceKey, Sysctls

CIP6 = ipaddress.IPv6Address("2001:db8:1::1")


def ping(
    src: ipaddress.IPv4Address | ipaddress.IPv6Address,
    ident: int = 7,
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address = VIP,
    mark: int = 0,
) -> Flow:
    proto = Proto.ICMP if src.version == 4 else Proto.ICMPV6
    return Flow(proto, src, ident, dst, 0, "echo", mark)


@pytest.mark.parametrize("flow", [ping(cip(1)), ping(CIP6, dst=VIP6)], ids=["v4", "v6"])
def test_echo_request_is_answered_by_the_director(flow: Flow) -> None:
    verdict = icmp_verdict(flow)
    assert verdict is not None
    assert (verdict.kind, verdict.dest) == ("local", None)
    assert "ip_vs_in_icmp" in verdict.reason


def test_default_kind_of_an_icmp_flow_is_echo() -> None:
    flow = Flow(Proto.ICMP, cip(1), 7, VIP, 0)
    assert flow.packet_kind == "echo"
    assert icmp_verdict(flow) is ECHO_LOCAL


@pytest.mark.parametrize("flow", [tcp(cip(1), 40000), udp(cip(1), 40001)], ids=["tcp", "udp"])
def test_other_protocols_are_not_icmp(flow: Flow) -> None:
    assert icmp_verdict(flow) is None


def test_icmp_that_is_not_an_echo_request_is_refused_clearly() -> None:
    flow = Flow(Proto.ICMP, cip(1), 7, VIP, 0, "syn")
    with pytest.raises(UnmodelledIcmp, match="only ICMP echo requests are modelled") as info:
        icmp_verdict(flow)
    assert "\n" not in str(info.value)


def test_a_ping_creates_no_connection_or_template_even_where_a_service_would_take_it() -> None:
    """A persistent service on the VIP and a fwmark service taking every marked packet: the
    ping reaches neither (the director answers it) and leaves both tables empty; the client's
    next SYN is then scheduled as new."""
    web = Service(key(80), "rr", timeout=60)
    marked = Service(ServiceKey(web.family, fwmark=9), "rr", timeout=60)
    d = director((web, dests()), (marked, dests()), sysctls=Sysctls(schedule_icmp=1))
    for flow in (ping(cip(1)), ping(cip(1), mark=9), ping(cip(1), ident=80)):
        assert d.packet(flow, 1.0).kind == "local"
    assert d.templates(1.0) == [] and d.connections(1.0) == []
    assert d.packet(tcp(cip(1), 40000), 2.0).kind == "forward"
    assert [t.caddr for t in d.templates(2.0)] == [cip(1)]
