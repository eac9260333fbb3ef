"""The namespace topology: a frozen description (:class:`Topology`) and its builder (:func:`build`).

::

   client ns            director ns                      switch ns               rsN ns
   +--------------+     +-------------------------+      +----------------+      +----------------+
   | lo: CIP pool |veth | <p>d CDIP     <p>s DIP  | veth | <p>pd   <p>pN  | veth | <p>rN RIP      |
   |   (AnyIP)    |=====|   (ip_forward)          |======|   <p>br bridge |======| lo: VIPs (DR)  |
   | default->CDIP| <p>c| lo: VIP 0..7            |      | (no IP at all) |  ... | tunl0/ip6tnl0  |
   +--------------+     +-------------------------+      +----------------+      | default -> DIP |
                                                                                 +----------------+

The real servers' segment is a bridge in a namespace of its own, the *switch*: the director
is a router with two links, one to the client and one (its *segment link*, ``<p>s``) to the
switch. Only the director is renewed before each case, so a renewal makes two veth pairs and
nothing else; the real servers' links, addresses and the bridge stay up. (A bridge inside the
director, as before, was rebuilt every renewal, and a new bridge's carrier reaches the
kernel's linkwatch as a non-urgent event, handled at most once a second (net/core/link_watch.c,
``linkwatch_urgent_event``; a veth is urgent): measured up to 0.42 s in a TCG guest. The wait
is needed, since the qdisc is activated only then: ``dev_activate``, net/sched/sch_generic.c.)

Addresses (see :mod:`harness.addresses`): client link 198.18.0.2/24, 2001:db8::2/64; CDIP
198.18.0.1, 2001:db8::1; CIP pool 198.18.16.0/20, 2001:db8:c0::/48 as a ``local`` route on the
client's lo (any pool source can be sent and bound), routed to the client by the director;
DIP 198.18.10.1/24, 2001:db8:a::1/64 on the director's segment link; RIPs 198.18.10.11..,
2001:db8:a::11..;
VIPs 198.19.0.1..8, 2001:db8:f::1..8 on the director's lo (IPVS needs them local).

Every real server is universal (IPVS sets the forwarding method per dest, a scenario may mix
them): VIPs on lo with arp_ignore=1/arp_announce=2 (DR), default route via DIP (NAT return path;
DR/TUN replies with source VIP also go through the director, which accepts its own VIP as a
source with accept_local=1), rp_filter=0, and tunl0/ip6tnl0 up where the kernel has them (TUN).
``RealServer.decap`` says whether a real server can decapsulate; without ipip it is
capture-only.

Names: namespaces ``<run prefix><id>-cli|-dir|-sw|-rsN``, links ``<run prefix><id><role>``,
all <= 15 characters. MACs are fixed per role, so neighbour caches of the client and real
servers, and the switch's forwarding table, stay valid when the director is renewed.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from harness import addresses, rtnl_batch, runs
from harness.features import KernelFeatures, probe
from impl.types import IPV4, IPV6, Family, Fwd, IPAddress

IFA_F_TENTATIVE = 0x40
RT_TABLE_LOCAL = 255
MAX_REAL_SERVERS = 99
READY_TIMEOUT = 10.0
RENEW_GRACE = 3.0  # seconds for the kernel to destroy an old director namespace


class TopologyError(RuntimeError):
    """A topology cannot be described or built; the message names the problem and the fix."""


@dataclass(frozen=True, slots=True)
class Topology:
    """client == director == switch == rs1..rsN (see the module docstring for the picture).

    ``fwd`` is one forwarding method for all real servers or one per real server. The build
    is the same for every method (real servers are universal); ``fwd`` says which method a
    test exercises on which real server.
    """

    real_servers: int = 3
    families: tuple[Family, ...] = (IPV4, IPV6)
    fwd: tuple[Fwd, ...] | Fwd = Fwd.DR

    def __post_init__(self) -> None:
        if not 1 <= self.real_servers <= MAX_REAL_SERVERS:
            raise TopologyError(
                f"real_servers={self.real_servers} out of range; use 1..{MAX_REAL_SERVERS}"
            )
        if not self.families or any(not isinstance(f, Family) for f in self.families):
            raise TopologyError(f"families={self.families!r}: give a tuple of Family (IPV4, IPV6)")
        if isinstance(self.fwd, tuple):
            if len(self.fwd) != self.real_servers:
                raise TopologyError(
                    f"fwd has {len(self.fwd)} methods for {self.real_servers} real servers; "
                    "give one Fwd or exactly one per real server"
                )
            if any(not isinstance(m, Fwd) for m in self.fwd):
                raise TopologyError(f"fwd={self.fwd!r}: every entry must be a Fwd")
        elif not isinstance(self.fwd, Fwd):
            raise TopologyError(f"fwd={self.fwd!r}: give a Fwd or a tuple of Fwd")

    def method(self, index: int) -> Fwd:
        """Forwarding method of real server ``index`` (0-based)."""
        if not 0 <= index < self.real_servers:
            raise IndexError(f"real server index {index} out of 0..{self.real_servers - 1}")
        return self.fwd[index] if isinstance(self.fwd, tuple) else self.fwd

    @classmethod
    def per_rs(cls, *methods: Fwd, families: tuple[Family, ...] = (IPV4, IPV6)) -> Topology:
        """One real server per given method, e.g. ``Topology.per_rs(Fwd.DR, Fwd.NAT)``."""
        return cls(real_servers=len(methods), families=families, fwd=tuple(methods))


@dataclass(eq=False)
class Node:
    """One network namespace."""

    role: str
    netns: str
    _rtnl: IPRoute | None = field(default=None, init=False, repr=False)

    def enter(self) -> contextlib.AbstractContextManager[None]:
        """setns() the calling thread into this namespace; restored on exit."""
        return runs.enter_netns(self.netns)

    def ipr(self) -> IPRoute:
        """An IPRoute bound to this namespace (the caller closes it). No fork: the netlink
        socket is opened by this thread while it is inside the namespace."""
        with self.enter():
            return IPRoute()

    def rtnl(self) -> IPRoute:
        """The topology's own IPRoute for this namespace, opened once and kept until
        :meth:`close_rtnl` (build and renewal send all their requests on it: a new socket per
        request cost a renewal ~16 socket set-ups). Not for other code: it is not thread-safe."""
        if self._rtnl is None:
            self._rtnl = self.ipr()
        return self._rtnl

    def close_rtnl(self) -> None:
        """Close :meth:`rtnl`'s socket. An open socket keeps its namespace alive, so the
        director's is closed before the namespace is removed."""
        ipr, self._rtnl = self._rtnl, None
        if ipr is not None:
            ipr.close()

    def socket(self, family: int, type: int, proto: int = 0) -> socket.socket:
        """A socket created inside this namespace (it stays bound to it)."""
        with self.enter():
            return socket.socket(family, type, proto)

    def _sysctl_path(self, path: str) -> str:
        clean = path.replace(".", "/") if "/" not in path else path
        if clean.startswith("/") or ".." in clean.split("/"):
            raise TopologyError(f"sysctl path {path!r}: give it relative, e.g. net/ipv4/ip_forward")
        return f"/proc/sys/{clean}"

    def sysctl(self, path: str, value: str | int) -> None:
        """Write sysctl ``path`` (``net/ipv4/ip_forward`` or dotted) inside this namespace."""
        self.sysctls({path: value})

    def sysctls(self, values: dict[str, str | int]) -> None:
        """Write several sysctls, in order, entering the namespace once."""
        with self.enter():
            for path, value in values.items():
                try:
                    with open(self._sysctl_path(path), "w") as f:
                        f.write(f"{value}\n")
                except OSError as exc:
                    raise TopologyError(
                        f"sysctl {path}={value} in {self.netns}: {exc.strerror}"
                    ) from exc

    def read_sysctl(self, path: str) -> str:
        full = self._sysctl_path(path)
        with self.enter():
            try:
                with open(full) as f:
                    return f.read().strip()
            except OSError as exc:
                raise TopologyError(f"sysctl {path} in {self.netns}: {exc.strerror}") from exc

    def ifindex(self, ifname: str) -> int:
        with self.ipr() as ipr:
            found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise TopologyError(f"no interface {ifname} in namespace {self.netns}")
        return int(found[0])


