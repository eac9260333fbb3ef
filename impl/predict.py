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
_PROTOS = {
    "tcp": Proto.TCP,
    "udp": Proto.UDP,
    "sctp": Proto.SCTP,
    "icmp": Proto.ICMP,
    "icmpv6": Proto.ICMPV6,
}
#: The model's clock is a float of seconds; beyond ~31 years a timeline is a typo (and 1e308
#: would lose every sub-second step to rounding).
MAX_SECONDS = 1e9
#: How much of a bad token an error line repeats (the rest becomes "…").
TOKEN_ECHO = 40
#: A Call-ID in ``sip=ID``: visible ASCII, no '#' (comments) and no ';' or ',' (SIP separators).
_CALL_ID = re.compile(r"^[!-~]{1,128}$")
_ENDPOINT = r"(\[[0-9A-Fa-f:.]+\]|[0-9.]+):(\d+)"
_FLOW = re.compile(rf"^\s*(\w+)\s+{_ENDPOINT}\s*->\s*{_ENDPOINT}((?:\s+\S+)*)\s*$")
FLOW_SYNTAX = (
    "PROTO SADDR:SPORT -> DADDR:DPORT [mark=N] [KIND] [sip=CALLID | payload=HEX], e.g. "
    "'tcp 198.18.16.10:40000 -> 198.19.0.1:80'"
)


def clip(text: str, limit: int = TOKEN_ECHO) -> str:
    """``repr`` of a user's token, cut to ``limit`` characters with an ellipsis: an error line
    stays one bounded line whatever the input."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


def bounded(message: str, limit: int = 600) -> str:
    """One line of at most ``limit`` characters: every word longer than 3 * TOKEN_ECHO is cut
    (the fix at the end of the line survives), newlines become spaces."""
    words = [w if len(w) <= 3 * TOKEN_ECHO else w[: 3 * TOKEN_ECHO] + "…" for w in message.split()]
    line = " ".join(words)
    return line if len(line) <= limit else line[: limit - 1] + "…"


#: No rules, flows or scenario line is this long; refusing it first keeps parsing cheap.
MAX_LINE = 4096


def check_line_lengths(text: str, filename: str) -> None:
    """Refuse a line longer than MAX_LINE (one clear line naming it)."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if len(line) > MAX_LINE:
            raise PredictError(
                f"{filename}:{lineno}: line of {len(line)} characters (keep lines under "
                f"{MAX_LINE} characters)"
            )


def sip_invite(call_id: str) -> bytes:
    """A minimal SIP INVITE carrying ``call_id`` (what ``sip=ID`` on a flow line sends)."""
    lines = [
        "INVITE sip:bob@example.invalid SIP/2.0",
        "Via: SIP/2.0/UDP client.example.invalid;branch=z9hG4bKlvsconf",
        "Max-Forwards: 70",
        "From: <sip:alice@example.invalid>;tag=1",
        "To: <sip:bob@example.invalid>",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


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
            f"{where}: bad address {clip(text)} (use an IPv4 address or an IPv6 address in "
            "brackets)"
        ) from None
    if bracket != (addr.version == 6):
        raise PredictError(
            f"{where}: address {clip(text)}: IPv6 goes in brackets, IPv4 does not "
            "(e.g. [2001:db8::1]:80, 198.19.0.1:80)"
        )
    return addr


def parse_flow(text: str, where: str = "flow") -> Flow:
    m = _FLOW.match(text)
    if not m:
        raise PredictError(f"{where}: cannot read flow {clip(text.strip())} (write {FLOW_SYNTAX})")
    proto = _PROTOS.get(m[1].lower())
    if proto is None:
        raise PredictError(
            f"{where}: unknown protocol {clip(m[1])} (use tcp, udp, sctp, icmp or icmpv6)"
        )
    saddr, daddr = _addr(m[2], where), _addr(m[4], where)
    if saddr.version != daddr.version:
        raise PredictError(
            f"{where}: source and destination families differ (use two IPv4 or two IPv6 addresses)"
        )
    if (proto is Proto.ICMP and saddr.version != 4) or (
        proto is Proto.ICMPV6 and saddr.version != 6
    ):
        raise PredictError(f"{where}: icmp is for IPv4, icmpv6 for IPv6 (use the matching one)")
    if len(m[3]) > 5 or len(m[5]) > 5 or int(m[3]) > 65535 or int(m[5]) > 65535:
        raise PredictError(f"{where}: port out of range (use 0..65535)")
    sport, dport = int(m[3]), int(m[5])
    mark, kind, payload = 0, None, b""
    for extra in m[6].split():
        if extra.startswith(("sip=", "payload=")):
            if payload:
                raise PredictError(f"{where}: two payloads on one flow (give sip= or payload=)")
            payload = _payload(extra, proto, where)
            continue
        if extra.startswith("mark="):
            value = extra[5:]
            try:
                mark = int(value, 0)
            except ValueError:
                mark = -1
            if len(value) > 12 or not 0 <= mark <= 0xFFFFFFFF:
                raise PredictError(
                    f"{where}: bad fwmark {clip(value)} (use mark=N, N in 0..4294967295)"
                )
        elif extra in _KINDS:
            kind = extra
        else:
            raise PredictError(
                f"{where}: unknown flow attribute {clip(extra)} (use mark=N, sip=CALLID, "
                f"payload=HEX or a packet kind: {', '.join(_KINDS)})"
            )
    return Flow(proto, saddr, sport, daddr, dport, kind, mark, payload)  # type: ignore[arg-type]


def _payload(token: str, proto: Proto, where: str) -> bytes:
    """``sip=CALLID`` (a SIP INVITE with that Call-ID) or ``payload=HEX`` (raw bytes)."""
    if proto is not Proto.UDP:
        raise PredictError(f"{where}: only UDP flows carry a payload (drop {clip(token)})")
    name, _, value = token.partition("=")
    if name == "sip":
        if not _CALL_ID.match(value):
            raise PredictError(
                f"{where}: bad Call-ID {clip(value)} (use sip=ID, 1..128 visible characters)"
            )
        return sip_invite(value)
    try:
        data = bytes.fromhex(value)
    except ValueError:
        data = b""
    if not data or len(data) > 1400:
        raise PredictError(
            f"{where}: bad payload {clip(value)} (use payload=HEX, 1..1400 bytes, e.g. "
            "payload=64617461)"
        )
    return data


def parse_seconds(text: str, where: str, what: str = "time") -> float:
    """Seconds 0..MAX_SECONDS from ``text`` (a time or a wait), else one clear line."""
    try:
        seconds = float(text) if len(text) <= 32 else -1.0
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_SECONDS:
        raise PredictError(
            f"{where}: bad {what} {clip(text)} (give seconds 0..{MAX_SECONDS:.0f}, e.g. 12.5)"
        )
    return seconds


def parse_time(text: str, where: str) -> At:
    return At(parse_seconds(text, where))


def parse_flows_file(text: str, filename: str) -> list[Event]:
    check_line_lengths(text, filename)
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
