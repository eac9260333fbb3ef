"""Service lookup and scheduling triggers (docs/semantics.md §1.3-§1.6; §8 cases 1-12)."""

from __future__ import annotations

import ipaddress

from model_support import RIPS, VIP, VIP2, VIP6, cip, dests, director, key, tcp, udp

from impl.director import Director
from impl.types import IPV4, IPV6, Dest, Fwd, Proto, Service, ServiceKey, Sysctls


def fwm(mark: int, family=IPV4) -> ServiceKey:  # type: ignore[no-untyped-def]
    return ServiceKey(family, fwmark=mark)


def test_fwmark_catches_any_proto_and_port_over_exact_service() -> None:
    """§1.4: a marked packet hits the fwmark service (any proto/VIP/port), not the exact one."""
    exact = Service(key(80), "rr")
    mark = Service(fwm(1), "rr")
    d = director((exact, [Dest(RIPS[0], 80)]), (mark, [Dest(RIPS[1], 0)]))
    assert d.packet(tcp(cip(1), 40000, VIP, 80, mark=1), 1).dest == RIPS[1]
    assert d.packet(udp(cip(1), 40001, VIP2, 53, mark=1), 1).dest == RIPS[1]
    assert d.packet(tcp(cip(1), 40002, VIP, 80), 1).dest == RIPS[0]  # unmarked: exact service


def test_fwmark_af_must_match() -> None:
    """§1.4 af: a mark on IPv6 traffic does not hit an IPv4 fwmark service."""
    d = director((Service(fwm(1), "rr"), dests()))
    flow6 = tcp(ipaddress.IPv6Address("2001:db8:1::1"), 40000, VIP6, 80, mark=1)
    assert d.packet(flow6, 1).kind == "local"


def test_fwmark_full_32bit_mark() -> None:
    """The mark compares in full: 0x101 is not service 1."""
    d = director((Service(fwm(1), "rr"), dests()))
    assert d.packet(tcp(cip(1), 40000, mark=0x101), 1).kind == "local"


def test_ftp_fallback_persistent() -> None:
    """§8.3: persistent :21, no :5000 service: VIP:5000 sticks to the :21 server, port kept."""
    d = director((Service(key(21), "rr", timeout=300), dests(21)))
    v21 = d.packet(tcp(cip(1), 40000, dport=21), 1)
    v5000 = d.packet(tcp(cip(1), 40001, dport=5000), 2)
    assert v21.kind == "forward" and v5000.dest == v21.dest and v5000.dport == 5000


def test_ftp_fallback_nonpersistent_goes_local() -> None:
    """§8.4: non-persistent :21: VIP:5000 is not balanced (NF_ACCEPT)."""
    d = director((Service(key(21), "rr"), dests(21)))
    assert d.packet(tcp(cip(1), 40001, dport=5000), 1).kind == "local"


def test_ftp_fallback_threshold_follows_unprivileged_port_start() -> None:
    d = director(
        (Service(key(21), "rr", timeout=300), dests()),
        sysctls=Sysctls(ip_unprivileged_port_start=6000),
    )
    assert d.packet(tcp(cip(1), 40001, dport=5000), 1).kind == "local"  # no service at all
    assert d.packet(tcp(cip(1), 40002, dport=20), 1).kind == "forward"  # port 20 always


def test_ftp_vs_portzero() -> None:
    """§8.5: persistent :21 shadows persistent :0 for 20 and >=1024; one shared template."""
    s21 = Service(key(21), "rr", timeout=300)
    s0 = Service(key(0), "rr", timeout=300)
    d = director((s21, [Dest(RIPS[0], 0)]), (s0, [Dest(RIPS[1], 0), Dest(RIPS[2], 0)]))
    first = d.packet(tcp(cip(1), 40000, dport=22), 1)  # port-zero service schedules
    assert first.dest in (RIPS[1], RIPS[2])
    # Port 5000 goes to the :21 service, but finds the shared <TCP, cip, VIP, 0> template.
    assert d.packet(tcp(cip(1), 40001, dport=5000), 2).dest == first.dest
    assert d.packet(tcp(cip(1), 40002, dport=21), 3).dest == first.dest
    assert len(d.templates(3)) == 1
    # A new client on 5000: scheduled by the :21 service, whose only dest is RIPS[0].
    assert d.packet(tcp(cip(2), 40000, dport=5000), 4).dest == RIPS[0]
    # ... and its port-22 flow follows that template even though RIPS[0] is not in :0.
    assert d.packet(tcp(cip(2), 40001, dport=22), 5).dest == RIPS[0]


def test_nonpersist_port0_unreachable() -> None:
    """§8.6: a non-persistent port-zero service never balances: ICMP port unreachable."""
    d = director((Service(key(0), "rr"), dests()))
    assert d.packet(tcp(cip(1), 40000, dport=22), 1).kind == "unreachable"


def test_ftpdata_sport_never_scheduled() -> None:
    """§8.7: source port 20 is not scheduled."""
    d = director((Service(key(80), "rr"), dests()))
    assert d.packet(tcp(cip(1), 20), 1).kind == "local"
    assert d.connections(1) == []


def test_tcp_nonsyn_and_sloppy_and_rst() -> None:
    """§8.8: bare ACK local unless sloppy_tcp; RST never scheduled."""
    d = director((Service(key(80), "rr"), dests()))
    assert d.packet(tcp(cip(1), 40000, kind="ack"), 1).kind == "local"
    assert d.packet(tcp(cip(1), 40000, kind="rst"), 1).kind == "local"
    d.set_sysctl("sloppy_tcp", 1)
    assert d.packet(tcp(cip(1), 40000, kind="ack"), 1).kind == "forward"
    assert d.packet(tcp(cip(1), 40001, kind="rst"), 1).kind == "local"


