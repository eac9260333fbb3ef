"""The traffic engine against directors whose answer is known: plain routing, nftables DNAT,
a hand-made IPIP tunnel, drop / reject rules, and the director's own stack."""

from __future__ import annotations

import fcntl
import os
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from harness.addresses import DIP, cip, rip, vip
from harness.topology import Net
from harness.traffic.capture import Capture, bpf_program, client_capture
from harness.traffic.engine import (
    FlowResult,
    Mode,
    Session,
    quiet_endpoints,
    send_flows,
    send_flows_report,
    slowdown,
    unquiet_endpoints,
)
from harness.traffic.packets import TrafficError, encapsulate, mac_bytes, parse_answer
from impl.types import IPV4, IPV6, Family, Flow, Proto

from .nets import dnat_script, load_director_nft, route_vip_to

pytestmark = pytest.mark.netns

PROTOS = (Proto.TCP, Proto.UDP, Proto.SCTP)
SIOCGSKNS = 0x894C


def flows_for(
    family: Family,
    protos: tuple[Proto, ...],
    per_proto: int,
    net_no: int,
    dport: int = 80,
    vip_index: int = 0,
) -> list[Flow]:
    out = []
    for p in protos:
        for j in range(per_proto):
            out.append(
                Flow(
                    p,
                    cip(family, net_no, 1 + j),
                    20000 + 100 * int(p) + j,
                    vip(family, vip_index),
                    dport,
                )
            )
    return out


def kinds(results: list[FlowResult]) -> set[str]:
    return {r.outcome.kind for r in results}


@pytest.mark.parametrize("mode", ["ordered", "batch"])
def test_plain_routing_every_flow_is_seen_once_at_the_routed_server(
    fresh_net: Net, mode: str
) -> None:
    route_vip_to(fresh_net, 2)
    flows = [f for fam in (IPV4, IPV6) for f in flows_for(fam, PROTOS, 5, 1)]
    report = send_flows_report(fresh_net, flows, mode, settle=0.1)  # type: ignore[arg-type]
    for r in report.results:
        o = r.outcome
        assert (o.kind, o.rs, o.addr, o.port, o.encapsulated) == (
            "forward",
            2,
            r.flow.daddr,
            r.flow.dport,
            False,
        ), str(r)
        assert r.seen_at == (2,), f"{r.flow} seen at {r.seen_at}, want exactly once at rs3"
    assert report.stray == []


def test_ordered_follow_ups_of_one_connection_are_told_apart(fresh_net: Net) -> None:
    """SYN, ACK, data, FIN and RST of one (saddr, sport), then two datagrams of one UDP flow."""
    route_vip_to(fresh_net, 0)
    c, v = cip(IPV6, 4, 9), vip(IPV6, 0)
    flows = [Flow(Proto.TCP, c, 5555, v, 443, k) for k in ("syn", "ack", "data", "fin", "rst")]
    flows += [
        Flow(Proto.UDP, c, 5060, v, 5060, None, 0, b"INVITE sip:x SIP/2.0\r\nCall-ID: 1\r\n"),
        Flow(Proto.UDP, c, 5060, v, 5060, None, 0, b"BYE sip:x SIP/2.0\r\nCall-ID: 1\r\n"),
    ]
    results = send_flows(fresh_net, flows, settle=0.1)
    assert [r.outcome.kind for r in results] == ["forward"] * len(flows)
    assert all(r.seen_at == (0,) for r in results), [r.seen_at for r in results]


def test_dnat_flows_arrive_at_the_rewritten_destination(fresh_net: Net) -> None:
    load_director_nft(
        fresh_net, dnat_script(rs=1, vport=80, rport=8080, protos=("tcp", "udp", "sctp"))
    )
    flows = [f for fam in (IPV4, IPV6) for f in flows_for(fam, PROTOS, 4, 2)]
    for r in send_flows(fresh_net, flows, "batch"):
        o = r.outcome
        want = rip(r.flow.family, 1)
        assert (o.kind, o.rs, o.addr, o.port) == ("forward", 1, want, 8080), str(r)


class IpipRelay:
    """A stand-in TUN director: frames for the VIPs arriving from the client are wrapped in
    IPIP (IPv4) or IPv6-in-IPv6 by this thread and sent on the director's segment link to ``rs``.

    The director's own stack drops them (nft), so only the tunnelled copy can be observed."""

    def __init__(self, net: Net, rs: int) -> None:
        self.net, self.rs = net, rs
        self.capture = Capture(
            net.director, net.director_client_if, bpf_program((6, 17, 132), (6, 17, 132)), None
        )
        self.out = net.director.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.out.bind((net.director_segment_if, 0))
        self.eth = {
            fam: mac_bytes(net.rs_mac(rs))
            + mac_bytes(net.director_mac())
            + (b"\x08\x00" if fam is IPV4 else b"\x86\xdd")
            for fam in (IPV4, IPV6)
        }
        self.stop_r, self.stop_w = os.pipe()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.error: BaseException | None = None

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self.capture.fileno(), select.POLLIN)
        poller.register(self.stop_r, select.POLLIN)
        try:
            while True:
                events = poller.poll()
                if any(fd == self.stop_r for fd, _ in events):
                    return
                for frame in self.capture.drain():
                    inner = frame[14:]
                    fam = IPV4 if inner[0] >> 4 == 4 else IPV6
                    # ETH_P_IP frames may carry trailing padding: cut to the IP length
                    length = (
                        int.from_bytes(inner[2:4], "big")
                        if fam is IPV4
                        else 40 + int.from_bytes(inner[4:6], "big")
                    )
                    packet = encapsulate(inner[:length], DIP[fam], rip(fam, self.rs))
                    self.out.send(self.eth[fam] + packet)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> IpipRelay:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        os.write(self.stop_w, b"x")
        self.thread.join(timeout=10 * slowdown())
        self.capture.close()
        self.out.close()
        os.close(self.stop_r)
        os.close(self.stop_w)
        if self.error is not None:
            raise self.error


