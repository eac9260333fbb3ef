"""Packet building (scapy) and the struct parsers, checked against each other (no namespaces)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    IPv6,
)
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
    echo_seq,
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
    (Proto.TCP, None, "syn"),
    (Proto.TCP, "ack", "ack"),
    (Proto.TCP, "fin", "fin"),
    (Proto.TCP, "rst", "rst"),
    (Proto.TCP, "data", "data"),
    (Proto.TCP, "synack", "synack"),
    (Proto.UDP, None, "udp"),
    (Proto.SCTP, None, "init"),
    (Proto.SCTP, "abort", "abort"),
]


def flow(family: Family, proto: Proto, kind: str | None = None, payload: bytes = b"") -> Flow:
    return Flow(proto, cip(family, 3, 7), 40001, vip(family, 1), 80, kind, 0, payload)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", [IPV4, IPV6], ids=["v4", "v6"])
@pytest.mark.parametrize(("proto", "kind", "parsed"), CASES, ids=[c[2] for c in CASES])
def test_built_frame_parses_back_to_its_forward_key(
    family: Family, proto: Proto, kind: str | None, parsed: str
) -> None:
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
    l3 = (
        IP(src=str(f.daddr), dst=str(f.saddr))
        if f.family is IPV4
        else IPv6(src=str(f.daddr), dst=str(f.saddr))
    )
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
    l3 = (
        IP(src=str(f.daddr), dst=str(f.saddr))
        if family is IPV4
        else IPv6(src=str(f.daddr), dst=str(f.saddr))
    )
    abort = Ether() / l3 / SCTP(sport=80, dport=f.sport, tag=STAMP.vtag) / SCTPChunkAbort(TCB=1)
    assert (parse_answer(bytes(abort)), "local") in answer_keys(f, STAMP)


def test_source_port_20_is_refused_with_the_reason() -> None:
    bad = Flow(Proto.TCP, cip(IPV4), 20, vip(IPV4), 80)
    with pytest.raises(TrafficError, match="source port 20 is never scheduled"):
        check_flow(bad)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Flow(Proto.TCP, rip(IPV4, 0), 1234, vip(IPV4), 80), "outside the client pool"),
        (Flow(Proto.UDP, cip(IPV4), 1234, vip(IPV4), 80, "syn"), "not a UDP packet"),
        (Flow(Proto.TCP, cip(IPV4), 0, vip(IPV4), 80), "ports must be"),
        (Flow(Proto.TCP, cip(IPV4), 1234, vip(IPV6), 80), "families differ"),
    ],
)
def test_bad_flows_get_one_line_naming_the_problem(bad: Flow, message: str) -> None:
    with pytest.raises(TrafficError, match=message) as info:
        check_flow(bad)
    assert "\n" not in str(info.value)


def test_parsers_ignore_garbage() -> None:
    assert parse_frame(b"") is None
    assert parse_frame(bytes(60)) is None
    assert parse_answer(bytes(Ether() / IP() / TCP(flags="S"))) is None


KINDS = [(Proto.TCP, k) for k in ("syn", "synack", "ack", "fin", "rst", "data")] + [
    (Proto.UDP, "udp"),
    (Proto.SCTP, "init"),
    (Proto.SCTP, "abort"),
    (Proto.SCTP, "data"),
]


@settings(max_examples=300)
@given(
    family=st.sampled_from([IPV4, IPV6]),
    proto_kind=st.sampled_from(KINDS),
    net=st.integers(0, 15),
    host=st.integers(1, 254),
    sport=st.integers(1, 65535).filter(lambda p: p != 20),
    dport=st.integers(0, 65535),
    payload=st.binary(max_size=40),
    tag=st.integers(0, 0xFFFF),
    seq=st.integers(0, 2**32 - 1),
    vtag=st.integers(1, 2**32 - 1),
)
def test_fast_builder_gives_the_bytes_scapy_builds(
    family: Family,
    proto_kind: tuple[Proto, str],
    net: int,
    host: int,
    sport: int,
    dport: int,
    payload: bytes,
    tag: int,
    seq: int,
    vtag: int,
) -> None:
    proto, kind = proto_kind
    f = Flow(
        proto,
        cip(family, net, host),
        sport,
        vip(family, 2),
        dport,
        kind,  # type: ignore[arg-type]
        0,
        payload,
    )
    stamp = Stamp(tag, seq, seq ^ 0x80000000, vtag)
    assert build_ip(f, stamp) == build_ip_scapy(f, stamp)


@settings(max_examples=300)
@given(
    family=st.sampled_from([IPV4, IPV6]),
    proto_kind=st.sampled_from(KINDS),
    sport=st.integers(1, 65535).filter(lambda p: p != 20),
    dport=st.integers(0, 65535),
    payload=st.binary(max_size=40),
    tag=st.integers(0, 0xFFFF),
    tail=st.binary(max_size=8),
)
def test_fast_frame_parser_agrees_with_the_general_one(
    family: Family,
    proto_kind: tuple[Proto, str],
    sport: int,
    dport: int,
    payload: bytes,
    tag: int,
    tail: bytes,
) -> None:
    """``tail``: Ethernet padding after the IP packet must not change the answer."""
    proto, kind = proto_kind
    f = Flow(
        proto,
        cip(family, 1, 1),
        sport,
        vip(family, 0),
        dport,
        kind,  # type: ignore[arg-type]
        0,
        payload,
    )
    frame = build_frame(f, Stamp(tag, 7, 8, 9), MAC_A, MAC_B) + tail
    assert parse_frame(frame) == parse_ip(frame, 14)
    assert parse_frame(frame) is not None
    assert parse_frame(frame).key == forward_key(f, Stamp(tag, 7, 8, 9))  # type: ignore[union-attr]


# --------------------------------------------------------------------------- ICMP echo


def echo(family: Family, ident: int = 4711, payload: bytes = b"") -> Flow:
    proto = Proto.ICMP if family is IPV4 else Proto.ICMPV6
    return Flow(proto, cip(family, 3, 7), ident, vip(family, 1), 0, "echo", 0, payload)


def _echo_reply(f: Flow, ident: int, seq: int, src: str | None = None) -> bytes:
    src = src or str(f.daddr)
    if f.family is IPV4:
        return bytes(
            Ether(src=MAC_B, dst=MAC_A)
            / IP(src=src, dst=str(f.saddr))
            / ICMP(type=0, id=ident, seq=seq)
            / b"lvsconf\n"
        )
    return bytes(
        Ether(src=MAC_B, dst=MAC_A)
        / IPv6(src=src, dst=str(f.saddr))
        / ICMPv6EchoReply(id=ident, seq=seq, data=b"lvsconf\n")
    )


@pytest.mark.parametrize("family", [IPV4, IPV6], ids=["v4", "v6"])
def test_echo_request_is_built_and_parses_back_to_its_forward_key(family: Family) -> None:
    f = echo(family)
    assert f.packet_kind == "echo"
    frame = build_frame(f, STAMP, MAC_A, MAC_B)
    seen = parse_frame(frame)
    assert seen is not None and seen.key == forward_key(f, STAMP)
    assert (seen.kind, seen.sport, seen.dport) == ("echo", 4711, 0)
    # scapy reads an echo request with our identifier and sequence, and a valid checksum
    again = Ether(frame)
    cls = ICMP if family is IPV4 else ICMPv6EchoRequest
    assert (again[cls].id, again[cls].seq) == (4711, echo_seq(STAMP))
    field = "chksum" if family is IPV4 else "cksum"  # scapy's names differ
    recomputed = again.copy()
    setattr(recomputed[cls], field, None)  # scapy fills it in (IPv6: with the pseudo-header)
    assert getattr(Ether(bytes(recomputed))[cls], field) == getattr(again[cls], field)


@pytest.mark.parametrize("family", [IPV4, IPV6], ids=["v4", "v6"])
def test_echo_reply_from_the_vip_is_matched_as_local(family: Family) -> None:
    f = echo(family)
    key = parse_answer(_echo_reply(f, 4711, echo_seq(STAMP)))
    assert key is not None
    assert (key, "local") in answer_keys(f, STAMP)
    # another flow's reply (other sequence, other identifier) must not match
    assert parse_answer(_echo_reply(f, 4711, echo_seq(STAMP) ^ 1)) not in dict(
        answer_keys(f, STAMP)
    )
    assert parse_answer(_echo_reply(f, 4712, echo_seq(STAMP))) not in dict(answer_keys(f, STAMP))


def test_echo_sequence_differs_between_the_flows_of_a_run() -> None:
    from harness.traffic.engine import make_stamps

    flows = [echo(IPV4)] * 500
    assert len({echo_seq(s) for s in make_stamps(flows)}) == 500


@pytest.mark.parametrize("family", [IPV4, IPV6], ids=["v4", "v6"])
def test_other_icmp_at_a_real_server_is_not_a_flow(family: Family) -> None:
    """Echo replies, neighbour discovery and errors reach real servers too: not ours."""
    f = echo(family)
    assert parse_frame(_echo_reply(f, 4711, 1)) is None
    if family is IPV6:
        ns = Ether() / IPv6(src=str(f.saddr), dst="ff02::1:ff00:1") / ICMPv6ND_NS(tgt=str(f.daddr))
        assert parse_frame(bytes(ns)) is None
    else:
        err = Ether() / IP(src=str(f.saddr), dst=str(f.daddr)) / ICMP(type=3, code=1) / IP()
        assert parse_frame(bytes(err)) is None


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Flow(Proto.ICMP, cip(IPV6), 7, vip(IPV6), 0, "echo"), "use Proto.ICMPV6"),
        (Flow(Proto.ICMPV6, cip(IPV4), 7, vip(IPV4), 0, "echo"), "use Proto.ICMP"),
        (Flow(Proto.ICMP, cip(IPV4), 7, vip(IPV4), 80, "echo"), "use dport=0"),
        (Flow(Proto.ICMP, cip(IPV4), 7, vip(IPV4), 0, "syn"), "not a ICMP packet; use echo"),
        (Flow(Proto.ICMP, cip(IPV4), 0, vip(IPV4), 0, "echo"), "ports must be"),
    ],
)
def test_bad_echo_flows_get_one_line_naming_the_problem(bad: Flow, message: str) -> None:
    with pytest.raises(TrafficError, match=message) as info:
        check_flow(bad)
    assert "\n" not in str(info.value)


def test_echo_identifier_20_is_not_an_ftp_data_port() -> None:
    check_flow(echo(IPV4, ident=20))


@pytest.mark.parametrize("proto", [Proto.TCP, Proto.UDP, Proto.SCTP])
def test_source_port_20_is_sent_only_on_request(proto: Proto) -> None:
    f = Flow(proto, cip(IPV6), 20, vip(IPV6), 80)
    with pytest.raises(TrafficError, match="allow_ftpdata=True"):
        build_ip(f, STAMP)
    check_flow(f, allow_ftpdata=True)
    built = build_ip(f, STAMP, allow_ftpdata=True)
    assert built == build_ip_scapy(f, STAMP, allow_ftpdata=True)
    seen = parse_ip(built)
    assert seen is not None and seen.sport == 20 and seen.key == forward_key(f, STAMP)


@settings(max_examples=200)
@given(
    family=st.sampled_from([IPV4, IPV6]),
    ident=st.integers(1, 65535),
    payload=st.binary(max_size=40),
    tag=st.integers(0, 0xFFFF),
    seq=st.integers(0, 2**32 - 1),
    tail=st.binary(max_size=8),
)
def test_fast_echo_builder_and_parser_agree_with_scapy(
    family: Family, ident: int, payload: bytes, tag: int, seq: int, tail: bytes
) -> None:
    f = echo(family, ident, payload)
    stamp = Stamp(tag, seq, seq ^ 0x80000000, 1)
    assert build_ip(f, stamp) == build_ip_scapy(f, stamp)
    frame = build_frame(f, stamp, MAC_A, MAC_B) + tail
    seen = parse_frame(frame)
    assert seen is not None and seen == parse_ip(frame, 14)
    assert seen.key == forward_key(f, stamp)
