"""Template lifecycle: refresh, expiry, the 60 s extension, connection states and timeouts
(docs/semantics.md §3.3, §3.6; §8 cases 21-24)."""

from __future__ import annotations

from model_support import RIPS, cip, dests, director, key, tcp, udp

from impl.types import Dest, Fwd, Proto, ProtoTimeouts, Service


def ops_udp(timeout: int = 2):  # type: ignore[no-untyped-def]
    return director((Service(key(53, Proto.UDP), "rr", timeout=timeout, ops=True), dests(53)))


def test_expiry_ops() -> None:
    """§8.21: OPS+persistence: before T the datagram sticks; after T of silence the template
    is gone and the next datagram is scheduled afresh (rr moves on)."""
    d = ops_udp(2)
    a = d.packet(udp(cip(1), 40000), 0.0)
    assert d.packet(udp(cip(1), 40000), 1.9).dest == a.dest  # refreshed per datagram
    assert [t.expires for t in d.templates(1.9)] == [2]
    assert d.packet(udp(cip(1), 40000), 3.8).dest == a.dest  # 1.9 s after the refresh
    assert d.templates(5.81) == []  # 2 s after the last datagram
    assert d.packet(udp(cip(1), 40000), 6.0).dest != a.dest


def test_refresh_on_new_conn() -> None:
    """§8.22: new connections every T/2 keep the template alive; packets of one existing
    connection do not refresh it."""
    d = director(
        (Service(key(53, Proto.UDP), "rr", timeout=2), dests(53)),
    )
    d.set_timeouts(ProtoTimeouts(udp=1))
    a = d.packet(udp(cip(1), 40000), 0.0)
    for i in range(1, 8):  # a new source port every second: new connections
        assert d.packet(udp(cip(1), 40000 + i), float(i)).dest == a.dest
    (t,) = d.templates(7.0)
    assert t.expires == 2
    # Only one long-lived connection from now on: the template is not refreshed by it.
    d2 = director((Service(key(53, Proto.UDP), "rr", timeout=2), dests(53)))
    d2.set_timeouts(ProtoTimeouts(udp=100))
    d2.packet(udp(cip(1), 40000), 0.0)
    d2.packet(udp(cip(1), 40000), 1.5)
    (t2,) = d2.templates(1.5)
    assert t2.expires == 0  # deadline still 2.0: untouched by the second datagram


def test_extension_60s() -> None:
    """§8.23: T=2 s and a controlled SYN_RECV connection: the template survives T and its
    Expires jumps to about 60."""
    d = director((Service(key(80), "rr", timeout=2), dests(80)))
    d.packet(tcp(cip(1), 40000), 0.0)
    assert [t.expires for t in d.templates(1.0)] == [1]
    assert [t.expires for t in d.templates(2.5)] == [59]
    (c,) = d.connections(2.5)
    assert (c.state, c.expires) == ("SYN_RECV", 57)
    # After the connection dies (60 s), the template dies at its next deadline (62 s).
    assert len(d.templates(61.9)) == 1
    assert d.templates(62.0) == [] and d.connections(62.0) == []


def test_extension_sticky_60() -> None:
    """§8.24: after one extension a reuse re-arms the template to 60 s, not T."""
    d = director((Service(key(80), "rr", timeout=2), dests(80)))
    a = d.packet(tcp(cip(1), 40000), 0.0)
    assert d.packet(tcp(cip(1), 40001), 10.0).dest == a.dest
    assert [t.expires for t in d.templates(10.0)] == [60]


def test_template_dies_without_connections() -> None:
    """No controlled connection at the deadline: the template is removed at T exactly."""
    d = director((Service(key(53, Proto.UDP), "rr", timeout=5), dests(53)))
    d.set_timeouts(ProtoTimeouts(udp=1))
    d.packet(udp(cip(1), 40000), 0.0)
    assert d.connections(1.0) == []
    assert len(d.templates(4.99)) == 1 and d.templates(5.0) == []


def test_tcp_states_dr_input_only() -> None:
    """DR (NOOUTPUT): SYN -> SYN_RECV, ACK -> ESTABLISHED (900), FIN -> FIN_WAIT (tcpfin)."""
    d = director((Service(key(80), "rr"), dests(80)))
    d.set_timeouts(ProtoTimeouts(tcp=100, tcpfin=7))
    d.packet(tcp(cip(1), 40000), 0.0)
    assert [(c.state, c.expires) for c in d.connections(0)] == [("SYN_RECV", 60)]
    d.packet(tcp(cip(1), 40000, kind="ack"), 1.0)
    assert [(c.state, c.expires) for c in d.connections(1)] == [("ESTABLISHED", 100)]
    assert d.dest_state(key(80))[0].activeconns == 1  # rr: list head
    d.packet(tcp(cip(1), 40000, kind="fin"), 2.0)
    assert [(c.state, c.expires) for c in d.connections(2)] == [("FIN_WAIT", 7)]
    assert d.dest_state(key(80))[0].activeconns == 0
    assert d.connections(9.0) == []
    assert d.dest_state(key(80))[0].totalconns == 0


