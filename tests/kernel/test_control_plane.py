"""Control-plane round trip on a real kernel: what the kernel reports equals what was asked.

Each case configures kernel IPVS in a fresh director namespace through the adapter (which reads
every change back and raises on a mismatch), then checks the kernel's own views independently:
the netlink dump and ``/proc/net/ip_vs`` (persistence timeout in jiffies, netmask in hex).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from harness import runs
from harness.addresses import DIP, RS_PREFIX, rip, vip
from harness.implementations.kernel import KernelDirector, configure, decode_netmask, in_netns
from impl.scenario import Scenario, ServiceConfig
from impl.types import IPV4, IPV6, Dest, Fwd, Proto, Service, ServiceKey, SvcFlag

pytestmark = [pytest.mark.kernel, pytest.mark.netns]


@pytest.fixture
def director_ns() -> Iterator[str]:
    """name: a fresh namespace carrying the run prefix, with a veth pair holding the DIPs (IPVS
    refuses a dest whose address is not unicast-routable there); scope: function; removed after.
    """
    run = runs.default_run()
    name = run.name(f"k{run.next_id()}")
    runs.create_netns(name)
    try:
        with runs.enter_netns(name):
            ipr = IPRoute()  # opened inside, stays bound to the namespace
        with ipr:
            ipr.link("add", ifname="d0", kind="veth", peer="d1")
            for ifname in ("d0", "d1", "lo"):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
            d0 = ipr.link_lookup(ifname="d0")[0]
            for fam in (IPV4, IPV6):
                ipr.addr("add", index=d0, address=str(DIP[fam]), prefixlen=RS_PREFIX[fam])
        yield name
    finally:
        runs.remove_netns(name)


def _proc_ip_vs(netns: str) -> str:
    def read() -> str:
        with open("/proc/thread-self/net/ip_vs") as f:
            return f.read()

    return in_netns(netns, read)


V4 = ServiceKey(IPV4, Proto.TCP, vip(IPV4, 0), 80)
SERVICES = [
    Service(V4, "rr", timeout=300, netmask=0xFFFFFF00),
    Service(ServiceKey(IPV4, Proto.UDP, vip(IPV4, 1), 53), "wrr", timeout=60, ops=True),
    Service(ServiceKey(IPV4, Proto.SCTP, vip(IPV4, 2), 38412), "sh", sched_flags=SvcFlag.SCHED1),
    Service(ServiceKey(IPV4, Proto.TCP, vip(IPV4, 3), 0), "lc", timeout=20),  # port zero
    Service(ServiceKey(IPV4, fwmark=3), "rr", timeout=30, netmask=0xFFFF0000),
    Service(
        ServiceKey(IPV6, Proto.TCP, vip(IPV6, 0), 443),
        "mh",
        timeout=120,
        netmask=64,
        sched_flags=SvcFlag.SCHED2,
    ),
    Service(ServiceKey(IPV6, Proto.UDP, vip(IPV6, 1), 5060), "rr", timeout=90, pe="sip", ops=True),
    Service(ServiceKey(IPV6, fwmark=7), "wlc", timeout=15, netmask=48),
    Service(ServiceKey(IPV6, Proto.SCTP, vip(IPV6, 2), 9), "rr"),  # not persistent
]


def _dests(svc: Service) -> tuple[Dest, ...]:
    fam = svc.family
    return (
        Dest(rip(fam, 0), 0 if svc.key.vport == 0 else svc.key.vport, weight=3, fwd=Fwd.DR),
        Dest(rip(fam, 1), 8080, weight=0, fwd=Fwd.NAT, u_threshold=100, l_threshold=10),
        Dest(rip(fam, 2), svc.key.vport, weight=65535, fwd=Fwd.TUN),
    )


def test_every_service_kind_and_dest_option_round_trips(director_ns: str) -> None:
    scenario = Scenario("control-plane", tuple(ServiceConfig(s, _dests(s)) for s in SERVICES), ())
    with configure(director_ns, scenario) as director:
        for svc in SERVICES:
            got = director.dump_service(svc.key)
            assert got["sched_name"] == svc.scheduler, svc.key
            assert int(got["flags"]["flags"]) & ~int(SvcFlag.HASHED) == int(svc.flags), svc.key
            assert got["timeout"] == (svc.timeout or 0), svc.key
            assert decode_netmask(svc.family, got["netmask"]) == svc.mask, svc.key
            assert (got.get("pe_name") or None) == svc.pe, svc.key
            dests = {
                (ipaddress.ip_address(d["addr"]), d["port"]): d
                for d in director.dump_dests(svc.key)
            }
            for want in _dests(svc):
                d = dests[(want.addr, want.port)]
                assert (int(d["fwd_method"]) & 7, d["weight"], d["u_thresh"], d["l_thresh"]) == (
                    want.fwd.kernel,
                    want.weight,
                    want.u_threshold,
                    want.l_threshold,
                ), want
            text = _proc_ip_vs(director_ns)
    # /proc/net/ip_vs, independently of netlink: "persistent <jiffies> <ntohl(netmask) %08X>"
    tcp = _persistence(text, "TCP  C6130001:0050 rr ")
    fwm = _persistence(text, "FWM  00000003 rr ")
    assert tcp is not None and fwm is not None, text
    assert (tcp[1], fwm[1]) == (0xFFFFFF00, 0xFFFF0000), text
    hz = tcp[0] // 300
    assert hz in (100, 250, 300, 1000) and tcp[0] == 300 * hz and fwm[0] == 30 * hz, text
    assert _persistence(text, "SCTP  C6130003:960C sh ") is None, text


def _persistence(text: str, prefix: str) -> tuple[int, int] | None:
    """(timeout in jiffies, printed netmask) of the service line starting with ``prefix``."""
    line = next(ln for ln in text.splitlines() if ln.startswith(prefix))
    if "persistent" not in line:
        return None
    jiffies, mask = line.split("persistent")[1].split()
    return int(jiffies), int(mask, 16)


def test_ipv6_prefix_length_reaches_the_kernel_as_a_prefix(director_ns: str) -> None:
    """pyroute2 types NETMASK as ip4addr: the adapter packs the prefix so the kernel reads it."""
    svc = Service(ServiceKey(IPV6, Proto.TCP, vip(IPV6, 0), 80), "rr", timeout=60, netmask=64)
    with configure(director_ns, Scenario("v6", (ServiceConfig(svc),), ())) as director:
        got = director.dump_service(svc.key)
        text = _proc_ip_vs(director_ns)
    assert decode_netmask(IPV6, got["netmask"]) == 64
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("TCP  [2001:0db8:000f:0000:0000:0000:0000:0001]:0050 rr ")
    )
    # the kernel stores the prefix length as a host-order u32 and prints ntohl() of it
    assert socket.htonl(int(line.split()[-1], 16)) == 64, line


def test_edit_remove_readd_dest_and_edit_service(director_ns: str) -> None:
    dest = Dest(rip(IPV4, 0), 80, weight=2)
    scenario = Scenario("edit", (ServiceConfig(SERVICES[0], (dest,)),), ())
    with configure(director_ns, scenario) as director:
        assert isinstance(director, KernelDirector)
        director.edit_dest(V4, Dest(rip(IPV4, 0), 80, weight=0))
        assert director.dump_dests(V4)[0]["weight"] == 0
        director.del_dest(V4, rip(IPV4, 0), 80)
        assert director.dump_dests(V4) == []
        director.add_dest(V4, Dest(rip(IPV4, 0), 80, weight=5, fwd=Fwd.NAT))
        director.edit_service(Service(V4, "wrr", timeout=10, netmask=0xFFFFFFFF))
        got = director.dump_service(V4)
        assert (got["sched_name"], got["timeout"]) == ("wrr", 10)
        director.set_sysctl("expire_quiescent_template", 1)
        path = Path("/proc/sys/net/ipv4/vs/expire_quiescent_template")
        assert in_netns(director_ns, lambda: path.read_text().strip()) == "1"
        assert director.templates() == [] and director.connections() == []