DROP_VIP0 = (
    "table inet h4_drop {\n    chain in {\n        type filter hook input priority 0;\n"
    f"        ip daddr {vip(IPV4, 0)} drop\n        ip6 daddr {vip(IPV6, 0)} drop\n    }}\n}}\n"
)


def test_tunnelled_flows_are_identified_inside_the_tunnel(fresh_net: Net) -> None:
    load_director_nft(fresh_net, DROP_VIP0)
    flows = [f for fam in (IPV4, IPV6) for f in flows_for(fam, PROTOS, 3, 3)]
    with IpipRelay(fresh_net, 1):
        results = send_flows(fresh_net, flows)
    for r in results:
        o = r.outcome
        assert (o.kind, o.rs, o.addr, o.port, o.encapsulated) == (
            "forward",
            1,
            r.flow.daddr,
            80,
            True,
        ), str(r)


def test_unanswered_flow_is_dropped_within_the_bound(fresh_net: Net) -> None:
    load_director_nft(fresh_net, DROP_VIP0)
    bound = 0.2
    flows = flows_for(IPV4, (Proto.TCP, Proto.UDP), 1, 5) + flows_for(IPV6, (Proto.UDP,), 1, 5)
    modes: tuple[Mode, ...] = ("ordered", "batch")
    for mode in modes:
        report = send_flows_report(fresh_net, flows, mode, bound=bound)
        assert kinds(report.results) == {"dropped"}
        limit = bound * slowdown()
        assert all(r.outcome.elapsed == pytest.approx(limit) for r in report.results)
        # ordered: one bound per flow; batch: one bound for all (plus slack for a busy host)
        assert report.elapsed < (len(flows) if mode == "ordered" else 1) * limit + 1.0 * slowdown()


def test_reject_rules_are_reported_as_unreachable(fresh_net: Net) -> None:
    load_director_nft(
        fresh_net,
        (
            "table inet h4_reject {\n    chain in {\n        type filter hook input priority 0;\n"
            "        meta nfproto ipv4 meta l4proto { tcp, udp } reject with icmp type "
            "port-unreachable\n"
            "        meta nfproto ipv6 meta l4proto { tcp, udp } reject with icmpv6 type "
            "port-unreachable\n    }\n}\n"
        ),
    )
    flows = [f for fam in (IPV4, IPV6) for f in flows_for(fam, (Proto.TCP, Proto.UDP), 3, 6)]
    results = send_flows(fresh_net, flows, "batch")
    assert [r.outcome.kind for r in results] == ["unreachable"] * len(flows)


def test_the_director_stack_answering_is_local(fresh_net: Net) -> None:
    """No balancer, VIP local: the director's TCP answers SYN and ACK with a RST (``local``),
    and its UDP a closed port with an ICMP port unreachable."""
    tcp = [f for fam in (IPV4, IPV6) for f in flows_for(fam, (Proto.TCP,), 2, 7)]
    acks = [Flow(Proto.TCP, f.saddr, f.sport + 1000, f.daddr, f.dport, "ack") for f in tcp]
    udp = [f for fam in (IPV4, IPV6) for f in flows_for(fam, (Proto.UDP,), 2, 7)]
    results = send_flows(fresh_net, tcp + acks + udp)
    assert [r.outcome.kind for r in results] == ["local"] * 8 + ["unreachable"] * 4
    sctp = flows_for(IPV4, (Proto.SCTP,), 1, 7)
    # with an SCTP stack the director ABORTs the INIT; without one (this host) it is silent
    want = "local" if fresh_net.features.sctp else "dropped"
    assert send_flows(fresh_net, sctp)[0].outcome.kind == want


def test_batch_refuses_duplicate_flows_and_bad_input(fresh_net: Net) -> None:
    f = Flow(Proto.TCP, cip(IPV4, 8, 1), 3000, vip(IPV4, 0), 80)
    with pytest.raises(TrafficError, match="unique"):
        send_flows(fresh_net, [f, f], "batch")
    with pytest.raises(TrafficError, match="mode 'fast' is unknown"):
        send_flows(fresh_net, [f], "fast")  # type: ignore[arg-type]
    with pytest.raises(TrafficError, match="source port 20"):
        send_flows(fresh_net, [Flow(Proto.UDP, cip(IPV4, 8, 1), 20, vip(IPV4, 0), 53)])


