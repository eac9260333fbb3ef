"""Several rtnetlink requests in one ``sendmsg``: what the topology sends each director renewal.

pyroute2's keyword API (``IPRoute.addr("add", ...)``) normalises its arguments and runs an
asyncio event loop for every request. A director renewal made ~84 such requests; in a TCG guest
that Python, not the kernel's work, was most of a renewal's 0.86 s of CPU (measured:
docs/architecture.md §6, item 16). Here the messages are built directly as pyroute2's own
message classes and sent together with ``nlm_request_batch``: the kernel handles the messages of
one ``sendmsg`` in order (``netlink_rcv_skb``), so an address, the link's ``up`` and a route
through that link can go in one batch. Every message asks for an ACK, so an error is raised
as pyroute2's :class:`NetlinkError`, exactly as from the keyword API.

Only the requests the topology needs, with the values the keyword API would send: addresses
(``IFA_LOCAL`` for IPv4 as ``ip addr add`` does), ``up``, and unicast routes in the main table
with ``proto static``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from impl.types import IPAddress, IPNetwork

IFA_F_NODAD = 0x02
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
CHANGE = NLM_F_REQUEST | NLM_F_ACK

Request = ifaddrmsg | ifinfmsg | rtmsg


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def address(index: int, addr: IPAddress, prefixlen: int) -> ifaddrmsg:
    """Add ``addr/prefixlen`` on link ``index``; IPv6 without DAD (usable at once)."""
    msg = ifaddrmsg()
    msg["family"] = _family(addr.version)
    msg["prefixlen"] = prefixlen
    msg["flags"] = IFA_F_NODAD if addr.version == 6 else 0
    msg["scope"] = RT_SCOPE_UNIVERSE
    msg["index"] = index
    attrs = [["IFA_ADDRESS", str(addr)]]
    if addr.version == 4:
        attrs.append(["IFA_LOCAL", str(addr)])
    msg["attrs"] = attrs
    msg["header"]["type"] = RTM_NEWADDR
    msg["header"]["flags"] = CREATE
    return msg


def link_up(index: int) -> ifinfmsg:
    """Set link ``index`` up (only the IFF_UP bit changes)."""
    msg = ifinfmsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = index
    msg["flags"] = IFF_UP
    msg["change"] = IFF_UP
    msg["header"]["type"] = RTM_NEWLINK
    msg["header"]["flags"] = CHANGE
    return msg


def route(dst: IPNetwork | None, gateway: IPAddress, oif: int) -> rtmsg:
    """A unicast route to ``dst`` (None: the default route) via ``gateway`` on link ``oif``."""
    msg = rtmsg()
    msg["family"] = _family(gateway.version)
    msg["dst_len"] = 0 if dst is None else dst.prefixlen
    msg["table"] = RT_TABLE_MAIN
    msg["proto"] = RTPROT_STATIC
    msg["scope"] = RT_SCOPE_UNIVERSE
    msg["type"] = RTN_UNICAST
    attrs = [["RTA_GATEWAY", str(gateway)], ["RTA_OIF", oif]]
    if dst is not None:
        attrs.insert(0, ["RTA_DST", str(dst.network_address)])
    msg["attrs"] = attrs
    msg["header"]["type"] = RTM_NEWROUTE
    msg["header"]["flags"] = CREATE
    return msg


def send(ipr: IPRoute, requests: Iterable[Request]) -> None:
    """Send ``requests`` in one ``sendmsg`` and wait for every ACK; the first error raises."""
    for _ in ipr.nlm_request_batch(list(requests)):
        pass
