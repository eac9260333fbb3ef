"""Dest removal, revival, weight 0, connection reuse, counters and overload
(docs/semantics.md §1.2, §3.2, §3.4, §3.5, §3.8; §8 cases 25-31, 44)."""

from __future__ import annotations

from model_support import RIPS, cip, dests, director, key, tcp, udp

from impl.director import Director
from impl.kernel_level import KernelLevel
from impl.types import Dest, Proto, ProtoTimeouts, Service, Sysctls

K = key(80)


def persistent(sysctls: Sysctls | None = None, timeout: int = 300) -> Director:
    return director((Service(K, "rr", timeout=timeout), dests(80)), sysctls=sysctls)


def test_removed_dest_ffff() -> None:
    """§8.25: removing the template's dest reschedules the client's next new flow; /proc keeps
    the old template with TPrt/DPrt FFFF."""
    d = persistent()
    a = d.packet(tcp(cip(1), 40000), 0.0)
    assert a.dest is not None
    d.del_dest(K, a.dest, 80, 1.0)
    b = d.packet(tcp(cip(1), 40001), 2.0)
    assert b.kind == "forward" and b.dest != a.dest
    rows = sorted((t.daddr, t.vport, t.dport) for t in d.templates(2.0))
    assert rows == sorted([(a.dest, 0xFFFF, 0xFFFF), (b.dest, 80, 80)])


def test_revive() -> None:
    """§8.26: delete and re-add the same dest: the client is back on it (same template), and
    the dest is at the head of the list."""
    d = persistent()
    a = d.packet(tcp(cip(1), 40000), 0.0)
    assert a.dest == RIPS[2]
    before = d.dest_state(K)[0]
    d.del_dest(K, RIPS[2], 80, 1.0)
    d.add_dest(K, Dest(RIPS[2], 80), 2.0)
    assert d.dest_state(K)[0] is before  # same object back from the trash
    assert [s.addr for s in d.dest_state(K)] == [RIPS[2], RIPS[1], RIPS[0]]
    assert d.packet(tcp(cip(1), 40001), 3.0).dest == RIPS[2]
    assert len(d.templates(3.0)) == 1


def test_revive_after_invalidation_stays_dead() -> None:
    d = persistent()
    a = d.packet(tcp(cip(1), 40000), 0.0)
    assert a.dest is not None
    d.del_dest(K, a.dest, 80, 1.0)
    b = d.packet(tcp(cip(1), 40001), 2.0)  # invalidates the template
    d.add_dest(K, Dest(a.dest, 80), 3.0)
    assert d.packet(tcp(cip(1), 40002), 4.0).dest == b.dest


def test_trash_expiry_forgets_dest() -> None:
    """An unreferenced trashed dest is freed after 120 s: a re-add is then a new object."""
    d = director((Service(K, "rr"), dests(80)))
    old = d.dest_state(K)[0]
    d.del_dest(K, old.addr, 80, 0.0)
    d.add_dest(K, Dest(old.addr, 80), 200.0)
    assert d.dest_state(K)[0] is not old


def test_weight0_default() -> None:
    """§8.27: weight 0 and expire_quiescent_template=0: the persistent client still goes there,
    new clients avoid it."""
    d = persistent()
    a = d.packet(tcp(cip(1), 40000), 0.0)
    assert a.dest is not None
    d.edit_dest(K, Dest(a.dest, 80, 0), 1.0)
    assert d.packet(tcp(cip(1), 40001), 2.0).dest == a.dest
    for n in range(2, 6):
        assert d.packet(tcp(cip(n), 40000), 3.0).dest != a.dest


def test_weight0_quiescent() -> None:
    """§8.28: with expire_quiescent_template=1 that client is rescheduled."""
    d = persistent(Sysctls(expire_quiescent_template=1))
    a = d.packet(tcp(cip(1), 40000), 0.0)
    assert a.dest is not None
    d.edit_dest(K, Dest(a.dest, 80, 0), 1.0)
    b = d.packet(tcp(cip(1), 40001), 2.0)
    assert b.dest != a.dest
    assert any(t.vport == 0xFFFF for t in d.templates(2.0))