def _mac(role: int, index: int, side: int) -> str:
    # locally administered, fixed per role: survives renew_director()
    return f"02:1c:00:{role:02x}:{index:02x}:{side:02x}"


@dataclass(eq=False)
class RealServer:
    """One real server: its namespace and the veth pair joining it to the switch's bridge."""

    index: int  # 0-based: rs1 is 0
    node: Node
    ifname: str  # its end of the link (in the real server's namespace)
    switch_port: str  # the other end, a port of the switch's bridge
    decap: bool = False  # can decapsulate IPIP / IPv6-in-IPv6 (set once its tunnels are up)

    @property
    def mac(self) -> str:
        """MAC of its link (fixed, so it survives renew_director())."""
        return _mac(3, self.index + 1, 1)


@dataclass(eq=False)
class Net:
    """A built topology. Attributes name the namespaces and links; see the module docstring."""

    topology: Topology
    run: runs.Run
    id: str
    client: Node
    director: Node
    switch: Node
    real_servers: list[RealServer]
    client_if: str
    director_client_if: str
    director_segment_if: str  # the director's link to the switch: DIP, director_mac()
    switch_bridge: str
    switch_director_port: str  # the switch's end of the director's segment link
    features: KernelFeatures
    renewals: int = 0

    @property
    def rs(self) -> list[Node]:
        """The real servers' namespaces, in order (rs1 first)."""
        return [r.node for r in self.real_servers]

    def rs_mac(self, index: int) -> str:
        """MAC of rs[index]'s segment interface."""
        return self.real_servers[index].mac

    def director_mac(self) -> str:
        """MAC of the director's segment link (the DIP's link address)."""
        return _mac(2, 0, 0)

    def director_client_mac(self) -> str:
        return _mac(2, 0, 1)

    def client_mac(self) -> str:
        return _mac(1, 0, 1)

    def vips(self, family: Family) -> list[IPAddress]:
        """The VIPs configured on the director's lo (addresses.vip(family, 0..7))."""
        if family not in self.topology.families:
            return []
        return [addresses.vip(family, i) for i in range(addresses.VIPS)]

    @property
    def nodes(self) -> list[Node]:
        return [self.client, self.director, self.switch, *self.rs]

    def renew_director(self) -> None:
        """Delete the director namespace and rebuild it with its links and configuration.

        The other namespaces are kept; the ends of the director's two links (in the client and
        the switch) vanish with it and are recreated with the same names, MACs and addresses.
        IPVS state lives in the director namespace, so this gives a fresh director cheaply.
        """
        # Removing the namespace is cheap, but the kernel destroys it (and with it the veth
        # peers in the client and the switch) later in a worker; wait for the peers to go.
        # Deleting veths explicitly is synchronous but ~2.5x slower (RCU grace periods), so it
        # is only the fallback, for when something (a leaked socket, a helper process) still
        # holds the old namespace: then the peers are deleted from the client/switch side.
        self.director.close_rtnl()
        runs.remove_netns(self.director.netns)
        try:
            wait_until(self._peers_gone, RENEW_GRACE, "the old director's links to go")
        except TopologyError:
            for node, ifname in self._peers():
                try:
                    node.rtnl().link("del", ifname=ifname)
                except NetlinkError as exc:
                    if not runs.gone(exc):
                        raise
        runs.create_netns(self.director.netns)
        _build_director(self)
        _wait_ready(self, _director_links(self))
        self.renewals += 1

    def _peers(self) -> list[tuple[Node, str]]:
        """The far ends of the director's links, outside the director."""
        return [(self.client, self.client_if), (self.switch, self.switch_director_port)]

    def _peers_gone(self) -> bool:
        # A netlink request per namespace, not a cheaper ioctl (SIOCGIFINDEX): measured in a
        # TCG guest, polling with netlink saw the old links go 0.17-0.20 s after the namespace
        # was removed, polling with the ioctl 1.2-1.5 s (over the 3 s grace under load, so
        # every renewal fell back to deleting the links). Why netlink hastens it is not
        # established.
        return not any(node.rtnl().link_lookup(ifname=name) for node, name in self._peers())


