"""Read and write IPVS rule sets in ipvsadm's own language.

Input is ``ipvsadm-save`` / ``ipvsadm -Sn`` output or ipvsadm command lines (with or without a
leading ``ipvsadm``), replayed in order like ``ipvsadm-restore``. :func:`parse_rules` turns the
text into an ordered list of operations; :func:`load_rules` replays them into the final state
(services in add order, each with its dests in the order they were added); :func:`apply` replays
them into a :class:`impl.director.Director`; :func:`render_rules` writes ``ipvsadm -Sn`` lines.

ipvsadm details reproduced (ipvsadm.c ``parse_options``/``process_options``): default scheduler
``wlc``, default weight 1, default forwarding ``-g``; ``-p`` without a value means 300 s, with a
value 1..MAX_TIMEOUT (31 days); ``-r ADDR`` without a port takes the service port, and with
``-g``/``-i`` on a non-fwmark service the dest port is *forced* to the service port; a port-zero
service must be persistent; ``-o`` only on UDP or fwmark services; ``-E`` changes only the
options given (``ipvs_update_service_by_options``) while ``-e`` resets unspecified dest options
to the defaults.

Note on order: ``ipvsadm-save`` prints dests in kernel list order, newest first, so restoring a
saved file adds them in reverse and the restored list is reversed. :func:`render_rules` prints
dests in *add order* instead, so that restoring its output rebuilds the same kernel list.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from impl.errors import ModelError
from impl.scenario import ServiceConfig
from impl.schedulers.base import UnknownScheduler
from impl.schedulers.registry import check_scheduler
from impl.types import (
    IPV4,
    IPV6,
    Dest,
    Family,
    Fwd,
    IPAddress,
    Proto,
    Service,
    ServiceKey,
    SvcFlag,
    full_netmask,
)

if TYPE_CHECKING:
    from impl.director import Director

DEFAULT_SCHEDULER = "wlc"  # ipvsadm DEF_SCHED
DEFAULT_PERSISTENT_TIMEOUT = 300  # IPVS_SVC_PERSISTENT_TIMEOUT
MAX_TIMEOUT = 86400 * 31  # ipvsadm MAX_TIMEOUT
MAX_WEIGHT = 65535
INT_MAX = 2**31 - 1
KNOWN_PES = ("sip",)

#: Port names ipvsadm -S (without -n) may print; a fixed table: lvsconf reads no /etc/services.
PORT_NAMES = {
    "ftp-data": 20,
    "ftp": 21,
    "ssh": 22,
    "telnet": 23,
    "smtp": 25,
    "domain": 53,
    "http": 80,
    "pop3": 110,
    "ntp": 123,
    "imap": 143,
    "snmp": 161,
    "ldap": 389,
    "https": 443,
    "submission": 587,
    "imaps": 993,
    "pop3s": 995,
    "mysql": 3306,
    "sip": 5060,
    "postgresql": 5432,
    "http-alt": 8080,
}

SCHED_FLAG_NAMES = {
    "flag-1": SvcFlag.SCHED1,
    "flag-2": SvcFlag.SCHED2,
    "flag-3": SvcFlag.SCHED3,
    "sh-fallback": SvcFlag.SCHED1,
    "sh-port": SvcFlag.SCHED2,
    "mh-fallback": SvcFlag.SCHED1,
    "mh-port": SvcFlag.SCHED2,
}


class RulesError(ModelError):
    """A rule set ipvsadm (or the kernel) would refuse. ``str()`` is one line:
    ``FILE:LINE: <what is wrong> (<how to fix>)``."""

    def __init__(self, filename: str, line: int, what: str, fix: str) -> None:
        self.filename, self.line, self.what, self.fix = filename, line, what, fix
        super().__init__(f"{filename}:{line}: {what} ({fix})")


# ---------------------------------------------------------------- operations
@dataclass(frozen=True, slots=True)
class AddService:
    line: int
    service: Service


@dataclass(frozen=True, slots=True)
class EditService:
    """``-E``: only the fields named in ``given`` change (ipvs_update_service_by_options)."""

    line: int
    service: Service
    given: frozenset[str]


@dataclass(frozen=True, slots=True)
class DelService:
    line: int
    key: ServiceKey


@dataclass(frozen=True, slots=True)
class AddDest:
    line: int
    key: ServiceKey
    dest: Dest


@dataclass(frozen=True, slots=True)
class EditDest:
    line: int
    key: ServiceKey
    dest: Dest


@dataclass(frozen=True, slots=True)
class DelDest:
    line: int
    key: ServiceKey
    addr: IPAddress
    port: int


@dataclass(frozen=True, slots=True)
class Clear:
    line: int


Op = AddService | EditService | DelService | AddDest | EditDest | DelDest | Clear

# ---------------------------------------------------------------- option table
# long/short spelling -> (canonical name, takes a value: "no" | "yes" | "optional")
_COMMANDS = {
    "-A": "add-service",
    "--add-service": "add-service",
    "-E": "edit-service",
    "--edit-service": "edit-service",
    "-D": "delete-service",
    "--delete-service": "delete-service",
    "-C": "clear",
    "--clear": "clear",
    "-a": "add-server",
    "--add-server": "add-server",
    "-e": "edit-server",
    "--edit-server": "edit-server",
    "-d": "delete-server",
    "--delete-server": "delete-server",
}
_OPTIONS: dict[str, tuple[str, str]] = {
    "-t": ("tcp-service", "yes"),
    "--tcp-service": ("tcp-service", "yes"),
    "-u": ("udp-service", "yes"),
    "--udp-service": ("udp-service", "yes"),
    "--sctp-service": ("sctp-service", "yes"),
    "-f": ("fwmark-service", "yes"),
    "--fwmark-service": ("fwmark-service", "yes"),
    "-6": ("ipv6", "no"),
    "--ipv6": ("ipv6", "no"),
    "-s": ("scheduler", "yes"),
    "--scheduler": ("scheduler", "yes"),
    "-p": ("persistent", "optional"),
    "--persistent": ("persistent", "optional"),
    "-M": ("netmask", "yes"),
    "--netmask": ("netmask", "yes"),
    "-o": ("ops", "no"),
    "--ops": ("ops", "no"),
    "--pe": ("pe", "yes"),
    "-b": ("sched-flags", "yes"),
    "--sched-flags": ("sched-flags", "yes"),
    "-r": ("real-server", "yes"),
    "--real-server": ("real-server", "yes"),
    "-g": ("gatewaying", "no"),
    "--gatewaying": ("gatewaying", "no"),
    "-m": ("masquerading", "no"),
    "--masquerading": ("masquerading", "no"),
    "-i": ("ipip", "no"),
    "--ipip": ("ipip", "no"),
    "-w": ("weight", "yes"),
    "--weight": ("weight", "yes"),
    "-x": ("u-threshold", "yes"),
    "--u-threshold": ("u-threshold", "yes"),
    "-y": ("l-threshold", "yes"),
    "--l-threshold": ("l-threshold", "yes"),
    "-n": ("numeric", "no"),
    "--numeric": ("numeric", "no"),
}
_SERVICE_OPTS = ("tcp-service", "udp-service", "sctp-service", "fwmark-service")
_SVC_PROTO = {"tcp-service": Proto.TCP, "udp-service": Proto.UDP, "sctp-service": Proto.SCTP}


class _Line:
    """Error reporting context for one input line."""

    def __init__(self, filename: str, lineno: int) -> None:
        self.filename, self.lineno = filename, lineno

    def fail(self, what: str, fix: str) -> RulesError:
        return RulesError(self.filename, self.lineno, what, fix)


def _tokens(ctx: _Line, text: str) -> list[str]:
    try:
        toks = shlex.split(text, comments=True)
    except ValueError as exc:
        raise ctx.fail(f"cannot split the line into words: {exc}", "balance the quotes") from None
    if toks and toks[0] in ("ipvsadm", "/sbin/ipvsadm", "/usr/sbin/ipvsadm"):
        toks = toks[1:]
    return toks


def _split_options(ctx: _Line, toks: list[str]) -> tuple[str, dict[str, str | None]]:
    """Return (command, {option: value}) for one line, checking spellings and arity."""
    command: str | None = None
    opts: dict[str, str | None] = {}
    i = 0
    while i < len(toks):
        tok = toks[i]
        i += 1
        value: str | None = None
        name = tok
        if tok.startswith("--") and "=" in tok:
            name, value = tok.split("=", 1)
        elif (
            tok.startswith("-")
            and not tok.startswith("--")
            and len(tok) > 2
            and tok[:2] in _OPTIONS
            and _OPTIONS[tok[:2]][1] != "no"
        ):
            name, value = tok[:2], tok[2:]  # attached value: -w3, -p300
        if name in _COMMANDS:
            if command is not None:
                raise ctx.fail(
                    f"two commands on one line ({command}, {_COMMANDS[name]})",
                    "give one of -A/-E/-D/-a/-e/-d/-C per line",
                )
            command = _COMMANDS[name]
            continue
        spec = _OPTIONS.get(name)
        if spec is None:
            if tok.startswith("-"):
                raise ctx.fail(
                    f"unknown option {tok!r}",
                    "ipvsadm rules use -A/-E/-D/-a/-e/-d/-C with -t/-u/-f/-s/-p/"
                    "-M/-o/--pe/-b/-r/-g/-m/-i/-w/-x/-y",
                )
            raise ctx.fail(f"unexpected argument {tok!r}", "remove it or put an option before it")
        canon, arity = spec
        if canon in opts:
            raise ctx.fail(f"option {name} given twice", "give each option once")
        if arity == "yes" and value is None:
            if i >= len(toks):
                raise ctx.fail(f"option {name} needs a value", f"write {name} VALUE")
            value = toks[i]
            i += 1
        elif arity == "optional" and value is None and i < len(toks) and _is_num(toks[i]):
            value = toks[i]
            i += 1
        elif arity == "no" and value is not None:
            raise ctx.fail(f"option {name} takes no value", f"write {name} alone")
        opts[canon] = value
    if command is None:
        raise ctx.fail(
            "no command on this line",
            "start it with -A, -E, -D, -a, -e, -d or -C (as ipvsadm-save writes)",
        )
    return command, opts


def _is_num(text: str) -> bool:
    """ASCII digits only (str.isdigit also accepts e.g. superscripts, which int() refuses)."""
    return text.isascii() and text.isdigit()


def _number(ctx: _Line, text: str, what: str, lo: int, hi: int) -> int:
    if not _is_num(text) or not lo <= int(text) <= hi:
        raise ctx.fail(f"{what} {text!r} is out of range", f"use a whole number {lo}..{hi}")
    return int(text)


def _port(ctx: _Line, text: str, what: str) -> int:
    if _is_num(text):
        return _number(ctx, text, f"{what} port", 0, 65535)
    if text in PORT_NAMES:
        return PORT_NAMES[text]
    raise ctx.fail(f"unknown {what} port {text!r}", "give the port as a number (ipvsadm -Sn)")


def _host(ctx: _Line, text: str, what: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    hostlike = all(c.isalnum() or c in "-._" for c in text)
    if text and hostlike and not text.replace(".", "").isdigit():
        raise ctx.fail(
            f"{what} {text!r} is a host name, and lvsconf does no DNS lookups",
            "save the rules with ipvsadm -Sn so addresses are numeric",
        )
    raise ctx.fail(f"bad {what} {text!r}", "use an IPv4 address or an IPv6 address in brackets")


def _addr_port(ctx: _Line, text: str, what: str) -> tuple[IPAddress, int | None]:
    """``ADDR[:PORT]`` with IPv6 as ``[ADDR]:PORT`` or a bare IPv6 address (no port)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ctx.fail(f"bad {what} {text!r}", "write IPv6 as [ADDR]:PORT")
        addr = _host(ctx, host, what)
        if addr.version != 6:
            raise ctx.fail(
                f"bad {what} {text!r}: brackets hold an IPv4 address", "write IPv4 as ADDR:PORT"
            )
        return addr, (_port(ctx, rest[1:], what) if rest else None)
    if text.count(":") > 1:  # a bare IPv6 address, as inet_pton takes it
        addr = _host(ctx, text, what)
        return addr, None
    host, sep, port = text.partition(":")
    addr = _host(ctx, host, what)
    return addr, (_port(ctx, port, what) if sep else None)


