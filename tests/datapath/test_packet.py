"""Packet parsing, NAT rewriting and ICMP errors of the datapath, checked with scapy.

scapy recomputes every checksum from scratch; a rewritten packet passes only if our incremental
updates (and the SCTP CRC32c) match what scapy computes for the same fields.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.sctp import SCTP, SCTPChunkAbort, SCTPChunkData, SCTPChunkInit
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw

from impl.datapath.checksum import crc32c, inet_checksum
from impl.datapath.packet import (
    AddressCache,
    PacketError,
    flow_of,
    icmp_unreachable,
    parse,
    rewrite_dst,
    rewrite_src,
    undo_forward_hop,
)
from impl.types import Family, Proto

CIP4, VIP4, RIP4 = "198.18.16.5", "198.19.0.1", "198.18.10.12"
CIP6, VIP6, RIP6 = "2001:db8:c0::5", "2001:db8:f::1", "2001:db8:a::12"


def _ip(family: str, src: str, dst: str) -> ScapyPacket:
    return IP(src=src, dst=dst, ttl=63) if family == "4" else IPv6(src=src, dst=dst, hlim=63)


def _l4(proto: str, sport: int, dport: int) -> ScapyPacket:
    if proto == "tcp":
        return TCP(sport=sport, dport=dport, flags="S", seq=1000) / Raw(b"x" * 33)
    if proto == "udp":
        return UDP(sport=sport, dport=dport) / Raw(b"INVITE sip:a@b SIP/2.0\r\n")
    return SCTP(sport=sport, dport=dport) / SCTPChunkInit(
        init_tag=7, n_in_streams=1, n_out_streams=1
    )


def _verify(raw: bytes, family: str) -> ScapyPacket:
    """Rebuild ``raw`` with scapy's checksums; they must equal the ones in ``raw``."""
    pkt = IP(raw) if family == "4" else IPv6(raw)
    again = pkt.copy()
    if family == "4":
        del again[IP].chksum
    for layer in (TCP, UDP, SCTP):
        if layer in again:
            del again[layer].chksum
    assert bytes(again) == raw, f"checksums differ:\n{pkt.show2(dump=True)}"
    return pkt


@pytest.mark.parametrize("family", ["4", "6"])
@pytest.mark.parametrize("proto", ["tcp", "udp", "sctp"])
def test_parse_gives_the_flow(family: str, proto: str) -> None:
    cip, vip = (CIP4, VIP4) if family == "4" else (CIP6, VIP6)
    pkt = parse(bytes(_ip(family, cip, vip) / _l4(proto, 40000, 80)))
    flow = flow_of(pkt, AddressCache())
    assert flow.proto is Proto[proto.upper()]
    assert (str(flow.saddr), flow.sport, str(flow.daddr), flow.dport) == (cip, 40000, vip, 80)
    assert flow.family is (Family.IPV4 if family == "4" else Family.IPV6)
    assert flow.kind == {"tcp": "syn", "udp": "udp", "sctp": "init"}[proto]
    assert flow.payload == (b"INVITE sip:a@b SIP/2.0\r\n" if proto == "udp" else b"")


@pytest.mark.parametrize(
    ("flags", "kind"),
    [
        ("S", "syn"),
        ("SA", "synack"),
        ("A", "ack"),
        ("FA", "fin"),
        ("R", "rst"),
        ("RA", "rst"),
        ("PA", "ack"),
    ],
)
def test_tcp_kinds(flags: str, kind: str) -> None:
    pkt = parse(bytes(IP(src=CIP4, dst=VIP4) / TCP(sport=1, dport=2, flags=flags)))
    assert pkt.kind == kind


def test_sctp_kinds() -> None:
    abort = parse(bytes(IP(src=CIP4, dst=VIP4) / SCTP(sport=1, dport=2) / SCTPChunkAbort()))
    data = parse(bytes(IP(src=CIP4, dst=VIP4) / SCTP(sport=1, dport=2) / SCTPChunkData(data=b"a")))
    assert (abort.kind, data.kind) == ("abort", "data")


def test_ipv6_extension_headers_are_walked() -> None:
    raw = bytes(IPv6(src=CIP6, dst=VIP6) / IPv6ExtHdrHopByHop() / TCP(sport=5, dport=6))
    pkt = parse(raw)
    assert (pkt.proto, pkt.sport, pkt.dport, pkt.kind) == (6, 5, 6, "syn")


def test_non_first_fragments_are_not_schedulable() -> None:
    v4 = parse(bytes(IP(src=CIP4, dst=VIP4, frag=10, proto=6) / Raw(b"y" * 40)))
    v6 = parse(
        bytes(IPv6(src=CIP6, dst=VIP6) / IPv6ExtHdrFragment(offset=3, nh=6) / Raw(b"y" * 40))
    )
    assert not v4.schedulable and not v6.schedulable
    first = parse(bytes(IP(src=CIP4, dst=VIP4, flags="MF") / TCP(sport=1, dport=2)))
    assert first.schedulable and first.fragmented


@pytest.mark.parametrize("raw", [b"", b"\x45" + b"\0" * 10, b"\x60" + b"\0" * 20, b"\x10" * 40])
def test_malformed_packets_raise_one_clear_error(raw: bytes) -> None:
    with pytest.raises(PacketError):
        parse(raw)


def test_truncated_transport_header_is_never_scheduled() -> None:
    raw = bytes(IP(src=CIP4, dst=VIP4, proto=6) / Raw(b"\0" * 8))
    assert not parse(raw).schedulable


