"""The namespace topology: what each forwarding method needs is reachable, with real packets.

Packets are UDP datagrams between plain sockets created inside the namespaces
(Node.socket); each receive has a deadline (socket timeout), no sleeps.
"""

from __future__ import annotations

import socket
import time

import pytest

from harness import addresses, runs
from harness.topology import Net, Node, Topology, TopologyError, build
from impl.types import IPV4, IPV6, Family, Fwd, IPAddress

pytestmark = pytest.mark.netns

FAMILIES = [IPV4, IPV6]
DEADLINE = 3.0


def _af(family: Family) -> int:
    return socket.AF_INET if family is IPV4 else socket.AF_INET6


def udp_delivered(
    src_node: Node, src: IPAddress, dst_node: Node, dst: IPAddress, port: int = 9000
) -> str:
    """Send one datagram src -> dst; return the source address the receiver saw.

    Raises TimeoutError if nothing arrives within DEADLINE."""
    af = _af(Family.of(dst))
    payload = f"{src_node.role}->{dst_node.role} {src}->{dst}".encode()
    with dst_node.socket(af, socket.SOCK_DGRAM) as rx, src_node.socket(af, socket.SOCK_DGRAM) as tx:
        rx.bind((str(dst), port))
        rx.settimeout(DEADLINE)
        tx.bind((str(src), 0))
        tx.sendto(payload, (str(dst), port))
        while True:
            data, peer = rx.recvfrom(2048)
            if data == payload:
                return str(peer[0])


@pytest.mark.parametrize("method", [Fwd.DR, Fwd.NAT, Fwd.TUN], ids=lambda m: m.value)
def test_each_method_has_the_reachability_it_needs(lvs_run: runs.Run, method: Fwd) -> None:
    """3 real servers, IPv4 and IPv6, one forwarding method: the paths that method uses.

    All methods: client (any pool address) -> director VIP.
    DR/TUN: every RS -> client pool with source = VIP, forwarded by the director (whose own
    VIP it is: accept_local). NAT: every RS -> DIP, and RS (source RIP) -> client pool through
    the director. TUN on a kernel without ipip/ip6tnl is capture-only: the director -> RIP
    path (which encapsulated packets take) is checked and decapsulation is not.
    """
    topo = Topology(real_servers=3, fwd=method)
    with build(topo, lvs_run) as net:
        assert [net.topology.method(i) for i in range(3)] == [method] * 3
        for fam in FAMILIES:
            cip = addresses.cip(fam, net=3, host=7)  # any pool address, not only the first
            for vip in (net.vips(fam)[0], net.vips(fam)[-1]):
                assert udp_delivered(net.client, cip, net.director, vip) == str(cip)
            for i, rs in enumerate(net.rs):
                rip = addresses.rip(fam, i)
                if method in (Fwd.DR, Fwd.TUN):
                    vip = net.vips(fam)[0]
                    assert udp_delivered(rs, vip, net.client, cip) == str(vip)
                if method is Fwd.NAT:
                    dip = addresses.DIP[fam]
                    assert udp_delivered(rs, rip, net.director, dip) == str(rip)
                    assert udp_delivered(rs, rip, net.client, cip) == str(rip)
                if method is Fwd.TUN:
                    dip = addresses.DIP[fam]
                    assert udp_delivered(net.director, dip, rs, rip) == str(dip)
                    # capture-only exactly when the kernel lacks the tunnel drivers
                    assert net.real_servers[i].decap == (net.features.ipip and net.features.ip6tnl)


def test_universal_real_server_configuration(net: Net) -> None:
    """Every RS is ready for DR, NAT and TUN at once; the director forwards and owns the VIPs."""
    for i, rs in enumerate(net.rs):
        assert rs.read_sysctl("net/ipv4/conf/all/arp_ignore") == "1"
        assert rs.read_sysctl(f"net/ipv4/conf/{net.real_servers[i].ifname}/arp_announce") == "2"
        assert rs.read_sysctl("net/ipv4/conf/all/rp_filter") == "0"
        with rs.ipr() as ipr:
            local = {a.get_attr("IFA_ADDRESS") for a in ipr.addr("dump", index=1)}
            assert {str(v) for f in FAMILIES for v in net.vips(f)} <= local
            routes = ipr.route("get", dst=str(addresses.cip(IPV4)))
            assert routes[0].get_attr("RTA_GATEWAY") == str(addresses.DIP[IPV4])
        with rs.ipr() as ipr:
            link = ipr.link("get", index=rs.ifindex(net.real_servers[i].ifname))[0]
            assert link.get_attr("IFLA_ADDRESS") == net.rs_mac(i)
    assert net.director.read_sysctl("net/ipv4/ip_forward") == "1"
    assert net.director.read_sysctl("net/ipv6/conf/all/forwarding") == "1"
    with net.director.ipr() as ipr:
        seg = ipr.link("get", index=net.director.ifindex(net.director_segment_if))[0]
        assert seg.get_attr("IFLA_ADDRESS") == net.director_mac()
    assert len(net.vips(IPV4)) == addresses.VIPS and net.vips(IPV6)[0] == addresses.vip(IPV6)