def _service_key(ctx: _Line, opts: dict[str, str | None]) -> ServiceKey:
    given = [o for o in _SERVICE_OPTS if o in opts]
    if not given:
        raise ctx.fail(
            "no virtual service given",
            "add -t ADDR:PORT, -u ADDR:PORT, --sctp-service ADDR:PORT or -f MARK",
        )
    if len(given) > 1:
        raise ctx.fail(
            f"more than one virtual service ({', '.join(given)})",
            "give exactly one of -t/-u/--sctp-service/-f",
        )
    which = given[0]
    text = opts[which] or ""
    if which == "fwmark-service":
        if not _is_num(text) or not 1 <= int(text) <= 2**32 - 1:
            raise ctx.fail(f"invalid fwmark value {text!r}", "use a mark 1..4294967295")
        family = IPV6 if "ipv6" in opts else IPV4
        return ServiceKey(family, Proto.TCP, None, 0, int(text))
    if "ipv6" in opts:
        raise ctx.fail("-6 is only for fwmark services", "drop -6; an address says its family")
    addr, port = _addr_port(ctx, text, "virtual service address")
    return ServiceKey(Family.of(addr), _SVC_PROTO[which], addr, port or 0)


def _netmask(ctx: _Line, family: Family, text: str) -> int:
    if family is IPV6:
        if not _is_num(text) or not 1 <= int(text) <= 128:
            raise ctx.fail(f"illegal IPv6 netmask {text!r}", "use a prefix length 1..128")
        return int(text)
    try:
        if text.count(".") != 3:
            raise ValueError
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        raise ctx.fail(
            f"illegal IPv4 persistent netmask {text!r}", "use a dotted mask such as 255.255.255.0"
        ) from None


