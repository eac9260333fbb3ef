"""What a scenario needs of an implementation, by feature name (pure).

Implementations that are not the specification declare the features they lack by these names
(a black-box manifest's ``unsupported`` list, keepalived's translation): a case whose scenario
needs one of them is graded ``unsupported`` with the reason this module gives. The names:

``fwmark`` fwmark services or marking rules; ``port-zero`` port-zero services; ``ftp`` services
on port 21 (FTP persistence and the port-20 fallback); ``netmask`` a persistence netmask or
IPv6 prefix other than one client; ``persistence`` any persistent service; ``ops`` one-packet
scheduling; ``pe`` a persistence engine (SIP); ``sched-flags`` scheduler flags; ``sched:<name>``
a scheduler (``sched:wlc``); ``tcp`` / ``udp`` / ``sctp`` a protocol; ``ipv4`` / ``ipv6`` a
family; ``dr`` / ``nat`` / ``tun`` a forwarding method; ``mixed-forwarding`` one service with
dests of several methods; ``thresholds`` dest connection thresholds; ``weight-zero`` a dest of
weight 0 (quiescent), ``weight-zero-nat`` one with NAT forwarding; ``sysctls`` IPVS sysctls
other than the defaults; ``timeouts`` protocol timeouts other than the defaults;
``add-dest`` / ``edit-dest`` / ``del-dest`` /
``edit-service`` edits during the scenario; ``advance`` waiting (timer behaviour); ``tcp-state``
TCP or SCTP packets other than a connection's first (ACK, FIN, RST, ...); ``icmp`` ICMP echo to
a VIP; ``no-dest`` a service without any dest while traffic flows; ``sched-state`` a dest
change on a service without persistence followed by traffic (the next pick then depends on the
scheduler's position surviving the change).
"""

from __future__ import annotations

from impl.scenario import (
    AddDest,
    Advance,
    DelDest,
    EditDest,
    EditService,
    Scenario,
    Send,
    SetSysctl,
)
from impl.schedulers.registry import SCHEDULERS
from impl.types import Dest, Fwd, Proto, ProtoTimeouts, Service, ServiceKey, Sysctls, full_netmask

FTP_PORT = 21

FIXED: tuple[str, ...] = (
    "fwmark",
    "port-zero",
    "ftp",
    "netmask",
    "persistence",
    "ops",
    "pe",
    "sched-flags",
    "tcp",
    "udp",
    "sctp",
    "ipv4",
    "ipv6",
    "dr",
    "nat",
    "tun",
    "mixed-forwarding",
    "thresholds",
    "weight-zero",
    "weight-zero-nat",
    "sysctls",
    "timeouts",
    "add-dest",
    "edit-dest",
    "del-dest",
    "edit-service",
    "advance",
    "tcp-state",
    "icmp",
    "no-dest",
    "sched-state",
)
#: every feature name a declaration may use
NAMES: frozenset[str] = frozenset(FIXED) | {f"sched:{s}" for s in SCHEDULERS}
_METHODS = {Fwd.DR: "dr", Fwd.NAT: "nat", Fwd.TUN: "tun", Fwd.LOCAL: "nat"}
_FIRST_PACKETS = (None, "syn", "udp", "init")


def check_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """One line per name that is not a feature name (empty when all are known)."""
    return [
        f"unknown feature {n!r}: use one of {', '.join(FIXED)} or sched:<scheduler> "
        f"({', '.join(SCHEDULERS)})"
        for n in names
        if n not in NAMES
    ]


def _service(svc: Service) -> dict[str, str]:
    key = svc.key
    found: dict[str, str] = {}
    if key.fwmark:
        found["fwmark"] = f"fwmark service {key}"
    elif key.vport == 0:
        found["port-zero"] = f"port-zero service {key}"
    elif key.vport == FTP_PORT:
        found["ftp"] = f"FTP service {key} (FTP persistence and the port-20 fallback)"
    if not key.fwmark and key.proto.label in ("tcp", "udp", "sctp"):
        found[key.proto.label] = f"{key.proto.label.upper()} service {key}"
    found[key.family.label] = f"{key.family.label} service {key}"
    if svc.persistent:
        found["persistence"] = f"persistent service {key}"
    if svc.netmask is not None and svc.netmask != full_netmask(key.family):
        found["netmask"] = f"service {key}: persistence netmask/granularity"
    if svc.ops:
        found["ops"] = f"service {key}: one-packet scheduling"
    if svc.pe:
        found["pe"] = f"service {key}: persistence engine {svc.pe}"
    if svc.sched_flags:
        found["sched-flags"] = f"service {key}: scheduler flags"
    found[f"sched:{svc.scheduler}"] = f"service {key}: scheduler {svc.scheduler}"
    return found


