"""Scenario files: one plain-text timeline of configuration, traffic, waits and edits.

A scenario file extends the ``--rules`` and ``--flows`` files of ``lvsconf predict`` into one
file read top to bottom (``#`` starts a comment)::

    --set 900 120 300                                  # ipvsadm --set TCP TCPFIN UDP
    sysctl expire_quiescent_template=1                 # net.ipv4.vs.* (or the full name)
    mark 5 tcp 198.19.0.1 80                           # nft: tcp to 198.19.0.1:80 gets mark 5
    -A -t 198.19.0.1:80 -s rr -p 300                   # ipvsadm lines, as --rules takes them
    -a -t 198.19.0.1:80 -r 198.18.10.11 -g -w 1
    tcp 198.18.16.1:40001 -> 198.19.0.1:80             # a flow, as --flows takes it
    expect forward 198.18.10.11:80                     # optional: what that flow must do
    wait 2                                             # let 2 s pass
    -e -t 198.19.0.1:80 -r 198.18.10.11 -g -w 0        # edits between flows
    sysctl expire_nodest_conn=1
    @ 10                                               # absolute: 10 s after the start
    udp 198.18.16.1:5060 -> 198.19.0.2:5060 sip=call-1 # a SIP INVITE with that Call-ID

Lines before the first flow or wait are the starting configuration (services, dests, fwmark
rules, sysctls, timeouts); after it, ``-a/-e/-d/-E`` and ``sysctl`` lines become timeline steps.
``@ SECONDS`` / ``wait SECONDS`` become :class:`impl.scenario.Advance` steps. Bad lines raise
:class:`TimelineError`, one line ``FILE:LINE: what (fix)``.

:func:`parse_timeline` reads a file into a :class:`Timeline` (an :class:`impl.scenario.Scenario`
plus the ``expect`` lines); :func:`render_timeline` writes one back. Another front end (a
keepalived.conf reader, say) builds the same Scenario through :class:`TimelineBuilder`: hand it
already-parsed :class:`impl.scenario.ServiceConfig` objects with :meth:`TimelineBuilder.services`.
Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields, replace

from impl.director import Director
from impl.errors import ModelError
from impl.ipvsadm import (
    MAX_TIMEOUT,
    AddService,
    Clear,
    DelService,
    Op,
    RulesError,
    parse_rules,
    render_rules,
    replay,
    service_option,
)
from impl.ipvsadm import AddDest as AddDestOp
from impl.ipvsadm import DelDest as DelDestOp
from impl.ipvsadm import EditDest as EditDestOp
from impl.ipvsadm import EditService as EditServiceOp
from impl.kernel_level import DEFAULT, KernelLevel
from impl.predict import (
    PredictError,
    Prediction,
    check_line_lengths,
    clip,
    endpoint,
    parse_flow,
    parse_seconds,
    sip_invite,
    template_for,
)
from impl.scenario import (
    AddDest,
    Advance,
    DelDest,
    EditDest,
    EditService,
    Scenario,
    Send,
    ServiceConfig,
    SetSysctl,
    Step,
)
from impl.types import (
    IPV4,
    Decision,
    DecisionKind,
    Dest,
    Family,
    Flow,
    Fwd,
    FwmarkRule,
    IPAddress,
    Proto,
    ProtoTimeouts,
    ServiceKey,
    Sysctls,
)

INT_MAX = 2**31 - 1
#: Accepted values per sysctl. The vs sysctls are proc_dointvec ints whose meaning is "zero or
#: not" or small modes; a negative or huge value is a typo, not a setting.
SYSCTL_RANGES: dict[str, tuple[int, int]] = {
    f.name: (0, INT_MAX) for f in fields(Sysctls) if f.name != "ip_unprivileged_port_start"
}
# net.ipv4.ip_unprivileged_port_start: a port (sysctl_net_ipv4.c ipv4_privileged_ports, 6.12)
SYSCTL_RANGES["ip_unprivileged_port_start"] = (0, 65535)
_SYSCTL_PREFIXES = ("net.ipv4.vs.", "net.ipv4.")

_PROTO_WORDS = {"tcp": Proto.TCP, "udp": Proto.UDP, "sctp": Proto.SCTP, "any": None}
_EXPECT_KINDS: tuple[DecisionKind, ...] = ("forward", "unreachable", "drop", "local")
_IPVSADM = ("ipvsadm", "/sbin/ipvsadm", "/usr/sbin/ipvsadm")


class TimelineError(ModelError):
    """A line of a scenario file that cannot be used; ``str()`` is ``FILE:LINE: what (fix)``."""


# ---------------------------------------------------------------- the parsed file


@dataclass(frozen=True, slots=True)
class Expect:
    """An ``expect`` line: what the model must decide for the flow just before it.

    ``flow_index`` counts the scenario's flows from 0 (``Scenario.flows()`` order); ``dest`` /
    ``dport`` are only set for ``forward`` (``dport`` None: any port)."""

    flow_index: int
    kind: DecisionKind
    dest: IPAddress | None = None
    dport: int | None = None
    line: int = field(default=0, compare=False)

    def mismatch(self, decision: Decision) -> str | None:
        """Why ``decision`` breaks this expectation (None when it holds)."""
        ok = decision.kind == self.kind and (
            self.kind != "forward"
            or (decision.dest == self.dest and (self.dport is None or decision.dport == self.dport))
        )
        return None if ok else f"expected {self.text()}, the model decides {decision}"

    def text(self) -> str:
        if self.kind != "forward" or self.dest is None:
            return self.kind
        if self.dport is None:
            return f"forward {self.dest}"
        return f"forward {endpoint(self.dest, self.dport)}"


@dataclass(frozen=True, slots=True)
class Timeline:
    scenario: Scenario
    expects: tuple[Expect, ...] = ()


# ---------------------------------------------------------------- single-line readers


def _fail(where: str, what: str, fix: str) -> TimelineError:
    return TimelineError(f"{where}: {what} ({fix})")


def parse_sysctl(item: str, where: str) -> tuple[str, int]:
    """``NAME=VALUE`` for a sysctl the model knows, within its range."""
    name, sep, value = item.partition("=")
    name = name.strip()
    for prefix in _SYSCTL_PREFIXES:
        name = name.removeprefix(prefix)
    value = value.strip()
    if not sep or not name:
        raise _fail(
            where,
            f"bad sysctl {clip(item)}",
            "write NAME=INTEGER, e.g. expire_quiescent_template=1",
        )
    if name not in SYSCTL_RANGES:
        raise _fail(where, f"unknown sysctl {clip(name)}", f"use one of {', '.join(SYSCTL_RANGES)}")
    lo, hi = SYSCTL_RANGES[name]
    number = int(value) if value.isascii() and value.isdigit() and len(value) <= 10 else -1
    if not lo <= number <= hi:
        raise _fail(where, f"sysctl {name} value {clip(value)} out of range", f"use {lo}..{hi}")
    return name, number


def _timeouts(words: list[str], where: str, current: ProtoTimeouts) -> ProtoTimeouts:
    """``--set TCP TCPFIN UDP`` (ipvsadm: 0 leaves a timeout unchanged)."""
    if len(words) != 3 or not all(w.isascii() and w.isdigit() and len(w) <= 8 for w in words):
        raise _fail(
            where,
            "--set needs three timeouts",
            "write --set TCP TCPFIN UDP, e.g. --set 900 120 300",
        )
    values = [int(w) for w in words]
    if any(v > MAX_TIMEOUT for v in values):
        raise _fail(where, "--set timeout out of range", f"use 0..{MAX_TIMEOUT} (0 = unchanged)")
    tcp, tcpfin, udp = values
    return ProtoTimeouts(tcp or current.tcp, tcpfin or current.tcpfin, udp or current.udp)


def _fwmark_rule(words: list[str], where: str) -> FwmarkRule:
    """``mark MARK [tcp|udp|sctp|any] ADDR[/PREFIX] [PORT|LO-HI]``."""
    syntax = "write mark MARK [tcp|udp|sctp|any] ADDR[/PREFIX] [PORT|LO-HI]"
    if not 2 <= len(words) <= 4:
        raise _fail(where, "cannot read the mark rule", syntax)
    mark_text, rest = words[0], words[1:]
    if not (mark_text.isascii() and mark_text.isdigit() and len(mark_text) <= 10) or not (
        1 <= int(mark_text) <= 0xFFFFFFFF
    ):
        raise _fail(where, f"bad mark {clip(mark_text)}", "use a mark 1..4294967295")
    proto: Proto | None = None
    if rest and rest[0].lower() in _PROTO_WORDS:
        proto = _PROTO_WORDS[rest.pop(0).lower()]
    if not rest or len(rest) > 2:
        raise _fail(where, "cannot read the mark rule", syntax)
    try:
        net = ipaddress.ip_network(rest[0].strip("[]"), strict=False)
    except ValueError:
        raise _fail(
            where, f"bad address {clip(rest[0])}", "give an address or ADDR/PREFIX"
        ) from None
    dports: tuple[int, int] | None = None
    if len(rest) == 2:
        lo_text, _, hi_text = rest[1].partition("-")
        hi_text = hi_text or lo_text
        ok = all(t.isascii() and t.isdigit() and len(t) <= 5 for t in (lo_text, hi_text))
        if not ok or not 0 <= int(lo_text) <= int(hi_text) <= 65535:
            raise _fail(where, f"bad port {clip(rest[1])}", "use PORT or LO-HI within 0..65535")
        dports = (int(lo_text), int(hi_text))
    family = IPV4 if net.version == 4 else Family.IPV6
    return FwmarkRule(int(mark_text), family, net, proto, dports)


def _expect(words: list[str], where: str, flow_index: int, line: int) -> Expect:
    syntax = "write expect forward ADDR[:PORT] | unreachable | drop | local"
    if flow_index < 0:
        raise _fail(where, "expect before any flow", "put expect right after the flow it pins")
    if not words or words[0] not in _EXPECT_KINDS:
        raise _fail(where, f"cannot read expect {clip(' '.join(words))}", syntax)
    kind = words[0]
    if kind != "forward":
        if len(words) != 1:
            raise _fail(where, f"expect {kind} takes nothing after it", syntax)
        return Expect(flow_index, kind, line=line)
    if len(words) != 2:
        raise _fail(where, "expect forward needs the real server", syntax)
    text = words[1]
    host, port = text, None
    if text.startswith("["):
        host, _, tail = text[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        dest = ipaddress.ip_address(host)
    except ValueError:
        raise _fail(where, f"bad real server {clip(text)}", syntax) from None
    if port is not None and not (port.isascii() and port.isdigit() and int(port) <= 65535):
        raise _fail(where, f"bad port in {clip(text)}", "use a port 0..65535")
    return Expect(flow_index, "forward", dest, None if port is None else int(port), line)


def _is_ipvsadm(words: list[str]) -> bool:
    if words and words[0] in _IPVSADM:
        words = words[1:]
    return bool(words) and words[0].startswith("-")


# ---------------------------------------------------------------- the builder


class TimelineBuilder:
    """Collects a timeline in order and builds the :class:`Timeline` (see module docstring).

    ``started`` turns true at the first flow or wait: from then on configuration lines become
    steps. Errors name ``where`` (``FILE:LINE``)."""

    def __init__(self, name: str, filename: str = "<scenario>") -> None:
        self.name = name
        self.filename = filename
        self.ops: list[Op] = []
        self.configs: tuple[ServiceConfig, ...] = ()
        self.fwmark_rules: list[FwmarkRule] = []
        self.sysctls = Sysctls()
        self.timeouts = ProtoTimeouts()
        self.steps: list[Step] = []
        self.expects: list[Expect] = []
        self.now = 0.0
        self.flow_count = 0
        self.started = False
        self.initial_ops = 0
        self.expected_flow = -1  # the flow an expect line may pin (-1: none)

    # configuration that must come first
    def services(self, configs: tuple[ServiceConfig, ...] | list[ServiceConfig]) -> None:
        """Start from already-parsed services (another front end's job); before any step."""
        if self.started or self.ops:
            raise ValueError("services() must come before any rule line or step")
        self.configs = tuple(configs)

    def _initial(self, where: str, what: str) -> None:
        if self.started:
            raise _fail(
                where,
                f"{what} after the first flow or wait",
                "move it before the first flow: only -a/-e/-d/-E and sysctl lines can be steps",
            )

    def mark(self, rule: FwmarkRule, where: str) -> None:
        self._initial(where, "a mark rule")
        self.fwmark_rules.append(rule)

    def set_timeouts(self, words: list[str], where: str) -> None:
        self._initial(where, "--set")
        self.timeouts = _timeouts(words, where, self.timeouts)

    def sysctl(self, item: str, where: str) -> None:
        name, value = parse_sysctl(item, where)
        if self.started:
            self._step(SetSysctl(name, value))
        else:
            self.sysctls = replace(self.sysctls, **{name: value})

    # ipvsadm lines
    def rules(self, ops: list[Op]) -> None:
        for op in ops:
            self._rule(op)

    def _rule(self, op: Op) -> None:
        where = f"{self.filename}:{op.line}"
        if self.started and isinstance(op, AddService | DelService | Clear):
            self._initial(where, {AddService: "-A", DelService: "-D", Clear: "-C"}[type(op)])
        self.ops.append(op)
        if not self.started:
            return  # the starting configuration is checked once, when the timeline starts
        after = self._state()  # ipvsadm-restore's checks, naming this line
        if isinstance(op, AddDestOp):
            self._step(AddDest(op.key, op.dest))
        elif isinstance(op, EditDestOp):
            self._step(EditDest(op.key, op.dest))
        elif isinstance(op, DelDestOp):
            self._step(DelDest(op.key, op.addr, op.port))
        elif isinstance(op, EditServiceOp):
            self._step(
                EditService(next(c.service for c in after if c.service.key == op.service.key))
            )

    def _state(self) -> tuple[ServiceConfig, ...]:
        seeded: list[Op] = []
        for cfg in self.configs:  # services handed in by another front end, as line 0 ops
            seeded.append(AddService(0, cfg.service))
            seeded += [AddDestOp(0, cfg.service.key, d) for d in cfg.dests]
        return replay(seeded + self.ops, self.filename)

    # the timeline
    def flow(self, flow: Flow) -> None:
        self._start()
        last = self.steps[-1] if self.steps else None
        if isinstance(last, Send) and last.ordered:
            self.steps[-1] = Send((*last.flows, flow))
        else:
            self.steps.append(Send((flow,)))
        self.expected_flow = self.flow_count
        self.flow_count += 1

    def expect(self, words: list[str], where: str, line: int) -> None:
        self.expects.append(_expect(words, where, self.expected_flow, line))
        self.expected_flow = -1  # one expect per flow

    def wait(self, seconds: float) -> None:
        self._start()
        self.now += seconds
        self._step(Advance(seconds))

    def at(self, seconds: float, where: str) -> None:
        if seconds < self.now:
            raise _fail(
                where,
                f"time goes back from {self.now:g} to {seconds:g}",
                "@ is absolute: give increasing values, or use wait SECONDS",
            )
        self._start()
        if seconds > self.now:
            self.wait(seconds - self.now)

    def _step(self, step: Step) -> None:
        self.expected_flow = -1
        self.steps.append(step)

    def _start(self) -> None:
        if not self.started:
            self._state()  # ipvsadm-restore's checks of the setup, naming the bad line
            self.started = True
            self.initial_ops = len(self.ops)

    def build(self) -> Timeline:
        # the starting configuration: the rule lines before the first step (later
        # -a/-e/-d/-E lines are steps, applied as the timeline runs)
        initial = self.ops[: self.initial_ops] if self.started else self.ops
        saved, self.ops = self.ops, initial
        try:
            services = self._state()
        finally:
            self.ops = saved
        return Timeline(
            Scenario(
                name=self.name,
                services=services,
                steps=tuple(self.steps),
                fwmark_rules=tuple(self.fwmark_rules),
                sysctls=self.sysctls,
                timeouts=self.timeouts,
            ),
            tuple(self.expects),
        )


# ---------------------------------------------------------------- the file reader


def parse_timeline(text: str, filename: str = "<scenario>", name: str | None = None) -> Timeline:
    """Read a scenario file (see the module docstring)."""
    builder = TimelineBuilder(filename if name is None else name, filename)
    try:
        check_line_lengths(text, filename)
    except PredictError as exc:
        raise TimelineError(str(exc)) from None
    for lineno, raw in enumerate(text.splitlines(), 1):
        where = f"{filename}:{lineno}"
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            _line(builder, line, where, lineno)
        except RulesError as exc:
            raise TimelineError(str(exc)) from None
        except PredictError as exc:
            message = str(exc)
            if not message.startswith(where):
                message = f"{where}: {message}"
            raise TimelineError(message) from None
    try:
        return builder.build()
    except RulesError as exc:  # the setup of a file without flows is checked here
        raise TimelineError(str(exc)) from None


def _line(builder: TimelineBuilder, line: str, where: str, lineno: int) -> None:
    words = line.split()
    head = words[0]
    if head == "@" or (head.startswith("@") and len(words) == 1):
        builder.at(parse_seconds(line[1:].strip(), where), where)
    elif head == "wait":
        if len(words) != 2:
            raise _fail(where, "wait needs one number", "write wait SECONDS, e.g. wait 2.5")
        builder.wait(parse_seconds(words[1], where, "wait"))
    elif head == "sysctl":
        if len(words) != 2:
            raise _fail(where, "sysctl needs NAME=VALUE", "write sysctl expire_nodest_conn=1")
        builder.sysctl(words[1], where)
    elif head == "mark":
        builder.mark(_fwmark_rule(words[1:], where), where)
    elif head == "expect":
        builder.expect(words[1:], where, lineno)
    elif "--set" in words[:2] and _is_ipvsadm(words):
        rest = words[1:] if words[0] in _IPVSADM else words
        builder.set_timeouts(rest[1:], where)
    elif _is_ipvsadm(words):
        try:
            ops = parse_rules(line, builder.filename)
        except RulesError as exc:  # parsed alone, the line is line 1: name the real one
            raise _fail(where, exc.what, exc.fix) from None
        builder.rules([replace(op, line=lineno) for op in ops])
    elif head.lower() in ("tcp", "udp", "sctp", "icmp", "icmpv6") or "->" in line:
        builder.flow(parse_flow(line, where))
    else:
        raise _fail(
            where,
            f"cannot read {clip(line)}",
            "a line is an ipvsadm rule (-A/-E/-D/-a/-e/-d/-C), a flow "
            "(tcp SADDR:SPORT -> DADDR:DPORT), @ SECONDS, wait SECONDS, sysctl NAME=VALUE, "
            "--set TCP TCPFIN UDP, mark MARK ... or expect ...",
        )


# ---------------------------------------------------------------- the model alone


def predict_timeline(
    timeline: Timeline | Scenario, level: KernelLevel = DEFAULT
) -> list[Prediction]:
    """Walk the timeline through the model on a virtual clock: one prediction per flow, in
    order (flows get the mark of the first matching ``mark`` rule, as nftables would set)."""
    s = timeline.scenario if isinstance(timeline, Timeline) else timeline
    director = Director.from_scenario(s, level)
    now = 0.0
    out: list[Prediction] = []
    for step in s.steps:
        if isinstance(step, Send):
            for raw in step.flows:
                flow = s.mark(raw)
                decision = director.packet(flow, now)
                out.append(
                    Prediction(flow, now, decision, template_for(director, flow, decision, now))
                )
        elif isinstance(step, Advance):
            now += step.seconds
            director.expire(now)
        elif isinstance(step, AddDest):
            director.add_dest(step.key, step.dest, now)
        elif isinstance(step, EditDest):
            director.edit_dest(step.key, step.dest, now)
        elif isinstance(step, DelDest):
            director.del_dest(step.key, step.addr, step.port, now)
        elif isinstance(step, EditService):
            director.edit_service(step.service, now)
        else:
            director.set_sysctl(step.name, step.value)
    return out


def expect_failures(timeline: Timeline, decisions: list[Decision], filename: str) -> list[str]:
    """One ``FILE:LINE: ...`` line per ``expect`` the decisions break."""
    out = []
    for e in timeline.expects:
        why = e.mismatch(decisions[e.flow_index])
        if why:
            out.append(f"{filename}:{e.line}: {why}")
    return out


# ---------------------------------------------------------------- the file writer


def render_timeline(timeline: Timeline | Scenario) -> str:
    """A scenario file that parses back into the same timeline (ipvsadm notation; a DR/TUN
    dest's port is the service port, as ipvsadm forces it)."""
    if isinstance(timeline, Scenario):
        timeline = Timeline(timeline)
    s = as_ipvsadm_sets(timeline.scenario)
    expects = {e.flow_index: e for e in timeline.expects}
    out = [f"# scenario {s.name}"] if s.name else []
    if s.timeouts != ProtoTimeouts():
        out.append(f"--set {s.timeouts.tcp} {s.timeouts.tcpfin} {s.timeouts.udp}")
    out += [f"sysctl {n}={v}" for n, v in s.sysctls.changed().items()]
    out += [_render_mark(r) for r in s.fwmark_rules]
    out += render_rules(s.services).splitlines()
    if s.steps and not isinstance(s.steps[0], Send | Advance):
        out.append("@ 0")  # the timeline starts here: what follows are steps, not the setup
    flow_index = 0
    for step in s.steps:
        if isinstance(step, Send):
            for flow in step.flows:
                out.append(render_flow(flow))
                if flow_index in expects:
                    out.append(f"expect {expects[flow_index].text()}")
                flow_index += 1
        elif isinstance(step, Advance):
            out.append(f"wait {step.seconds:g}")
        elif isinstance(step, AddDest | EditDest):
            line = _dest_line(step.key, step)
            out.append(line if isinstance(step, AddDest) else "-e" + line[2:])
        elif isinstance(step, DelDest):
            line = f"-d {service_option(step.key)} -r {endpoint(step.addr, step.port)}"
            # ipvsadm forces a -g (default) dest's port to the service port: say -m to keep it
            forced = not step.key.fwmark and step.port != step.key.vport
            out.append(line + " -m" if forced else line)
        elif isinstance(step, EditService):
            first = render_rules([ServiceConfig(step.service)]).splitlines()[0]
            out.append("-E" + first[2:])
        elif isinstance(step, SetSysctl):
            out.append(f"sysctl {step.name}={step.value}")
    return "".join(f"{line}\n" for line in out)


def _forced(key: ServiceKey, dest: Dest) -> Dest:
    """``dest`` as ipvsadm would add it: a DR/TUN dest of a non-fwmark service gets the
    service port (ipvsadm.c process_options); the packet's port is kept either way."""
    if key.fwmark or dest.fwd not in (Fwd.DR, Fwd.TUN) or dest.port == key.vport:
        return dest
    return replace(dest, port=key.vport)


def as_ipvsadm_sets(s: Scenario) -> Scenario:
    """``s`` with every dest as ipvsadm can write it (see :func:`_forced`)."""
    services = tuple(
        ServiceConfig(c.service, tuple(_forced(c.service.key, d) for d in c.dests))
        for c in s.services
    )
    fwd_of = {(c.service.key, d.addr, d.port): d.fwd for c in s.services for d in c.dests}
    steps: list[Step] = []
    for step in s.steps:
        if isinstance(step, AddDest | EditDest):
            fwd_of[(step.key, step.dest.addr, step.dest.port)] = step.dest.fwd
            step = replace(step, dest=_forced(step.key, step.dest))
        elif isinstance(step, DelDest):
            fwd = fwd_of.get((step.key, step.addr, step.port), Fwd.NAT)
            port = _forced(step.key, Dest(step.addr, step.port, fwd=fwd)).port
            step = replace(step, port=port)
        steps.append(step)
    return replace(s, services=services, steps=tuple(steps))


def _dest_line(key: ServiceKey, step: AddDest | EditDest) -> str:
    from impl.types import Service  # the dest line only needs the service's key

    return render_rules([ServiceConfig(Service(key), (step.dest,))]).splitlines()[1]


def _render_mark(rule: FwmarkRule) -> str:
    words = ["mark", str(rule.mark)]
    if rule.proto is not None:
        words.append(rule.proto.label)
    elif rule.dports is not None:
        words.append("any")
    full = rule.daddr.prefixlen == rule.daddr.max_prefixlen
    words.append(str(rule.daddr.network_address) if full else str(rule.daddr))
    if rule.dports is not None:
        lo, hi = rule.dports
        words.append(str(lo) if lo == hi else f"{lo}-{hi}")
    return " ".join(words)


def render_flow(flow: Flow) -> str:
    """A flow line: ``PROTO SRC -> DST [KIND] [mark=N] [sip=ID | payload=HEX]``."""
    line = str(flow)
    if flow.payload:
        call_id = _sip_call_id(flow.payload)
        line += f" sip={call_id}" if call_id else f" payload={flow.payload.hex()}"
    return line


def _sip_call_id(payload: bytes) -> str | None:
    """The Call-ID when ``payload`` is exactly what ``sip=ID`` sends."""
    marker = b"\r\nCall-ID: "
    start = payload.find(marker)
    if start < 0:
        return None
    end = payload.find(b"\r\n", start + len(marker))
    call_id = payload[start + len(marker) : end].decode("ascii", "replace")
    return call_id if sip_invite(call_id) == payload else None
