"""Raw IP packets as the datapath sees them: parse into a Flow, rewrite for NAT, answer ICMP.

Plain ``struct`` work on a ``bytearray`` (no scapy in the per-packet path: it is ~100x slower).
Offsets are kept from parsing so a rewrite touches only the bytes that change and patches the
checksums incrementally, as the kernel's ``ip_vs_nat_xmit`` handlers do.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from impl.datapath.checksum import crc32c, csum_replace, inet_checksum, pseudo_header
from impl.types import Family, Flow, IPAddress, PacketKind, Proto

TCP, UDP, SCTP, ICMP, ICMPV6 = 6, 17, 132, 1, 58
_SCHEDULABLE = {TCP: Proto.TCP, UDP: Proto.UDP, SCTP: Proto.SCTP}
# IPv6 extension headers that may precede the transport header (RFC 8200 §4.1)
_V6_EXT = {0, 43, 60}
_V6_FRAG = 44
_V6_AH = 51

#: ICMP errors carry at most this much (RFC 1812 4.3.2.3: 576 bytes; RFC 4443 2.4(c): 1280)
ICMP4_LIMIT = 576
ICMP6_LIMIT = 1280


class PacketError(ValueError):
    """A packet could not be parsed or rewritten (the message says which field)."""


@dataclass(slots=True)
class Packet:
    """One IP packet with the offsets a rewrite needs.

    ``l4`` is the transport header offset, or -1 for a non-first fragment (no transport header).
    ``kind`` is None when the transport header is missing or truncated: such a packet can never
    be scheduled (the kernel would not see it before reassembly either).
    """

    data: bytearray
    family: Family
    proto: int
    l4: int
    sport: int = 0
    dport: int = 0
    kind: PacketKind | None = None
    fragmented: bool = False

    src: bytes = b""
    dst: bytes = b""

    @property
    def _src_off(self) -> int:
        return 12 if self.family is Family.IPV4 else 8

    @property
    def _dst_off(self) -> int:
        return 16 if self.family is Family.IPV4 else 24

    @property
    def dont_fragment(self) -> bool:
        """IPv4 DF set; always true for IPv6 (routers never fragment it)."""
        return self.family is Family.IPV6 or bool(self.data[6] & 0x40)

    @property
    def schedulable(self) -> bool:
        return self.kind is not None and self.proto in _SCHEDULABLE

    def payload(self) -> bytes:
        """The transport payload (UDP only; what the SIP persistence engine reads)."""
        if self.proto != UDP or self.l4 < 0:
            return b""
        return bytes(self.data[self.l4 + 8 :])


def parse(data: bytes | bytearray) -> Packet:
    """Parse an IPv4/IPv6 packet (no link header). Raises :class:`PacketError` if malformed."""
    buf = bytearray(data)
    if not buf:
        raise PacketError("empty packet")
    version = buf[0] >> 4
    if version == 4:
        if len(buf) < 20:
            raise PacketError(f"IPv4 packet shorter than its header ({len(buf)} bytes)")
        ihl = (buf[0] & 0x0F) * 4
        if ihl < 20 or len(buf) < ihl:
            raise PacketError(f"IPv4 header length {ihl} invalid for a {len(buf)}-byte packet")
        proto = buf[9]
        frag = struct.unpack_from("!H", buf, 6)[0]
        offset, more = frag & 0x1FFF, bool(frag & 0x2000)
        pkt = Packet(
            buf,
            Family.IPV4,
            proto,
            -1 if offset else ihl,
            fragmented=bool(offset or more),
            src=bytes(buf[12:16]),
            dst=bytes(buf[16:20]),
        )
    elif version == 6:
        if len(buf) < 40:
            raise PacketError(f"IPv6 packet shorter than its header ({len(buf)} bytes)")
        nh, off, fragmented, first = buf[6], 40, False, True
        for _ in range(8):  # bounded walk over the extension header chain
            if nh in _V6_EXT or nh == _V6_AH:
                if len(buf) < off + 2:
                    raise PacketError("IPv6 extension header truncated")
                step = (buf[off + 1] + 2) * 4 if nh == _V6_AH else (buf[off + 1] + 1) * 8
                nh, off = buf[off], off + step
            elif nh == _V6_FRAG:
                if len(buf) < off + 8:
                    raise PacketError("IPv6 fragment header truncated")
                fo = struct.unpack_from("!H", buf, off + 2)[0]
                fragmented, first = True, (fo >> 3) == 0
                nh, off = buf[off], off + 8
            else:
                break
        pkt = Packet(
            buf,
            Family.IPV6,
            nh,
            off if first else -1,
            fragmented=fragmented,
            src=bytes(buf[8:24]),
            dst=bytes(buf[24:40]),
        )
    else:
        raise PacketError(f"not an IP packet (version {version})")
    _parse_transport(pkt)
    return pkt


def _parse_transport(pkt: Packet) -> None:
    buf, o = pkt.data, pkt.l4
    if o < 0 or pkt.proto not in _SCHEDULABLE:
        return
    need = {TCP: 20, UDP: 8, SCTP: 13}[pkt.proto]
    if len(buf) < o + need:
        return  # truncated: kind stays None, never scheduled
    pkt.sport, pkt.dport = struct.unpack_from("!HH", buf, o)
    if pkt.proto == TCP:
        flags = buf[o + 13]
        if flags & 0x04:
            pkt.kind = "rst"
        elif flags & 0x02:
            pkt.kind = "synack" if flags & 0x10 else "syn"
        elif flags & 0x01:
            pkt.kind = "fin"
        else:
            pkt.kind = "ack"
    elif pkt.proto == UDP:
        pkt.kind = "udp"
    else:
        chunk = buf[o + 12]
        pkt.kind = "init" if chunk == 1 else "abort" if chunk == 6 else "data"


class AddressCache:
    """bytes -> ipaddress object, memoised: building ipaddress objects dominates per-packet cost."""

    def __init__(self, limit: int = 65536) -> None:
        self._map: dict[bytes, IPAddress] = {}
        self._limit = limit

    def __call__(self, raw: bytes) -> IPAddress:
        addr = self._map.get(raw)
        if addr is None:
            if len(self._map) >= self._limit:
                self._map.clear()
            addr = ipaddress.ip_address(raw)
            self._map[raw] = addr
        return addr


def flow_of(pkt: Packet, addr: AddressCache, payload: bool = True) -> Flow:
    """The model's view of ``pkt`` (no mark: the caller applies the scenario's fwmark rules).

    ``payload``: carry the UDP payload (only a persistence engine such as SIP reads it)."""
    if not pkt.schedulable:
        raise PacketError(f"protocol {pkt.proto} packet without a transport header has no flow")
    return Flow(
        _SCHEDULABLE[pkt.proto],
        addr(pkt.src),
        pkt.sport,
        addr(pkt.dst),
        pkt.dport,
        pkt.kind,
        0,
        pkt.payload() if payload else b"",
    )


def _rewrite(pkt: Packet, dst: bool, addr: IPAddress, port: int) -> None:
    raw = addr.packed
    buf = pkt.data
    v4 = pkt.family is Family.IPV4
    if len(raw) != (4 if v4 else 16):
        raise PacketError(f"cannot put {addr} into an {pkt.family.label} header")
    aoff = pkt._dst_off if dst else pkt._src_off
    old_addr = pkt.dst if dst else pkt.src
    buf[aoff : aoff + len(raw)] = raw
    if dst:
        pkt.dst = raw
    else:
        pkt.src = raw
    if v4:  # header checksum covers the addresses: patch it like the L4 one
        struct.pack_into(
            "!H", buf, 10, csum_replace(struct.unpack_from("!H", buf, 10)[0], old_addr, raw)
        )
    o = pkt.l4
    if o < 0 or pkt.kind is None:
        return  # non-first fragment: only the address changes (no transport header here)
    poff = o + (2 if dst else 0)
    old_port = bytes(buf[poff : poff + 2])
    new_port = port.to_bytes(2, "big")
    buf[poff : poff + 2] = new_port
    if dst:
        pkt.dport = port
    else:
        pkt.sport = port
    if pkt.proto == SCTP:
        # CRC32c has no incremental form: recompute it over the whole SCTP packet
        # (as sctp_dnat_handler does)
        buf[o + 8 : o + 12] = b"\0\0\0\0"
        struct.pack_into("<I", buf, o + 8, crc32c(buf[o:]))
        return
    coff = o + (16 if pkt.proto == TCP else 6)
    csum = struct.unpack_from("!H", buf, coff)[0]
    if pkt.proto == UDP and csum == 0 and v4:
        return  # IPv4 UDP without checksum stays without
    # one pass over address and port: both are covered (pseudo-header and header)
    csum = csum_replace(csum, old_addr + old_port, raw + new_port)
    if pkt.proto == UDP and csum == 0:
        csum = 0xFFFF  # 0 means "no checksum" for UDP (RFC 768)
    struct.pack_into("!H", buf, coff, csum)


def rewrite_dst(pkt: Packet, addr: IPAddress, port: int) -> None:
    """NAT towards the real server: destination becomes ``addr``:``port`` (ip_vs_nat_xmit)."""
    _rewrite(pkt, True, addr, port)


def rewrite_src(pkt: Packet, addr: IPAddress, port: int) -> None:
    """NAT reply: source becomes the VIP ``addr``:``port`` (ip_vs_snat handlers)."""
    _rewrite(pkt, False, addr, port)


def undo_forward_hop(pkt: Packet) -> None:
    """Give back the hop the kernel took when it routed the packet into the TUN.

    IPVS sees a packet at LOCAL_IN, before any TTL decrement; the datapath reads it after the
    director forwarded it into the TUN. Quoting it in an ICMP error needs the original TTL.
    """
    buf = pkt.data
    if pkt.family is Family.IPV4:
        if buf[8] < 255:
            old = bytes(buf[8:10])
            buf[8] += 1
            struct.pack_into(
                "!H",
                buf,
                10,
                csum_replace(struct.unpack_from("!H", buf, 10)[0], old, bytes(buf[8:10])),
            )
    elif buf[7] < 255:
        buf[7] += 1


def icmp_unreachable(pkt: Packet) -> bytes:
    """ICMP(v6) port unreachable for ``pkt``, from its destination (the VIP) to its source.

    Like the kernel's icmp_send/icmpv6_send from LOCAL_IN (ip_vs_leave): the offending packet is
    quoted from its IP header on, as much as fits in 576 (v4) / 1280 (v6) bytes.
    """
    if pkt.family is Family.IPV4:
        return _icmp_error(pkt, 3, 3, 0)
    return _icmp_error(pkt, 1, 4, 0)


def icmp_too_big(pkt: Packet, mtu: int) -> bytes:
    """ICMP fragmentation needed (v4, next-hop MTU ``mtu``) / ICMPv6 packet too big, from the
    VIP: what IPVS sends when a packet does not fit its tunnel (ensure_mtu_is_adequate)."""
    if pkt.family is Family.IPV4:
        return _icmp_error(pkt, 3, 4, mtu & 0xFFFF)
    return _icmp_error(pkt, 2, 0, mtu)


def _icmp_error(pkt: Packet, icmp_type: int, code: int, info: int) -> bytes:
    src, dst = pkt.dst, pkt.src  # the answer comes from the VIP
    if pkt.family is Family.IPV4:
        quoted = bytes(pkt.data[: ICMP4_LIMIT - 20 - 8])
        icmp = bytearray(struct.pack("!BBHI", icmp_type, code, 0, info) + quoted)
        struct.pack_into("!H", icmp, 2, inet_checksum(icmp))
        tos = (pkt.data[1] & 0x1E) | 0xC0  # IPTOS_TOS_MASK | IPTOS_PREC_INTERNETCONTROL
        hdr = bytearray(
            struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(icmp), 0, 0, 64, ICMP, 0, src, dst)
        )
        struct.pack_into("!H", hdr, 10, inet_checksum(hdr))
        return bytes(hdr + icmp)
    quoted = bytes(pkt.data[: ICMP6_LIMIT - 40 - 8])
    icmp = bytearray(struct.pack("!BBHI", icmp_type, code, 0, info) + quoted)
    csum = inet_checksum(pseudo_header(src, dst, ICMPV6, len(icmp)) + icmp)
    struct.pack_into("!H", icmp, 2, csum)
    hdr6 = struct.pack("!IHBB16s16s", 0x60000000, len(icmp), ICMPV6, 64, src, dst)
    return hdr6 + bytes(icmp)