def _dest(key: ServiceKey, dest: Dest) -> dict[str, str]:
    method = _METHODS[dest.fwd]
    found = {method: f"dest {dest} of {key}: forwarding {dest.fwd.value}"}
    if dest.u_threshold or dest.l_threshold:
        found["thresholds"] = f"dest {dest} of {key}: connection thresholds"
    if dest.weight == 0:
        found["weight-zero"] = f"dest {dest} of {key}: weight 0 (quiescent)"
        if dest.fwd is Fwd.NAT:
            found["weight-zero-nat"] = f"dest {dest} of {key}: weight 0 on a NAT dest"
    return found


def _merge(into: dict[str, str], found: dict[str, str]) -> None:
    for name, reason in found.items():
        into.setdefault(name, reason)


def _steps(scenario: Scenario, found: dict[str, str], methods: dict[ServiceKey, set[Fwd]]) -> None:
    edits = {AddDest: "add-dest", EditDest: "edit-dest", DelDest: "del-dest"}
    dests = {c.service.key: len(c.dests) for c in scenario.services}
    plain = {c.service.key for c in scenario.services if not c.service.persistent}
    for index, step in enumerate(scenario.steps):
        if isinstance(step, Send):
            for flow in step.flows:
                if flow.proto in (Proto.ICMP, Proto.ICMPV6):
                    found.setdefault("icmp", f"ICMP echo {flow}")
                elif flow.kind not in _FIRST_PACKETS:
                    found.setdefault("tcp-state", f"a {flow.kind} packet ({flow})")
            if any(n == 0 for n in dests.values()):
                empty = next(k for k, n in dests.items() if n == 0)
                found.setdefault("no-dest", f"traffic while service {empty} has no dest")
        elif isinstance(step, Advance):
            found.setdefault("advance", f"a wait of {step.seconds:g}s (timer behaviour)")
        elif isinstance(step, SetSysctl):
            found.setdefault("sysctls", f"sysctl {step.name} set during the scenario")
        elif isinstance(step, EditService):
            found.setdefault("edit-service", f"service {step.service.key} edited (ipvsadm -E)")
            _merge(found, _service(step.service))
        elif isinstance(step, AddDest | EditDest | DelDest):
            found.setdefault(edits[type(step)], f"{edits[type(step)]} on {step.key}")
            if step.key in plain and any(isinstance(s, Send) for s in scenario.steps[index:]):
                found.setdefault("sched-state", f"{edits[type(step)]} on {step.key}, then traffic")
            if isinstance(step, AddDest | EditDest):
                _merge(found, _dest(step.key, step.dest))
                methods.setdefault(step.key, set()).add(step.dest.fwd)
            if isinstance(step, AddDest):
                dests[step.key] = dests.get(step.key, 0) + 1
            elif isinstance(step, DelDest):
                dests[step.key] = dests.get(step.key, 1) - 1


def needs(scenario: Scenario) -> dict[str, str]:
    """Every feature ``scenario`` needs, with the first place that needs it (insertion order)."""
    found: dict[str, str] = {}
    if scenario.fwmark_rules:
        found["fwmark"] = f"{len(scenario.fwmark_rules)} fwmark rule(s)"
    if scenario.sysctls != Sysctls():
        found["sysctls"] = f"IPVS sysctls {scenario.sysctls.changed()}"
    if scenario.timeouts != ProtoTimeouts():
        found["timeouts"] = "IPVS protocol timeouts other than the defaults"
    methods: dict[ServiceKey, set[Fwd]] = {}
    for config in scenario.services:
        _merge(found, _service(config.service))
        methods[config.service.key] = set()
        for dest in config.dests:
            _merge(found, _dest(config.service.key, dest))
            methods[config.service.key].add(dest.fwd)
    _steps(scenario, found, methods)
    for key, used in methods.items():
        if len(used) > 1:
            found.setdefault("mixed-forwarding", f"service {key} mixes forwarding methods")
    return found


def first_unsupported(scenario: Scenario, unsupported: frozenset[str] | set[str]) -> str | None:
    """``name: reason`` of the first needed feature in ``unsupported``, None if none."""
    for name, reason in needs(scenario).items():
        if name in unsupported:
            return f"{name}: {reason}"
    return None


__all__ = ["NAMES", "FIXED", "needs", "check_names", "first_unsupported"]