def _sched_flags(ctx: _Line, text: str, scheduler: str | None) -> SvcFlag:
    flags = SvcFlag.NONE
    for name in text.split(","):
        flag = SCHED_FLAG_NAMES.get(name)
        if flag is None:
            raise ctx.fail(
                f"unknown scheduler flag {name!r}",
                f"use {', '.join(SCHED_FLAG_NAMES)}, comma separated",
            )
        prefix = name.split("-")[0]
        if prefix in ("sh", "mh") and scheduler is not None and scheduler != prefix:
            raise ctx.fail(
                f"scheduler flag {name!r} does not fit scheduler {scheduler!r}",
                f"use it with -s {prefix}, or use flag-N",
            )
        flags |= flag
    return flags


def _service(ctx: _Line, key: ServiceKey, opts: dict[str, str | None]) -> Service:
    sched = opts.get("scheduler") or DEFAULT_SCHEDULER
    try:
        check_scheduler(sched)
    except UnknownScheduler as exc:
        raise ctx.fail(str(exc), "pick one of those names with -s") from None
    timeout: int | None = None
    if "persistent" in opts:
        raw = opts["persistent"]
        timeout = (
            DEFAULT_PERSISTENT_TIMEOUT
            if raw is None
            else _number(ctx, raw, "persistence timeout", 1, MAX_TIMEOUT)
        )
    netmask: int | None = None
    if opts.get("netmask") is not None:
        netmask = _netmask(ctx, key.family, opts["netmask"] or "")
        if netmask == full_netmask(key.family):
            netmask = None
    flags = SvcFlag.NONE
    if opts.get("sched-flags") is not None:
        flags = _sched_flags(ctx, opts["sched-flags"] or "", opts.get("scheduler"))
    pe = opts.get("pe")
    if pe is not None and pe not in KNOWN_PES:
        raise ctx.fail(f"unknown persistence engine {pe!r}", "IPVS has only --pe sip")
    return Service(key, sched, timeout, netmask, "ops" in opts, flags, pe)


