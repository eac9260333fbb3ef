"""Send flows from the client and observe where each one went:
``send_flows(net, flows) -> [FlowResult]``.

What is observed, per flow (first observation wins, a forwarded copy beats an answer):

- ``forward``: a real server's capture saw the packet (for a tunnelled one, the inner packet:
  ``encapsulated=True``); ``addr``/``port`` are the destination it arrived with (NAT: the
  rewritten one; DR and TUN: the VIP);
- ``unreachable``: an ICMP / ICMPv6 port unreachable embedding the flow reached the client;
- ``local``: the director's own stack answered: a TCP RST or SCTP ABORT for the flow, or the
  echo reply to a ping (an ICMP/ICMPv6 echo request, kind ``echo``);
- ``dropped``: none of these within ``bound`` seconds.

Why a forwarded copy beats an answer: a real server may answer a stray SYN with a RST that
reaches the client too. The client's capture is drained before the real servers' ones, and a
real server queues the packet on its capture before it answers, so whenever the engine holds
such an answer it also holds the copy that caused it.

Modes: ``ordered`` sends a flow only when the previous one is resolved (or timed out):
persistence templates depend on order. ``batch`` sends everything, then collects.

Quiet endpoints: by default the client and real-server namespaces drop incoming TCP/UDP/SCTP
that no socket waits for (nft ``socket`` match, after the capture saw it). Otherwise the
client's stack would answer a real server's SYN-ACK with a RST and real servers would answer
stray SYNs, and those packets change the director's connection states (a NAT connection that
sees a RST goes to CLOSE). Real sockets (harness.traffic.servers) are untouched.

Timing scales with ``LVSCONF_SLOWDOWN`` (default 1; the VM lane sets ~20).

``Flow.mark`` is not sent (a mark is not a packet field): the director's nftables rules set
it, as a scenario's FwmarkRules say. Frames are prebuilt before the clock starts; the sockets
live only in the topology's namespaces (client sender and observer, one observer per real
server) and are closed by a helper thread after the run (see :meth:`Session.close`).
"""

from __future__ import annotations

import ipaddress
import os
import random
import select
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Literal

from harness.api import Outcome, OutcomeKind
from harness.nft import nft
from harness.traffic.capture import Capture, client_capture, rs_capture
from harness.traffic.packets import (
    AnswerKey,
    ForwardKey,
    Seen,
    Stamp,
    TrafficError,
    answer_keys,
    build_frame,
    check_flow,
    forward_key,
    mac_bytes,
    parse_answer,
    parse_frame,
)
from impl.types import Family, Flow

if TYPE_CHECKING:
    from harness.topology import Net, Node

Mode = Literal["ordered", "batch"]

SLOWDOWN_ENV = "LVSCONF_SLOWDOWN"
#: seconds without any observation after which a flow is "dropped" (times the slowdown)
DEFAULT_BOUND = 0.25
#: frames sent between two drains of the captures in batch mode (keeps receive queues short)
BATCH_CHUNK = 128
QUIET_TABLE = "lvsconf_quiet"


def slowdown() -> float:
    """The slowdown factor from ``LVSCONF_SLOWDOWN`` (>= 1)."""
    raw = os.environ.get(SLOWDOWN_ENV, "1")
    try:
        value = float(raw)
    except ValueError:
        raise TrafficError(
            f"{SLOWDOWN_ENV}={raw!r} is not a number; set e.g. {SLOWDOWN_ENV}=20"
        ) from None
    if not value >= 1:
        raise TrafficError(
            f"{SLOWDOWN_ENV}={raw!r} must be >= 1 (1 on the host, ~20 in the VM lane)"
        )
    return value


@dataclass(frozen=True, slots=True)
class FlowResult:
    """A flow and what happened to it. ``seen_at``: the real servers that captured a copy during
    the run, in order (a flow forwarded once has exactly one entry; a ``dropped`` flow whose
    copy came after the bound has one too: late, not lost)."""

    flow: Flow
    outcome: Outcome
    seen_at: tuple[int, ...] = ()

    def __str__(self) -> str:
        return f"{self.flow}: {self.outcome}"


@dataclass(slots=True)
class Report:
    """Everything a run learned: per-flow results plus packets no flow claimed."""

    results: list[FlowResult]
    stray: list[str] = field(default_factory=list)
    elapsed: float = 0.0


# ------------------------------------------------------------------------- quiet endpoints


_quieted: set[tuple[str, int]] = set()


def _ns_identity(node: Node) -> tuple[str, int]:
    # the inode tells a recreated namespace (same name) from the one already configured
    return (node.netns, os.stat(f"/run/netns/{node.netns}").st_ino)


