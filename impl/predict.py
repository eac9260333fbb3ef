"""Predict what kernel IPVS does with a rule set and a list of flows: pure, clock injected.

Used by ``lvsconf predict``. Flow syntax (one per ``--flow`` or per line of a flows file)::

    tcp 198.18.16.10:40000 -> 198.19.0.1:80
    udp [2001:db8:c0::1]:5000 -> [2001:db8:f::1]:53 mark=7
    tcp 198.18.16.10:40001 -> 198.19.0.1:80 ack        # a packet kind (default: syn/udp/init)

A flows file may also hold ``@ SECONDS`` lines: the clock is *set* to that absolute time
(seconds since the rules were loaded) before the following flows, exactly like ``--at``. The
clock never goes back. Each flow's template is the one the model holds for it afterwards,
printed as ``ipvsadm -Lnc`` does: ``TCP 00:59 NONE 198.18.16.0:0 198.19.0.1:80 198.18.10.11:80``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, get_args

from impl.director import Director, fwmark_vaddr, masked
from impl.errors import ModelError
from impl.ipvsadm import Op, apply
from impl.kernel_level import DEFAULT, KernelLevel
from impl.types import Decision, Flow, IPAddress, PacketKind, Proto, Sysctls, Template

_KINDS: tuple[str, ...] = get_args(PacketKind)
_PROTOS = {"tcp": Proto.TCP, "udp": Proto.UDP, "sctp": Proto.SCTP}
_ENDPOINT = r"(\[[0-9A-Fa-f:.]+\]|[0-9.]+):(\d+)"
_FLOW = re.compile(rf"^\s*(\w+)\s+{_ENDPOINT}\s*->\s*{_ENDPOINT}((?:\s+\S+)*)\s*$")
FLOW_SYNTAX = (
    "PROTO SADDR:SPORT -> DADDR:DPORT [mark=N] [KIND], e.g. "
    "'tcp 198.18.16.10:40000 -> 198.19.0.1:80'"
)


class PredictError(ModelError):
    """Bad flow syntax or flows file; ``str()`` is one line with the fix."""


@dataclass(frozen=True, slots=True)
class At:
    """Set the clock to ``seconds`` (absolute) before the following flows."""

    seconds: float


Event = Flow | At


@dataclass(frozen=True, slots=True)
class Prediction:
    flow: Flow
    at: float
    verdict: Decision
    template: Template | None

    def as_json(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "flow": str(self.flow),
            "at": self.at,
            "verdict": v.kind,
            "dest": endpoint(v.dest, v.dport) if v.kind == "forward" and v.dest else None,
            "fwd": v.fwd.value if v.fwd else None,
            "reason": v.reason,
            "template": render_template(self.template) if self.template else None,
        }

    def __str__(self) -> str:
        v = self.verdict
        what = f"forward {endpoint(v.dest, v.dport)}" if v.kind == "forward" and v.dest else v.kind
        if v.kind == "forward" and v.fwd:
            what += f" ({v.fwd.value})"
        tmpl = render_template(self.template) if self.template else "-"
        return f"@{self.at:g} {self.flow}: {what}; template {tmpl}"


def endpoint(addr: IPAddress | None, port: int | None) -> str:
    if addr is None:
        return "-"
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def render_template(t: Template) -> str:
    """One ``ipvsadm -Lnc`` row, single-spaced: ``PRO MM:SS STATE SRC VIRT DEST``."""
    secs = t.expires or 0
    return (
        f"{t.proto.name} {secs // 60:02d}:{secs % 60:02d} {t.state} "
        f"{endpoint(t.caddr, t.cport)} {endpoint(t.vaddr, t.vport)} "
        f"{endpoint(t.daddr, t.dport)}"
    )


def _addr(text: str, where: str) -> IPAddress:
    bracket = text.startswith("[")
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise PredictError(
            f"{where}: bad address {text!r} (use an IPv4 address or an IPv6 address in brackets)"
        ) from None
    if bracket != (addr.version == 6):
        raise PredictError(
            f"{where}: address {text!r}: IPv6 goes in brackets, IPv4 does not "
            "(e.g. [2001:db8::1]:80, 198.19.0.1:80)"
        )
    return addr


def parse_flow(text: str, where: str = "flow") -> Flow:
    m = _FLOW.match(text)
    if not m:
        raise PredictError(f"{where}: cannot read flow {text.strip()!r} (write {FLOW_SYNTAX})")
    proto = _PROTOS.get(m[1].lower())
    if proto is None:
        raise PredictError(f"{where}: unknown protocol {m[1]!r} (use tcp, udp or sctp)")
    saddr, daddr = _addr(m[2], where), _addr(m[4], where)
    if saddr.version != daddr.version:
        raise PredictError(
            f"{where}: source and destination families differ (use two IPv4 or two IPv6 addresses)"
        )
    sport, dport = int(m[3]), int(m[5])
    if sport > 65535 or dport > 65535:
        raise PredictError(f"{where}: port out of range (use 0..65535)")
    mark, kind = 0, None
    for extra in m[6].split():
        if extra.startswith("mark="):
            value = extra[5:]
            try:
                mark = int(value, 0)
            except ValueError:
                mark = -1
            if not 0 <= mark <= 0xFFFFFFFF:
                raise PredictError(
                    f"{where}: bad fwmark {value!r} (use mark=N, N in 0..4294967295)"
                )
        elif extra in _KINDS:
            kind = extra
        else:
            raise PredictError(
                f"{where}: unknown flow attribute {extra!r} (use mark=N or a "
                f"packet kind: {', '.join(_KINDS)})"
            )
    return Flow(proto, saddr, sport, daddr, dport, kind, mark)  # type: ignore[arg-type]


def parse_time(text: str, where: str) -> At:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise PredictError(f"{where}: bad time {text!r} (give seconds >= 0, e.g. 12.5)")
    return At(seconds)


def parse_flows_file(text: str, filename: str) -> list[Event]:
    events: list[Event] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{filename}:{lineno}"
        if line.startswith("@"):
            events.append(parse_time(line[1:].strip(), where))
        else:
            events.append(parse_flow(line, where))
    return events


def template_for(director: Director, flow: Flow, verdict: Decision, now: float) -> Template | None:
    """The valid template the model holds for ``flow`` now (None for non-persistent paths)."""
    if verdict.kind != "forward":
        return None
    nets = {
        masked(flow.saddr, s)
        for s, _ in director.services()
        if s.persistent and s.family is flow.family
    }
    mark_vaddr = fwmark_vaddr(flow.family, flow.mark) if flow.mark else None
    for t in director.templates(now):
        if t.invalidated or t.caddr not in nets or t.daddr != verdict.dest:
            continue
        if t.vaddr == flow.daddr or (t.proto is Proto.IP and t.vaddr == mark_vaddr):
            return t
    return None


def predict(
    ops: list[Op],
    events: list[Event],
    level: KernelLevel = DEFAULT,
    sysctls: dict[str, int] | None = None,
) -> list[Prediction]:
    """Load the rules at t=0, then feed ``events`` in order through a Director."""
    director = Director(level, Sysctls())
    for name, value in (sysctls or {}).items():
        director.set_sysctl(name, value)
    apply(director, ops, 0.0)
    now = 0.0
    out: list[Prediction] = []
    for ev in events:
        if isinstance(ev, At):
            if ev.seconds < now:
                raise PredictError(
                    f"time goes back from {now:g} to {ev.seconds:g} (give "
                    "increasing --at / @ values: they are absolute)"
                )
            now = ev.seconds
            continue
        verdict = director.packet(ev, now)
        out.append(Prediction(ev, now, verdict, template_for(director, ev, verdict, now)))
    return out
