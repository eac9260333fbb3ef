"""model: decisions/s of the reference model (new templates, template hits, bare dict.get).

Three loops over the same number of flows, all in one run:

(a) ``new``: every flow comes from a new client, so the scheduler runs and a template and a
    connection are created;
(b) ``hit``: the same clients again with new source ports: every flow finds its template
    (no scheduling) and creates a connection;
(c) ``dict``: the same loop doing only ``dict.get`` on the template-equivalent key of each flow
    (the floor any Python model pays per decision).

The last line is ``ratio=<(b)/(c)>``. Nothing is asserted: this prints figures.
"""

from __future__ import annotations

import argparse
import cProfile
import ipaddress
import pstats
import sys
import time
from collections.abc import Callable

from impl.director import Director
from impl.types import IPV4, Dest, Flow, Fwd, Proto, Service, ServiceKey

VIP = ipaddress.IPv4Address("198.19.0.1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--flows",
        type=int,
        default=20000,
        help="flows per loop (default 20000; at most 65536 clients)",
    )
    parser.add_argument("--scheduler", default="wlc", help="scheduler of the service (wlc)")
    parser.add_argument("--dests", type=int, default=8, help="real servers (default 8)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print the top functions of loop (b) by own time",
    )


def _director(sched: str, dests: int) -> Director:
    d = Director()
    key = ServiceKey(IPV4, Proto.TCP, VIP, 80)
    d.add_service(Service(key, sched, timeout=3600))
    for i in range(dests):
        d.add_dest(key, Dest(ipaddress.IPv4Address(f"198.18.10.{11 + i}"), 80, 1 + i % 3, Fwd.DR))
    return d


def _clients(n: int) -> list[ipaddress.IPv4Address]:
    base = int(ipaddress.IPv4Address("198.18.16.0"))  # 198.18.16.0/20 .. and beyond, in plan
    return [ipaddress.IPv4Address(base + i) for i in range(n)]


def _rate(n: int, loop: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    loop()
    return n / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> int:
    n = args.flows
    if not 1 <= n <= 65536:
        print(f"lvsconf bench model: --flows {n} is out of range (use 1..65536)", file=sys.stderr)
        return 2
    director = _director(args.scheduler, args.dests)
    clients = _clients(n)
    new_flows = [Flow(Proto.TCP, c, 10000, VIP, 80) for c in clients]
    hit_flows = [Flow(Proto.TCP, c, 20000, VIP, 80) for c in clients]
    packet = director.packet

    def loop_new() -> None:
        for f in new_flows:
            packet(f, 1.0)

    def loop_hit() -> None:
        for f in hit_flows:
            packet(f, 2.0)

    table = {(f.proto, f.saddr, f.daddr, f.dport): None for f in new_flows}
    get = table.get

    def loop_dict() -> None:
        for f in hit_flows:
            get((f.proto, f.saddr, f.daddr, f.dport))

    a = _rate(n, loop_new)
    b = _rate(n, loop_hit)
    c = _rate(n, loop_dict)
    hits = sum(1 for t in director.templates(2.0) if not t.invalidated)
    print(
        f"flows per loop: {n}, scheduler {args.scheduler}, {args.dests} dests, "
        f"templates held: {hits}"
    )
    print(f"(a) new client, scheduler + template: {a:12,.0f} decisions/s")
    print(f"(b) existing template:                {b:12,.0f} decisions/s")
    print(f"(c) bare dict.get, same loop:         {c:12,.0f} decisions/s")
    if args.profile:
        prof_director = _director(args.scheduler, args.dests)
        for f in new_flows:
            prof_director.packet(f, 1.0)
        prof = cProfile.Profile()
        prof.enable()
        for f in hit_flows:
            prof_director.packet(f, 2.0)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    print(f"ratio={b / c:.4f}")
    return 0