def _quiet_script(drop_tunnels: bool) -> str:
    tunnels = "        meta l4proto { 4, 41 } drop\n" if drop_tunnels else ""
    return (
        f"table inet {QUIET_TABLE}\n"
        f"delete table inet {QUIET_TABLE}\n"
        f"table inet {QUIET_TABLE} {{\n"
        "    chain input {\n"
        "        type filter hook input priority -150; policy accept;\n"
        "        meta l4proto { tcp, udp, sctp } socket transparent 0 accept\n"
        "        meta l4proto { tcp, udp, sctp } socket transparent 1 accept\n"
        "        meta l4proto { tcp, udp, sctp } drop\n"
        f"{tunnels}"
        "    }\n"
        "}\n"
    )


def quiet_endpoints(net: Net) -> None:
    """Make the client and real servers drop (after capture) packets no socket waits for.

    A real server that cannot decapsulate also drops tunnelled packets (else it would answer
    ICMP protocol unreachable). Idempotent; done once per namespace.
    """
    nodes = [(net.client, False)] + [(r.node, not r.decap) for r in net.real_servers]
    for node, drop_tunnels in nodes:
        ident = _ns_identity(node)
        if ident in _quieted:
            continue
        nft(node.netns, _quiet_script(drop_tunnels))
        _quieted.add(ident)


def unquiet_endpoints(net: Net) -> None:
    """Undo :func:`quiet_endpoints`: client and real servers answer stray packets again."""
    for node in (net.client, *net.rs):
        ident = _ns_identity(node)
        nft(node.netns, f"table inet {QUIET_TABLE}\ndelete table inet {QUIET_TABLE}\n")
        _quieted.discard(ident)


# ------------------------------------------------------------------------- the run


class _Tracker:
    """Every flow of a run, indexed (before anything is sent) by the keys its observations
    parse to. Buckets keep all flows sharing a key in send order; a lookup takes the first
    one that is sent and unresolved, so repeated keys (follow-ups in ordered mode) work and
    nothing has to be removed on the hot path."""

    def __init__(self, flows: Sequence[Flow], stamps: Sequence[Stamp]) -> None:
        self.flows = flows
        n = len(flows)
        self.outcomes: list[Outcome | None] = [None] * n
        self.seen_at: list[list[int]] = [[] for _ in range(n)]
        self.sent_at: list[float | None] = [None] * n
        self.exact: dict[ForwardKey, list[int]] = defaultdict(list)
        self.loose: dict[tuple[int, bytes, int, str], list[int]] = defaultdict(list)
        self.answers: dict[AnswerKey, list[tuple[int, OutcomeKind]]] = defaultdict(list)
        for i, (flow, stamp) in enumerate(zip(flows, stamps, strict=True)):
            key = forward_key(flow, stamp)
            self.exact[key].append(i)
            self.loose[key[:4]].append(i)
            for akey, kind in answer_keys(flow, stamp):
                self.answers[akey].append((i, kind))
        self.stray: list[str] = []
        self.open = 0
        self._addr: dict[bytes, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}

    def sent(self, i: int, now: float) -> None:
        self.sent_at[i] = now
        self.open += 1

    def sent_chunk(self, chunk: range, now: float) -> None:
        self.sent_at[chunk.start : chunk.stop] = [now] * len(chunk)
        self.open += len(chunk)

    def resolved(self, i: int) -> bool:
        return self.outcomes[i] is not None

    def _pending(self, bucket: list[int]) -> int | None:
        for i in bucket:
            if self.outcomes[i] is None and self.sent_at[i] is not None:
                return i
        return None

    def _resolve(self, i: int, outcome: Outcome) -> None:
        self.outcomes[i] = outcome
        self.open -= 1

    def forwarded_frames(self, frames: list[bytes], where: int, now: float) -> None:
        """Match the frames one real server captured. The common case (one flow per key,
        sent, unresolved) is inlined: this loop is the engine's hot path."""
        exact, outcomes, sent_at, seen_at = self.exact, self.outcomes, self.sent_at, self.seen_at
        addrs = self._addr
        for frame in frames:
            seen = parse_frame(frame)
            if seen is None:
                continue
            bucket = exact.get(seen[:5])
            if bucket is not None and len(bucket) == 1:
                i = bucket[0]
                sent = sent_at[i]
                if outcomes[i] is None and sent is not None:
                    seen_at[i].append(where)
                    addr = addrs.get(seen.daddr)
                    if addr is None:
                        addr = addrs[seen.daddr] = ipaddress.ip_address(seen.daddr)
                    outcomes[i] = Outcome(
                        "forward",
                        rs=where,
                        addr=addr,
                        port=seen.dport,
                        encapsulated=seen.encapsulated,
                        elapsed=now - sent,
                    )
                    self.open -= 1
                    continue
            self.forwarded(seen, where, now)

    def forwarded(self, seen: Seen, where: int, now: float) -> None:
        bucket = self.exact.get(seen.key)
        i = self._pending(bucket) if bucket else None
        if i is None and bucket:
            # another copy of a resolved flow: counted in seen_at, not resolved again
            done = [j for j in bucket if self.sent_at[j] is not None]
            if done:
                self.seen_at[done[-1]].append(where)
                return
        if i is None:
            # the implementation may rewrite the IP ID / flow label: fall back to the 4-tuple
            loose = self.loose.get(seen.loose_key)
            i = self._pending(loose) if loose else None
        if i is None:
            if len(self.stray) < 100:
                self.stray.append(f"rs{where + 1}: {seen.describe()}")
            return
        self.seen_at[i].append(where)
        addr = self._addr.get(seen.daddr)
        if addr is None:
            addr = self._addr[seen.daddr] = ipaddress.ip_address(seen.daddr)
        self._resolve(
            i,
            Outcome(
                "forward",
                rs=where,
                addr=addr,
                port=seen.dport,
                encapsulated=seen.encapsulated,
                elapsed=now - self.sent_at[i],
            ),
        )  # type: ignore[operator]

    def answered(self, key: AnswerKey, now: float) -> None:
        for i, kind in self.answers.get(key, ()):
            sent = self.sent_at[i]
            if self.outcomes[i] is None and sent is not None:
                self._resolve(i, Outcome(kind, elapsed=now - sent))
                return
        # else e.g. a real server's answer to a flow already seen there: nothing to learn

    def expire(self, i: int, bound: float) -> None:
        if self.outcomes[i] is None:
            self._resolve(i, Outcome("dropped", elapsed=bound))

    def results(self) -> list[FlowResult]:
        out = []
        for i, flow in enumerate(self.flows):
            outcome = self.outcomes[i]
            assert outcome is not None
            timed = replace(outcome, sent_at=self.sent_at[i])
            out.append(FlowResult(flow, timed, tuple(self.seen_at[i])))
        return out