def _netns_inode_of(sock: socket.socket) -> int:
    fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


@pytest.fixture
def host_watch() -> Iterator[socket.socket]:
    """A receive-only capture of the host namespace (nothing sent, nothing configured): it
    must see none of the topology's client-pool addresses."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def test_nothing_is_sent_outside_the_topology(fresh_net: Net, host_watch: socket.socket) -> None:
    route_vip_to(fresh_net, 0)
    host_ns = os.stat("/proc/self/ns/net").st_ino
    topo_ns = {os.stat(f"/run/netns/{n.netns}").st_ino for n in fresh_net.nodes}
    with Session(fresh_net) as session:
        inodes = {_netns_inode_of(s) for s in session.sockets}
    assert inodes <= topo_ns and host_ns not in inodes
    flows = [f for fam in (IPV4, IPV6) for f in flows_for(fam, PROTOS, 20, 9)]
    results = send_flows(fresh_net, flows, "batch")
    assert kinds(results) == {"forward"}
    pool = {f.saddr.packed for f in flows}
    leaked = 0
    while True:
        try:
            frame = host_watch.recv(128)
        except BlockingIOError:
            break
        ethertype = frame[12:14]
        src = frame[26:30] if ethertype == b"\x08\x00" else frame[22:38]
        leaked += src in pool
    assert leaked == 0


def _rst_count_within(capture: Capture, seconds: float, want: int | None = None) -> int:
    """RSTs captured at the client within ``seconds`` (stop early once ``want`` arrived)."""
    deadline = time.monotonic() + seconds * slowdown()
    count = 0
    while time.monotonic() < deadline and (want is None or count < want):
        select.select([capture], [], [], max(0.0, deadline - time.monotonic()))
        for frame in capture.drain():
            key = parse_answer(frame)
            count += key is not None and key[3] == "rst"
    return count


def test_quiet_endpoints_keep_real_servers_from_answering_stray_syns(fresh_net: Net) -> None:
    route_vip_to(fresh_net, 1)
    with client_capture(fresh_net.client, fresh_net.client_if) as capture:
        quiet_endpoints(fresh_net)
        flows = flows_for(IPV4, (Proto.TCP,), 3, 10)
        assert kinds(send_flows(fresh_net, flows)) == {"forward"}
        assert _rst_count_within(capture, 0.3) == 0
        unquiet_endpoints(fresh_net)
        try:
            loud = flows_for(IPV4, (Proto.TCP,), 3, 11)
            # the real server's RST reaches the client, but the copy it saw decides: forward
            assert kinds(send_flows(fresh_net, loud, quiet=False)) == {"forward"}
            assert _rst_count_within(capture, 2.0, want=3) == 3
        finally:
            quiet_endpoints(fresh_net)


def _pings(net_no: int, count: int) -> list[Flow]:
    return [
        Flow(
            Proto.ICMP if fam is IPV4 else Proto.ICMPV6,
            cip(fam, net_no, 1 + j),
            300 + j,
            vip(fam, 0),
            0,
            "echo",
        )
        for fam in (IPV4, IPV6)
        for j in range(count)
    ]


@pytest.mark.parametrize("mode", ["ordered", "batch"])
def test_a_ping_the_director_answers_is_local(fresh_net: Net, mode: Mode) -> None:
    """No balancer, VIP local: the director's stack sends the echo reply (``local``); a second
    ping with the same identifier is matched by its own sequence number."""
    flows = _pings(9, 2)
    again = [flows[0]] if mode == "ordered" else []  # a batch needs unique (saddr, identifier)
    results = send_flows(fresh_net, flows + again, mode)
    assert [r.outcome.kind for r in results] == ["local"] * len(flows + again), [
        str(r) for r in results
    ]
    assert all(r.seen_at == () for r in results)


def test_a_ping_routed_to_a_real_server_is_forward(fresh_net: Net) -> None:
    """The real server's capture sees the echo request (and its own reply, which also reaches
    the client, does not change the outcome)."""
    route_vip_to(fresh_net, 1)
    results = send_flows(fresh_net, _pings(10, 2), settle=0.1)
    for r in results:
        o = r.outcome
        assert (o.kind, o.rs, o.addr, o.port, r.seen_at) == ("forward", 1, r.flow.daddr, 0, (1,)), (
            str(r)
        )


def test_source_port_20_is_sent_when_asked(fresh_net: Net) -> None:
    """With ``allow_ftpdata`` the engine sends source port 20: the director's stack (no
    balancer) answers the SYN with a RST and the datagram with a port unreachable."""
    flows = [
        Flow(p, cip(fam, 11, 1), 20, vip(fam, 0), 80)
        for fam in (IPV4, IPV6)
        for p in (Proto.TCP, Proto.UDP)
    ]
    results = send_flows(fresh_net, flows, allow_ftpdata=True)
    assert [r.outcome.kind for r in results] == ["local", "unreachable"] * 2
