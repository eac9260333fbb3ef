"""Real server -> client packets (Director.reply, ip_vs_out_hook / ip_vs_conn_out_get)."""

from __future__ import annotations

import ipaddress

from impl.director import Director
from impl.types import IPV4, Dest, Flow, Fwd, Proto, Service, ServiceKey

VIP = ipaddress.ip_address("198.19.0.1")
RIP = ipaddress.ip_address("198.18.10.11")
CIP = ipaddress.ip_address("198.18.16.1")


def _nat(d: Director, vport: int) -> ServiceKey:
    key = ServiceKey(IPV4, Proto.UDP, VIP, vport)
    d.add_service(Service(key, "rr"))
    d.add_dest(key, Dest(RIP, 8080, fwd=Fwd.NAT))
    return key


def test_nat_reply_is_rewritten_until_the_connection_expires() -> None:
    d = Director()
    _nat(d, 53)
    assert d.packet(Flow(Proto.UDP, CIP, 40000, VIP, 53), 0.0).kind == "forward"
    reply = Flow(Proto.UDP, RIP, 8080, CIP, 40000)
    v = d.reply(reply, 1.0)
    assert (v.kind, v.dest, v.dport) == ("forward", VIP, 53)
    assert d.reply(Flow(Proto.UDP, RIP, 8080, CIP, 40001), 1.0).kind == "local"  # other port
    assert d.reply(reply, 1.0 + 300 + 1).kind == "local"  # UDP timeout 300 s: gone


def test_ambiguous_reply_goes_to_the_newest_connection() -> None:
    """Two NAT connections with one reply tuple: the kernel's hash chain is head-inserted, so
    ip_vs_conn_out_get finds the newest."""
    d = Director()
    _nat(d, 53)
    _nat(d, 54)
    d.packet(Flow(Proto.UDP, CIP, 40000, VIP, 53), 0.0)
    d.packet(Flow(Proto.UDP, CIP, 40000, VIP, 54), 0.0)
    assert d.reply(Flow(Proto.UDP, RIP, 8080, CIP, 40000), 1.0).dport == 54
