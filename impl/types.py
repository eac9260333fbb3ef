"""Shared vocabulary of lvsconf (see docs/architecture.md §3).

Pure data: frozen dataclasses and enums, no I/O. Both the reference model (``impl``) and the
harness (``harness``) speak these types, so an outcome observed on the wire and a decision of
the model can be compared field by field.

Address conventions: addresses are ``ipaddress`` objects; ports are host-order ints; a fwmark
is a full 32-bit unsigned int (0 = no mark).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


class Family(enum.IntEnum):
    """Address family, valued as the kernel's AF_* constant."""

    IPV4 = 2
    IPV6 = 10

    @property
    def label(self) -> str:
        return "ipv4" if self is Family.IPV4 else "ipv6"

    @classmethod
    def of(cls, addr: IPAddress) -> Family:
        return cls.IPV4 if addr.version == 4 else cls.IPV6


IPV4 = Family.IPV4
IPV6 = Family.IPV6


class Proto(enum.IntEnum):
    """IP protocol numbers. ``IP`` (0) is what fwmark templates carry."""

    IP = 0
    TCP = 6
    UDP = 17
    SCTP = 132
    # Never scheduled (docs/semantics.md §1.8): a ping to the VIP is answered by the director.
    ICMP = 1
    ICMPV6 = 58

    @property
    def label(self) -> str:
        return self.name.lower()


class Fwd(enum.Enum):
    """Forwarding method of a real server; ``kernel`` is IP_VS_CONN_F_* (uapi)."""

    NAT = "nat"  # IP_VS_CONN_F_MASQ
    LOCAL = "local"  # IP_VS_CONN_F_LOCALNODE
    TUN = "tun"  # IP_VS_CONN_F_TUNNEL
    DR = "dr"  # IP_VS_CONN_F_DROUTE

    @property
    def kernel(self) -> int:
        return {"nat": 0, "local": 1, "tun": 2, "dr": 3}[self.value]

    @classmethod
    def from_kernel(cls, value: int) -> Fwd:
        return {0: cls.NAT, 1: cls.LOCAL, 2: cls.TUN, 3: cls.DR}[value & 0x7]


class SvcFlag(enum.IntFlag):
    """IP_VS_SVC_F_* (uapi ip_vs.h 21-29)."""

    NONE = 0
    PERSISTENT = 0x1
    HASHED = 0x2
    ONEPACKET = 0x4
    SCHED1 = 0x8  # sh-fallback / mh-fallback
    SCHED2 = 0x10  # sh-port / mh-port
    SCHED3 = 0x20


def full_netmask(family: Family) -> int:
    """The netmask value meaning "one client per template" for ``family``."""
    return 0xFFFFFFFF if family is Family.IPV4 else 128


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """How a service is addressed: ``fwmark`` != 0 for fwmark services, else proto/vaddr/vport."""

    family: Family
    proto: Proto = Proto.TCP
    vaddr: IPAddress | None = None
    vport: int = 0
    fwmark: int = 0

    def __str__(self) -> str:
        if self.fwmark:
            return f"FWM {self.fwmark}" + (" IPv6" if self.family is Family.IPV6 else "")
        assert self.vaddr is not None
        host = f"[{self.vaddr}]" if self.family is Family.IPV6 else str(self.vaddr)
        return f"{self.proto.name} {host}:{self.vport}"


@dataclass(frozen=True, slots=True)
class Service:
    """A virtual service.

    ``timeout`` is the persistence timeout in seconds; ``None`` means not persistent.
    ``netmask``: for IPv4 the 32-bit mask as a host-order int (0xFFFFFF00 = /24; need not be
    contiguous); for IPv6 the prefix length 1..128.
    ``sched_flags`` carries SCHED1..3 only; PERSISTENT and ONEPACKET come from ``timeout``/``ops``.
    """

    key: ServiceKey
    scheduler: str = "rr"
    timeout: int | None = None
    netmask: int | None = None  # None = full_netmask(family)
    ops: bool = False
    sched_flags: SvcFlag = SvcFlag.NONE
    pe: str | None = None

    @property
    def family(self) -> Family:
        return self.key.family

    @property
    def persistent(self) -> bool:
        return self.timeout is not None

    @property
    def mask(self) -> int:
        return full_netmask(self.family) if self.netmask is None else self.netmask

    @property
    def flags(self) -> SvcFlag:
        f = self.sched_flags & (SvcFlag.SCHED1 | SvcFlag.SCHED2 | SvcFlag.SCHED3)
        if self.persistent:
            f |= SvcFlag.PERSISTENT
        if self.ops:
            f |= SvcFlag.ONEPACKET
        return SvcFlag(f)