# --- building ---------------------------------------------------------------------------------


def _prefixed(ifaddr: IPAddress) -> int:
    return 32 if ifaddr.version == 4 else 128


def _base_sysctls(node: Node) -> None:
    # before any link exists, so every link created later inherits "default"
    values: dict[str, str | int] = {}
    for conf in ("all", "default"):
        values[f"net/ipv6/conf/{conf}/accept_dad"] = 0
        values[f"net/ipv6/conf/{conf}/dad_transmits"] = 0
        values[f"net/ipv4/conf/{conf}/rp_filter"] = 0
        values[f"net/ipv6/conf/{conf}/accept_ra"] = 0
    node.sysctls(values)
    rtnl_batch.send(node.rtnl(), [rtnl_batch.link_up(1)])  # lo


def _configure_client(net: Net) -> None:
    node = net.client
    # AnyIP on v6 needs non-local bind (bind() checks configured addresses, not routes)
    node.sysctl("net/ipv6/ip_nonlocal_bind", 1)
    node.sysctl("net/ipv4/ip_nonlocal_bind", 1)
    with node.ipr() as ipr:
        for fam in net.topology.families:
            # scope host, as `ip route add local ...` sets it (the kernel rejects universe)
            ipr.route(
                "add",
                dst=str(addresses.CLIENT_POOL[fam]),
                type="local",
                oif=1,
                table=RT_TABLE_LOCAL,
                family=int(fam),
                scope=254 if fam is IPV4 else 0,
            )