def test_synack_schedules() -> None:
    """§1.3: SYN-ACK (active FTP) may create a connection."""
    d = director((Service(key(80), "rr"), dests()))
    assert d.packet(tcp(cip(1), 40000, kind="synack"), 1).kind == "forward"


def test_sctp_init_abort_sloppy() -> None:
    d = director((Service(key(80, Proto.SCTP), "rr"), dests()))
    from impl.types import Flow

    def sctp(kind):  # type: ignore[no-untyped-def]
        return Flow(Proto.SCTP, cip(1), 40000, VIP, 80, kind)

    assert d.packet(sctp("data"), 1).kind == "local"
    assert d.packet(sctp("abort"), 1).kind == "local"
    assert d.packet(sctp("init"), 1).kind == "forward"
    d2 = director((Service(key(80, Proto.SCTP), "rr"), dests()), sysctls=Sysctls(sloppy_sctp=1))
    assert d2.packet(sctp("data"), 1).kind == "forward"
    assert d2.packet(Flow(Proto.SCTP, cip(2), 1, VIP, 80, "abort"), 1).kind == "local"


def test_udp_any_and_follow() -> None:
    """§8.9: any datagram creates a connection; later ones of the 5-tuple follow it."""
    d = director((Service(key(53, Proto.UDP), "rr"), dests()))
    first = d.packet(udp(cip(1), 40000), 1)
    assert first.kind == "forward"
    for t in range(2, 6):
        assert d.packet(udp(cip(1), 40000), t).dest == first.dest
    assert len(d.connections(6)) == 1


def test_conn_sticks_after_weight_change() -> None:
    """§8.10: an existing connection is followed even after weights change."""
    d = director((Service(key(80), "rr"), dests()))
    first = d.packet(tcp(cip(1), 40000), 1)
    assert first.dest is not None
    d.edit_dest(key(80), Dest(first.dest, 0, 0))
    assert d.packet(tcp(cip(1), 40000, kind="ack"), 2).dest == first.dest


def test_no_dest_unreachable_and_ftp_local() -> None:
    """§8.12: all weights 0 -> unreachable (TCP too); persistent FTP, port >=1024 -> local."""
    d = director((Service(key(80), "rr"), dests(weight=0)))
    assert d.packet(tcp(cip(1), 40000), 1).kind == "unreachable"
    f = director((Service(key(21), "rr", timeout=300), []))
    assert f.packet(tcp(cip(1), 40000, dport=5000), 1).kind == "local"
    assert f.packet(tcp(cip(1), 40000, dport=21), 1).kind == "unreachable"


def test_cache_bypass_fwmark() -> None:
    """§1.6: cache_bypass forwards a fwmark flow without dest to its original destination."""
    d = Director(sysctls=Sysctls(cache_bypass=1))
    d.add_service(Service(fwm(5), "rr"))
    out = ipaddress.IPv4Address("198.51.100.7")
    v = d.packet(tcp(cip(1), 40000, out, 80, mark=5), 1)
    assert (v.kind, v.dest, v.dport) == ("forward", out, 80)
    d.local_addresses.add(VIP)
    assert d.packet(tcp(cip(1), 40001, VIP, 80, mark=5), 1).kind == "unreachable"


def test_no_service_local() -> None:
    d = director((Service(key(80), "rr"), dests()))
    assert d.packet(tcp(cip(1), 40000, dport=81), 1).kind == "local"
    assert d.packet(tcp(cip(1), 40000, VIP6, 80), 1).kind == "local"


def test_nonpersistent_fwmark_uses_dest_port() -> None:
    """§1.5.7: non-persistent fwmark: dport = dest port if set, else the packet's."""
    d = director((Service(fwm(1), "rr"), [Dest(RIPS[0], 8080)]))
    assert d.packet(tcp(cip(1), 40000, dport=80, mark=1), 1).dport == 8080
    d2 = director((Service(fwm(1), "rr"), [Dest(RIPS[0], 0)]))
    assert d2.packet(tcp(cip(1), 40000, dport=443, mark=1), 1).dport == 443


def test_ipv6_service() -> None:
    s = Service(ServiceKey(IPV6, Proto.TCP, VIP6, 80), "rr")
    from model_support import RIPS6

    d = director((s, [Dest(r, 80, 1, Fwd.NAT) for r in RIPS6]))
    v = d.packet(tcp(ipaddress.IPv6Address("2001:db8:1::1"), 40000, VIP6, 80), 1)
    assert v.kind == "forward" and v.dest == RIPS6[2] and v.fwd is Fwd.NAT


def test_from_scenario_marks_are_the_callers() -> None:
    """from_scenario adds services and dests in order; fwmark rules are applied by the caller
    (Scenario.mark), never by the Director."""
    from impl.scenario import Scenario, Send, ServiceConfig
    from impl.types import FwmarkRule

    svc = Service(fwm(3), "rr", timeout=60)
    flow = tcp(cip(1), 40000, VIP, 8080)
    sc = Scenario(
        "s",
        (ServiceConfig(svc, tuple(dests())),),
        (Send((flow,)),),
        (FwmarkRule(3, IPV4, ipaddress.IPv4Network("10.0.0.0/24")),),
        Sysctls(sloppy_tcp=1),
    )
    d = Director.from_scenario(sc)
    assert d.sysctls.sloppy_tcp == 1
    assert [x.addr for x in d.dest_state(svc.key)] == [RIPS[2], RIPS[1], RIPS[0]]
    assert d.packet(flow, 1).kind == "local"  # unmarked: no service
    assert d.packet(sc.mark(flow), 1).dest == RIPS[2]
