"""datapath: packets per second through the reference director next to plain kernel forwarding.

One topology, one run, the same prebuilt UDP frames sent by a bare AF_PACKET loop on the client:

- kernel forwarding: frames addressed to the real servers' RIPs, routed by the director's
  kernel (ip_forward), no datapath running: the ceiling of this topology and sender;
- reference director: the same frames addressed to the VIP, balanced by the datapath process
  (TUN in, model decision, forwarding method out) to the same real servers.

Delivered packets are the real servers' interface rx_packets (kernel counters, read by netlink),
so no userspace receiver limits the figure; each real server binds the port with a socket it
never reads, so no ICMP error travels back. The rate is delivered packets over the time from
the first send to the last delivery. Under overload the TUN queue drops what the process cannot
take, so the reference rate is its capacity. The last line is ``ratio=<reference / kernel>``.
"""

from __future__ import annotations

import argparse
import socket
import time
from collections.abc import Callable

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from harness.addresses import cip, rip, vip
from harness.implementations.reference import ReferenceDatapath
from harness.topology import Net, Topology, build
from impl.scenario import Scenario, ServiceConfig
from impl.types import IPV4, IPV6, Dest, Family, Fwd, IPAddress, Proto, Service, ServiceKey

PORT = 5001
SETTLE = 0.3  # seconds without a new delivery that end a measurement


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--packets", type=int, default=20000, help="packets per measurement")
    parser.add_argument(
        "--flows",
        type=int,
        default=64,
        help="distinct client flows the packets cycle through (default 64)",
    )
    parser.add_argument("--size", type=int, default=64, help="UDP payload bytes (default 64)")
    parser.add_argument(
        "--fwd",
        choices=("dr", "nat", "tun"),
        default="nat",
        help="forwarding method of the reference director (default nat)",
    )
    parser.add_argument("--family", choices=("ipv4", "ipv6"), default="ipv4")
    parser.add_argument(
        "--persistent",
        action="store_true",
        help="make the service persistent (templates as well as connections)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="measurements each, best kept")


def _frames(net: Net, family: Family, dsts: list[IPAddress], flows: int, size: int) -> list[bytes]:
    eth = Ether(src=net.client_mac(), dst=net.director_client_mac())
    out = []
    for i in range(flows):
        src = cip(family, i % 16, 1 + i // 16)
        dst = dsts[i % len(dsts)]
        ip = IP(src=str(src), dst=str(dst)) if family is IPV4 else IPv6(src=str(src), dst=str(dst))
        out.append(bytes(eth / ip / UDP(sport=20000 + i, dport=PORT) / Raw(b"b" * size)))
    return out


def _delivered(net: Net) -> Callable[[], int]:
    handles = [(r.node.ipr(), r.ifname) for r in net.real_servers]

    def total() -> int:
        n = 0
        for ipr, ifname in handles:
            link = ipr.link("get", ifname=ifname)[0]
            n += int(link.get_attr("IFLA_STATS64")["rx_packets"])
        return n

    return total


def _measure(net: Net, frames: list[bytes], count: int) -> tuple[int, float, float]:
    """Send ``count`` frames (cycling); return (delivered, seconds first send → last delivery,
    seconds the send loop took)."""
    counter = _delivered(net)
    sender = net.client.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sender.bind((net.client_if, 0))
    with sender:
        # warm-up: neighbour resolution on every path, not counted
        for frame in frames:
            sender.send(frame)
        _settle(counter)
        before = counter()
        started = time.monotonic()
        n = len(frames)
        for i in range(count):
            try:
                sender.send(frames[i % n])
            except BlockingIOError:  # pragma: no cover - the qdisc is full; try once more
                sender.send(frames[i % n])
        sent_in = time.monotonic() - started
        last_at = _settle(counter, started)
    return counter() - before, max(last_at - started, 1e-9), sent_in


def _settle(counter: Callable[[], int], started: float | None = None) -> float:
    """Poll the counter until it stops moving for SETTLE seconds; return the last change time."""
    value, changed = counter(), time.monotonic()
    deadline = changed + 30.0
    while time.monotonic() - changed < SETTLE and time.monotonic() < deadline:
        time.sleep(0.01)  # polling interval of a bounded wait
        now_value = counter()
        if now_value != value:
            value, changed = now_value, time.monotonic()
    return changed


def run(args: argparse.Namespace) -> int:
    family = IPV4 if args.family == "ipv4" else IPV6
    fwd = Fwd(args.fwd)
    servers = 3
    svc = Service(
        ServiceKey(family, Proto.UDP, vip(family, 0), PORT), "rr", 300 if args.persistent else None
    )
    scenario = Scenario(
        "bench",
        (ServiceConfig(svc, tuple(Dest(rip(family, i), PORT, 1, fwd) for i in range(servers))),),
        (),
    )
    with build(Topology(real_servers=servers, fwd=fwd, families=(family,))) as net:
        sinks = []
        for node in net.rs:  # a socket that never reads: no ICMP port unreachable comes back
            af = socket.AF_INET if family is IPV4 else socket.AF_INET6
            s = node.socket(af, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0" if family is IPV4 else "::", PORT))
            sinks.append(s)
        kernel_frames = _frames(
            net, family, [rip(family, i) for i in range(servers)], args.flows, args.size
        )
        vip_frames = _frames(net, family, [vip(family, 0)], args.flows, args.size)
        print(
            f"datapath bench: {args.packets} UDP packets x {args.rounds} rounds, "
            f"{args.size}-byte payload, {args.flows} flows, {servers} real servers, "
            f"{fwd.value.upper()}, {family.label}{', persistent' if args.persistent else ''}"
        )
        kernel = max(
            (_measure(net, kernel_frames, args.packets) for _ in range(args.rounds)),
            key=lambda r: r[0] / r[1],
        )
        k_pps = kernel[0] / kernel[1]
        send_pps = args.packets / kernel[2]
        bound = " (sender-bound: a lower bound)" if k_pps > 0.9 * send_pps else ""
        print(
            f"kernel forwarding: {kernel[0]}/{args.packets} delivered in {kernel[1]:.3f} s "
            f"= {k_pps:,.0f} pps; the send loop ran at {send_pps:,.0f} pps{bound}"
        )
        with ReferenceDatapath().install(net, scenario) as director:
            ref = max(
                (_measure(net, vip_frames, args.packets) for _ in range(args.rounds)),
                key=lambda r: r[0] / r[1],
            )
            stats = director.stats()
        r_pps = ref[0] / ref[1]
        print(
            f"reference director: {ref[0]}/{args.packets} delivered in {ref[1]:.3f} s "
            f"= {r_pps:,.0f} pps (datapath counters over all rounds: "
            f"{', '.join(f'{k}={v}' for k, v in sorted(stats.items()))})"
        )
        for s in sinks:
            s.close()
    print(f"ratio={r_pps / k_pps:.4f}")
    return 0