@pytest.mark.parametrize("family", ["4", "6"])
@pytest.mark.parametrize("proto", ["tcp", "udp", "sctp"])
def test_nat_rewrite_keeps_checksums_right(family: str, proto: str) -> None:
    cip, vip, rip = (CIP4, VIP4, RIP4) if family == "4" else (CIP6, VIP6, RIP6)
    pkt = parse(bytes(_ip(family, cip, vip) / _l4(proto, 40000, 80)))
    rewrite_dst(pkt, ipaddress.ip_address(rip), 8080)
    out = _verify(bytes(pkt.data), family)
    assert (out.dst, out.dport, out.src, out.sport) == (rip, 8080, cip, 40000)
    # and the reply direction: RS -> client gets the VIP back as its source
    back = parse(bytes(_ip(family, rip, cip) / _l4(proto, 8080, 40000)))
    rewrite_src(back, ipaddress.ip_address(vip), 80)
    out = _verify(bytes(back.data), family)
    assert (out.src, out.sport, out.dst, out.dport) == (vip, 80, cip, 40000)


def test_udp_without_checksum_stays_without() -> None:
    raw = bytearray(bytes(IP(src=CIP4, dst=VIP4) / UDP(sport=1, dport=2) / Raw(b"abc")))
    raw[26:28] = b"\0\0"
    pkt = parse(raw)
    rewrite_dst(pkt, ipaddress.ip_address(RIP4), 3)
    assert pkt.data[26:28] == b"\0\0" and IP(bytes(pkt.data))[UDP].dport == 3


def test_rewrite_refuses_the_other_family() -> None:
    pkt = parse(bytes(IP(src=CIP4, dst=VIP4) / TCP()))
    with pytest.raises(PacketError):
        rewrite_dst(pkt, ipaddress.ip_address(RIP6), 80)


def test_icmp_port_unreachable_v4_quotes_the_packet_from_the_vip() -> None:
    orig = bytes(IP(src=CIP4, dst=VIP4, tos=0x10) / UDP(sport=4000, dport=53) / Raw(b"q" * 1000))
    answer = IP(icmp_unreachable(parse(orig)))
    assert (answer.src, answer.dst, answer[ICMP].type, answer[ICMP].code) == (VIP4, CIP4, 3, 3)
    assert len(bytes(answer)) == 576 and answer.tos == 0xD0
    assert answer[IPerror].src == CIP4 and answer[UDPerror].sport == 4000
    rebuilt = answer.copy()
    del rebuilt[IP].chksum, rebuilt[ICMP].chksum
    assert bytes(rebuilt) == bytes(answer)


def test_icmpv6_port_unreachable_quotes_the_packet_from_the_vip() -> None:
    orig = bytes(IPv6(src=CIP6, dst=VIP6) / TCP(sport=4000, dport=80) / Raw(b"q" * 2000))
    raw = icmp_unreachable(parse(orig))
    answer = IPv6(raw)
    assert (answer.src, answer.dst) == (VIP6, CIP6)
    assert (answer[ICMPv6DestUnreach].type, answer[ICMPv6DestUnreach].code) == (1, 4)
    assert len(raw) == 1280
    rebuilt = answer.copy()
    del rebuilt[ICMPv6DestUnreach].cksum
    assert bytes(rebuilt) == raw


def test_checksum_primitives_against_known_values() -> None:
    # RFC 1071 example words 0001 f203 f4f5 f6f7 -> sum ddf2 -> checksum 220d
    assert inet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert inet_checksum(b"\x01") == (~0x0100) & 0xFFFF
    # RFC 3720 B.4 CRC32c test vector: 32 bytes of zeros
    assert crc32c(bytes(32)) == 0x8A9136AA


def test_undo_forward_hop_restores_ttl_and_checksum() -> None:
    pkt = parse(bytes(IP(src=CIP4, dst=VIP4, ttl=63) / TCP()))
    undo_forward_hop(pkt)
    assert _verify(bytes(pkt.data), "4").ttl == 64
    pkt6 = parse(bytes(IPv6(src=CIP6, dst=VIP6, hlim=63) / TCP()))
    undo_forward_hop(pkt6)
    assert IPv6(bytes(pkt6.data)).hlim == 64


_V4 = st.ip_addresses(v=4).map(str)
_V6 = st.ip_addresses(v=6).map(str)
_PORT = st.integers(1, 65535)


@settings(max_examples=150, deadline=None)
@given(
    v6=st.booleans(),
    proto=st.sampled_from(["tcp", "udp", "sctp"]),
    data=st.data(),
    payload=st.binary(max_size=300),
)
def test_nat_rewrite_checksums_hold_for_any_fields(
    v6: bool, proto: str, data: st.DataObject, payload: bytes
) -> None:
    addr = _V6 if v6 else _V4
    src, dst, new = data.draw(addr), data.draw(addr), data.draw(addr)
    sport, dport, new_port = data.draw(_PORT), data.draw(_PORT), data.draw(_PORT)
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    l4 = {
        "tcp": TCP(sport=sport, dport=dport, flags="PA") / Raw(payload),
        "udp": UDP(sport=sport, dport=dport) / Raw(payload),
        "sctp": SCTP(sport=sport, dport=dport) / SCTPChunkData(data=payload or b"d"),
    }[proto]
    pkt = parse(bytes(ip / l4))
    rewrite_dst(pkt, ipaddress.ip_address(new), new_port)
    out = _verify(bytes(pkt.data), "6" if v6 else "4")
    assert (ipaddress.ip_address(out.dst), out.dport) == (ipaddress.ip_address(new), new_port)
    rewrite_src(pkt, ipaddress.ip_address(dst), dport)
    out = _verify(bytes(pkt.data), "6" if v6 else "4")
    assert (ipaddress.ip_address(out.src), out.sport) == (ipaddress.ip_address(dst), dport)
