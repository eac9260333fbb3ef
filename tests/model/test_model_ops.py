"""One-packet scheduling (docs/semantics.md §3.6; §8 case 45)."""

from __future__ import annotations

from model_support import cip, dests, director, key, udp

from impl.types import Proto, Service


def test_ops_rr_rotates() -> None:
    """§8.45: OPS + rr on UDP: successive datagrams of one socket rotate across servers, and
    no connection is ever kept."""
    d = director((Service(key(53, Proto.UDP), "rr", ops=True), dests(53)))
    seen = [d.packet(udp(cip(1), 40000), float(t)).dest for t in range(6)]
    assert seen[:3] == seen[3:] and len(set(seen[:3])) == 3
    assert d.connections(6) == []
    assert all(s.totalconns == 0 for s in d.dest_state(key(53, Proto.UDP)))


def test_ops_persistent_sticks() -> None:
    """§8.45: OPS + persistence: every datagram goes to one server; one template."""
    d = director((Service(key(53, Proto.UDP), "rr", timeout=10, ops=True), dests(53)))
    seen = {d.packet(udp(cip(1), 40000 + t), float(t)).dest for t in range(6)}
    assert len(seen) == 1
    assert len(d.templates(6)) == 1 and d.connections(6) == []


def test_ops_ignored_for_tcp() -> None:
    """OPS applies only to UDP packets: a TCP flow on an OPS service is a normal connection."""
    from model_support import tcp

    d = director((Service(key(80), "rr", ops=True), dests(80)))
    d.packet(tcp(cip(1), 40000), 0.0)
    assert len(d.connections(0)) == 1
