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
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from impl.ipvsadm import SCHED_FLAG_NAMES, Op, RulesError
from impl.ipvsadm import AddDest as AddDestOp
from impl.ipvsadm import AddService as AddServiceOp
from impl.scenario import AddDest, DelDest, EditDest, Scenario, ServiceConfig
from impl.scenario import EditService as EditServiceStep
from impl.schedulers.registry import SCHEDULERS
from impl.types import (
    IPV4,
    IPV6,
    Dest,
    Family,
    Fwd,
    IPAddress,
    Proto,
    ProtoTimeouts,
    Service,
    ServiceKey,
    SvcFlag,
    full_netmask,
)

METHODS: dict[Fwd, str] = {Fwd.NAT: "NAT", Fwd.DR: "DR", Fwd.TUN: "TUN"}
FTP_PORT = 21
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
    services = [c.service for c in scenario.services]
    services += [s.service for s in scenario.steps if isinstance(s, EditServiceStep)]
    for service in services:
        if service.family is IPV4 and service.netmask is not None:
            mask = service.netmask
            if mask and (mask | (mask - 1)) != 0xFFFFFFFF:
                return (
                    f"service {service.key}: non-contiguous netmask (keepalived refuses a "
                    "persistence_granularity that is not solid)"
                )
    for service in services:
        key = service.key
        if not key.fwmark and key.vport == 0 and not service.persistent:
            return (
                f"non-persistent port-zero service {key}: keepalived makes it persistent "
                '("zero port only valid for persistent services - setting", 360 s)'
            )
    count = {c.service.key: len(c.dests) for c in scenario.services}
    nat_zero = [
        (c.service.key, d) for c in scenario.services for d in c.dests if d.fwd is Fwd.NAT
    ] + [(s.key, s.dest) for s in scenario.steps if isinstance(s, AddDest | EditDest)]
    for key, d in nat_zero:
        if d.fwd is Fwd.NAT and d.port == 0 and key.vport == FTP_PORT and not key.fwmark:
            return (
                f"NAT dest {d} of FTP service {key}: keepalived gives a real server without "
                "a port the service's port, so the FTP fallback's ports are not kept"
            )
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


# ================================================================ reading a real configuration

#: (pattern, directory of the including file) -> matching files as (path, text), sorted; raises
#: OSError when a file cannot be read. The caller supplies it (the model does no I/O).
Reader = Callable[[str, str], list[tuple[str, str]]]

MAX_INCLUDE_DEPTH = 8
DEFAULT_PERSISTENCE = 360  # "persistence_timeout [<INTEGER>] ... default 6 minutes"
DEFAULT_SCHEDULER = "wlc"
INCLUDES = ("include", "includer", "includem", "includew", "includeb", "includea")
#: virtual_server keywords about health checking, notification or SNMP: no IPVS meaning
VS_IGNORED = frozenset(
    [
        "delay_loop",
        "ha_suspend",
        "smtp_alert",
        "virtualhost",
        "snmp_name",
        "alpha",
        "omega",
        "quorum",
        "hysteresis",
        "quorum_up",
        "quorum_down",
        "connect_timeout",
        "retry",
        "delay_before_retry",
        "warmup",
        "inhibit_on_failure",
        "sorry_server",
        "sorry_server_inhibit",
        "sorry_server_lvs_method",
        "nb_get_retry",
        "persistence_timeout_hint",
    ]
)
RS_IGNORED = frozenset(
    [
        "notify_up",
        "notify_down",
        "smtp_alert",
        "virtualhost",
        "inhibit_on_failure",
        "connect_timeout",
        "retry",
        "delay_before_retry",
        "warmup",
        "delay_loop",
        "alpha",
        "nb_get_retry",
    ]
)
_METHOD_BY_NAME = {v: k for k, v in METHODS.items()}
_FLAG_BY_NAME = SCHED_FLAG_NAMES  # keepalived takes ipvsadm's -b names as keywords


