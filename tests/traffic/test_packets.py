"""Packet building (scapy) and the struct parsers, checked against each other (no namespaces)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP, SCTPChunkAbort
from scapy.packet import Packet

from harness.addresses import cip, rip, vip
from harness.traffic.packets import (
    Stamp,
    TrafficError,
    answer_keys,
    build_frame,
    build_ip,
    build_ip_scapy,
    check_flow,
    encapsulate,
    forward_key,
    parse_answer,
    parse_frame,
    parse_ip,
)
from impl.types import IPV4, IPV6, Family, Flow, Proto

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
STAMP = Stamp(iptag=0x1234, seq=0x11223344, ack=0x91223344, vtag=0x0BADF00D)

CASES = [
    (Proto.TCP, None, "syn"), (Proto.TCP, "ack", "ack"), (Proto.TCP, "fin", "fin"),
    (Proto.TCP, "rst", "rst"), (Proto.TCP, "data", "data"), (Proto.TCP, "synack", "synack"),
    (Proto.UDP, None, "udp"), (Proto.SCTP, None, "init"), (Proto.SCTP, "abort", "abort"),
]


def flow(family: Family, proto: Proto, kind: str | None = None, payload: bytes = b"") -> Flow:
    return Flow(proto, cip(family, 3, 7), 40001, vip(family, 1), 80, kind, 0, payload)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", [IPV4, IPV6], ids=["v4", "v6"])
@pytest.mark.parametrize(("proto", "kind", "parsed"), CASES, ids=[c[2] for c in CASES])
def test_built_frame_parses_back_to_its_forward_key(family: Family, proto: Proto,
                                                    kind: str | None, parsed: str) -> None:
    f = flow(family, proto, kind)
    frame = build_frame(f, STAMP, MAC_A, MAC_B)
    seen = parse_frame(frame)
    assert seen is not None
    assert seen.key == forward_key(f, STAMP)
    assert (seen.kind, seen.sport, seen.dport) == (parsed, 40001, 80)
    assert seen.daddr == f.daddr.packed and not seen.encapsulated
    # scapy agrees the frame is well formed (checksums computed by scapy, lengths consistent)
    again = Ether(frame)
    assert again.haslayer(TCP if proto is Proto.TCP else SCTP) or proto is Proto.UDP


@pytest.mark.parametrize("outer", [IPV4, IPV6], ids=["outer4", "outer6"])
@pytest.mark.parametrize("family", [IPV4, IPV6], ids=["inner4", "inner6"])
def test_tunnelled_packet_is_identified_by_its_inner_header(family: Family, outer: Family) -> None:
    f = flow(family, Proto.UDP, payload=b"INVITE sip:a@b SIP/2.0\r\nCall-ID: x1\r\n\r\n")
    packet = encapsulate(build_ip(f, STAMP), rip(outer, 0), rip(outer, 2))
    seen = parse_ip(packet)
    assert seen is not None and seen.encapsulated
    assert seen.key == forward_key(f, STAMP)


def test_sip_invite_payload_is_carried() -> None:
    payload = b"INVITE sip:bob@example.org SIP/2.0\r\nCall-ID: lvs-42@client\r\n\r\n"
    packet = IP(build_ip(flow(IPV4, Proto.UDP, payload=payload), STAMP))
    assert bytes(packet["UDP"].payload) == payload
    assert packet.id == STAMP.iptag


def _rst_reply(f: Flow, stamp: Stamp) -> bytes:
    sent = build_ip(f, stamp)
    ip = IP(sent) if f.family is IPV4 else IPv6(sent)
    seg = ip[TCP]
    length = len(seg.payload) + (1 if seg.flags.S else 0) + (1 if seg.flags.F else 0)
    if seg.flags.A:
        rst = TCP(sport=f.dport, dport=f.sport, flags="R", seq=seg.ack)
    else:
        rst = TCP(sport=f.dport, dport=f.sport, flags="RA", seq=0, ack=seg.seq + length)
    l3 = IP(src=str(f.daddr), dst=str(f.saddr)) if f.family is IPV4 else IPv6(
        src=str(f.daddr), dst=str(f.saddr))
    return bytes(Ether(src=MAC_B, dst=MAC_A) / l3 / rst)


@pytest.mark.parametrize("family", [IPV4, IPV6], ids=["v4", "v6"])
@pytest.mark.parametrize("kind", [None, "ack", "fin", "data"])
def test_director_rst_is_matched_as_local(family: Family, kind: str | None) -> None:
    f = flow(family, Proto.TCP, kind)
    key = parse_answer(_rst_reply(f, STAMP))
    assert (key, "local") in answer_keys(f, STAMP)
    other = Stamp(STAMP.iptag, STAMP.seq + 0x10000, STAMP.ack + 0x10000, STAMP.vtag)
    assert key not in dict(answer_keys(f, other)), "a RST for another flow must not match"


@pytest.mark.parametrize("family", [IPV4, IPV6], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", [Proto.TCP, Proto.UDP, Proto.SCTP])
def test_port_unreachable_is_matched_by_its_embedded_header(family: Family, proto: Proto) -> None:
    f = flow(family, proto)
    sent = build_ip(f, STAMP)
    icmp: Packet
    if family is IPV4:
        icmp = IP(src="198.18.0.1", dst=str(f.saddr)) / ICMP(type=3, code=3) / IP(sent)
    else:
        icmp = IPv6(src="2001:db8::1", dst=str(f.saddr)) / ICMPv6DestUnreach(code=4) / IPv6(sent)
    key = parse_answer(bytes(Ether(src=MAC_B, dst=MAC_A) / icmp))
    assert (key, "unreachable") in answer_keys(f, STAMP)


def test_host_unreachable_is_not_port_unreachable() -> None:
    f = flow(IPV4, Proto.UDP)
    icmp = IP(src="198.18.0.1", dst=str(f.saddr)) / ICMP(type=3, code=1) / IP(build_ip(f, STAMP))
    assert parse_answer(bytes(Ether() / icmp)) is None


@pytest.mark.parametrize("family", [IPV4, IPV6], ids=["v4", "v6"])
def test_sctp_abort_answers_the_init_by_its_tag(family: Family) -> None:
    f = flow(family, Proto.SCTP)
    l3 = IP(src=str(f.daddr), dst=str(f.saddr)) if family is IPV4 else IPv6(
        src=str(f.daddr), dst=str(f.saddr))
    abort = Ether() / l3 / SCTP(sport=80, dport=f.sport, tag=STAMP.vtag) / SCTPChunkAbort(TCB=1)
    assert (parse_answer(bytes(abort)), "local") in answer_keys(f, STAMP)


def test_source_port_20_is_refused_with_the_reason() -> None:
    bad = Flow(Proto.TCP, cip(IPV4), 20, vip(IPV4), 80)
    with pytest.raises(TrafficError, match="source port 20 is never scheduled"):
        check_flow(bad)


@pytest.mark.parametrize(("bad", "message"), [
    (Flow(Proto.TCP, rip(IPV4, 0), 1234, vip(IPV4), 80), "outside the client pool"),
    (Flow(Proto.UDP, cip(IPV4), 1234, vip(IPV4), 80, "syn"), "not a UDP packet"),
    (Flow(Proto.TCP, cip(IPV4), 0, vip(IPV4), 80), "ports must be"),
    (Flow(Proto.TCP, cip(IPV4), 1234, vip(IPV6), 80), "families differ"),
])
def test_bad_flows_get_one_line_naming_the_problem(bad: Flow, message: str) -> None:
    with pytest.raises(TrafficError, match=message) as info:
        check_flow(bad)
    assert "\n" not in str(info.value)


def test_parsers_ignore_garbage() -> None:
    assert parse_frame(b"") is None
    assert parse_frame(bytes(60)) is None
    assert parse_answer(bytes(Ether() / IP() / TCP(flags="S"))) is None


KINDS = [(Proto.TCP, k) for k in ("syn", "synack", "ack", "fin", "rst", "data")] + [
    (Proto.UDP, "udp"), (Proto.SCTP, "init"), (Proto.SCTP, "abort"), (Proto.SCTP, "data")]


@settings(max_examples=300)
@given(
    family=st.sampled_from([IPV4, IPV6]),
    proto_kind=st.sampled_from(KINDS),
    net=st.integers(0, 15), host=st.integers(1, 254),
    sport=st.integers(1, 65535).filter(lambda p: p != 20), dport=st.integers(0, 65535),
    payload=st.binary(max_size=40),
    tag=st.integers(0, 0xFFFF), seq=st.integers(0, 2**32 - 1), vtag=st.integers(1, 2**32 - 1),
)
def test_fast_builder_gives_the_bytes_scapy_builds(
        family: Family, proto_kind: tuple[Proto, str], net: int, host: int, sport: int,
        dport: int, payload: bytes, tag: int, seq: int, vtag: int) -> None:
    proto, kind = proto_kind
    f = Flow(proto, cip(family, net, host), sport, vip(family, 2), dport, kind,  # type: ignore[arg-type]
             0, payload)
    stamp = Stamp(tag, seq, seq ^ 0x80000000, vtag)
    assert build_ip(f, stamp) == build_ip_scapy(f, stamp)


@settings(max_examples=300)
@given(
    family=st.sampled_from([IPV4, IPV6]),
    proto_kind=st.sampled_from(KINDS),
    sport=st.integers(1, 65535).filter(lambda p: p != 20), dport=st.integers(0, 65535),
    payload=st.binary(max_size=40), tag=st.integers(0, 0xFFFF),
    tail=st.binary(max_size=8),
)
def test_fast_frame_parser_agrees_with_the_general_one(
        family: Family, proto_kind: tuple[Proto, str], sport: int, dport: int, payload: bytes,
        tag: int, tail: bytes) -> None:
    """``tail``: Ethernet padding after the IP packet must not change the answer."""
    proto, kind = proto_kind
    f = Flow(proto, cip(family, 1, 1), sport, vip(family, 0), dport, kind,  # type: ignore[arg-type]
             0, payload)
    frame = build_frame(f, Stamp(tag, 7, 8, 9), MAC_A, MAC_B) + tail
    assert parse_frame(frame) == parse_ip(frame, 14)
    assert parse_frame(frame) is not None
    assert parse_frame(frame).key == forward_key(f, Stamp(tag, 7, 8, 9))  # type: ignore[union-attr]