def _configure_rs(net: Net, rs: RealServer) -> None:
    node = rs.node
    arp: dict[str, str | int] = {}
    for conf in ("all", "default", "lo"):
        arp[f"net/ipv4/conf/{conf}/arp_ignore"] = 1
        arp[f"net/ipv4/conf/{conf}/arp_announce"] = 2
    node.sysctls(arp)
    rtnl_batch.send(
        node.rtnl(),
        [
            rtnl_batch.address(1, vip, _prefixed(vip))
            for f in net.topology.families
            for vip in net.vips(f)
        ],
    )
    with node.ipr() as ipr:
        # TUN: the fallback devices receive IPIP / IPv6-in-IPv6 to the RIP; the inner
        # packet's destination (a VIP on lo) is local, which is all decapsulation needs
        up: set[Family] = set()
        for fam, fallback, kind, feature in (
            (IPV4, "tunl0", "ipip", net.features.ipip),
            (IPV6, "ip6tnl0", "ip6tnl", net.features.ip6tnl),
        ):
            if not feature or fam not in net.topology.families:
                continue
            ifname = fallback
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                # no per-namespace fallback device (net.core.fb_tunnels_only_for_init_net):
                # a tunnel without endpoints catches the same packets
                ifname = f"{rs.ifname}{'t' if fam is IPV4 else 's'}"
                try:
                    ipr.link("add", ifname=ifname, kind=kind)
                except NetlinkError as exc:
                    if exc.code != 17:  # EEXIST
                        raise
                    # this add loaded the tunnel module, which gave every namespace its
                    # fallback device; ours would duplicate it (same any/any endpoints)
                    ifname = fallback
                found = ipr.link_lookup(ifname=ifname)
            ipr.link("set", index=found[0], state="up")
            if fam is IPV4:
                node.sysctl(f"net/ipv4/conf/{ifname}/rp_filter", 0)
            up.add(fam)
    # capture-only unless every family of the topology has its decapsulation device up
    rs.decap = up == set(net.topology.families)


def _build_switch(net: Net) -> None:
    """The switch: a bridge and nothing else. No IPv6 (no link-local address, no ND or MLD of
    its own), no STP, no forwarding delay, no multicast snooping (every multicast frame
    floods, as on a plain hub: the director's and the real servers' ND always arrive)."""
    sw = net.switch
    sw.sysctls(
        {
            "net/ipv6/conf/all/disable_ipv6": 1,
            "net/ipv6/conf/default/disable_ipv6": 1,
        }
    )
    ipr = sw.rtnl()
    ipr.link(
        "add",
        ifname=net.switch_bridge,
        kind="bridge",
        address=_mac(4, 0, 0),
        br_stp_state=0,
        br_forward_delay=0,
        br_mcast_snooping=0,
        state="up",
    )


def _plug_into_switch(
    net: Net, port: str, port_mac: str, peer: Node, ifname: str, mac: str
) -> None:
    """A veth whose end ``port`` is a port of the switch's bridge, enslaved and up as it is
    created (rtnl_newlink sets IFLA_MASTER and the flags), and whose other end is ``ifname``
    in ``peer``."""
    sw = net.switch.rtnl()
    sw.link(
        "add",
        ifname=port,
        kind="veth",
        address=port_mac,
        master=sw.link_lookup(ifname=net.switch_bridge)[0],
        state="up",
        peer={"ifname": ifname, "net_ns_fd": peer.netns, "address": mac},
    )