def _check_new_service(ctx: _Line, s: Service) -> None:
    if not s.key.fwmark and s.key.vport == 0 and not s.persistent:
        raise ctx.fail(
            "port zero given for a non-persistent service",
            "add -p TIMEOUT, or give the service a port",
        )
    if s.ops and not s.key.fwmark and s.key.proto is not Proto.UDP:
        raise ctx.fail(
            "one-packet scheduling (-o) is only for UDP services", "drop -o, or use -u / -f"
        )


def _dest(ctx: _Line, key: ServiceKey, opts: dict[str, str | None]) -> Dest:
    text = opts.get("real-server")
    if text is None:
        raise ctx.fail("no real server given", "add -r ADDR[:PORT]")
    addr, port = _addr_port(ctx, text, "real server address")
    fwds = [o for o in ("gatewaying", "masquerading", "ipip") if o in opts]
    if len(fwds) > 1:
        raise ctx.fail(
            f"more than one forwarding method ({', '.join(fwds)})", "give one of -g, -m, -i"
        )
    fwd = {"gatewaying": Fwd.DR, "masquerading": Fwd.NAT, "ipip": Fwd.TUN}[
        fwds[0] if fwds else "gatewaying"
    ]
    if port is None or (not key.fwmark and fwd in (Fwd.DR, Fwd.TUN)):
        port = key.vport  # ipvsadm: copy vport; DR/TUN dest port must equal the service port
    if Family.of(addr) is not key.family and fwd is not Fwd.TUN:
        raise ctx.fail(
            f"real server {addr} is not of the service's family",
            "mixed families need tunnelling (-i)",
        )
    weight = (
        _number(ctx, opts["weight"] or "", "weight", 0, MAX_WEIGHT)
        if opts.get("weight") is not None
        else 1
    )
    u = (
        _number(ctx, opts["u-threshold"] or "", "u-threshold", 0, INT_MAX)
        if opts.get("u-threshold") is not None
        else 0
    )
    lo = (
        _number(ctx, opts["l-threshold"] or "", "l-threshold", 0, INT_MAX)
        if opts.get("l-threshold") is not None
        else 0
    )
    if u and lo > u:
        raise ctx.fail(f"l-threshold {lo} is above u-threshold {u}", "make -y at most -x")
    return Dest(addr, port, weight, fwd, u, lo)


