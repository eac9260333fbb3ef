"""traffic: flows verified per second (ordered, batch) next to a bare raw-socket loop.

Builds one topology, routes VIP 0 to rs1 (plain routing: this measures the traffic engine, not a
balancer), then in the same run:

- ordered: the engine, each flow confirmed before the next is sent;
- batch: the engine, all flows sent, then collected and matched;
- raw loop: the same prebuilt frames sent by a bare AF_PACKET loop and counted by a bare
  AF_PACKET receive loop at rs1 (no parsing, no matching): the ceiling for batch.

Kernel counters (rx_packets of rs1's interface, via netlink inside its namespace) give the
totals. The last line is ``ratio=<batch / raw loop>``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

from harness.addresses import CLIENT_NETS, cip, rip, vip
from harness.topology import Net, Topology, build
from harness.traffic.capture import rs_capture
from harness.traffic.engine import make_stamps, send_flows_report, slowdown
from harness.traffic.packets import TrafficError, build_frame, mac_bytes
from impl.types import IPV4, IPV6, Family, Flow, Proto


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--flows",
        type=int,
        default=20000,
        help="flows for batch mode and the raw loop (default 20000)",
    )
    parser.add_argument(
        "--ordered-flows", type=int, default=2000, help="flows for ordered mode (default 2000)"
    )
    parser.add_argument("--family", choices=("ipv4", "ipv6"), default="ipv4")
    parser.add_argument("--proto", choices=("tcp", "udp", "sctp"), default="tcp")
    parser.add_argument(
        "--repeat", type=int, default=3, help="repetitions; figures are medians (the host is noisy)"
    )


def bench_flows(family: Family, proto: Proto, count: int, offset: int = 0) -> list[Flow]:
    """``count`` distinct flows (distinct saddr/sport) to VIP 0 port 80."""
    hosts = CLIENT_NETS * 254
    out = []
    for n in range(offset, offset + count):
        host = n % hosts
        out.append(
            Flow(
                proto,
                cip(family, host // 254, 1 + host % 254),
                1024 + n // hosts,
                vip(family, 0),
                80,
            )
        )
    return out


def _route_vip0_to_rs1(net: Net) -> None:
    with net.director.ipr() as ipr:
        for fam in net.topology.families:
            plen = 32 if fam is IPV4 else 128
            ipr.addr("del", index=1, address=str(vip(fam, 0)), prefixlen=plen)
            ipr.route("add", dst=f"{vip(fam, 0)}/{plen}", gateway=str(rip(fam, 0)), family=int(fam))


def rx_packets(net: Net, rs: int) -> int:
    """rs ``rs``'s segment interface rx_packets, read by netlink inside its namespace."""
    with net.rs[rs].ipr() as ipr:
        link = ipr.link("get", ifname=net.real_servers[rs].ifname)[0]
    stats = link.get("IFLA_STATS64") or link.get("IFLA_STATS")
    return int(stats["rx_packets"])


def raw_loop(net: Net, flows: list[Flow]) -> tuple[int, float]:
    """Send prebuilt frames with a bare loop; count them at rs1 with a bare recv loop."""
    stamps = make_stamps(flows)
    src, dst = mac_bytes(net.client_mac()), mac_bytes(net.director_client_mac())
    frames = [build_frame(f, s, src, dst) for f, s in zip(flows, stamps, strict=True)]
    sender = net.client.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sender.bind((net.client_if, 0))
    with sender, rs_capture(net.rs[0], net.real_servers[0].ifname, 0) as cap:
        sock = cap.sock
        sock.setblocking(True)
        sock.settimeout(2.0 * slowdown())
        got = 0
        t0 = time.monotonic()
        for i, frame in enumerate(frames):
            sender.send(frame)
            if i % 128 == 127:  # the same interleaving as batch mode: keep queues short
                sock.setblocking(False)
                try:
                    while True:
                        sock.recv(192)
                        got += 1
                except BlockingIOError:
                    pass
                sock.settimeout(2.0 * slowdown())
        try:
            while got < len(frames):
                sock.recv(192)
                got += 1
        except TimeoutError:
            pass
        return got, time.monotonic() - t0


def run(args: argparse.Namespace) -> int:
    if args.flows < 1 or args.ordered_flows < 1 or args.repeat < 1:
        print(
            "lvsconf bench traffic: --flows, --ordered-flows and --repeat must be >= 1",
            file=sys.stderr,
        )
        return 2
    if os.geteuid() != 0:
        print(
            "lvsconf bench traffic: needs root (network namespaces); rerun with sudo",
            file=sys.stderr,
        )
        return 2
    family = IPV4 if args.family == "ipv4" else IPV6
    proto = Proto[args.proto.upper()]
    figures: dict[str, list[float]] = {"ordered": [], "batch": [], "raw": []}
    try:
        with build(Topology(real_servers=3, families=(IPV4, IPV6))) as net:
            _route_vip0_to_rs1(net)
            offset = 0

            def fresh(count: int) -> list[Flow]:
                nonlocal offset  # every flow of the run is new: no reuse of (saddr, sport)
                offset += count
                return bench_flows(family, proto, count, offset - count)

            send_flows_report(net, fresh(50), "batch")  # warm-up: neighbours, nft rules, code paths
            for rep in range(args.repeat):
                for mode, count in (("ordered", args.ordered_flows), ("batch", args.flows)):
                    before = rx_packets(net, 0)
                    report = send_flows_report(net, fresh(count), mode)  # type: ignore[arg-type]
                    ok = sum(
                        r.outcome.kind == "forward" and r.outcome.rs == 0 for r in report.results
                    )
                    figures[mode].append(ok / report.elapsed)
                    print(
                        f"[{rep + 1}] {mode:8s} {count:6d} flows {ok:6d} verified "
                        f"{report.elapsed:7.3f} s {figures[mode][-1]:9.0f} flows/s "
                        f"(rs1 rx_packets +{rx_packets(net, 0) - before})"
                    )
                before = rx_packets(net, 0)
                got, elapsed = raw_loop(net, fresh(args.flows))
                figures["raw"].append(got / elapsed)
                print(
                    f"[{rep + 1}] raw loop {args.flows:6d} sent  {got:6d} received "
                    f"{elapsed:7.3f} s {figures['raw'][-1]:9.0f} frames/s "
                    f"(rs1 rx_packets +{rx_packets(net, 0) - before})"
                )
    except TrafficError as exc:
        print(f"lvsconf bench traffic: {exc}", file=sys.stderr)
        return 2
    med = {k: statistics.median(v) for k, v in figures.items()}
    print(
        f"median of {args.repeat}: ordered {med['ordered']:.0f} flows/s, batch "
        f"{med['batch']:.0f} flows/s, raw loop {med['raw']:.0f} frames/s"
    )
    print(f"ratio={med['batch'] / med['raw']:.2f}")
    return 0
