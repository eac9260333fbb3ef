"""Persistence template keys (docs/semantics.md §2.2, §2.5; §8 cases 13-19)."""

from __future__ import annotations

import ipaddress

from model_support import RIPS, VIP, VIP2, VIP6, cip, dests, director, key, tcp, udp

from impl.director import masked
from impl.types import IPV4, IPV6, Dest, Proto, Service, ServiceKey


def test_normal_key() -> None:
    """§8.13: one client, two source ports -> same RS; VIP:443 is chosen independently."""
    d = director(
        (Service(key(80), "rr", timeout=300), dests(80)),
        (Service(key(443), "rr", timeout=300), dests(443)),
    )
    a = d.packet(tcp(cip(1), 40000), 1)
    b = d.packet(tcp(cip(1), 40001), 2)
    assert a.dest == b.dest
    # rr of :443 starts at its own list head, independent of :80's pointer.
    assert d.packet(tcp(cip(1), 40002, dport=443), 3).dest == RIPS[2]
    d.packet(tcp(cip(2), 40000), 4)
    assert d.packet(tcp(cip(1), 40003), 5).dest == a.dest


def test_netmask_v4() -> None:
    """§8.14: /24: 10.0.1.1 and 10.0.1.2 share; 10.0.3.1 separate; FromIP 0A000100."""
    d = director((Service(key(80), "rr", timeout=300, netmask=0xFFFFFF00), dests(80)))
    a = d.packet(tcp(cip(1), 40000), 1)
    assert d.packet(tcp(cip(2), 40000), 2).dest == a.dest
    other = d.packet(tcp(ipaddress.IPv4Address("10.0.3.1"), 40000), 3)
    assert other.dest != a.dest
    assert {int(t.caddr) for t in d.templates(3)} == {0x0A000100, 0x0A000300}


def test_netmask_v4_noncontiguous_and_zero() -> None:
    """Bitwise AND with the raw mask: non-contiguous masks work, 0 puts everyone together."""
    s = Service(key(80), "rr", timeout=300, netmask=0xFF00FF00)
    assert masked(ipaddress.IPv4Address("10.20.30.40"), s) == ipaddress.IPv4Address("10.0.30.0")
    d = director((Service(key(80), "rr", timeout=300, netmask=0), dests(80)))
    a = d.packet(tcp(cip(1), 40000), 1)
    assert d.packet(tcp(ipaddress.IPv4Address("192.0.2.9"), 1234), 2).dest == a.dest


def test_netmask_v6() -> None:
    """§8.15: prefix 64: two clients in one /64 share an RS."""
    from model_support import RIPS6

    s = Service(ServiceKey(IPV6, Proto.TCP, VIP6, 80), "rr", timeout=300, netmask=64)
    d = director((s, [Dest(r, 80) for r in RIPS6]))
    a = d.packet(tcp(ipaddress.IPv6Address("2001:db8:1::1"), 40000, VIP6), 1)
    b = d.packet(tcp(ipaddress.IPv6Address("2001:db8:1::ffff:2"), 40000, VIP6), 2)
    c = d.packet(tcp(ipaddress.IPv6Address("2001:db8:1:1::1"), 40000, VIP6), 3)
    assert a.dest == b.dest != c.dest
    assert d.templates(3)[0].caddr in (
        ipaddress.IPv6Address("2001:db8:1::"),
        ipaddress.IPv6Address("2001:db8:1:1::"),
    )


def test_fwmark_any_port_same_rs() -> None:
    """§8.16: one client, one mark: TCP VIP1:80, TCP VIP2:8080, UDP VIP1:53 -> one RS, one
    `IP` template with ToIP = mark."""
    d = director((Service(ServiceKey(IPV4, fwmark=7), "rr", timeout=300), dests()))
    a = d.packet(tcp(cip(1), 40000, VIP, 80, mark=7), 1)
    b = d.packet(tcp(cip(1), 40001, VIP2, 8080, mark=7), 2)
    c = d.packet(udp(cip(1), 40002, VIP, 53, mark=7), 3)
    assert a.dest == b.dest == c.dest
    (t,) = d.templates(3)
    assert (t.proto, t.vaddr, t.vport, t.dport) == (Proto.IP, ipaddress.IPv4Address(7), 0, 0)
    assert (b.dport, c.dport) == (8080, 53)  # persistent fwmark forwards the packet's port


