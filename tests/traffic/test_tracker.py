"""How observations are matched to flows (no namespaces: frames are fed to the tracker)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Ether

from harness.addresses import cip, vip
from harness.traffic.engine import _Tracker, make_stamps
from harness.traffic.packets import Stamp, build_frame, echo_seq, parse_answer
from impl.types import IPV4, IPV6, Flow, Proto

MAC = bytes(6)


def frames_of(flows: list[Flow], stamps: list[Stamp]) -> list[bytes]:
    return [build_frame(f, s, MAC, MAC) for f, s in zip(flows, stamps, strict=True)]


def director_rst(flow: Flow, stamp: Stamp) -> bytes:
    return bytes(
        Ether()
        / IP(src=str(flow.daddr), dst=str(flow.saddr))
        / TCP(sport=flow.dport, dport=flow.sport, flags="RA", ack=stamp.seq + 1)
    )


def test_forward_copy_beats_the_answer_it_caused() -> None:
    """A real server's RST to a SYN reaches the client; the copy it saw decides."""
    flow = Flow(Proto.TCP, cip(IPV4, 0, 1), 1111, vip(IPV4), 80)
    stamps = make_stamps([flow])
    t = _Tracker([flow], stamps)
    t.sent(0, 0.0)
    t.forwarded_frames(frames_of([flow], stamps), where=2, now=0.5)
    key = parse_answer(director_rst(flow, stamps[0]))
    assert key is not None
    t.answered(key, 0.6)
    (result,) = t.results()
    assert (result.outcome.kind, result.outcome.rs, result.seen_at) == ("forward", 2, (2,))
    assert result.outcome.elapsed == 0.5


def test_answer_alone_means_local() -> None:
    flow = Flow(Proto.TCP, cip(IPV4, 0, 1), 1111, vip(IPV4), 80)
    stamps = make_stamps([flow])
    t = _Tracker([flow], stamps)
    t.sent(0, 0.0)
    key = parse_answer(director_rst(flow, stamps[0]))
    assert key is not None
    t.answered(key, 0.1)
    assert t.results()[0].outcome.kind == "local"


def test_follow_ups_sharing_a_key_resolve_in_send_order() -> None:
    """Two UDP datagrams of one (saddr, sport): each copy goes to the flow that was sent."""
    c = cip(IPV6, 1, 1)
    flows = [
        Flow(Proto.UDP, c, 5060, vip(IPV6), 5060, None, 0, b"A"),
        Flow(Proto.UDP, c, 5060, vip(IPV6), 5060, None, 0, b"B"),
    ]
    stamps = make_stamps(flows)
    frames = frames_of(flows, stamps)
    t = _Tracker(flows, stamps)
    t.sent(0, 0.0)
    t.forwarded_frames([frames[0]], where=0, now=0.1)
    t.sent(1, 0.2)
    t.forwarded_frames([frames[1]], where=1, now=0.3)
    assert [(r.outcome.rs, r.seen_at) for r in t.results()] == [(0, (0,)), (1, (1,))]


def test_rewritten_ip_id_falls_back_to_the_four_tuple() -> None:
    flow = Flow(Proto.TCP, cip(IPV4, 2, 2), 2222, vip(IPV4), 80)
    stamps = make_stamps([flow])
    frame = bytearray(frames_of([flow], stamps)[0])
    frame[18:20] = (int.from_bytes(frame[18:20], "big") ^ 0xFFFF).to_bytes(2, "big")  # IP ID
    t = _Tracker([flow], stamps)
    t.sent(0, 0.0)
    t.forwarded_frames([bytes(frame)], where=1, now=0.1)
    assert t.results()[0].outcome.rs == 1


def test_copies_before_sending_or_of_nobody_are_stray() -> None:
    flows = [Flow(Proto.TCP, cip(IPV4, 3, 3), 3333, vip(IPV4), 80)]
    other = [Flow(Proto.TCP, cip(IPV4, 3, 4), 3333, vip(IPV4), 80)]
    stamps = make_stamps(flows)
    t = _Tracker(flows, stamps)
    t.forwarded_frames(frames_of(flows, stamps), where=0, now=0.0)  # not sent yet
    t.forwarded_frames(frames_of(other, make_stamps(other)), where=0, now=0.0)
    assert len(t.stray) == 2 and t.outcomes == [None]


def test_duplicate_copies_are_counted_where_they_arrived() -> None:
    flow = Flow(Proto.UDP, cip(IPV4, 4, 4), 4444, vip(IPV4), 53)
    stamps = make_stamps([flow])
    frame = frames_of([flow], stamps)[0]
    t = _Tracker([flow], stamps)
    t.sent(0, 0.0)
    t.forwarded_frames([frame, frame], where=0, now=0.1)
    t.forwarded_frames([frame], where=2, now=0.1)
    assert t.results()[0].seen_at == (0, 0, 2)


def test_unresolved_flows_expire_as_dropped_with_the_bound() -> None:
    flow = Flow(Proto.UDP, cip(IPV4, 5, 5), 5555, vip(IPV4), 53)
    t = _Tracker([flow], make_stamps([flow]))
    t.sent(0, 0.0)
    t.expire(0, 0.25)
    outcome = t.results()[0].outcome
    assert (outcome.kind, outcome.elapsed) == ("dropped", 0.25)


def _ping(ident: int) -> Flow:
    return Flow(Proto.ICMP, cip(IPV4, 6, 6), ident, vip(IPV4), 0, "echo")


def _echo_reply(flow: Flow, stamp: Stamp) -> bytes:
    return bytes(
        Ether()
        / IP(src=str(flow.daddr), dst=str(flow.saddr))
        / ICMP(type=0, id=flow.sport, seq=echo_seq(stamp))
    )


def test_echo_reply_alone_means_local_and_follow_up_pings_resolve_in_order() -> None:
    """Two pings with one identifier (ordered follow-ups): each reply carries its own sequence
    number, so a late reply to the first cannot resolve the second."""
    flows = [_ping(9), _ping(9)]
    stamps = make_stamps(flows)
    t = _Tracker(flows, stamps)
    t.sent(0, 0.0)
    t.sent(1, 0.1)
    for i, now in ((1, 0.5), (0, 0.7)):  # the second ping's reply comes first
        key = parse_answer(_echo_reply(flows[i], stamps[i]))
        assert key is not None
        t.answered(key, now)
    results = t.results()
    assert [r.outcome.kind for r in results] == ["local", "local"]
    assert [r.outcome.elapsed for r in results] == pytest.approx([0.7, 0.4])


def test_an_echo_request_at_a_real_server_is_forward() -> None:
    """A ping that reaches a real server was forwarded (for a VIP, wrong: §1.8); the real
    server's own reply that follows does not change that."""
    flow = _ping(10)
    stamps = make_stamps([flow])
    t = _Tracker([flow], stamps)
    t.sent(0, 0.0)
    t.forwarded_frames(frames_of([flow], stamps), where=1, now=0.1)
    key = parse_answer(_echo_reply(flow, stamps[0]))
    assert key is not None
    t.answered(key, 0.2)
    (result,) = t.results()
    assert (result.outcome.kind, result.outcome.rs, result.outcome.port) == ("forward", 1, 0)