_SERVICE_ONLY = ("scheduler", "persistent", "netmask", "ops", "pe", "sched-flags", "ipv6")
_DEST_ONLY = (
    "real-server",
    "gatewaying",
    "masquerading",
    "ipip",
    "weight",
    "u-threshold",
    "l-threshold",
)


def _parse_line(ctx: _Line, text: str) -> Op | None:
    toks = _tokens(ctx, text)
    if not toks:
        return None
    command, opts = _split_options(ctx, toks)
    opts.pop("numeric", None)
    if command == "clear":
        if opts:
            raise ctx.fail("-C takes no options", "write -C alone")
        return Clear(ctx.lineno)
    key = _service_key(ctx, opts)
    if command in ("add-service", "edit-service", "delete-service"):
        bad = [o for o in _DEST_ONLY if o in opts]
        if bad:
            raise ctx.fail(
                f"option --{bad[0]} does not apply to a service command",
                "give real-server options with -a/-e/-d",
            )
        if command == "delete-service":
            extra = [o for o in _SERVICE_ONLY if o in opts and o != "ipv6"]
            if extra:
                raise ctx.fail(
                    f"option --{extra[0]} does not apply to -D", "write -D -t/-u/-f only"
                )
            return DelService(ctx.lineno, key)
        service = _service(ctx, key, opts)
        if command == "add-service":
            _check_new_service(ctx, service)
            return AddService(ctx.lineno, service)
        return EditService(ctx.lineno, service, frozenset(o for o in opts if o in _SERVICE_ONLY))
    bad = [o for o in _SERVICE_ONLY if o in opts and o != "ipv6"]
    if bad:
        raise ctx.fail(
            f"option --{bad[0]} does not apply to a real-server command",
            "give service options with -A/-E",
        )
    dest = _dest(ctx, key, opts)
    if command == "add-server":
        return AddDest(ctx.lineno, key, dest)
    if command == "edit-server":
        return EditDest(ctx.lineno, key, dest)
    return DelDest(ctx.lineno, key, dest.addr, dest.port)