@dataclass(slots=True)
class Node:
    """One statement: ``keyword args...`` and, for a block, its statements."""

    keyword: str
    args: list[str]
    filename: str
    line: int
    children: list[Node] | None = None

    def fail(self, what: str, fix: str) -> RulesError:
        return RulesError(self.filename, self.line, what, fix)


@dataclass(frozen=True, slots=True)
class KeepalivedConf:
    """What a configuration's ``virtual_server`` blocks say, in file order."""

    services: tuple[ServiceConfig, ...]
    #: where each service was declared (``file:line``), same order
    origins: tuple[str, ...]
    timeouts: ProtoTimeouts = ProtoTimeouts()

    @property
    def lines(self) -> tuple[int, ...]:
        return tuple(int(o.rsplit(":", 1)[1]) for o in self.origins)


def _tokens(text: str, filename: str, lineno: int) -> list[str]:
    """A line's words; ``{`` and ``}`` are words of their own; ``#``/``!`` start a comment."""
    out: list[str] = []
    word = ""
    quoted = False
    for ch in text:
        if quoted:
            if ch == '"':
                quoted = False
            else:
                word += ch
            continue
        if ch == '"':
            quoted = True
        elif ch in "#!":
            break
        elif ch in "{}" or ch.isspace():
            if word:
                out.append(word)
                word = ""
            if not ch.isspace():
                out.append(ch)
        else:
            word += ch
    if quoted:
        raise RulesError(filename, lineno, "unterminated quoted string", 'close it with "')
    if word:
        out.append(word)
    return out


def _parse_file(
    text: str, filename: str, reader: Reader | None, depth: int, seen: tuple[str, ...]
) -> list[Node]:
    root: list[Node] = []
    stack: list[Node] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        toks = _tokens(raw, filename, lineno)
        current: Node | None = None
        for tok in toks:
            where = stack[-1].children if stack else root
            assert where is not None
            if tok == "{":
                if current is None:
                    raise RulesError(
                        filename, lineno, "'{' opens no block", "put it after a keyword"
                    )
                current.children = []
                stack.append(current)
                current = None
            elif tok == "}":
                if not stack:
                    raise RulesError(filename, lineno, "'}' closes no block", "remove it")
                stack.pop()
                current = None
            elif current is None:
                if tok[0] in "$@~":
                    raise RulesError(
                        filename,
                        lineno,
                        f"{tok[:30]!r}: parameters, conditional lines and sequences are not read",
                        "expand the configuration first (keepalived -t logs it)",
                    )
                current = Node(tok, [], filename, lineno)
                where.append(current)
            else:
                current.args.append(tok)
        if current is not None and current.keyword in INCLUDES:
            where = stack[-1].children if stack else root
            assert where is not None
            where.remove(current)
            where.extend(_include(current, reader, depth, seen))
    if stack:
        open_ = stack[-1]
        raise open_.fail(f"block {open_.keyword} is never closed", "add the missing '}'")
    return root


def _include(node: Node, reader: Reader | None, depth: int, seen: tuple[str, ...]) -> list[Node]:
    if len(node.args) != 1:
        raise node.fail(f"{node.keyword} takes one file pattern", "write include PATTERN")
    if reader is None:
        raise node.fail("include in text without files", "read the configuration from a file")
    if depth >= MAX_INCLUDE_DEPTH:
        raise node.fail(
            f"includes nested more than {MAX_INCLUDE_DEPTH} deep", "look for an include loop"
        )
    base = node.filename.rsplit("/", 1)[0] if "/" in node.filename else "."
    try:
        files = reader(node.args[0], base)
    except OSError as exc:
        raise node.fail(
            f"cannot read {node.args[0]!r}: {exc.strerror or exc}", "fix the path"
        ) from None
    if not files:
        raise node.fail(f"no file matches {node.args[0]!r}", "fix the pattern or remove the line")
    nodes: list[Node] = []
    for path, text in files:
        if path in seen:
            raise node.fail(f"{path} includes itself", "remove the include loop")
        nodes += _parse_file(text, path, reader, depth + 1, (*seen, path))
    return nodes


