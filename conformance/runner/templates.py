"""Template tables: comparison with the kernel's timer slack, and their text for evidence."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from impl.types import (
    IPAddress,
    Template,
)

if TYPE_CHECKING:
    pass


def expires_tolerance(expires: int) -> int:
    """Seconds by which an observed ``expires`` may differ from the model's.

    Kernel timers fire late by up to ~1/8 of the interval (docs/semantics.md §3.3), /proc rounds
    down, and the two tables are read a few milliseconds apart: 1 s plus 1/8 of the interval.
    """
    return 1 + expires // 8


def _template_fields(t: Template) -> tuple[object, ...]:
    """Every field compared exactly (all but ``expires``)."""
    return (
        t.family,
        t.proto,
        t.caddr,
        t.cport,
        t.vaddr,
        t.vport,
        t.daddr,
        t.dport,
        t.state,
        t.pe_name,
        t.pe_data,
    )


def template_sort_key(t: Template) -> tuple[object, ...]:
    return (
        int(t.family),
        int(t.proto),
        int(t.caddr),
        int(t.vaddr),
        t.vport,
        int(t.daddr),
        t.dport,
        t.state,
        t.pe_data,
    )


def format_template(t: Template) -> str:
    """One readable line: ``TCP 198.18.16.0:0 > 198.19.0.1:80 => 198.18.10.11:80 NONE 59s``."""

    def ep(a: IPAddress, p: int) -> str:
        return f"[{a}]:{p}" if a.version == 6 else f"{a}:{p}"

    vport = "FFFF" if t.vport == 0xFFFF else str(t.vport)  # 7.2 keeps it when invalidating
    dport = "FFFF" if t.dport == 0xFFFF else str(t.dport)
    vaddr = str(t.vaddr)
    vhost = f"[{vaddr}]" if t.vaddr.version == 6 else vaddr
    pe = f" {t.pe_name} {t.pe_data}" if t.pe_name else ""
    expires = "?" if t.expires is None else f"{t.expires}s"
    daddr = f"[{t.daddr}]" if t.daddr.version == 6 else str(t.daddr)
    return (
        f"{t.proto.name} {ep(t.caddr, t.cport)} > {vhost}:{vport} => {daddr}:{dport} "
        f"{t.state} {expires}{pe}"
    )


def compare_templates(expected: Sequence[Template], observed: Sequence[Template]) -> list[str]:
    """Differences between two template tables, one line each (empty: they agree).

    Rows are matched on every field but ``expires``; a matched pair whose ``expires`` differ by
    more than :func:`expires_tolerance` is a difference too.
    """
    diffs: list[str] = []
    unmatched = list(observed)
    for exp in sorted(expected, key=template_sort_key):
        match = next((o for o in unmatched if _template_fields(o) == _template_fields(exp)), None)
        if match is None:
            diffs.append(f"missing: {format_template(exp)}")
            continue
        unmatched.remove(match)
        if exp.expires is not None and match.expires is not None:
            tol = expires_tolerance(exp.expires)
            if abs(exp.expires - match.expires) > tol:
                diffs.append(
                    f"expires {match.expires}s, model {exp.expires}s (±{tol}s): "
                    f"{format_template(exp)}"
                )
    diffs.extend(
        f"unexpected: {format_template(o)}" for o in sorted(unmatched, key=template_sort_key)
    )
    return diffs


def compare_template_keys(expected: Sequence[Template], observed: Sequence[Template]) -> list[str]:
    """Equivalence: the same persistence keys exist (real server and timers not compared)."""
    exp = Counter(t.key for t in expected if not t.invalidated)
    obs = Counter(t.key for t in observed if not t.invalidated)
    diffs = [
        f"missing key: {format_template(t)}"
        for t in expected
        if not t.invalidated and obs[t.key] < exp[t.key]
    ]
    diffs += [
        f"unexpected key: {format_template(t)}"
        for t in observed
        if not t.invalidated and exp[t.key] < obs[t.key]
    ]
    return diffs


@dataclass(frozen=True, slots=True)
class TemplateCheck:
    """Both template tables after one Send step."""

    step: int
    at: float  # seconds since install, director clock
    expected: tuple[Template, ...]
    observed: tuple[Template, ...] | None  # None: the implementation exposes no table