def parse_rules(text: str, filename: str = "<rules>") -> list[Op]:
    """Parse every line into an operation (no state checks; see :func:`load_rules`)."""
    ops: list[Op] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        op = _parse_line(_Line(filename, lineno), line)
        if op is not None:
            ops.append(op)
    return ops


# ---------------------------------------------------------------- replay
def _merge_edit(old: Service, op: EditService) -> Service:
    new = op.service
    s = old
    if "scheduler" in op.given:
        s = replace(s, scheduler=new.scheduler)
    if "persistent" in op.given:
        s = replace(s, timeout=new.timeout)
    if "netmask" in op.given:
        s = replace(s, netmask=new.netmask)
    if "ops" in op.given:
        s = replace(s, ops=True)
    if "pe" in op.given:
        s = replace(s, pe=new.pe)
    if "sched-flags" in op.given:
        s = replace(s, sched_flags=new.sched_flags)
    return s


def replay(ops: list[Op], filename: str = "<rules>") -> tuple[ServiceConfig, ...]:
    """Replay ``ops`` like ipvsadm-restore against an empty table, with the kernel's checks."""
    services: dict[ServiceKey, Service] = {}
    dests: dict[ServiceKey, list[Dest]] = {}
    for op in ops:
        ctx = _Line(filename, op.line)
        if isinstance(op, Clear):
            services.clear()
            dests.clear()
            continue
        key = op.service.key if isinstance(op, AddService | EditService) else op.key
        if isinstance(op, AddService):
            if key in services:
                raise ctx.fail(
                    f"service {key} already exists", "use -E to change it, or -D it first"
                )
            services[key] = op.service
            dests[key] = []
            continue
        if key not in services:
            raise ctx.fail(f"no service {key}", "add it with -A before this line")
        if isinstance(op, EditService):
            merged = _merge_edit(services[key], op)
            _check_new_service(ctx, merged)
            services[key] = merged
        elif isinstance(op, DelService):
            del services[key], dests[key]
        elif isinstance(op, AddDest):
            if any(d.addr == op.dest.addr and d.port == op.dest.port for d in dests[key]):
                raise ctx.fail(
                    f"real server {op.dest} already exists in {key}",
                    "use -e to change it, or -d it first",
                )
            dests[key].append(op.dest)
        elif isinstance(op, EditDest | DelDest):
            addr, port = (
                (op.dest.addr, op.dest.port) if isinstance(op, EditDest) else (op.addr, op.port)
            )
            idx = next(
                (i for i, d in enumerate(dests[key]) if d.addr == addr and d.port == port), None
            )
            if idx is None:
                shown = f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"
                raise ctx.fail(f"no real server {shown} in {key}", "add it with -a first")
            if isinstance(op, EditDest):
                dests[key][idx] = op.dest
            else:
                del dests[key][idx]
    return tuple(ServiceConfig(services[k], tuple(dests[k])) for k in services)