def test_removed_dest_conn_dropped() -> None:
    """§8.29: packets of a connection to a removed dest are dropped (expire_nodest_conn=0)."""
    d = persistent()
    a = d.packet(tcp(cip(1), 40000), 0.0)
    assert a.dest is not None
    d.del_dest(K, a.dest, 80, 1.0)
    assert d.packet(tcp(cip(1), 40000, kind="ack"), 2.0).kind == "drop"


def test_removed_dest_conn_expire_nodest() -> None:
    """§8.29: with expire_nodest_conn=1 the delete flushes the dest's connections and its
    templates; a non-SYN then goes local, a SYN is rescheduled."""
    d = persistent(Sysctls(expire_nodest_conn=1))
    a = d.packet(tcp(cip(1), 40000), 0.0)
    assert a.dest is not None
    d.del_dest(K, a.dest, 80, 1.0)
    assert d.connections(1.0) == [] and d.templates(1.0) == []
    assert d.packet(tcp(cip(1), 40000, kind="ack"), 2.0).kind == "local"
    b = d.packet(tcp(cip(1), 40000), 3.0)
    assert b.kind == "forward" and b.dest != a.dest


def test_expire_nodest_syn_on_weight0_reschedules() -> None:
    """§1.2 rule 1: SYN reusing a connection to a weight-0 dest, expire_nodest_conn=1: the
    connection is expired and the packet scheduled (non-persistent: to another dest)."""
    d = director((Service(K, "rr"), dests(80)), sysctls=Sysctls(expire_nodest_conn=1))
    a = d.packet(tcp(cip(1), 40000), 0.0)
    assert a.dest is not None
    d.edit_dest(K, Dest(a.dest, 80, 0), 1.0)
    assert d.packet(tcp(cip(1), 40000), 2.0).dest != a.dest
    d2 = director((Service(K, "rr"), dests(80)))
    b = d2.packet(tcp(cip(1), 40000), 0.0)
    assert b.dest is not None
    d2.edit_dest(K, Dest(b.dest, 80, 0), 1.0)
    assert d2.packet(tcp(cip(1), 40000), 2.0).dest == b.dest  # default: sticks


def test_conn_reuse_time_wait_nonpersistent() -> None:
    """§1.2 rule 2: SYN on an uncontrolled TIME_WAIT/CLOSE connection is rescheduled;
    with conntrack=1 it is dropped instead (the retransmission is scheduled)."""
    from impl.types import Flow, Fwd

    for ct, expect in ((0, "forward"), (1, "drop")):
        d = director((Service(K, "rr"), dests(80, Fwd.NAT)), sysctls=Sysctls(conntrack=ct))
        a = d.packet(tcp(cip(1), 40000), 0.0)
        assert a.dest is not None
        d.reply(Flow(Proto.TCP, a.dest, 80, cip(1), 40000, "synack"), 0.1)
        d.packet(tcp(cip(1), 40000, kind="ack"), 0.2)
        d.reply(Flow(Proto.TCP, a.dest, 80, cip(1), 40000, "fin"), 0.3)  # -> FIN_WAIT
        d.packet(tcp(cip(1), 40000, kind="fin"), 0.4)  # -> TIME_WAIT
        assert [c.state for c in d.connections(0.4)] == ["TIME_WAIT"]
        v = d.packet(tcp(cip(1), 40000), 1.0)
        assert v.kind == expect
        if expect == "forward":
            assert v.dest != a.dest  # rr moved on
        else:
            assert d.packet(tcp(cip(1), 40000), 1.1).dest != a.dest


def test_port_reuse() -> None:
    """§8.30: on a persistent service a SYN reusing a tuple still in the table goes to that
    connection's server even if the template was invalidated (controlled: no reschedule)."""
    d = persistent(Sysctls(expire_quiescent_template=1))
    a = d.packet(tcp(cip(1), 40000), 0.0)
    assert a.dest is not None
    d.packet(tcp(cip(1), 40000, kind="fin"), 0.5)
    d.edit_dest(K, Dest(a.dest, 80, 0), 1.0)
    assert d.packet(tcp(cip(1), 40001), 2.0).dest != a.dest  # template invalidated
    assert d.packet(tcp(cip(1), 40000), 3.0).dest == a.dest  # old tuple: old connection


