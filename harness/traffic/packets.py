"""Every packet the traffic engine sends, and the parsing of every packet it observes.

Building packs headers with ``struct`` once per flow, before anything is sent; the tests check
every kind of packet against scapy's own layers (:func:`build_ip_scapy`). Parsing is the hot
path (thousands of frames per second, ~20x slower inside the kernel VM lane), so it reads fixed
header offsets with ``struct``; the tests check the parser against scapy-built packets.

Each flow carries a :class:`Stamp`: per-flow values written into the packet so an observation
can be matched to exactly one flow even when two flows share (proto, saddr, sport), e.g. a SYN
and its ACK follow-up:

- ``iptag``: the IPv4 Identification / IPv6 flow label. Forwarding, IPVS NAT and IPVS TUN (inner
  header) keep it, and ICMP errors embed it, so it identifies both forwarded copies and
  ICMP port unreachables.
- ``seq``/``ack``: TCP sequence and acknowledgement numbers. A RST answering our segment carries
  ``ack = seq + len`` (segment without ACK) or ``seq = ack`` (segment with ACK), RFC 9293 3.10.7.1.
- ``vtag``: SCTP initiate tag (INIT) or verification tag (other chunks); an ABORT answering an
  out-of-the-blue packet carries it (RFC 9260 8.4).

ICMP echo (``Proto.ICMP`` on IPv4, ``Proto.ICMPV6`` on IPv6, kind ``echo``): ``Flow.sport`` is
the echo identifier, ``Flow.dport`` must be 0, and the sequence number comes from the stamp
(:func:`echo_seq`). The echo reply (RFC 792, RFC 4443 4.2) copies identifier and sequence, so
a reply from the director's own stack is matched to exactly one flow, like a RST.

Source port 20 is refused unless the caller opts in with ``allow_ftpdata=True``: IPVS never
schedules it (docs/semantics.md §1.5), so a generator must not pick it by accident; only a case
about that rule sends it.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from harness.addresses import CLIENT_POOL
from impl.datapath.checksum import crc32c, inet_checksum, pseudo_header
from impl.types import Family, Flow, Proto

ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
IPPROTO_IPIP: Final = 4
IPPROTO_IPV6: Final = 41
IPPROTO_ICMP: Final = 1
IPPROTO_ICMPV6: Final = 58

#: a TCP data segment without a payload of its own gets this one (a data segment needs bytes)
DEFAULT_DATA: Final = b"lvsconf\n"

_TCP_KINDS: Final[dict[str, str]] = {
    "syn": "S",
    "synack": "SA",
    "ack": "A",
    "fin": "FA",
    "rst": "R",
    "data": "PA",
}
_KINDS_BY_PROTO: Final[dict[Proto, frozenset[str]]] = {
    Proto.TCP: frozenset(_TCP_KINDS),
    Proto.UDP: frozenset({"udp"}),
    Proto.SCTP: frozenset({"init", "abort", "data"}),
    Proto.ICMP: frozenset({"echo"}),
    Proto.ICMPV6: frozenset({"echo"}),
}
#: the ICMP protocol each family's echo uses
_ECHO_PROTO: Final[dict[Family, Proto]] = {Family.IPV4: Proto.ICMP, Family.IPV6: Proto.ICMPV6}
#: echo request / echo reply types (RFC 792; RFC 4443 4.1, 4.2)
ICMP_ECHO_REQUEST: Final = 8
ICMP_ECHO_REPLY: Final = 0
ICMPV6_ECHO_REQUEST: Final = 128
ICMPV6_ECHO_REPLY: Final = 129


class TrafficError(ValueError):
    """A flow or traffic request that cannot be sent; the message names the problem and the fix."""


@dataclass(frozen=True, slots=True)
class Stamp:
    """Per-flow identification values written into the packet (see the module docstring)."""

    iptag: int  # 16 bits for IPv4, 20 for IPv6
    seq: int
    ack: int
    vtag: int


def check_stamp(flow: Flow, stamp: Stamp) -> None:
    if stamp.iptag >> (16 if flow.family is Family.IPV4 else 20):
        field = "IPv4 Identification" if flow.family is Family.IPV4 else "IPv6 flow label"
        raise TrafficError(f"{flow}: iptag {stamp.iptag:#x} does not fit the {field}")


def echo_seq(stamp: Stamp) -> int:
    """The ICMP echo sequence number of a stamp: 16 bits that differ between the flows of one
    run (:func:`harness.traffic.engine.make_stamps` steps ``seq`` by 0x20000 per flow)."""
    return (stamp.seq >> 16) & 0xFFFF


def check_flow(flow: Flow, *, allow_ftpdata: bool = False) -> None:
    """Refuse a flow the engine cannot send meaningfully, with one line saying how to fix it.

    ``allow_ftpdata``: send source port 20 all the same (a case about docs/semantics.md §1.5)."""
    if flow.proto not in _KINDS_BY_PROTO:
        raise TrafficError(
            f"{flow}: protocol {flow.proto.name} cannot be sent; use TCP, UDP, SCTP, or "
            "ICMP/ICMPV6 echo"
        )
    if flow.saddr.version != flow.daddr.version:
        raise TrafficError(f"{flow}: source and destination families differ; use one family")
    if flow.proto in (Proto.ICMP, Proto.ICMPV6):
        want = _ECHO_PROTO[flow.family]
        if flow.proto is not want:
            raise TrafficError(
                f"{flow}: {flow.proto.name} is not the {flow.family.label} echo protocol; "
                f"use Proto.{want.name}"
            )
        if flow.dport != 0:
            raise TrafficError(
                f"{flow}: an ICMP echo has no destination port; use dport=0 (sport is the "
                "echo identifier)"
            )
    pool = CLIENT_POOL[flow.family]
    if flow.saddr not in pool:
        raise TrafficError(
            f"{flow}: source {flow.saddr} is outside the client pool {pool}; "
            "pick one with harness.addresses.cip()"
        )
    if flow.sport == 20 and not allow_ftpdata and flow.proto in (Proto.TCP, Proto.UDP, Proto.SCTP):
        raise TrafficError(
            f"{flow}: source port 20 is never scheduled by IPVS (docs/semantics.md §1.5); "
            "pick another source port (a case about that rule passes allow_ftpdata=True)"
        )
    if not 1 <= flow.sport <= 65535 or not 0 <= flow.dport <= 65535:
        raise TrafficError(f"{flow}: ports must be 1..65535 (source) and 0..65535 (destination)")
    if flow.packet_kind not in _KINDS_BY_PROTO[flow.proto]:
        allowed = ", ".join(sorted(_KINDS_BY_PROTO[flow.proto]))
        raise TrafficError(
            f"{flow}: kind {flow.packet_kind!r} is not a {flow.proto.name} packet; use {allowed}"
        )


def build_ip_scapy(flow: Flow, stamp: Stamp, *, allow_ftpdata: bool = False) -> bytes:
    """The IP packet for ``flow``, built layer by layer by scapy: the reference for
    :func:`build_ip` (the tests require both to give the same bytes)."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
    from scapy.layers.sctp import SCTP, SCTPChunkAbort, SCTPChunkData, SCTPChunkInit
    from scapy.packet import Packet, Raw

    check_flow(flow, allow_ftpdata=allow_ftpdata)
    check_stamp(flow, stamp)
    kind = flow.packet_kind
    l4: Packet
    if flow.proto is Proto.ICMP:
        l4 = ICMP(type=ICMP_ECHO_REQUEST, id=flow.sport, seq=echo_seq(stamp)) / Raw(
            flow.payload or DEFAULT_DATA
        )
    elif flow.proto is Proto.ICMPV6:
        l4 = ICMPv6EchoRequest(
            id=flow.sport, seq=echo_seq(stamp), data=flow.payload or DEFAULT_DATA
        )
    elif flow.proto is Proto.TCP:
        flags = _TCP_KINDS[kind]
        l4 = TCP(
            sport=flow.sport,
            dport=flow.dport,
            flags=flags,
            seq=stamp.seq,
            ack=stamp.ack if "A" in flags else 0,
            window=65535,
        )
        if kind == "data" or flow.payload:
            l4 = l4 / Raw(flow.payload or DEFAULT_DATA)
    elif flow.proto is Proto.UDP:
        l4 = UDP(sport=flow.sport, dport=flow.dport) / Raw(flow.payload)
    else:
        if kind == "init":
            # A valid INIT (RFC 9260 3.3.2): verification tag 0, nonzero streams and a_rwnd.
            l4 = SCTP(sport=flow.sport, dport=flow.dport, tag=0) / SCTPChunkInit(
                init_tag=stamp.vtag,
                a_rwnd=65536,
                n_out_streams=1,
                n_in_streams=1,
                init_tsn=stamp.vtag,
            )
        elif kind == "abort":
            l4 = SCTP(sport=flow.sport, dport=flow.dport, tag=stamp.vtag) / SCTPChunkAbort()
        else:
            l4 = SCTP(sport=flow.sport, dport=flow.dport, tag=stamp.vtag) / SCTPChunkData(
                tsn=stamp.vtag, data=flow.payload or DEFAULT_DATA
            )
    ip: Packet
    if flow.family is Family.IPV4:
        ip = IP(src=str(flow.saddr), dst=str(flow.daddr), id=stamp.iptag, ttl=64)
    else:
        ip = IPv6(src=str(flow.saddr), dst=str(flow.daddr), fl=stamp.iptag, hlim=64)
    return bytes(ip / l4)