def _neighbour_reply(net: Net, family: Family, target: IPAddress) -> bool:
    """Ask on the director's segment link who has ``target`` (ARP / NDP NS) from the DIP; True when
    any real server answers within 0.5 s."""
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
    from scapy.layers.l2 import ARP, Ether
    from scapy.pton_ntop import inet_pton
    from scapy.utils6 import in6_getnsma, in6_getnsmac

    mac = net.director_mac()
    if family is IPV4:
        frame = Ether(dst="ff:ff:ff:ff:ff:ff", src=mac) / ARP(
            op=1, hwsrc=mac, psrc=str(addresses.DIP[IPV4]), pdst=str(target)
        )
    else:
        sn = in6_getnsma(inet_pton(socket.AF_INET6, str(target)))
        sn_addr = socket.inet_ntop(socket.AF_INET6, sn)
        frame = (
            Ether(dst=in6_getnsmac(sn), src=mac)
            / IPv6(src=str(addresses.DIP[IPV6]), dst=sn_addr, hlim=255)
            / ICMPv6ND_NS(tgt=str(target))
            / ICMPv6NDOptSrcLLAddr(lladdr=mac)
        )
    with net.director.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as s:
        s.bind((net.director_segment_if, 0))
        s.send(bytes(frame))
        deadline = time.monotonic() + 0.5  # waiting for *no* answer: a bounded window
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                raw = s.recv(2048)
            except TimeoutError:
                break
            pkt = Ether(raw)
            if pkt.src == mac:
                continue
            if family is IPV4 and ARP in pkt and pkt[ARP].op == 2 and pkt[ARP].psrc == str(target):
                return True
            if family is IPV6 and ICMPv6ND_NA in pkt and pkt[ICMPv6ND_NA].tgt == str(target):
                return True
    return False


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.label)
def test_real_servers_do_not_answer_arp_or_ndp_for_vips(net: Net, family: Family) -> None:
    """DR needs the VIP on every RS without the RS claiming it on the segment: arp_ignore=1
    (IPv4) and, for IPv6, the VIP on lo (NDP answers only for the receiving interface's
    addresses). The RIP is asked too, as control that answers do get seen."""
    assert _neighbour_reply(net, family, addresses.rip(family, 0))
    assert not _neighbour_reply(net, family, net.vips(family)[0])


def test_renew_director_gives_an_empty_director_and_keeps_the_rest(fresh_net: Net) -> None:
    """renew_director recreates the director namespace (new namespace, same names, MACs,
    addresses) and the client and real servers keep theirs; traffic flows again at once."""
    net = fresh_net
    before = {n.role: _ns_inode(n) for n in net.nodes}
    marker = "net/ipv4/conf/all/arp_announce"  # something we never set in the director
    net.director.sysctl(marker, 1)
    t0 = time.monotonic()
    net.renew_director()
    renew = time.monotonic() - t0
    after = {n.role: _ns_inode(n) for n in net.nodes}
    assert after["director"] != before["director"]
    assert {k: v for k, v in after.items() if k != "director"} == {
        k: v for k, v in before.items() if k != "director"
    }
    assert net.director.read_sysctl(marker) == "0"
    for fam in FAMILIES:
        cip = addresses.cip(fam)
        assert udp_delivered(net.client, cip, net.director, net.vips(fam)[0]) == str(cip)
        assert udp_delivered(net.rs[2], net.vips(fam)[0], net.client, cip) == str(net.vips(fam)[0])
    print(f"renew_director: {renew * 1000:.0f} ms")


def _ns_inode(node: Node) -> int:
    import os

    return os.stat(f"/run/netns/{node.netns}").st_ino