def test_counters() -> None:
    """§8.31: templates raise only persistconns; connections count active (SYN_RECV) and
    total; UDP is never active."""
    d = director(
        (Service(K, "rr", timeout=300), dests(80)),
        (Service(key(53, Proto.UDP), "rr", timeout=300), dests(53)),
    )
    d.packet(tcp(cip(1), 40000), 0.0)
    d.packet(tcp(cip(1), 40001), 0.0)
    head = d.dest_state(K)[0]
    assert (head.activeconns, head.totalconns, head.persistconns) == (2, 2, 1)
    d.packet(udp(cip(1), 40000), 0.0)
    u = d.dest_state(key(53, Proto.UDP))[0]
    assert (u.activeconns, u.totalconns, u.persistconns, u.inactconns) == (0, 1, 1, 1)


def test_counters_lc_ignores_templates() -> None:
    """§8.31 with lc: a pinned client's template does not steer new clients."""
    d = director((Service(K, "lc", timeout=300), dests(80)))
    d.set_timeouts(ProtoTimeouts())
    first = d.packet(tcp(cip(1), 40000), 0.0)
    d.packet(tcp(cip(1), 40000, kind="rst"), 0.1)  # stays SYN_RECV: still active
    second = d.packet(tcp(cip(2), 40000), 0.2)
    assert second.dest != first.dest


def test_overload_thresholds_hysteresis() -> None:
    """§8.44: u_threshold=2: the dest stops getting new clients once it has 2 connections;
    clients holding a template keep arriving regardless (overload is no template check)."""
    d = director(
        (Service(K, "rr", timeout=300), [Dest(RIPS[0], 80, 1, u_threshold=2), Dest(RIPS[1], 80, 1)])
    )
    d.set_timeouts(ProtoTimeouts(udp=5))
    assert d.packet(tcp(cip(1), 40000), 0.0).dest == RIPS[1]
    assert d.packet(tcp(cip(2), 40000), 0.0).dest == RIPS[0]
    assert d.packet(tcp(cip(2), 40001), 0.0).dest == RIPS[0]  # persistent: past u
    ovl = [s for s in d.dest_state(K) if s.addr == RIPS[0]][0]
    assert ovl.overloaded and ovl.totalconns == 2
    assert d.packet(tcp(cip(3), 40000), 0.0).dest == RIPS[1]  # skipped while overloaded
    assert d.packet(tcp(cip(2), 40002), 0.0).dest == RIPS[0]
    assert ovl.totalconns == 3


def test_overload_old_level_clears_on_edit() -> None:
    old = Director(level=KernelLevel(6, 1, 176))
    old.add_service(Service(K, "rr"))
    old.add_dest(K, Dest(RIPS[0], 80, 1, u_threshold=1))
    old.packet(tcp(cip(1), 40000), 0.0)
    (s,) = old.dest_state(K)
    assert s.overloaded
    old.edit_dest(K, Dest(RIPS[0], 80, 1, u_threshold=5), 1.0)
    assert not s.overloaded


def test_config_errors() -> None:
    import ipaddress

    import pytest

    from impl.errors import (
        DestExists,
        InvalidConfig,
        NoSuchDest,
        NoSuchService,
        SchedulerRejected,
        ServiceExists,
        UnknownSysctl,
    )
    from impl.types import IPV6, ServiceKey

    d = director((Service(K, "rr"), dests(80)))
    with pytest.raises(ServiceExists):
        d.add_service(Service(K, "rr"))
    with pytest.raises(DestExists):
        d.add_dest(K, Dest(RIPS[0], 80))
    with pytest.raises(NoSuchDest):
        d.del_dest(K, RIPS[0], 81)
    with pytest.raises(NoSuchService):
        d.add_dest(key(81), Dest(RIPS[0], 80))
    with pytest.raises(UnknownSysctl):
        d.set_sysctl("nope", 1)
    with pytest.raises(InvalidConfig, match="1..128"):
        d.add_service(
            Service(
                ServiceKey(IPV6, Proto.TCP, ipaddress.IPv6Address("2001:db8::1"), 80),
                "rr",
                timeout=10,
                netmask=0,
            )
        )
    with pytest.raises(SchedulerRejected, match="unknown scheduler"):
        d.add_service(Service(key(81), "nope"))
    with pytest.raises(InvalidConfig, match="l_threshold"):
        d.add_dest(K, Dest(RIPS[0], 81, 1, u_threshold=1, l_threshold=2))