_TCP_FLAG_BITS: Final[dict[str, int]] = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}
_pack_ip4 = struct.Struct("!BBHHHBBH4s4s").pack
_pack_ip6 = struct.Struct("!IHBB16s16s").pack
_pack_tcp = struct.Struct("!HHIIBBHHH").pack
_pack_udp = struct.Struct("!HHHH").pack
_pack_sctp = struct.Struct("!HHII").pack
_pack_echo = struct.Struct("!BBHHH").pack


def _payload_checksum(saddr: bytes, daddr: bytes, proto: int, segment: bytes) -> int:
    """TCP/UDP/ICMPv6 checksum with the pseudo-header (RFC 9293 3.1, RFC 8200 8.1)."""
    return inet_checksum(pseudo_header(saddr, daddr, proto, len(segment)) + segment)


def build_ip(
    flow: Flow, stamp: Stamp, *, checked: bool = False, allow_ftpdata: bool = False
) -> bytes:
    """The IP packet for ``flow``: the same bytes as :func:`build_ip_scapy` (same fields, same
    defaults) at a fraction of the cost.

    Why not scapy layers per flow: they cost ~0.5-2 ms per packet on the host and ~20x that in
    the kernel VM lane, more than the whole send-and-observe loop; headers here are packed
    with ``struct``. The checksums are :mod:`impl.datapath.checksum`'s, not scapy's: importing
    scapy costs a guest worker ~2 s of CPU under TCG, at its first case. They stay checked
    against scapy, which computes its own in :func:`build_ip_scapy` (the tests compare bytes).
    """
    if not checked:  # the engine validates a whole run up front
        check_flow(flow, allow_ftpdata=allow_ftpdata)
        check_stamp(flow, stamp)
    kind = flow.packet_kind
    saddr, daddr = flow.saddr.packed, flow.daddr.packed
    proto = int(flow.proto)
    if flow.proto is Proto.ICMP or flow.proto is Proto.ICMPV6:
        v4 = flow.proto is Proto.ICMP
        data = flow.payload or DEFAULT_DATA
        msg = (
            _pack_echo(
                ICMP_ECHO_REQUEST if v4 else ICMPV6_ECHO_REQUEST, 0, 0, flow.sport, echo_seq(stamp)
            )
            + data
        )
        # ICMP sums the message alone (RFC 792), ICMPv6 adds the pseudo-header (RFC 4443 2.3)
        ck = inet_checksum(msg) if v4 else _payload_checksum(saddr, daddr, proto, msg)
        l4 = msg[:2] + struct.pack("!H", ck) + msg[4:]
    elif flow.proto is Proto.TCP:
        flags = _TCP_KINDS[kind]
        bits = sum(_TCP_FLAG_BITS[c] for c in flags)
        data = flow.payload or (DEFAULT_DATA if kind == "data" else b"")
        ack = stamp.ack if "A" in flags else 0
        head = _pack_tcp(flow.sport, flow.dport, stamp.seq, ack, 5 << 4, bits, 65535, 0, 0)
        ck = _payload_checksum(saddr, daddr, proto, head + data)
        l4 = head[:16] + struct.pack("!H", ck) + head[18:] + data
    elif flow.proto is Proto.UDP:
        length = 8 + len(flow.payload)
        seg = _pack_udp(flow.sport, flow.dport, length, 0) + flow.payload
        ck = _payload_checksum(saddr, daddr, proto, seg)
        # a computed 0 is sent as 0xFFFF (0 means "no checksum", RFC 768)
        l4 = seg[:6] + struct.pack("!H", ck or 0xFFFF) + seg[8:]
    else:
        if kind == "init":
            vtag = 0
            chunk = struct.pack("!BBHIIHHI", 1, 0, 20, stamp.vtag, 65536, 1, 1, stamp.vtag)
        elif kind == "abort":
            vtag = stamp.vtag
            chunk = struct.pack("!BBH", 6, 0, 4)
        else:
            vtag = stamp.vtag
            data = flow.payload or DEFAULT_DATA
            chunk = struct.pack("!BBHIHHI", 0, 0, 16 + len(data), stamp.vtag, 0, 0, 0) + data
            chunk += b"\0" * (-len(chunk) % 4)
        seg = _pack_sctp(flow.sport, flow.dport, vtag, 0) + chunk
        l4 = seg[:8] + struct.pack("<I", crc32c(seg)) + seg[12:]  # stored little-endian
    if flow.family is Family.IPV4:
        head = _pack_ip4(0x45, 0, 20 + len(l4), stamp.iptag, 0, 64, proto, 0, saddr, daddr)
        return head[:10] + struct.pack("!H", inet_checksum(head)) + head[12:] + l4
    return _pack_ip6((6 << 28) | stamp.iptag, len(l4), proto, 64, saddr, daddr) + l4