def make_stamps(flows: Sequence[Flow]) -> list[Stamp]:
    """Per-flow identification values, from a random base so runs in one namespace differ."""
    rnd = random.Random(os.urandom(8))
    tag, seq, vtag = rnd.getrandbits(20), rnd.getrandbits(32), rnd.getrandbits(32)
    out = []
    for i, flow in enumerate(flows):
        s = (seq + i * 0x20000) & 0xFFFFFFFF
        # IPv4 Identification has 16 bits, the IPv6 flow label 20
        mask = 0xFFFF if flow.family is Family.IPV4 else 0xFFFFF
        out.append(
            Stamp(
                iptag=(tag + i) & mask,
                seq=s,
                ack=s ^ 0x80000000,
                vtag=((vtag + i) % 0xFFFFFFFF) + 1,
            )
        )
    return out


def _validate(
    net: Net, flows: Sequence[Flow], mode: str, bound: float, allow_ftpdata: bool = False
) -> None:
    if mode not in ("ordered", "batch"):
        raise TrafficError(f"mode {mode!r} is unknown; use 'ordered' or 'batch'")
    if not bound > 0:
        raise TrafficError(f"bound={bound!r}: give a positive number of seconds")
    families = net.topology.families
    seen: set[tuple[int, object, int]] = set()
    for flow in flows:
        check_flow(flow, allow_ftpdata=allow_ftpdata)
        if flow.family not in families:
            raise TrafficError(
                f"{flow}: the topology has no {flow.family.label}; "
                f"build it with families including {flow.family.name}"
            )
        if mode == "batch":
            key = (int(flow.proto), flow.saddr, flow.sport)
            if key in seen:
                raise TrafficError(
                    f"{flow}: a batch needs unique (proto, saddr, sport); "
                    "send follow-ups of one connection in ordered mode"
                )
            seen.add(key)