def test_build_time_and_teardown_leaves_nothing(lvs_run: runs.Run) -> None:
    """One topology (v4+v6, 3 RS, DR) builds within a bound; its namespaces go on exit."""
    t0 = time.monotonic()
    with build(Topology(), lvs_run) as net:
        took = time.monotonic() - t0
        names = [n.netns for n in net.nodes]
        assert all(n in runs.list_netns() for n in names)
        links = [net.client_if, net.director_segment_if, net.switch_director_port] + [
            n for r in net.real_servers for n in (r.ifname, r.switch_port)
        ]
        assert all(len(n) <= 15 for n in names + links)
        assert all(n.startswith(lvs_run.prefix) for n in names)
    assert not set(names) & set(runs.list_netns())
    print(f"build: {took * 1000:.0f} ms")
    assert took < 10


def test_teardown_runs_when_the_body_fails(lvs_run: runs.Run) -> None:
    with pytest.raises(ZeroDivisionError), build(Topology(real_servers=1), lvs_run) as net:
        names = [n.netns for n in net.nodes]
        1 / 0  # noqa: B018
    assert not set(names) & set(runs.list_netns())


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"real_servers": 0}, "real_servers=0"),
        ({"real_servers": 2, "fwd": (Fwd.DR,)}, "1 methods for 2 real servers"),
        ({"fwd": "dr"}, "give a Fwd"),
        ({"families": ()}, "families"),
    ],
)
def test_bad_topology_is_one_clear_error(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(TopologyError, match=words):
        Topology(**kwargs)  # type: ignore[arg-type]


def test_per_rs_methods() -> None:
    topo = Topology.per_rs(Fwd.DR, Fwd.NAT, Fwd.TUN)
    assert [topo.method(i) for i in range(3)] == [Fwd.DR, Fwd.NAT, Fwd.TUN]
    with pytest.raises(IndexError):
        topo.method(3)


@pytest.mark.topology(real_servers=2, families=(IPV6,))
def test_topology_marker_reaches_net(net: Net) -> None:
    assert len(net.rs) == 2 and net.vips(IPV4) == []
    assert udp_delivered(net.rs[1], addresses.rip(IPV6, 1), net.director, addresses.DIP[IPV6])


def test_make_net_mixes_methods(make_net) -> None:  # type: ignore[no-untyped-def]
    net = make_net(Fwd.DR, Fwd.NAT, families=(IPV4,))
    assert [net.topology.method(i) for i in range(2)] == [Fwd.DR, Fwd.NAT]
    vip = net.vips(IPV4)[0]
    assert udp_delivered(net.rs[0], vip, net.client, addresses.cip(IPV4)) == str(vip)


def test_renew_director_when_the_old_namespace_is_still_held(
    fresh_net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something (a leaked socket, a helper process) keeps the old director namespace alive,
    so its links never go by themselves: renew deletes the peers itself and still works."""
    import os

    from harness import topology

    monkeypatch.setattr(topology, "RENEW_GRACE", 0.2)
    held = os.open(f"/run/netns/{fresh_net.director.netns}", os.O_RDONLY)
    try:
        fresh_net.renew_director()
    finally:
        os.close(held)
    cip, vip = addresses.cip(IPV4), fresh_net.vips(IPV4)[0]
    assert udp_delivered(fresh_net.client, cip, fresh_net.director, vip) == str(cip)
    assert udp_delivered(fresh_net.rs[0], vip, fresh_net.client, cip) == str(vip)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.label)
def test_tun_real_server_decapsulates(net: Net, family: Family) -> None:
    """TUN: the director sends IPIP (v4) / IPv6-in-IPv6 (v6) to the RIP; the real server
    decapsulates and delivers the inner datagram to its VIP. Skipped, naming the driver, on
    kernels without ipip/ip6tnl (there the real server is capture-only)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6

    if not net.real_servers[0].decap:
        pytest.skip(
            net.features.missing("ipip" if family is IPV4 else "ip6tnl")
            or "real server has no decapsulation device"
        )
    vip, cip, rip = net.vips(family)[0], addresses.cip(family), addresses.rip(family, 0)
    inner_ip = (
        IP(src=str(cip), dst=str(vip)) if family is IPV4 else IPv6(src=str(cip), dst=str(vip))
    )
    inner = bytes(inner_ip / UDP(sport=40000, dport=9000) / b"tun")
    af, proto = (socket.AF_INET, 4) if family is IPV4 else (socket.AF_INET6, 41)
    with (
        net.rs[0].socket(af, socket.SOCK_DGRAM) as rx,
        net.director.socket(af, socket.SOCK_RAW, proto) as tx,
    ):
        rx.bind((str(vip), 9000))
        rx.settimeout(DEADLINE)
        tx.sendto(inner, (str(rip), 0))
        data, peer = rx.recvfrom(100)
    assert data == b"tun" and peer[0] == str(cip)
