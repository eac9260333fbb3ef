"""Helpers for the model tests: addresses by role, flows, and a director with services."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from impl.director import Director
from impl.types import (
    IPV4,
    IPV6,
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

VIP = ipaddress.IPv4Address("10.0.0.100")
VIP2 = ipaddress.IPv4Address("10.0.0.101")
VIP6 = ipaddress.IPv6Address("2001:db8::100")
RIPS = [ipaddress.IPv4Address(f"10.0.2.{i}") for i in (1, 2, 3)]
RIPS6 = [ipaddress.IPv6Address(f"2001:db8:2::{i}") for i in (1, 2, 3)]


def cip(n: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(f"10.0.1.{n}")


def tcp(
    src: IPAddress,
    sport: int,
    dst: IPAddress = VIP,
    dport: int = 80,
    kind: PacketKind = "syn",
    mark: int = 0,
) -> Flow:
    return Flow(Proto.TCP, src, sport, dst, dport, kind, mark)


def udp(
    src: IPAddress,
    sport: int,
    dst: IPAddress = VIP,
    dport: int = 53,
    mark: int = 0,
    payload: bytes = b"",
) -> Flow:
    return Flow(Proto.UDP, src, sport, dst, dport, "udp", mark, payload)


def key(vport: int = 80, proto: Proto = Proto.TCP, vaddr: IPAddress = VIP) -> ServiceKey:
    return ServiceKey(IPV4 if vaddr.version == 4 else IPV6, proto, vaddr, vport)


def director(*services: tuple[Service, Iterable[Dest]], sysctls: Sysctls | None = None) -> Director:
    d = Director(sysctls=sysctls or Sysctls())
    for svc, dests in services:
        d.add_service(svc)
        for dest in dests:
            d.add_dest(svc.key, dest)
    return d


def dests(
    port: int = 0, fwd: Fwd = Fwd.DR, rips: Iterable[IPAddress] = RIPS, weight: int = 1
) -> list[Dest]:
    return [Dest(r, port, weight, fwd) for r in rips]