def _int(node: Node, text: str | None, what: str, lo: int, hi: int) -> int:
    if text is None or not text.isdigit() or not lo <= int(text) <= hi:
        raise node.fail(f"{what} {text!r} is not a number in {lo}..{hi}", f"give {what} {lo}..{hi}")
    return int(text)


def _ip(node: Node, text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise node.fail(
            f"{text[:40]!r} is not an IP address", "write an IPv4 or IPv6 address"
        ) from None


def _one_arg(node: Node) -> str:
    if len(node.args) != 1:
        raise node.fail(f"{node.keyword} takes one value", f"write {node.keyword} VALUE")
    return node.args[0]


def _method(node: Node) -> Fwd:
    if not node.args or node.args[0] not in _METHOD_BY_NAME:
        raise node.fail(f"{node.keyword} {' '.join(node.args)[:30]!r}", "use NAT, DR or TUN")
    if node.args[0] == "TUN" and node.args[1:] not in ([], ["type", "ipip"]):
        raise node.fail("tunnel types other than ipip are not modelled", "use lvs_method TUN")
    return _METHOD_BY_NAME[node.args[0]]


def _expand_range(node: Node, text: str) -> list[IPAddress]:
    """``A.B.C.D``, ``A.B.C.D-E``, ``A-B`` (two full addresses) or ``A/nn`` (every address)."""
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise node.fail(f"{text[:40]!r} is not a network", "write ADDR/PREFIX") from None
        if net.num_addresses > 256:
            raise node.fail(f"{text} is more than 256 addresses", "use a smaller range")
        return list(net)
    if "-" not in text:
        return [_ip(node, text)]
    first_text, last_text = text.split("-", 1)
    first = _ip(node, first_text)
    if ":" in last_text or "." in last_text:
        last = _ip(node, last_text)
    else:
        sep = "." if first.version == 4 else ":"
        head = first_text.rsplit(sep, 1)[0]
        last = _ip(node, f"{head}{sep}{last_text}")
    if last.version != first.version or int(last) < int(first) or int(last) - int(first) > 255:
        raise node.fail(f"range {text[:40]!r}", "give at most 256 addresses, low to high")
    return [
        ipaddress.ip_address(int(first) + i)
        if first.version == 4
        else ipaddress.IPv6Address(int(first) + i)
        for i in range(int(last) - int(first) + 1)
    ]


def _granularity_value(node: Node, family: Family) -> int:
    text = _one_arg(node)
    if family is IPV6:
        return _int(node, text, "persistence_granularity (IPv6 prefix length)", 1, 128)
    try:
        mask = int(ipaddress.IPv4Address(text))
    except ValueError:
        raise node.fail(f"{text[:40]!r} is not an IPv4 netmask", "e.g. 255.255.255.0") from None
    if mask and (mask | (mask - 1)) != 0xFFFFFFFF:  # keepalived: "netmask is not solid"
        raise node.fail(f"netmask {text} is not contiguous", "keepalived takes only /n masks")
    return mask


@dataclass(slots=True)
class _VS:
    """A virtual_server block read so far (keys come from its head or its group)."""

    node: Node
    keys: list[ServiceKey]
    scheduler: str = DEFAULT_SCHEDULER
    method: Fwd = Fwd.NAT
    proto: Proto = Proto.UDP  # keepalived: "no protocol set - defaulting to UDP"
    family: Family | None = None
    timeout: int | None = None
    granularity: Node | None = None
    pe: str | None = None
    ops: bool = False
    flags: SvcFlag = SvcFlag.NONE
    real: list[tuple[Node, IPAddress, int | None, int, Fwd | None, int, int]] = field(
        default_factory=list
    )


def _real_server(vs: _VS, node: Node) -> None:
    if not 1 <= len(node.args) <= 2:
        raise node.fail("real_server takes an address and a port", "write real_server ADDR PORT")
    addr = _ip(node, node.args[0])
    port = _int(node, node.args[1], "port", 0, 65535) if len(node.args) == 2 else None
    weight, method, upper, lower = 1, None, 0, 0
    for child in node.children or []:
        if child.keyword == "weight":
            weight = _int(child, _one_arg(child), "weight", 0, 65535)
        elif child.keyword == "lvs_method":
            method = _method(child)
        elif child.keyword == "uthreshold":
            upper = _int(child, _one_arg(child), "uthreshold", 0, 2**31 - 1)
        elif child.keyword == "lthreshold":
            lower = _int(child, _one_arg(child), "lthreshold", 0, 2**31 - 1)
        elif child.children is not None or child.keyword in RS_IGNORED:
            continue  # a health checker (TCP_CHECK, HTTP_GET, MISC_CHECK, ...) or its settings
        else:
            raise child.fail(
                f"unknown real_server keyword {child.keyword[:30]!r}",
                "use weight, lvs_method, uthreshold, lthreshold or a checker block",
            )
    vs.real.append((node, addr, port, weight, method, upper, lower))


def _vs_keyword(vs: _VS, node: Node) -> None:
    k = node.keyword
    if k in ("lvs_sched", "lb_algo"):
        vs.scheduler = _one_arg(node)
        if vs.scheduler not in SCHEDULERS:
            raise node.fail(
                f"unknown scheduler {vs.scheduler[:30]!r}", f"use one of {', '.join(SCHEDULERS)}"
            )
    elif k in ("lvs_method", "lb_kind"):
        vs.method = _method(node)
    elif k == "protocol":
        name = _one_arg(node).upper()
        if name not in PROTOCOLS:
            raise node.fail(f"protocol {name[:20]!r}", "use TCP, UDP or SCTP")
        vs.proto = Proto[name]
    elif k == "ip_family":
        fam = _one_arg(node)
        if fam not in ("inet", "inet6"):
            raise node.fail(f"ip_family {fam[:20]!r}", "use inet or inet6")
        vs.family = IPV4 if fam == "inet" else IPV6
    elif k == "persistence_timeout":
        vs.timeout = (
            _int(node, node.args[0], "persistence_timeout", 1, 86400 * 31)
            if node.args
            else DEFAULT_PERSISTENCE
        )
    elif k == "persistence_granularity":
        vs.granularity = node
        if vs.timeout is None:  # keepalived's pgr_handler makes the service persistent
            vs.timeout = DEFAULT_PERSISTENCE
    elif k == "persistence_engine":
        vs.pe = _one_arg(node)
        if vs.pe != "sip":
            raise node.fail(f"persistence engine {vs.pe[:20]!r}", "IPVS has only sip")
    elif k == "ops":
        vs.ops = True
    elif k in _FLAG_BY_NAME:
        vs.flags |= _FLAG_BY_NAME[k]
    elif k == "real_server":
        _real_server(vs, node)
    elif k not in VS_IGNORED:
        raise node.fail(
            f"unknown virtual_server keyword {k[:30]!r}", "check the spelling (man keepalived.conf)"
        )


def _group_keys(
    node: Node, groups: dict[str, Node]
) -> list[tuple[Node, IPAddress | None, int | None, int, Family | None]]:
    """A virtual_server_group's members: (node, vaddr, vport, fwmark, family)."""
    members = []
    for m in node.children or []:
        if m.keyword == "fwmark":
            fam = None
            if len(m.args) == 2 and m.args[1] in ("inet", "inet6"):
                fam = IPV4 if m.args[1] == "inet" else IPV6
            elif len(m.args) != 1:
                raise m.fail("fwmark takes a mark (and inet/inet6)", "write fwmark N")
            members.append((m, None, None, _int(m, m.args[0], "fwmark", 1, 0xFFFFFFFF), fam))
            continue
        port = _int(m, m.args[0], "port", 0, 65535) if m.args else None
        if len(m.args) > 1:
            raise m.fail("a group member is ADDR [PORT]", "one address or range per line")
        for addr in _expand_range(m, m.keyword):
            members.append((m, addr, port, 0, None))
    return members


def _vs_keys(vs: _VS, groups: dict[str, Node]) -> list[ServiceKey]:
    node = vs.node
    args = node.args
    if len(args) == 2 and args[0] == "fwmark":
        mark = _int(node, args[1], "fwmark", 1, 0xFFFFFFFF)
        return [ServiceKey(vs.family or _rs_family(vs), Proto.TCP, None, 0, mark)]
    if len(args) == 2 and args[0] == "group":
        group = groups.get(args[1])
        if group is None:
            raise node.fail(f"no virtual_server_group {args[1][:30]!r}", "define it before use")
        keys = []
        for m, addr, port, mark, fam in _group_keys(group, groups):
            if mark:
                keys.append(
                    ServiceKey(fam or vs.family or _rs_family(vs), Proto.TCP, None, 0, mark)
                )
            else:
                assert addr is not None
                keys.append(_addr_key(m, vs, addr, port))
        return keys
    if 1 <= len(args) <= 2:
        port = _int(node, args[1], "port", 0, 65535) if len(args) == 2 else None
        return [_addr_key(node, vs, _ip(node, args[0]), port)]
    raise node.fail(
        "virtual_server needs ADDR [PORT], fwmark N or group NAME",
        "write virtual_server 198.19.0.1 80 {",
    )


def _rs_family(vs: _VS) -> Family:
    families = {Family.of(r[1]) for r in vs.real}
    return families.pop() if len(families) == 1 else IPV4


def _addr_key(node: Node, vs: _VS, addr: IPAddress, port: int | None) -> ServiceKey:
    if port is None or port == 0:
        if vs.timeout is None:
            raise node.fail(
                "a virtual server without a port must be persistent",
                "add persistence_timeout or a port",
            )
        port = 0
    return ServiceKey(Family.of(addr), vs.proto, addr, port)


def _service_configs(vs: _VS, groups: dict[str, Node]) -> list[ServiceConfig]:
    keys = _vs_keys(vs, groups)
    out = []
    for key in keys:
        netmask = None
        if vs.granularity is not None:
            netmask = _granularity_value(vs.granularity, key.family)
            if netmask == full_netmask(key.family):
                netmask = None
        if vs.ops and not key.fwmark and key.proto is not Proto.UDP:
            raise vs.node.fail(
                "ops (one-packet scheduling) is only for UDP services",
                "drop ops or use protocol UDP",
            )
        service = Service(key, vs.scheduler, vs.timeout, netmask, vs.ops, vs.flags, vs.pe)
        dests = []
        for node, addr, port, weight, method, upper, lower in vs.real:
            fwd = method or vs.method
            if fwd is not Fwd.TUN and Family.of(addr) is not key.family:
                raise node.fail(
                    f"real server {addr} is not {key.family.label} like {key}",
                    "only tunnelled real servers may differ in family",
                )
            dest = Dest(addr, port or 0, weight, fwd, upper, lower)
            if not (fwd is Fwd.NAT and vs.node.args[:1] == ["group"]):
                # the ports keepalived corrects (a group's NAT real servers keep theirs)
                dest = replace(dest, port=programmed_port(key, dest))
            if any((d.addr, d.port) == (dest.addr, dest.port) for d in dests):
                raise node.fail(f"real server {dest} appears twice in {key}", "remove one")
            dests.append(dest)
        out.append(ServiceConfig(service, tuple(dests)))
    return out


def _timeouts(node: Node) -> ProtoTimeouts:
    values = dict(tcp=900, tcpfin=120, udp=300)
    args = node.args
    if len(args) % 2:
        raise node.fail(
            "lvs_timeouts takes name/value pairs", "write lvs_timeouts tcp 900 tcpfin 120 udp 300"
        )
    for name, value in zip(args[::2], args[1::2], strict=True):
        if name not in values:
            raise node.fail(f"lvs_timeouts {name[:20]!r}", "use tcp, tcpfin and udp")
        values[name] = _int(node, value, f"lvs_timeouts {name}", 1, 86400 * 31)
    return ProtoTimeouts(**values)


def parse_conf(
    text: str, filename: str = "<keepalived.conf>", reader: Reader | None = None
) -> KeepalivedConf:
    """The IPVS services a keepalived.conf configures (raises :class:`RulesError`, one line).

    VRRP, global and static blocks are skipped except ``global_defs``' ``lvs_timeouts``;
    ``include`` (and its variants) is followed through ``reader``; ``virtual_server group``
    expands to one service per group member, each with the block's real servers.
    """
    nodes = _parse_file(text, filename, reader, 0, (filename,))
    groups: dict[str, Node] = {}
    timeouts = ProtoTimeouts()
    services: list[ServiceConfig] = []
    origins: list[str] = []
    seen: dict[ServiceKey, str] = {}
    for node in nodes:
        if node.keyword == "global_defs":
            for child in node.children or []:
                if child.keyword == "lvs_timeouts":
                    timeouts = _timeouts(child)
        elif node.keyword == "virtual_server_group":
            name = _one_arg(node)
            if node.children is None:
                raise node.fail("virtual_server_group needs a block", "add { members }")
            groups[name] = node
        elif node.keyword == "virtual_server":
            if node.children is None:
                raise node.fail("virtual_server needs a block", "add { ... }")
            vs = _VS(node, [])
            for child in node.children:
                _vs_keyword(vs, child)
            for config in _service_configs(vs, groups):
                key = config.service.key
                where = f"{node.filename}:{node.line}"
                if key in seen:
                    raise node.fail(f"service {key} is also declared at {seen[key]}", "keep one")
                seen[key] = where
                services.append(config)
                origins.append(where)
    return KeepalivedConf(tuple(services), tuple(origins), timeouts)


def looks_like_keepalived(text: str) -> bool:
    """Format detection: a keepalived.conf has blocks; ipvsadm text never has braces."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split("!", 1)[0].strip()
        if line:
            first = line.split()[0]
            if first in ("virtual_server", "virtual_server_group", "global_defs", "vrrp_instance"):
                return True
            if first in INCLUDES or "{" in line:
                return True
    return False


def _pick(chosen: dict[IPAddress, IPAddress], addr: IPAddress, pool: list[IPAddress]) -> IPAddress:
    """The pool address for ``addr``: pool order by first appearance, wrapping around."""
    if addr not in chosen:
        used = sum(1 for a in chosen if a.version == addr.version)
        chosen[addr] = pool[used % len(pool)]
    return chosen[addr]


def scale(
    services: tuple[ServiceConfig, ...],
    rips: dict[Family, list[IPAddress]],
    vips: dict[Family, list[IPAddress]] | None = None,
) -> tuple[tuple[ServiceConfig, ...], list[str]]:
    """Map a configuration onto a topology: every distinct real server onto ``rips[family]``
    and (when given) every distinct virtual address onto ``vips[family]``, in order of first
    appearance. Real servers wrap around; two dests of one service landing on one real server
    become one dest with their weights added. Returns the services and the mapping, one line
    each; more virtual addresses than ``vips`` is a :class:`ValueError` (one line)."""
    chosen: dict[IPAddress, IPAddress] = {}
    vchosen: dict[IPAddress, IPAddress] = {}
    lines: list[str] = []
    out = []
    for config in services:
        service = config.service
        vaddr = service.key.vaddr
        if vips is not None and vaddr is not None:
            pool = vips[service.family]
            if vaddr not in vchosen and sum(
                1 for a in vchosen if a.version == vaddr.version
            ) >= len(pool):
                raise ValueError(
                    f"more than {len(pool)} {service.family.label} virtual addresses "
                    "(the topology has that many); split the configuration"
                )
            if vaddr not in vchosen:
                lines.append(f"virtual address {vaddr} -> {_pick(vchosen, vaddr, pool)}")
            service = replace(service, key=replace(service.key, vaddr=vchosen[vaddr]))
        merged: dict[tuple[IPAddress, int], Dest] = {}
        for d in config.dests:
            known = d.addr in chosen
            target = replace(d, addr=_pick(chosen, d.addr, rips[d.family]))
            if not known:
                lines.append(f"real server {d.addr} -> {target.addr}")
            key = (target.addr, target.port)
            if key in merged:
                weight = min(merged[key].weight + d.weight, 65535)
                merged[key] = replace(merged[key], weight=weight)
                lines.append(
                    f"  {service.key}: {d.addr} folded into {target.addr} (weight {weight})"
                )
            else:
                merged[key] = target
        out.append(ServiceConfig(service, tuple(merged.values())))
    return tuple(out), lines


def to_ops(services: tuple[ServiceConfig, ...], lines: tuple[int, ...] = ()) -> list[Op]:
    """Services as ipvsadm operations (``-A`` then its ``-a`` lines), for replaying; ``lines``
    are the services' line numbers (0 when not given)."""
    ops: list[Op] = []
    for i, config in enumerate(services):
        line = lines[i] if i < len(lines) else 0
        ops.append(AddServiceOp(line, config.service))
        ops += [AddDestOp(line, config.service.key, d) for d in config.dests]
    return ops


__all__ = [
    "render_conf",
    "render_virtual_server",
    "unexpressible",
    "as_programmed",
    "parse_conf",
    "looks_like_keepalived",
    "scale",
    "to_ops",
    "KeepalivedConf",
    "Reader",
    "METHODS",
    "PROTOCOLS",
]


def programmed_port(key: ServiceKey, dest: Dest) -> int:
    """The dest port keepalived gives IPVS (keepalived/check/check_data.c,
    validate_check_config, 2.2): on an address service a NAT real server without a port gets
    the service's port and any other real server always gets it ("ports don't match -
    resetting"); on a fwmark service a non-NAT real server's port is cleared."""
    if key.fwmark:
        return dest.port if dest.fwd is Fwd.NAT else 0
    if dest.fwd is Fwd.NAT:
        return dest.port or key.vport
    return key.vport


def as_programmed(scenario: Scenario) -> Scenario:
    """``scenario`` as keepalived programs it into IPVS (:func:`programmed_port`). For DR and
    TUN that changes only the port IPVS records for the dest (templates, connections); for NAT
    a port-0 dest is rewritten to the service port instead of keeping the packet's port, which
    differs only on an FTP service (its port-20/high-port fallback): :func:`unexpressible`
    refuses that."""

    def dest(key: ServiceKey, d: Dest) -> Dest:
        return replace(d, port=programmed_port(key, d))

    services = tuple(
        ServiceConfig(c.service, tuple(dest(c.service.key, d) for d in c.dests))
        for c in scenario.services
    )
    steps = []
    for step in scenario.steps:
        if isinstance(step, AddDest | EditDest):
            step = replace(step, dest=dest(step.key, step.dest))
        elif isinstance(step, DelDest):
            old = next(
                (
                    d
                    for d in _dests_before(scenario, step)
                    if (d.addr, d.port) == (step.addr, step.port)
                ),
                Dest(step.addr, step.port),
            )
            step = replace(step, port=programmed_port(step.key, old))
        steps.append(step)
    return replace(scenario, services=services, steps=tuple(steps))


def _dests_before(scenario: Scenario, until: object) -> list[Dest]:
    """Every dest the scenario has configured before step ``until`` (to find a deleted one's
    forwarding method)."""
    dests = [d for c in scenario.services for d in c.dests]
    for step in scenario.steps:
        if step is until:
            break
        if isinstance(step, AddDest | EditDest):
            dests.append(step.dest)
    return dests