@dataclass(frozen=True, slots=True)
class Dest:
    """A real server of one service. ``port`` 0 means "keep the packet's port"."""

    addr: IPAddress
    port: int = 0
    weight: int = 1
    fwd: Fwd = Fwd.DR
    u_threshold: int = 0
    l_threshold: int = 0

    @property
    def family(self) -> Family:
        return Family.of(self.addr)

    def __str__(self) -> str:
        host = f"[{self.addr}]" if self.addr.version == 6 else str(self.addr)
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class FwmarkRule:
    """Packets matching this rule get ``mark`` before IPVS sees them (nft mangle prerouting).

    ``proto`` None matches TCP, UDP and SCTP; ``dports`` is an inclusive range, None = any port.
    """

    mark: int
    family: Family
    daddr: IPNetwork
    proto: Proto | None = None
    dports: tuple[int, int] | None = None

    def matches(self, flow: Flow) -> bool:
        if flow.family is not self.family or flow.daddr not in self.daddr:
            return False
        if self.proto is not None and flow.proto is not self.proto:
            return False
        return self.dports is None or self.dports[0] <= flow.dport <= self.dports[1]


# What a packet is, as far as scheduling cares (docs/semantics.md §1.3).
PacketKind = Literal[
    "syn", "synack", "ack", "fin", "rst", "udp", "init", "abort", "data", "echo"
]  # echo: ICMP / ICMPv6 echo request (sport = its identifier)
# Flow.packet_kind when ``kind`` is None: the first packet of a new connection.
_DEFAULT_KIND: dict[Proto, PacketKind] = {
    Proto.TCP: "syn",
    Proto.UDP: "udp",
    Proto.SCTP: "init",
    Proto.ICMP: "echo",
    Proto.ICMPV6: "echo",
}


@dataclass(frozen=True, slots=True)
class Flow:
    """One packet from a client: by default the first packet of a new connection.

    ``kind`` is the TCP flag pattern / SCTP chunk (``syn`` for TCP, ``udp`` for UDP, ``init``
    for SCTP by default). ``mark`` is the fwmark netfilter would set; the harness computes it
    from the scenario's FwmarkRules. ``payload`` is carried by UDP (e.g. a SIP message).
    """

    proto: Proto
    saddr: IPAddress
    sport: int
    daddr: IPAddress
    dport: int
    kind: PacketKind | None = None
    mark: int = 0
    payload: bytes = b""

    @property
    def family(self) -> Family:
        return Family.of(self.saddr)

    @property
    def packet_kind(self) -> PacketKind:
        if self.kind is not None:
            return self.kind
        return _DEFAULT_KIND.get(self.proto, "data")  # a module constant: read on every packet

    def with_mark(self, mark: int) -> Flow:
        return Flow(
            self.proto,
            self.saddr,
            self.sport,
            self.daddr,
            self.dport,
            self.kind,
            mark,
            self.payload,
        )

    def __str__(self) -> str:
        def ep(a: IPAddress, p: int) -> str:
            return f"[{a}]:{p}" if a.version == 6 else f"{a}:{p}"

        kind = f" {self.kind}" if self.kind is not None else ""
        mark = f" mark={self.mark}" if self.mark else ""
        src, dst = ep(self.saddr, self.sport), ep(self.daddr, self.dport)
        return f"{self.proto.label} {src} -> {dst}{kind}{mark}"