class Session:
    """The sockets of one run: a sender and the captures, all inside the topology's namespaces."""

    def __init__(self, net: Net) -> None:
        self.net = net
        with ExitStack() as stack:
            self.client = stack.enter_context(client_capture(net.client, net.client_if))
            self.rs: list[Capture] = [
                stack.enter_context(rs_capture(r.node, r.ifname, r.index)) for r in net.real_servers
            ]
            sender = net.client.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            stack.callback(sender.close)
            sender.bind((net.client_if, 0))
            self.sender = sender
            self.poller = select.poll()
            for cap in (self.client, *self.rs):
                self.poller.register(cap.fileno(), select.POLLIN)
            self._stack = stack.pop_all()  # complete: from here close() owns the sockets

    @property
    def sockets(self) -> list[socket.socket]:
        return [self.sender, self.client.sock, *(c.sock for c in self.rs)]

    def collect(self, tracker: _Tracker, ready: set[int] | None = None) -> None:
        """Drain the captures once (client first, see the module docstring) and match.

        ``ready``: the descriptors poll() reported; only those are drained, except that an
        answer at the client makes every real server's capture drained too (the copy that
        caused the answer is queued there already)."""
        client_ready = ready is None or self.client.fileno() in ready
        answers = self.client.drain() if client_ready else []
        copies = [
            (cap.where, cap.drain())
            for cap in self.rs
            if client_ready or (ready is not None and cap.fileno() in ready)
        ]
        now = time.monotonic()
        for where, frames in copies:
            assert where is not None
            if frames:
                tracker.forwarded_frames(frames, where, now)
        for frame in answers:
            key = parse_answer(frame)
            if key is not None:
                tracker.answered(key, now)

    def wait(self, tracker: _Tracker, until: float, done: Callable[[], bool]) -> None:
        """Collect until ``done()`` or the deadline (sleeping in poll() in between)."""
        while not done():
            left = until - time.monotonic()
            if left <= 0:
                return
            events = self.poller.poll(max(1, int(left * 1000 + 0.999)))
            if events:
                self.collect(tracker, {fd for fd, _ in events})

    def close(self, wait: bool = False) -> None:
        """Close the sockets. Closing an AF_PACKET socket waits for an RCU grace period
        (``synchronize_net()`` in packet_release: 10-30 ms each on a busy host, several
        sockets per run), so by default a helper thread does it and the run returns at once."""
        if wait:
            self._stack.close()
            return
        threading.Thread(
            target=self._stack.close, name="lvsconf-traffic-close", daemon=True
        ).start()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_flows_report(
    net: Net,
    flows: Iterable[Flow],
    mode: Mode = "ordered",
    bound: float | None = None,
    *,
    settle: float = 0.0,
    quiet: bool = True,
    allow_ftpdata: bool = False,
) -> Report:
    """Send ``flows`` into ``net`` and report what happened to each (see the module docstring).

    ``bound``: seconds to wait for a sign of a flow before calling it dropped (default
    :data:`DEFAULT_BOUND`, times the slowdown factor). ``settle``: seconds to keep watching
    after the last flow is resolved (times the slowdown), to catch duplicate copies.
    ``allow_ftpdata``: send source port 20 too (refused by default: IPVS never schedules it,
    docs/semantics.md §1.5, so only a case about that rule means to send it).
    """
    flows = list(flows)
    factor = slowdown()
    wait = (DEFAULT_BOUND if bound is None else bound) * factor
    _validate(net, flows, mode, wait, allow_ftpdata)
    if quiet:
        quiet_endpoints(net)
    stamps = make_stamps(flows)
    src, dst = mac_bytes(net.client_mac()), mac_bytes(net.director_client_mac())
    frames = [build_frame(f, s, src, dst, checked=True) for f, s in zip(flows, stamps, strict=True)]
    tracker = _Tracker(flows, stamps)
    started = time.monotonic()
    with Session(net) as session:
        send = session.sender.send
        if mode == "ordered":
            for i, frame in enumerate(frames):
                t0 = time.monotonic()
                tracker.sent(i, t0)
                send(frame)
                session.wait(tracker, t0 + wait, partial(tracker.resolved, i))
                tracker.expire(i, wait)
        else:
            for start in range(0, len(frames), BATCH_CHUNK):
                # one timestamp per chunk: a batch's per-flow latency is not a measurement
                chunk = range(start, min(start + BATCH_CHUNK, len(frames)))
                tracker.sent_chunk(chunk, time.monotonic())
                for i in chunk:
                    send(frames[i])
                session.collect(tracker)
            session.wait(tracker, time.monotonic() + wait, lambda: tracker.open == 0)
            for i in range(len(flows)):
                tracker.expire(i, wait)
        if settle > 0:
            session.wait(tracker, time.monotonic() + settle * factor, lambda: False)
    return Report(tracker.results(), tracker.stray, time.monotonic() - started)


def send_flows(
    net: Net,
    flows: Iterable[Flow],
    mode: Mode = "ordered",
    bound: float | None = None,
    *,
    settle: float = 0.0,
    quiet: bool = True,
    allow_ftpdata: bool = False,
) -> list[FlowResult]:
    """Send ``flows`` and return one :class:`FlowResult` per flow, in order (``allow_ftpdata``:
    see :func:`send_flows_report`)."""
    return send_flows_report(
        net, flows, mode, bound, settle=settle, quiet=quiet, allow_ftpdata=allow_ftpdata
    ).results


__all__ = [
    "FlowResult",
    "Report",
    "Mode",
    "send_flows",
    "send_flows_report",
    "slowdown",
    "quiet_endpoints",
    "unquiet_endpoints",
    "TrafficError",
    "Session",
]
