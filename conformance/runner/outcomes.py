"""What the wire should show for a model decision, and when two outcomes are the same."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import addresses
from harness.api import Outcome
from impl.types import (
    Decision,
    Flow,
    Fwd,
    Proto,
)

if TYPE_CHECKING:
    pass


def expected_outcome(verdict: Decision, flow: Flow) -> Outcome:
    """What the wire should show for the model's ``verdict`` on ``flow``.

    forward: the real server owning the dest address; NAT rewrites the port to the forwarded
    port, DR/TUN keep the packet's (and its VIP). local: TCP and SCTP are answered by the
    director's stack (RST / ABORT) unless the packet is itself a RST / ABORT (then nothing
    comes back: dropped), UDP gets the stack's ICMP port unreachable, a ping its echo reply.
    """
    if verdict.kind == "forward":
        assert verdict.dest is not None, "forward verdict without a dest"
        if verdict.fwd is Fwd.NAT:
            return Outcome(
                "forward",
                addresses.rs_index(verdict.dest),
                verdict.dest,
                verdict.dport if verdict.dport else flow.dport,
            )
        return Outcome("forward", addresses.rs_index(verdict.dest), flow.daddr, flow.dport)
    if verdict.kind == "unreachable":
        return Outcome("unreachable")
    if verdict.kind == "drop":
        return Outcome("dropped")
    # local: handed to the director's own stack, which answers like any host with no socket
    # there: UDP gets ICMP port unreachable, TCP a RST and SCTP an ABORT, except that a RST or
    # an ABORT is never answered (RFC 9293 3.10.7.1, RFC 9260 8.4): those are just dropped.
    if flow.proto is Proto.UDP:
        return Outcome("unreachable")
    if (flow.proto is Proto.TCP and flow.packet_kind == "rst") or (
        flow.proto is Proto.SCTP and flow.packet_kind == "abort"
    ):
        return Outcome("dropped")
    return Outcome("local")


def same_outcome(expected: Outcome, observed: Outcome) -> bool:
    """Equal as far as the wire can tell: kind, and for forwards real server, port, address."""
    if expected.kind != observed.kind:
        return False
    if expected.kind != "forward":
        return True
    if expected.rs != observed.rs or expected.port != observed.port:
        return False
    # An implementation may not report the address (None): only compare when both know it.
    return expected.addr is None or observed.addr is None or expected.addr == observed.addr