def _configure_end(
    node: Node, ifname: str, addrs: Iterable[tuple[IPAddress, int]], gateways: Iterable[IPAddress]
) -> None:
    """The end ``ifname`` of a new link in ``node``, in one batch: its addresses, up, and a
    default route via each of ``gateways``."""
    ipr = node.rtnl()
    index = ipr.link_lookup(ifname=ifname)[0]
    requests: list[rtnl_batch.Request] = [rtnl_batch.address(index, a, p) for a, p in addrs]
    requests.append(rtnl_batch.link_up(index))
    requests += [rtnl_batch.route(None, gateway, index) for gateway in gateways]
    rtnl_batch.send(ipr, requests)


def _connect_rs(net: Net, rs: RealServer) -> None:
    """The real server's link to the switch, configured once: address, default route via the
    DIP, ARP settings of a DR real server."""
    _plug_into_switch(net, rs.switch_port, _mac(4, rs.index + 1, 0), rs.node, rs.ifname, rs.mac)
    fams = net.topology.families
    _configure_end(
        rs.node,
        rs.ifname,
        [(addresses.rip(fam, rs.index), addresses.RS_PREFIX[fam]) for fam in fams],
        [addresses.DIP[fam] for fam in fams],
    )
    rs.node.sysctls(
        {
            f"net/ipv4/conf/{rs.ifname}/arp_ignore": 1,
            f"net/ipv4/conf/{rs.ifname}/arp_announce": 2,
        }
    )


def _build_director(net: Net) -> None:
    """Configure the (new, empty) director namespace and its two links; used by build and
    renew. Each namespace's addresses, links up and routes go in one batch
    (:mod:`harness.rtnl_batch`): this runs before every case, and in a TCG guest its Python was
    most of a case's CPU."""
    d = net.director
    fams = net.topology.families
    _base_sysctls(d)
    director_sysctls: dict[str, str | int] = {
        "net/ipv4/ip_forward": 1,
        "net/ipv6/conf/all/forwarding": 1,
    }
    for conf in ("all", "default"):
        # replies of DR/TUN real servers carry a VIP as source, and the VIP is local here
        director_sysctls[f"net/ipv4/conf/{conf}/accept_local"] = 1
    # after lo is up: written before, "default" would also reach lo (lo.accept_local=1)
    d.sysctls(director_sysctls)
    dip = d.rtnl()
    # client link: created here, the peer directly in the client namespace
    dip.link(
        "add",
        ifname=net.director_client_if,
        kind="veth",
        address=net.director_client_mac(),
        peer={
            "ifname": net.client_if,
            "net_ns_fd": net.client.netns,
            "address": net.client_mac(),
        },
    )
    # segment link: created in the switch, the peer in the director
    _plug_into_switch(
        net, net.switch_director_port, _mac(4, 0, 1), d, net.director_segment_if, net.director_mac()
    )
    dci = dip.link_lookup(ifname=net.director_client_if)[0]
    seg = dip.link_lookup(ifname=net.director_segment_if)[0]
    requests: list[rtnl_batch.Request] = [
        rtnl_batch.address(1, vip, _prefixed(vip)) for fam in fams for vip in net.vips(fam)
    ]
    requests += [
        rtnl_batch.address(dci, addresses.CDIP[fam], addresses.CLIENT_LINK_PREFIX[fam])
        for fam in fams
    ]
    requests.append(rtnl_batch.link_up(dci))
    requests += [
        rtnl_batch.address(seg, addresses.DIP[fam], addresses.RS_PREFIX[fam]) for fam in fams
    ]
    requests.append(rtnl_batch.link_up(seg))
    requests += [
        rtnl_batch.route(addresses.CLIENT_POOL[fam], addresses.CLIENT_LINK_ADDR[fam], dci)
        for fam in fams
    ]
    rtnl_batch.send(dip, requests)
    link_sysctls: dict[str, str | int] = {}
    for ifname in (net.director_client_if, net.director_segment_if):
        link_sysctls[f"net/ipv4/conf/{ifname}/accept_local"] = 1
        link_sysctls[f"net/ipv4/conf/{ifname}/rp_filter"] = 0
    d.sysctls(link_sysctls)
    # the client's end of the new client link
    _configure_end(
        net.client,
        net.client_if,
        [(addresses.CLIENT_LINK_ADDR[fam], addresses.CLIENT_LINK_PREFIX[fam]) for fam in fams],
        [addresses.CDIP[fam] for fam in fams],
    )


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``pred`` until true; TopologyError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not pred():
        if time.monotonic() > deadline:
            raise TopologyError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)  # polling interval of a bounded wait, not a fixed sleep
        delay = min(delay * 2, 0.05)


