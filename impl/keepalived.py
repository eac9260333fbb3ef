"""keepalived.conf ``virtual_server`` blocks: written from, and read into, IPVS services (pure).

:func:`render_conf` writes a keepalived.conf (checker part only) for services and dests;
:func:`unexpressible` names what of a scenario keepalived cannot express.
:func:`parse_conf` reads the ``virtual_server`` blocks of a real configuration (following
``include`` and ``virtual_server_group``) into the same structures as :mod:`impl.ipvsadm`.

Keywords follow keepalived 2.2.7 (keepalived/check/check_parser.c): ``lvs_sched``,
``lvs_method`` (per virtual server, and per real server), ``protocol``, ``persistence_timeout``,
``persistence_granularity`` (an IPv4 mask, or an IPv6 prefix length), ``persistence_engine``,
``ops``, the scheduler flags (``flag-1..3``, ``sh-port``, ``sh-fallback``, ``mh-port``,
``mh-fallback``), ``weight``, ``uthreshold``/``lthreshold``, ``ip_family`` for fwmark
services and ``lvs_timeouts`` in ``global_defs``.
"""

from __future__ import annotations

import ipaddress

from impl.scenario import AddDest, DelDest, EditDest, Scenario, ServiceConfig
from impl.types import IPV4, IPV6, Fwd, ProtoTimeouts, Service, ServiceKey, SvcFlag, full_netmask

METHODS: dict[Fwd, str] = {Fwd.NAT: "NAT", Fwd.DR: "DR", Fwd.TUN: "TUN"}
PROTOCOLS = ("TCP", "UDP", "SCTP")


def _flags(s: Service) -> list[str]:
    names = []
    for bit, n in ((SvcFlag.SCHED1, 1), (SvcFlag.SCHED2, 2), (SvcFlag.SCHED3, 3)):
        if s.sched_flags & bit:
            if s.scheduler in ("sh", "mh") and n < 3:
                names.append(f"{s.scheduler}-{'fallback' if n == 1 else 'port'}")
            else:
                names.append(f"flag-{n}")
    return names


def _granularity(s: Service) -> str | None:
    if s.netmask is None or s.netmask == full_netmask(s.family):
        return None
    return str(ipaddress.IPv4Address(s.netmask)) if s.family is IPV4 else str(s.netmask)


def _head(key: ServiceKey) -> list[str]:
    if key.fwmark:
        lines = [f"virtual_server fwmark {key.fwmark} {{"]
        if key.family is IPV6:
            lines.append("    ip_family inet6")
        return lines
    return [f"virtual_server {key.vaddr} {key.vport} {{", f"    protocol {key.proto.name}"]


def render_virtual_server(config: ServiceConfig) -> str:
    """One ``virtual_server`` block; real servers in add order (keepalived adds them in file
    order, so the kernel lists them newest first, as after ipvsadm -a in that order)."""
    s = config.service
    lines = _head(s.key)
    lines.append(f"    lvs_sched {s.scheduler}")
    first = config.dests[0].fwd if config.dests else Fwd.DR
    lines.append(f"    lvs_method {METHODS[first]}")
    if s.timeout is not None:
        lines.append(f"    persistence_timeout {s.timeout}")
    granularity = _granularity(s)
    if granularity:
        lines.append(f"    persistence_granularity {granularity}")
    if s.pe:
        lines.append(f"    persistence_engine {s.pe}")
    if s.ops:
        lines.append("    ops")
    lines += [f"    {f}" for f in _flags(s)]
    for d in config.dests:
        lines.append(f"    real_server {d.addr} {d.port} {{")
        lines.append(f"        weight {d.weight}")
        if d.fwd is not first:
            lines.append(f"        lvs_method {METHODS[d.fwd]}")
        if d.u_threshold:
            lines.append(f"        uthreshold {d.u_threshold}")
        if d.l_threshold:
            lines.append(f"        lthreshold {d.l_threshold}")
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_conf(
    services: tuple[ServiceConfig, ...] | list[ServiceConfig], timeouts: ProtoTimeouts
) -> str:
    """A whole keepalived.conf: ``global_defs`` (protocol timeouts) and the virtual servers."""
    head = ["global_defs {", "    router_id lvsconf"]
    if timeouts != ProtoTimeouts():
        head.append(
            f"    lvs_timeouts tcp {timeouts.tcp} tcpfin {timeouts.tcpfin} udp {timeouts.udp}"
        )
    head.append("}")
    return "\n".join(head) + "\n" + "".join(render_virtual_server(c) for c in services)


def unexpressible(scenario: Scenario) -> str | None:
    """What keepalived.conf cannot say of ``scenario`` (one line), None if it can say it all.

    keepalived ignores a virtual server without real servers ("has no real servers -
    ignoring", measured with keepalived -t), so a service must keep a dest at every step.
    """
    count = {c.service.key: len(c.dests) for c in scenario.services}
    for config in scenario.services:
        for dest in config.dests:
            if dest.fwd not in METHODS:
                return f"dest {dest} of {config.service.key}: forwarding {dest.fwd.value}"
    for key, n in count.items():
        if n == 0:
            return f"service {key} has no real server (keepalived ignores such a virtual_server)"
    for step in scenario.steps:
        if isinstance(step, DelDest):
            count[step.key] -= 1
            if count[step.key] == 0:
                return (
                    f"deleting the last real server of {step.key} (keepalived then removes "
                    "the virtual_server itself)"
                )
        elif isinstance(step, AddDest | EditDest):
            if step.dest.fwd not in METHODS:
                return f"dest {step.dest} of {step.key}: forwarding {step.dest.fwd.value}"
            if isinstance(step, AddDest):
                count[step.key] = count.get(step.key, 0) + 1
    return None


__all__ = ["render_conf", "render_virtual_server", "unexpressible", "METHODS", "PROTOCOLS"]