DecisionKind = Literal["forward", "unreachable", "drop", "local"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What a director does with one packet.

    forward: sent to ``dest`` (address, forwarded port ``dport``, method ``fwd``);
    unreachable: ICMP/ICMPv6 port unreachable back to the client, packet dropped;
    drop: silently dropped; local: not balanced, handed to the director's own stack.
    """

    kind: DecisionKind
    dest: IPAddress | None = None
    dport: int | None = None
    fwd: Fwd | None = None
    reason: str = ""

    def __str__(self) -> str:
        if self.kind != "forward":
            return self.kind
        assert self.dest is not None
        host = f"[{self.dest}]" if self.dest.version == 6 else str(self.dest)
        return f"forward {host}:{self.dport} ({self.fwd.value if self.fwd else '?'})"


TemplateState = Literal["NONE", "ASSURED"]


@dataclass(frozen=True, slots=True)
class Template:
    """A persistence template as ``/proc/net/ip_vs_conn`` shows it.

    ``vaddr`` is the VIP, or for fwmark templates (proto IP) the address whose first 32 bits are
    the mark (IPv4 ``0.0.0.N``). ``expires`` is whole seconds left (None when not known).
    Invalidated templates have ``dport == 0xFFFF`` (before 7.2 also ``vport == 0xFFFF``: see
    :attr:`impl.kernel_level.KernelLevel.invalidate_by_dport`).
    """

    family: Family
    proto: Proto
    caddr: IPAddress
    cport: int
    vaddr: IPAddress
    vport: int
    daddr: IPAddress
    dport: int
    state: TemplateState = "NONE"
    expires: int | None = None
    pe_name: str = ""
    pe_data: str = ""

    @property
    def key(self) -> tuple[Family, Proto, IPAddress, IPAddress, int, str]:
        """The lookup key (first five fields, plus pe data); what persistence is keyed on."""
        return (self.family, self.proto, self.caddr, self.vaddr, self.vport, self.pe_data)

    @property
    def invalidated(self) -> bool:
        """ip_vs_check_template sets dport 0xFFFF in every release (5.10-7.2); only before 7.2 did
        it also move the template to vport 0xFFFF. (A template to a real server on port 65535
        reads the same; on 7.2 it is as unfindable as an invalidated one.)"""
        return self.dport == 0xFFFF


@dataclass(frozen=True, slots=True)
class Connection:
    """A (non-template) connection as ``/proc/net/ip_vs_conn`` shows it."""

    family: Family
    proto: Proto
    caddr: IPAddress
    cport: int
    vaddr: IPAddress
    vport: int
    daddr: IPAddress
    dport: int
    state: str
    expires: int | None = None


@dataclass(frozen=True, slots=True)
class Sysctls:
    """``net.ipv4.vs.*`` values that change outcomes (docs/semantics.md §6), kernel defaults."""

    expire_quiescent_template: int = 0
    expire_nodest_conn: int = 0
    conn_reuse_mode: int = 1
    sloppy_tcp: int = 0
    sloppy_sctp: int = 0
    schedule_icmp: int = 0
    cache_bypass: int = 0
    conntrack: int = 0
    # Not a vs sysctl: net.ipv4.ip_unprivileged_port_start (FTP fallback threshold).
    ip_unprivileged_port_start: int = 1024

    def changed(self) -> dict[str, int]:
        """Only the values that differ from the kernel defaults."""
        base = Sysctls()
        return {f: getattr(self, f) for f in self.__slots__ if getattr(self, f) != getattr(base, f)}


@dataclass(frozen=True, slots=True)
class ProtoTimeouts:
    """IPVS protocol timeouts in seconds (IPVS_CMD_SET_CONFIG): tcp, tcpfin, udp."""

    tcp: int = 900
    tcpfin: int = 120
    udp: int = 300


__all__ = [
    "IPAddress",
    "IPNetwork",
    "Family",
    "IPV4",
    "IPV6",
    "Proto",
    "Fwd",
    "SvcFlag",
    "full_netmask",
    "ServiceKey",
    "Service",
    "Dest",
    "FwmarkRule",
    "PacketKind",
    "Flow",
    "DecisionKind",
    "Decision",
    "TemplateState",
    "Template",
    "Connection",
    "Sysctls",
    "ProtoTimeouts",
    "field",
]
