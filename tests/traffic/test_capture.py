"""The capture sockets' kernel filters: our own sends are not seen, others' frames are cut."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable

import pytest

from harness.addresses import cip, vip
from harness.topology import Net
from harness.traffic.capture import SNAPLEN, Capture, bpf_program, client_capture
from harness.traffic.engine import slowdown
from harness.traffic.packets import Stamp, build_frame, mac_bytes, parse_answer
from impl.types import IPV4, IPV6, Family, Flow, Proto

from .nets import load_director_nft

pytestmark = pytest.mark.netns


def _frames_within(
    capture: Capture, seconds: float, enough: Callable[[list[bytes]], bool]
) -> list[bytes]:
    """Frames captured until ``enough(frames)`` or the deadline."""
    deadline = time.monotonic() + seconds * slowdown()
    got: list[bytes] = []
    while time.monotonic() < deadline and not enough(got):
        select.select([capture], [], [], max(0.0, deadline - time.monotonic()))
        got += capture.drain()
    return got


def _send(net: Net, family: Family, payload: bytes, host: int) -> None:
    flow = Flow(Proto.UDP, cip(family, 12, host), 7000, vip(family, 0), 9, None, 0, payload)
    frame = build_frame(
        flow, Stamp(1, 1, 1, 1), mac_bytes(net.client_mac()), mac_bytes(net.director_client_mac())
    )
    with net.client.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sender:
        sender.bind((net.client_if, 0))
        sender.send(frame)


@pytest.mark.parametrize("family", [IPV4, IPV6], ids=["v4", "v6"])
def test_own_sends_are_filtered_and_answers_are_truncated(fresh_net: Net, family: Family) -> None:
    load_director_nft(
        fresh_net,
        (
            "table inet h4_cap {\n    chain in {\n        type filter hook input priority 0;\n"
            "        udp dport 9 drop\n    }\n}\n"
        ),
    )
    with client_capture(fresh_net.client, fresh_net.client_if) as capture:
        _send(fresh_net, family, b"x" * 1000, 1)
        own = mac_bytes(fresh_net.client_mac())
        frames = _frames_within(capture, 0.3, lambda got: any(f[6:12] == own for f in got))
        assert [f for f in frames if f[6:12] == own] == [], "our own (outgoing) frame was captured"
    # without the drop rule the director's stack answers with a port unreachable that embeds
    # as much of the datagram as fits: the filter hands over only the first SNAPLEN bytes
    load_director_nft(fresh_net, "delete table inet h4_cap\n")
    with client_capture(fresh_net.client, fresh_net.client_if) as capture:
        _send(fresh_net, family, b"x" * 1000, 2)
        frames = _frames_within(
            capture, 2.0, lambda got: any(parse_answer(f) is not None for f in got)
        )
    answers = [f for f in frames if parse_answer(f) is not None]
    assert len(answers) == 1 and len(answers[0]) == SNAPLEN


def test_filter_program_shape() -> None:
    prog = bpf_program((6, 17), (6,), snaplen=100)
    assert prog[-1] == (0x06, 0, 0, 100)  # accept: ret snaplen
    assert prog[-2] == (0x06, 0, 0, 0)  # drop
    for pc, (code, jt, jf, _k) in enumerate(prog):
        if code == 0x15:  # every jump lands inside the program
            assert pc + 1 + jt < len(prog) and pc + 1 + jf < len(prog)