def load_rules(text: str, filename: str = "<rules>") -> tuple[ServiceConfig, ...]:
    """Final state of a rule set: services in add order, dests in the order they were added."""
    return replay(parse_rules(text, filename), filename)


def apply(director: Director, ops: list[Op], now: float = 0.0) -> None:
    """Replay ``ops`` into a Director, as ipvsadm-restore would into the kernel."""
    current = {s.key: s for s, _ in director.services()}
    for op in ops:
        if isinstance(op, Clear):
            for s, _ in director.services():
                director.del_service(s.key, now)
            current.clear()
        elif isinstance(op, AddService):
            director.add_service(op.service, now)
            current[op.service.key] = op.service
        elif isinstance(op, EditService):
            merged = _merge_edit(current[op.service.key], op)
            director.edit_service(merged, now)
            current[merged.key] = merged
        elif isinstance(op, DelService):
            director.del_service(op.key, now)
            current.pop(op.key, None)
        elif isinstance(op, AddDest):
            director.add_dest(op.key, op.dest, now)
        elif isinstance(op, EditDest):
            director.edit_dest(op.key, op.dest, now)
        else:
            director.del_dest(op.key, op.addr, op.port, now)


# ---------------------------------------------------------------- output
def _ep(addr: IPAddress, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def service_option(key: ServiceKey) -> str:
    """The ``-t/-u/--sctp-service/-f`` part naming a service, as ipvsadm -Sn prints it."""
    if key.fwmark:
        return f"-f {key.fwmark}" + (" -6" if key.family is IPV6 else "")
    assert key.vaddr is not None
    flag = {Proto.TCP: "-t", Proto.UDP: "-u", Proto.SCTP: "--sctp-service"}[key.proto]
    return f"{flag} {_ep(key.vaddr, key.vport)}"


def _flag_names(s: Service) -> list[str]:
    names = []
    prefix = s.scheduler if s.scheduler in ("sh", "mh") else None
    for bit, n in ((SvcFlag.SCHED1, 1), (SvcFlag.SCHED2, 2), (SvcFlag.SCHED3, 3)):
        if s.sched_flags & bit:
            if prefix and n < 3:
                names.append(f"{prefix}-{'fallback' if n == 1 else 'port'}")
            else:
                names.append(f"flag-{n}")
    return names


def render_rules(configs: tuple[ServiceConfig, ...] | list[ServiceConfig]) -> str:
    """``ipvsadm -Sn`` notation; dests in add order (see the module docstring)."""
    out: list[str] = []
    for cfg in configs:
        s = cfg.service
        name = service_option(s.key)
        line = f"-A {name} -s {s.scheduler}"
        if s.persistent:
            line += f" -p {s.timeout}"
        if s.netmask is not None and s.netmask != full_netmask(s.family):
            mask = str(ipaddress.IPv4Address(s.netmask)) if s.family is IPV4 else str(s.netmask)
            line += f" -M {mask}"
        if s.pe:
            line += f" --pe {s.pe}"
        if s.ops:
            line += " -o"
        flags = _flag_names(s)
        if flags:
            line += f" -b {','.join(flags)}"
        out.append(line)
        for d in cfg.dests:
            fwd = {Fwd.DR: "-g", Fwd.NAT: "-m", Fwd.TUN: "-i", Fwd.LOCAL: "-m"}[d.fwd]
            line = f"-a {name} -r {_ep(d.addr, d.port)} {fwd} -w {d.weight}"
            if d.u_threshold:
                line += f" -x {d.u_threshold}"
            if d.l_threshold:
                line += f" -y {d.l_threshold}"
            out.append(line)
    return "".join(f"{line}\n" for line in out)