def test_tcp_states_nat_and_assured() -> None:
    """NAT: INPUT/OUTPUT tables; client FIN in ESTABLISHED gives CLOSE_WAIT; server SYN-ACK
    keeps SYN_RECV; the ESTABLISHED transition makes the template ASSURED."""
    d = director((Service(key(80), "rr", timeout=300), [Dest(RIPS[0], 80, 1, Fwd.NAT)]))
    d.packet(tcp(cip(1), 40000), 0.0)
    from impl.types import Flow

    back = Flow(Proto.TCP, RIPS[0], 80, cip(1), 40000, "synack")
    v = d.reply(back, 0.1)
    assert (v.kind, v.reason, v.dport) == ("forward", "snat", 80)
    assert [c.state for c in d.connections(0.1)] == ["SYN_RECV"]
    assert [t.state for t in d.templates(0.1)] == ["NONE"]
    d.packet(tcp(cip(1), 40000, kind="ack"), 0.2)
    assert [t.state for t in d.templates(0.2)] == ["ASSURED"]
    d.packet(tcp(cip(1), 40000, kind="fin"), 0.3)
    assert [c.state for c in d.connections(0.3)] == ["CLOSE_WAIT"]
    assert d.reply(Flow(Proto.TCP, RIPS[1], 80, cip(1), 40000, "ack"), 0.4).kind == "local"


def test_rst_in_syn_recv_keeps_syn_recv() -> None:
    """proto_tcp.c: a client RST in SYN_RECV stays SYN_RECV (60 s) in both tables."""
    d = director((Service(key(80), "rr"), dests(80)))
    d.packet(tcp(cip(1), 40000), 0.0)
    d.packet(tcp(cip(1), 40000, kind="rst"), 1.0)
    assert [(c.state, c.expires) for c in d.connections(1.0)] == [("SYN_RECV", 60)]


def test_udp_assured_on_reply() -> None:
    from impl.types import Flow

    d = director((Service(key(53, Proto.UDP), "rr", timeout=300), [Dest(RIPS[0], 53, 1, Fwd.NAT)]))
    d.packet(udp(cip(1), 40000), 0.0)
    assert [t.state for t in d.templates(0)] == ["NONE"]
    d.reply(Flow(Proto.UDP, RIPS[0], 53, cip(1), 40000, "udp"), 0.5)
    assert [t.state for t in d.templates(0.5)] == ["ASSURED"]
    assert [c.state for c in d.connections(0.5)] == ["UDP"]


def test_sctp_basic_states() -> None:
    """SCTP INPUT_ONLY table: INIT -> INIT1 (4 s); DATA keeps INIT1; ABORT -> CLOSED (61 s);
    with sloppy_sctp a first DATA chunk goes straight to ESTABLISHED (active, ASSURED)."""
    from model_support import VIP

    from impl.types import Flow, Sysctls

    def sctp(kind, sport=40000):  # type: ignore[no-untyped-def]
        return Flow(Proto.SCTP, cip(1), sport, VIP, 80, kind)

    d = director((Service(key(80, Proto.SCTP), "rr"), dests(80)))
    d.packet(sctp("init"), 0.0)
    assert [(c.state, c.expires) for c in d.connections(0)] == [("INIT1", 4)]
    d.packet(sctp("data"), 1.0)
    assert [c.state for c in d.connections(1)] == ["INIT1"]
    d.packet(sctp("abort"), 2.0)
    assert [(c.state, c.expires) for c in d.connections(2)] == [("CLOSED", 61)]
    d2 = director(
        (Service(key(80, Proto.SCTP), "rr", timeout=60), dests(80)), sysctls=Sysctls(sloppy_sctp=1)
    )
    d2.packet(sctp("data"), 0.0)
    assert [c.state for c in d2.connections(0)] == ["ESTABLISHED"]
    assert [t.state for t in d2.templates(0)] == ["ASSURED"]
    assert d2.dest_state(key(80, Proto.SCTP))[0].activeconns == 1


def test_edit_service_keeps_old_templates() -> None:
    """§3.3: a netmask edit does not touch old templates; new flows use the new mask."""
    d = director((Service(key(80), "rr", timeout=300), dests(80)))
    a = d.packet(tcp(cip(1), 40000), 0.0)
    d.edit_service(Service(key(80), "rr", timeout=300, netmask=0xFFFFFF00), 1.0)
    b = d.packet(tcp(cip(1), 40001), 2.0)
    assert b.dest != a.dest
    assert len(d.templates(2.0)) == 2


def test_timeout_zero_lives_by_extension_only() -> None:
    """Timeout 0 (accepted by the kernel): the template survives only through the 60 s
    extension while a controlled connection exists."""
    d = director((Service(key(53, Proto.UDP), "rr", timeout=0), dests(53)))
    d.set_timeouts(ProtoTimeouts(udp=10))
    a = d.packet(udp(cip(1), 40000), 0.0)
    assert [t.expires for t in d.templates(0.5)] == [59]
    assert d.packet(udp(cip(1), 40001), 1.0).dest == a.dest
    assert d.templates(120.0) == []
