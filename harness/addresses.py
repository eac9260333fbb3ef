"""The addressing plan: every address a topology uses, named by role.

Only 198.18.0.0/15 and 2001:db8::/32 (benchmarking / documentation ranges), and only inside the
run's own namespaces::

        CIP pool (AnyIP on client lo)                     RIPs on the real-server segment
   198.18.16.0/20 | 2001:db8:c0::/48                   198.18.10.11.. | 2001:db8:a::11..
        +--------+   198.18.0.2 / 2001:db8::2        +----------+ DIP 198.18.10.1 / 2001:db8:a::1
        | client |==================================|          |== switch (bridge) == rs1 rs2 ...
        +--------+   198.18.0.1 / 2001:db8::1  (CDIP)| director |
                                 +----------+ VIPs 198.19.0.1.. | 2001:db8:f::1.. (director lo)

VIPs are local on the director (kernel IPVS needs LOCAL_IN) and on every real server's loopback
(DR; and TUN, whose decapsulated packets need a local destination).
"""

from __future__ import annotations

import ipaddress

from impl.types import IPV4, Family, IPAddress, IPNetwork

#: client <-> director link
CDIP = {IPV4: ipaddress.ip_address("198.18.0.1"), Family.IPV6: ipaddress.ip_address("2001:db8::1")}
CLIENT_LINK_ADDR = {
    IPV4: ipaddress.ip_address("198.18.0.2"),
    Family.IPV6: ipaddress.ip_address("2001:db8::2"),
}
CLIENT_LINK_PREFIX = {IPV4: 24, Family.IPV6: 64}

#: the whole client pool (routed to the client; AnyIP there): 16 client networks
CLIENT_POOL: dict[Family, IPNetwork] = {
    IPV4: ipaddress.ip_network("198.18.16.0/20"),
    Family.IPV6: ipaddress.ip_network("2001:db8:c0::/48"),
}
CLIENT_NETS = 16

#: director <-> real servers segment
DIP = {
    IPV4: ipaddress.ip_address("198.18.10.1"),
    Family.IPV6: ipaddress.ip_address("2001:db8:a::1"),
}
RS_PREFIX = {IPV4: 24, Family.IPV6: 64}

#: virtual addresses
VIP_NET: dict[Family, IPNetwork] = {
    IPV4: ipaddress.ip_network("198.19.0.0/24"),
    Family.IPV6: ipaddress.ip_network("2001:db8:f::/64"),
}
VIPS = 8


def cip(family: Family, net: int = 0, host: int = 1) -> IPAddress:
    """Client address ``host`` (1..254) in client network ``net`` (0..15).

    IPv4 networks are /24s (198.18.16+net.host); IPv6 networks are /64s (2001:db8:c0:net::host).
    """
    if not (0 <= net < CLIENT_NETS and 1 <= host <= 254):
        raise ValueError(f"client address out of plan: net={net} host={host}")
    if family is IPV4:
        return ipaddress.ip_address(f"198.18.{16 + net}.{host}")
    return ipaddress.ip_address(f"2001:db8:c0:{net:x}::{host:x}")


def vip(family: Family, index: int = 0) -> IPAddress:
    """Virtual address ``index`` (0..7)."""
    if not 0 <= index < VIPS:
        raise ValueError(f"VIP index out of plan: {index}")
    if family is IPV4:
        return ipaddress.ip_address(f"198.19.0.{1 + index}")
    return ipaddress.ip_address(f"2001:db8:f::{1 + index:x}")


def rip(family: Family, index: int) -> IPAddress:
    """Real server ``index`` (0-based: rs1 is index 0) on the director's segment."""
    if not 0 <= index < 200:
        raise ValueError(f"real server index out of plan: {index}")
    if family is IPV4:
        return ipaddress.ip_address(f"198.18.10.{11 + index}")
    return ipaddress.ip_address(f"2001:db8:a::{0x11 + index:x}")


def rs_index(addr: IPAddress) -> int | None:
    """Inverse of :func:`rip`: which real server owns ``addr`` (None if none)."""
    family = Family.of(addr)
    index = int(addr) - int(rip(family, 0))
    return index if 0 <= index < 200 and rip(family, index) == addr else None