def mac_bytes(mac: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` -> 6 bytes."""
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise TrafficError(f"not a MAC address: {mac!r}; expected aa:bb:cc:dd:ee:ff")
    return raw


def ethernet_header(family: Family, src_mac: bytes, dst_mac: bytes) -> bytes:
    """An Ethernet header (14 plain bytes: nothing for scapy to compute)."""
    ethertype = ETH_P_IP if family is Family.IPV4 else ETH_P_IPV6
    return dst_mac + src_mac + struct.pack("!H", ethertype)


def build_frame(
    flow: Flow,
    stamp: Stamp,
    src_mac: bytes,
    dst_mac: bytes,
    *,
    checked: bool = False,
    allow_ftpdata: bool = False,
) -> bytes:
    """The Ethernet frame for ``flow``, ready for an AF_PACKET send."""
    return ethernet_header(flow.family, src_mac, dst_mac) + build_ip(
        flow, stamp, checked=checked, allow_ftpdata=allow_ftpdata
    )


def encapsulate(
    inner: bytes,
    outer_src: ipaddress.IPv4Address | ipaddress.IPv6Address,
    outer_dst: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> bytes:
    """``inner`` (an IP packet) inside IPIP / IPv6-in-IPv6 / IPv4-in-IPv6, as IPVS TUN sends it."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Raw

    proto = IPPROTO_IPIP if inner[0] >> 4 == 4 else IPPROTO_IPV6
    if outer_src.version == 4:
        return bytes(IP(src=str(outer_src), dst=str(outer_dst), proto=proto) / Raw(inner))
    return bytes(IPv6(src=str(outer_src), dst=str(outer_dst), nh=proto) / Raw(inner))


# --------------------------------------------------------------------------- parsing

#: key of a forwarded copy: (proto, saddr packed, sport, kind, iptag)
ForwardKey = tuple[int, bytes, int, str, int]
#: key of an answer at the client: (proto, client addr packed, client port, what, value)
AnswerKey = tuple[int, bytes, int, str, int]
#: what an answer at the client means (harness.api OutcomeKind)
AnswerOutcome = Literal["unreachable", "local"]
#: the ``what`` of an echo reply's :data:`AnswerKey` (its value is the echo sequence number)
ECHO_REPLY: Final = "echo-reply"


class Seen(NamedTuple):
    """A packet observed at a real server: the headers of the (inner, if tunnelled) packet.

    A tuple whose first five fields are its :data:`ForwardKey` (``seen[:5]``): the hot path
    slices instead of building objects."""

    proto: int
    saddr: bytes
    sport: int
    kind: str
    iptag: int
    daddr: bytes
    dport: int
    encapsulated: bool

    @property
    def key(self) -> ForwardKey:
        return (self.proto, self.saddr, self.sport, self.kind, self.iptag)

    @property
    def loose_key(self) -> tuple[int, bytes, int, str]:
        return (self.proto, self.saddr, self.sport, self.kind)

    def describe(self) -> str:
        def addr(b: bytes) -> str:
            return str(ipaddress.ip_address(b))

        tun = " (tunnelled)" if self.encapsulated else ""
        return (
            f"proto {self.proto} {addr(self.saddr)}:{self.sport} -> "
            f"{addr(self.daddr)}:{self.dport} {self.kind}{tun}"
        )


_new_seen = tuple.__new__


_unpack_h = struct.Struct("!H").unpack_from
_unpack_hh = struct.Struct("!HH").unpack_from
_unpack_i = struct.Struct("!I").unpack_from
_unpack_hhii = struct.Struct("!HHII").unpack_from


def _tcp_kind(flags: int, has_payload: bool) -> str:
    if flags & 0x04:
        return "rst"
    if flags & 0x02:
        return "synack" if flags & 0x10 else "syn"
    if flags & 0x01:
        return "fin"
    return "data" if has_payload else "ack"


def _l4(buf: bytes, proto: int, off: int, end: int) -> tuple[int, int, str] | None:
    """(sport, dport, kind) of the transport header at ``off``; None when not ours."""
    if end - off < 8:
        return None
    sport, dport = _unpack_hh(buf, off)
    if proto == 6:
        if end - off < 20:
            return None
        doff = (buf[off + 12] >> 4) * 4
        return sport, dport, _tcp_kind(buf[off + 13], end - off > doff)
    if proto == 17:
        return sport, dport, "udp"
    if proto == 132:
        if end - off < 13:
            return None
        chunk = buf[off + 12]
        return sport, dport, {1: "init", 6: "abort", 0: "data"}.get(chunk, f"sctp{chunk}")
    if (proto == IPPROTO_ICMP and buf[off] == ICMP_ECHO_REQUEST) or (
        proto == IPPROTO_ICMPV6 and buf[off] == ICMPV6_ECHO_REQUEST
    ):
        # an echo request: (identifier, no port); other ICMP (errors, ND, MLD) is not ours
        return _unpack_h(buf, off + 4)[0], 0, "echo"
    return None


def parse_ip(buf: bytes, off: int = 0, encapsulated: bool = False) -> Seen | None:
    """Parse the IP packet at ``buf[off:]`` (following one level of IPIP/IPv6 tunnelling)."""
    if len(buf) - off < 20:
        return None
    version = buf[off] >> 4
    if version == 4:
        ihl = (buf[off] & 0x0F) * 4
        proto = buf[off + 9]
        total = _unpack_h(buf, off + 2)[0]
        end = min(len(buf), off + total)
        if proto in (IPPROTO_IPIP, IPPROTO_IPV6):
            return None if encapsulated else parse_ip(buf, off + ihl, True)
        if _unpack_h(buf, off + 6)[0] & 0x1FFF:
            return None  # a non-first fragment carries no transport header
        ports = _l4(buf, proto, off + ihl, end)
        if ports is None:
            return None
        return _new_seen(
            Seen,
            (
                proto,
                buf[off + 12 : off + 16],
                ports[0],
                ports[2],
                _unpack_h(buf, off + 4)[0],
                buf[off + 16 : off + 20],
                ports[1],
                encapsulated,
            ),
        )
    if version == 6:
        if len(buf) - off < 40:
            return None
        proto = buf[off + 6]
        end = min(len(buf), off + 40 + _unpack_h(buf, off + 4)[0])
        if proto in (IPPROTO_IPIP, IPPROTO_IPV6):
            return None if encapsulated else parse_ip(buf, off + 40, True)
        ports = _l4(buf, proto, off + 40, end)
        if ports is None:
            return None
        return _new_seen(
            Seen,
            (
                proto,
                buf[off + 8 : off + 24],
                ports[0],
                ports[2],
                _unpack_i(buf, off)[0] & 0xFFFFF,
                buf[off + 24 : off + 40],
                ports[1],
                encapsulated,
            ),
        )
    return None


# Fast path of parse_frame: Ethernet + IPv4 without options (ethertype, version/IHL, total
# length, ID, fragment field, protocol, addresses, ports) / Ethernet + IPv6, in one unpack.
_unpack_eth_ip4 = struct.Struct("!12xHBxHHHxB2x4s4sHH").unpack_from
_unpack_eth_ip6 = struct.Struct("!12xHIHBx16s16sHH").unpack_from
_TCP_KIND_BY_FLAGS: Final = tuple(_tcp_kind(f, False) for f in range(256))
_TCP_DATA_KIND_BY_FLAGS: Final = tuple(_tcp_kind(f, True) for f in range(256))


def parse_frame(frame: bytes) -> Seen | None:
    """Parse an Ethernet frame seen at a real server (None: not a packet of ours).

    The common case — IPv4 without options or IPv6, not a fragment, TCP or UDP — is read with
    one ``struct`` call (this runs once per observed packet); the rest goes through
    :func:`parse_ip`, which gives the same answer for the common case too (tested)."""
    n = len(frame)
    if n >= 42 and frame[12:14] == b"\x08\x00":
        _et, vihl, total, ident, frag, proto, saddr, daddr, sport, dport = _unpack_eth_ip4(frame)
        if vihl == 0x45 and not frag & 0x1FFF:
            if proto == 17:
                return _new_seen(Seen, (17, saddr, sport, "udp", ident, daddr, dport, False))
            if proto == 6 and n >= 54:
                kinds = (
                    _TCP_DATA_KIND_BY_FLAGS
                    if total > 20 + (frame[46] >> 4) * 4
                    else (_TCP_KIND_BY_FLAGS)
                )
                return _new_seen(
                    Seen, (6, saddr, sport, kinds[frame[47]], ident, daddr, dport, False)
                )
    elif n >= 62 and frame[12:14] == b"\x86\xdd":
        _et, vtcfl, plen, proto, saddr, daddr, sport, dport = _unpack_eth_ip6(frame)
        if proto == 17:
            return _new_seen(Seen, (17, saddr, sport, "udp", vtcfl & 0xFFFFF, daddr, dport, False))
        if proto == 6 and n >= 74:
            kinds = _TCP_DATA_KIND_BY_FLAGS if plen > (frame[66] >> 4) * 4 else _TCP_KIND_BY_FLAGS
            return _new_seen(
                Seen, (6, saddr, sport, kinds[frame[67]], vtcfl & 0xFFFFF, daddr, dport, False)
            )
    if n < 34:
        return None
    ethertype = _unpack_h(frame, 12)[0]
    if ethertype != ETH_P_IP and ethertype != ETH_P_IPV6:
        return None
    return parse_ip(frame, 14)


def parse_answer(frame: bytes) -> AnswerKey | None:
    """Parse a frame arriving at the client: a TCP RST, an SCTP ABORT, an ICMP(v6) port
    unreachable or an ICMP(v6) echo reply. Returns the key :func:`answer_keys` predicts for the
    flow it answers."""
    if len(frame) < 34:
        return None
    ethertype = _unpack_h(frame, 12)[0]
    off = 14
    if ethertype == ETH_P_IP:
        ihl = (frame[off] & 0x0F) * 4
        proto = frame[off + 9]
        daddr = frame[off + 16 : off + 20]
        l4 = off + ihl
    elif ethertype == ETH_P_IPV6:
        if len(frame) < 54:
            return None
        proto = frame[off + 6]
        daddr = frame[off + 24 : off + 40]
        l4 = off + 40
    else:
        return None
    if proto == 6 and len(frame) >= l4 + 20:
        flags = frame[l4 + 13]
        if not flags & 0x04:
            return None
        _sport, dport, seq, ack = _unpack_hhii(frame, l4)
        # RFC 9293 3.10.7.1: a RST with ACK answers a segment without ACK (its ack = seq+len);
        # a RST without ACK answers a segment with ACK (its seq = that segment's ack).
        return (6, daddr, dport, "rst", ack if flags & 0x10 else seq)
    if proto == 132 and len(frame) >= l4 + 13:
        if frame[l4 + 12] != 6:
            return None
        return (132, daddr, _unpack_h(frame, l4 + 2)[0], "abort", _unpack_i(frame, l4 + 4)[0])
    if (
        proto in (IPPROTO_ICMP, IPPROTO_ICMPV6)
        and len(frame) >= l4 + 8
        and (frame[l4] == (ICMP_ECHO_REPLY if proto == IPPROTO_ICMP else ICMPV6_ECHO_REPLY))
    ):
        ident, seq = _unpack_hh(frame, l4 + 4)
        return (proto, daddr, ident, ECHO_REPLY, seq)
    if proto == IPPROTO_ICMP and len(frame) >= l4 + 8 + 28:
        if frame[l4] != 3 or frame[l4 + 1] != 3:
            return None
        inner = l4 + 8
        ihl = (frame[inner] & 0x0F) * 4
        if len(frame) < inner + ihl + 4:
            return None
        return (
            frame[inner + 9],
            frame[inner + 12 : inner + 16],
            _unpack_h(frame, inner + ihl)[0],
            "unreachable",
            _unpack_h(frame, inner + 4)[0],
        )
    if proto == IPPROTO_ICMPV6 and len(frame) >= l4 + 8 + 44:
        if frame[l4] != 1 or frame[l4 + 1] != 4:
            return None
        inner = l4 + 8
        return (
            frame[inner + 6],
            frame[inner + 8 : inner + 24],
            _unpack_h(frame, inner + 40)[0],
            "unreachable",
            _unpack_i(frame, inner)[0] & 0xFFFFF,
        )
    return None


def forward_key(flow: Flow, stamp: Stamp) -> ForwardKey:
    """The key a real server's copy of ``flow`` parses to (:attr:`Seen.key`)."""
    kind: str = flow.packet_kind
    if flow.proto is Proto.TCP and kind == "ack" and flow.payload:
        kind = "data"  # an ACK carrying bytes parses as a data segment
    return (int(flow.proto), flow.saddr.packed, flow.sport, kind, stamp.iptag)


def answer_keys(flow: Flow, stamp: Stamp) -> tuple[tuple[AnswerKey, AnswerOutcome], ...]:
    """The keys an answer to ``flow`` at the client parses to, with the outcome each means."""
    saddr = flow.saddr.packed
    if flow.proto is Proto.ICMP or flow.proto is Proto.ICMPV6:
        # only an echo reply answers a ping (no ICMP error is about an echo request here)
        return (((int(flow.proto), saddr, flow.sport, ECHO_REPLY, echo_seq(stamp)), "local"),)
    keys: list[tuple[AnswerKey, AnswerOutcome]] = [
        ((int(flow.proto), saddr, flow.sport, "unreachable", stamp.iptag), "unreachable")
    ]
    kind = flow.packet_kind
    if flow.proto is Proto.TCP and kind != "rst":
        flags = _TCP_KINDS[kind]
        if "A" in flags:
            keys.append(((6, saddr, flow.sport, "rst", stamp.ack), "local"))
        else:
            length = len(flow.payload) + ("S" in flags) + ("F" in flags)
            keys.append(((6, saddr, flow.sport, "rst", (stamp.seq + length) & 0xFFFFFFFF), "local"))
    elif flow.proto is Proto.SCTP and kind != "abort":
        keys.append(((132, saddr, flow.sport, "abort", stamp.vtag), "local"))
    return tuple(keys)
