"""Per-packet logic: decide with the model, act like IPVS. No sockets here (see forward.py).

Every packet the TUN delivers is one of two kinds (plumbing.py routes nothing else there):
a client packet to a VIP/fwmark destination (→ ``model.packet``), or a real server's packet to a
client (→ ``model.reply``: un-NAT when a NAT connection matches, otherwise routed unchanged, as
the kernel forwards packets of no connection).
"""

from __future__ import annotations

import collections
import sys
import traceback
from collections.abc import Callable
from typing import Protocol

from impl.datapath.packet import (
    AddressCache,
    Packet,
    PacketError,
    flow_of,
    icmp_too_big,
    icmp_unreachable,
    parse,
    rewrite_dst,
    rewrite_src,
    undo_forward_hop,
)
from impl.scenario import Scenario
from impl.types import Decision, Flow, Fwd, IPAddress, IPNetwork


class Model(Protocol):
    """What the datapath needs of the reference Director (impl/director.py)."""

    def packet(self, flow: Flow, now: float) -> Decision: ...

    def reply(self, flow: Flow, now: float) -> Decision: ...


class Wire(Protocol):
    """Where packets go (impl.datapath.forward.Senders, or a recorder in tests)."""

    def local(self, data: bytes | bytearray) -> None: ...

    def routed(self, data: bytes | bytearray, dst: IPAddress) -> None: ...

    def tunnel(self, data: bytes | bytearray, rip: IPAddress) -> None: ...

    def direct(self, data: bytes | bytearray, rip: IPAddress, version: int) -> None: ...

    def tunnel_mtu(self, version: int) -> int: ...


class Engine:
    """Decides and forwards one packet at a time; counts what it did in :attr:`stats`."""

    def __init__(
        self,
        model: Model,
        scenario: Scenario,
        wire: Wire,
        targets: list[IPNetwork],
        clock: Callable[[], float],
        servers: list[IPNetwork] | None = None,
    ) -> None:
        self.model = model
        self.scenario = scenario
        self.wire = wire
        self.clock = clock
        self.addr = AddressCache()
        self.stats: collections.Counter[str] = collections.Counter()
        self._hosts = {n.network_address.packed for n in targets if n.num_addresses == 1}
        self._nets = [n for n in targets if n.num_addresses > 1]
        self._marking = bool(scenario.fwmark_rules)
        #: where real servers live; None: anything not for a target counts as a reply
        self._servers = servers
        # Flow objects are immutable and repeat for every packet of a connection: reuse them,
        # unless a persistence engine reads payloads (SIP), which differ per packet.
        self._payloads = any(sc.service.pe for sc in scenario.services)
        self._flows: dict[tuple[object, ...], Flow] = {}
        self._errors_shown = 0

    def _is_target(self, raw: bytes) -> bool:
        if raw in self._hosts:
            return True
        if not self._nets:
            return False
        addr = self.addr(raw)
        return any(addr in n for n in self._nets)

    def handle(self, data: bytes | bytearray) -> str:
        """Process one packet read from the TUN; return what was done (also counted)."""
        try:
            pkt = parse(data)
            action = self._client(pkt) if self._is_target(pkt.dst) else self._reply(pkt)
        except PacketError as exc:
            action = "malformed"
            self._complain(f"dropped a malformed packet: {exc}")
        except OSError as exc:
            action = "send-error"
            self._complain(f"send failed: {exc}")
        except Exception:  # noqa: BLE001 - a model bug must not kill the director; it is counted
            action = "model-error"
            self._complain(traceback.format_exc())
        self.stats[action] += 1
        return action

    def _complain(self, text: str) -> None:
        # stderr is the process log; cap it so a packet storm cannot flood it
        if self._errors_shown < 20:
            self._errors_shown += 1
            print(f"lvsconf-datapath: {text}", file=sys.stderr, flush=True)

    def _client(self, pkt: Packet) -> str:
        if not pkt.schedulable:
            self.wire.local(pkt.data)  # not TCP/UDP/SCTP (e.g. ping the VIP), or a fragment
            return "local"
        flow = self._flow(pkt)
        verdict = self.model.packet(flow, self.clock())
        return self.act(pkt, verdict)

    def _flow(self, pkt: Packet) -> Flow:
        if self._payloads:
            flow = flow_of(pkt, self.addr)
            return self.scenario.mark(flow) if self._marking else flow
        key = (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.kind)
        cached = self._flows.get(key)
        if cached is not None:
            return cached
        flow = flow_of(pkt, self.addr, payload=False)
        if self._marking:
            flow = self.scenario.mark(flow)
        if len(self._flows) >= 65536:
            self._flows.clear()
        self._flows[key] = flow
        return flow

    def act(self, pkt: Packet, verdict: Decision) -> str:
        """Carry out ``verdict`` for a client packet."""
        kind = verdict.kind
        if kind == "forward":
            assert verdict.dest is not None
            fwd = verdict.fwd
            if fwd is Fwd.DR:
                self.wire.direct(pkt.data, verdict.dest, 4 if pkt.family == 2 else 6)
                return "dr"
            if fwd is Fwd.TUN:
                mtu = self.wire.tunnel_mtu(4 if pkt.family == 2 else 6)
                if len(pkt.data) > mtu and pkt.dont_fragment:
                    # ensure_mtu_is_adequate: tell the client the tunnel's MTU, drop the packet
                    undo_forward_hop(pkt)
                    self.wire.routed(icmp_too_big(pkt, mtu), self.addr(pkt.src))
                    return "too-big"
                self.wire.tunnel(pkt.data, verdict.dest)
                return "tun"
            if fwd is Fwd.NAT:
                rewrite_dst(
                    pkt, verdict.dest, verdict.dport if verdict.dport is not None else pkt.dport
                )
                self.wire.routed(pkt.data, verdict.dest)
                return "nat"
            self.wire.local(pkt.data)  # Fwd.LOCAL: the dest is the director itself
            return "local"
        if kind == "unreachable":
            undo_forward_hop(pkt)  # quote the packet as it arrived, like icmp_send at LOCAL_IN
            self.wire.routed(icmp_unreachable(pkt), self.addr(pkt.src))
            return "unreachable"
        if kind == "local":
            self.wire.local(pkt.data)
            return "local"
        return "drop"

    def _reply(self, pkt: Packet) -> str:
        if self._servers is not None:
            src = self.addr(pkt.src)
            if not any(src in n for n in self._servers):
                return "ignored"  # e.g. the director's own output into the TUN: not ours
        dst = self.addr(pkt.dst)
        if not pkt.schedulable:
            self.wire.routed(pkt.data, dst)
            return "routed"
        verdict = self.model.reply(flow_of(pkt, self.addr), self.clock())
        if verdict.kind == "forward" and verdict.dest is not None:
            rewrite_src(
                pkt, verdict.dest, verdict.dport if verdict.dport is not None else pkt.sport
            )
            self.wire.routed(pkt.data, dst)
            return "snat"
        if verdict.kind == "drop":
            return "drop"
        self.wire.routed(pkt.data, dst)  # no NAT connection: forward as the kernel would
        return "routed"