def test_fwmark_v6_template_vaddr() -> None:
    from model_support import RIPS6

    d = director(
        (Service(ServiceKey(IPV6, fwmark=1), "rr", timeout=300), [Dest(r, 0) for r in RIPS6])
    )
    d.packet(tcp(ipaddress.IPv6Address("2001:db8:1::1"), 40000, VIP6, 80, mark=1), 1)
    (t,) = d.templates(1)
    assert t.vaddr == ipaddress.IPv6Address("0:1::")


def test_fwmark_dport0_quirk() -> None:
    """§2.2 quirk: dport 0 on a fwmark service takes the normal branch: key has packet proto
    and daddr, and the connection's dport becomes the dest port."""
    d = director((Service(ServiceKey(IPV4, fwmark=3), "rr", timeout=300), [Dest(RIPS[0], 8080)]))
    v = d.packet(udp(cip(1), 40000, VIP, 0, mark=3), 1)
    assert v.dport == 8080
    (t,) = d.templates(1)
    assert (t.proto, t.vaddr, t.vport, t.dport) == (Proto.UDP, VIP, 0, 8080)


def test_port_zero() -> None:
    """§8.17: persistent port zero: VIP:22 and VIP:3306 -> same RS, each its own port."""
    d = director((Service(key(0), "rr", timeout=300), dests(9999)))
    a = d.packet(tcp(cip(1), 40000, dport=22), 1)
    b = d.packet(tcp(cip(1), 40001, dport=3306), 2)
    assert a.dest == b.dest and (a.dport, b.dport) == (22, 3306)
    (t,) = d.templates(2)
    assert (t.vport, t.dport) == (0, 0)


def test_dport_rules() -> None:
    """§8.18: normal persistent forwards to the dest port; dest port 0 keeps the vport."""
    d = director((Service(key(80), "rr", timeout=300), [Dest(RIPS[0], 8080)]))
    assert d.packet(tcp(cip(1), 40000), 1).dport == 8080
    d2 = director((Service(key(80), "rr", timeout=300), [Dest(RIPS[0], 0)]))
    assert d2.packet(tcp(cip(1), 40000), 1).dport == 80


def test_ftp_key() -> None:
    """§8.19: FTP template TPrt/DPrt 0000; normal template TPrt = vport, DPrt = dest port."""
    d = director(
        (Service(key(21), "rr", timeout=300), [Dest(RIPS[0], 2121)]),
        (Service(key(80), "rr", timeout=300), [Dest(RIPS[1], 8080)]),
    )
    assert d.packet(tcp(cip(1), 40000, dport=21), 1).dport == 2121
    assert d.packet(tcp(cip(1), 40001, dport=80), 1).dport == 8080
    ports = sorted((t.vport, t.dport) for t in d.templates(1))
    assert ports == [(0, 0), (80, 8080)]
    # FTP data through the fallback keeps its own port.
    assert d.packet(tcp(cip(1), 40002, dport=30000), 2).dport == 30000


def test_persistent_scheduler_sees_unmasked_source() -> None:
    """§2.4: the scheduler gets the real packet (it is what sh/mh hash)."""
    seen = []
    from impl.schedulers.registry import make_scheduler

    class Spy:
        def __init__(self, inner):  # type: ignore[no-untyped-def]
            self.inner = inner

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(self.inner, name)

        def schedule(self, ds, flow):  # type: ignore[no-untyped-def]
            seen.append(flow.saddr)
            return self.inner.schedule(ds, flow)

    from impl.director import Director

    d = Director(scheduler_factory=lambda s, lv: Spy(make_scheduler(s.scheduler, s, lv)))  # type: ignore[arg-type,return-value]
    d.add_service(Service(key(80), "rr", timeout=300, netmask=0xFFFFFF00))
    d.add_dest(key(80), Dest(RIPS[0], 80))
    d.packet(tcp(cip(9), 40000), 1)
    assert seen == [cip(9)]