BRPORT_FORWARDING = 3  # BR_STATE_FORWARDING


def _links_up(ipr: IPRoute, ifnames: list[str]) -> Callable[[], bool]:
    """A poll on one open netlink socket of the namespace (not a new one per poll): every
    link operationally up, a bridge port also forwarding, no IPv6 address tentative."""

    def pred() -> bool:
        for name in ifnames:
            links = ipr.link("get", ifname=name)
            if not links or links[0].get("IFLA_OPERSTATE") != "UP":
                return False
            port = links[0].get(("IFLA_LINKINFO", "IFLA_INFO_SLAVE_DATA"))
            if port is not None and port.get("IFLA_BRPORT_STATE") != BRPORT_FORWARDING:
                return False
        for a in ipr.addr("dump", family=socket.AF_INET6):
            if a.get("IFA_FLAGS", a["flags"]) & IFA_F_TENTATIVE:
                return False
        return True

    return pred


Links = list[tuple[Node, list[str]]]


def _director_links(net: Net) -> Links:
    """The links a director renewal makes, by namespace."""
    return [
        (net.director, [net.director_client_if, net.director_segment_if]),
        (net.client, [net.client_if]),
        (net.switch, [net.switch_director_port]),
    ]


def _all_links(net: Net) -> Links:
    return [
        *_director_links(net),
        (net.switch, [net.switch_bridge] + [r.switch_port for r in net.real_servers]),
        *[(r.node, [r.ifname]) for r in net.real_servers],
    ]


def _wait_ready(net: Net, checks: Links) -> None:
    for node, ifnames in checks:
        wait_until(
            _links_up(node.rtnl(), ifnames),
            READY_TIMEOUT,
            f"links {', '.join(ifnames)} up and addresses usable in {node.netns}",
        )


@contextlib.contextmanager
def build(topology: Topology, run: runs.Run | None = None) -> Iterator[Net]:
    """Build ``topology`` in fresh namespaces of ``run``; tear everything down on exit (LIFO),
    on failure, Ctrl-C and SIGTERM (turned into KeyboardInterrupt in the main thread)."""
    run = run or runs.default_run()
    features = probe(run)
    for kind in ("veth", "bridge"):
        if not getattr(features, kind):
            raise TopologyError(features.missing(kind))
    tid = run.next_id()
    p = run.name(tid)  # e.g. lc3f9a101
    n = topology.real_servers
    net = Net(
        topology=topology,
        run=run,
        id=tid,
        client=Node("client", run.name(f"{tid}-cli")),
        director=Node("director", run.name(f"{tid}-dir")),
        switch=Node("switch", run.name(f"{tid}-sw")),
        real_servers=[
            RealServer(
                index=i,
                node=Node(f"rs{i + 1}", run.name(f"{tid}-rs{i + 1}")),
                ifname=f"{p}r{i + 1}",
                switch_port=f"{p}p{i + 1}",
            )
            for i in range(n)
        ],
        client_if=f"{p}c",
        director_client_if=f"{p}d",
        director_segment_if=f"{p}s",
        switch_bridge=f"{p}br",
        switch_director_port=f"{p}pd",
        features=features,
    )
    with runs.sigterm_as_interrupt(), contextlib.ExitStack() as stack:
        for node in net.nodes:
            # undo registered just *before* creating: a signal between the two lines must not
            # leak the namespace (removal forgives a namespace that was never made)
            stack.callback(runs.remove_netns, node.netns)
            runs.create_netns(node.netns)
            stack.callback(node.close_rtnl)  # before its namespace goes (LIFO)
        for node in (net.client, *net.rs):
            _base_sysctls(node)
        _configure_client(net)
        _build_switch(net)
        for rs in net.real_servers:
            _configure_rs(net, rs)
            _connect_rs(net, rs)
        _build_director(net)
        _wait_ready(net, _all_links(net))
        yield net
