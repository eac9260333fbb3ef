"""Differential: ``Director.reply``'s reply-direction index against a scan of the connection
table (what ``reply`` did before the index, and what ``ip_vs_conn_out_get`` means).

The scan keeps the kernel's tie rule: when several connections share one reply tuple (two NAT
services with the same real server and port), the hash chain is head-inserted, so the newest
connection wins (ip_vs_conn.c ``ip_vs_conn_out_get``, 6.12.117). Hypothesis interleaves client
packets, replies, dest deletes and re-adds, and clock advances, and every reply must agree.
"""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from impl.conn import Entry
from impl.director import Director
from impl.types import (
    IPV4,
    Dest,
    Flow,
    Fwd,
    IPAddress,
    PacketKind,
    Proto,
    Service,
    ServiceKey,
    Sysctls,
)

VIP = ipaddress.IPv4Address("198.19.0.1")
RIPS = [ipaddress.IPv4Address(f"198.18.10.{i}") for i in (11, 12)]
CLIENTS = [ipaddress.IPv4Address(f"198.18.16.{i}") for i in (1, 2)]

#: (protocol, vport, forwarding, persistent): UDP 53 and 54 NAT to the same rip:8080, so their
#: connections of one client socket share a reply tuple; DR and persistent services mix in
SERVICES = (
    (Proto.UDP, 53, Fwd.NAT, False),
    (Proto.UDP, 54, Fwd.NAT, False),
    (Proto.TCP, 80, Fwd.NAT, False),
    (Proto.TCP, 81, Fwd.NAT, True),
    (Proto.UDP, 55, Fwd.DR, False),
)
TCP_KINDS: tuple[PacketKind, ...] = ("syn", "ack", "fin", "rst")
REPLY_KINDS: tuple[PacketKind, ...] = ("synack", "ack", "fin", "rst")


def reply_source(cp: Entry) -> tuple[IPAddress, int]:
    """Where a connection's replies come from: the real server for NAT, else vaddr:vport."""
    return (cp.daddr, cp.dport) if cp.fwd is Fwd.NAT else (cp.vaddr, cp.vport)


class ReplyIndexAgreesWithScan(RuleBasedStateMachine):
    @initialize(expire_nodest_conn=st.booleans())
    def build(self, expire_nodest_conn: bool) -> None:
        self.d = Director(sysctls=Sysctls(expire_nodest_conn=int(expire_nodest_conn)))
        self.keys = []
        for proto, vport, fwd, persistent in SERVICES:
            key = ServiceKey(IPV4, proto, VIP, vport)
            self.d.add_service(Service(key, "rr", timeout=5 if persistent else None))
            for rip in RIPS:
                self.d.add_dest(key, Dest(rip, 8080 if fwd is Fwd.NAT else vport, fwd=fwd))
            self.keys.append(key)
        self.now = 0.0
        self.born: dict[int, tuple[int, Entry]] = {}  # id(entry) -> (creation order, entry)

    def _note_new_connections(self) -> None:
        for cp in self.d.connection_entries():
            if id(cp) not in self.born or self.born[id(cp)][1] is not cp:
                self.born[id(cp)] = (len(self.born), cp)

    def _scan(self, flow: Flow) -> Entry | None:
        """The newest live connection whose replies have ``flow``'s tuple."""
        found = [
            cp
            for cp in self.d.connection_entries()
            if not cp.template
            and (cp.family, cp.proto) == (flow.family, flow.proto)
            and (cp.caddr, cp.cport) == (flow.daddr, flow.dport)
            and reply_source(cp) == (flow.saddr, flow.sport)
        ]
        return max(found, key=lambda cp: self.born[id(cp)][0], default=None)

    @rule(
        service=st.integers(0, len(SERVICES) - 1),
        client=st.sampled_from(CLIENTS),
        sport=st.integers(40000, 40001),
        kind=st.sampled_from(TCP_KINDS),
    )
    def client_packet(self, service: int, client: IPAddress, sport: int, kind: PacketKind) -> None:
        proto, vport, _, _ = SERVICES[service]
        self.d.packet(
            Flow(proto, client, sport, VIP, vport, kind if proto is Proto.TCP else "udp"),
            self.now,
        )
        self._note_new_connections()

    @rule(data=st.data(), kind=st.sampled_from(REPLY_KINDS))
    def reply(self, data: st.DataObject, kind: PacketKind) -> None:
        """A reply for a live connection's tuple, or for a tuple nobody has."""
        live = self.d.connection_entries()
        if live and data.draw(st.booleans(), label="for a live connection"):
            cp = data.draw(st.sampled_from(live), label="connection")
            (src, sport), proto = reply_source(cp), cp.proto
            dst, dport = cp.caddr, cp.cport
        else:
            proto = data.draw(st.sampled_from([Proto.TCP, Proto.UDP]), label="proto")
            src = data.draw(st.sampled_from([*RIPS, VIP]), label="source")
            sport = data.draw(st.sampled_from([8080, 53, 55]), label="source port")
            dst = data.draw(st.sampled_from(CLIENTS), label="client")
            dport = data.draw(st.integers(40000, 40001), label="client port")
        flow = Flow(proto, src, sport, dst, dport, kind if proto is Proto.TCP else "udp")
        self.d.expire(self.now)  # what reply() does first, so the scan sees the same table
        expected = self._scan(flow)
        decision = self.d.reply(flow, self.now)
        if expected is None:
            assert decision.kind == "local", decision
        else:
            got = (decision.kind, decision.dest, decision.dport, decision.fwd)
            assert got == ("forward", expected.vaddr, expected.vport, expected.fwd)

    @rule(service=st.integers(0, len(SERVICES) - 1), rs=st.integers(0, len(RIPS) - 1))
    def delete_or_readd_dest(self, service: int, rs: int) -> None:
        key = self.keys[service]
        _, vport, fwd, _ = SERVICES[service]
        port = 8080 if fwd is Fwd.NAT else vport
        if any(s.addr == RIPS[rs] for s in self.d.dest_state(key)):
            self.d.del_dest(key, RIPS[rs], port, self.now)
        else:
            self.d.add_dest(key, Dest(RIPS[rs], port, fwd=fwd), self.now)
        self._note_new_connections()

    @rule(seconds=st.sampled_from([0.5, 3.0, 11.0, 70.0, 130.0, 400.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds


TestReplyIndexAgreesWithScan = ReplyIndexAgreesWithScan.TestCase
