"""Service lookup: ``ip_vs_service_find`` (ctl.c 417 in 6.1.192, ipvs-semantics §1.4).

Order: fwmark service (full 32-bit mark, same af, any protocol) when the packet has a mark;
then the exact <af, proto, vaddr, vport> service; then, for TCP, the FTP fallback to the
service on port 21 (only for vport 20 or vport >= ip_unprivileged_port_start); then the
port-zero service <af, proto, vaddr, 0>.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypeVar

from impl.types import Family, IPAddress, Proto, ServiceKey

FTPPORT = 21
FTPDATA = 20

How = Literal["fwmark", "exact", "ftp-fallback", "port-zero"]
T = TypeVar("T")


def find_service(services: Mapping[ServiceKey, T], family: Family, mark: int, proto: Proto,
                 vaddr: IPAddress, vport: int, unprivileged_port_start: int = 1024,
                 ) -> tuple[T, How] | None:
    """The service a packet hits and which rule found it, or None (packet goes local)."""
    if mark:
        svc = services.get(ServiceKey(family, Proto.TCP, None, 0, mark))
        if svc is not None:
            return svc, "fwmark"
    svc = services.get(ServiceKey(family, proto, vaddr, vport))
    if svc is not None:
        return svc, "exact"
    # ftpsvc_counter / nullsvc_counter only gate the extra lookups; a miss is a miss either way.
    if proto is Proto.TCP and (vport == FTPDATA or vport >= unprivileged_port_start):
        svc = services.get(ServiceKey(family, proto, vaddr, FTPPORT))
        if svc is not None:
            return svc, "ftp-fallback"
    svc = services.get(ServiceKey(family, proto, vaddr, 0))
    if svc is not None:
        return svc, "port-zero"
    return None


def table_key(key: ServiceKey) -> ServiceKey:
    """The key a service is stored under: fwmark services ignore proto/vaddr/vport (netlink
    stores them as TCP, address 0, port 0)."""
    if key.fwmark:
        return ServiceKey(key.family, Proto.TCP, None, 0, key.fwmark)
    return key
