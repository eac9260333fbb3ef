"""Upgrade comparison: the same implementation on two kernels, behaviour and verdicts.

Records of two reports are matched by (rule, implementation, family). For each pair the
comparison looks at what the implementation *did* (observed outcome per flow, observed template
rows per step, ``expires`` within the kernel's timer slack) and at what the model predicted for
each side's kernel level (``expected``), and labels the change:

- ``unexplained`` — a regression (the verdict got worse), or behaviour that changed while the
  model predicts no change. These set ``lvsconf diff``'s exit status.
- ``modelled`` — exact on both kernels, and the model's own predictions differ between the two
  kernel levels: the change is one the model knows (the reasons come from
  :mod:`impl.kernel_changes`).
- ``improved`` (was failing, now conforms), ``failing`` (fails on both), ``equivalent`` (graded
  by persistence equivalence on both: different servers are allowed), ``changed`` (the verdict
  changed without a behaviour change, e.g. skip -> unsupported).

Records present on one side only are counted, not compared.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from conformance.runner.report import problem_lines
from conformance.runner.templates import expires_tolerance
from impl.kernel_changes import differences
from impl.kernel_level import KernelLevel, parse_release

Key = tuple[str, str, str]  # (rule, implementation, family)
GOOD = frozenset({"exact", "equivalent", "diverges"})
#: display order; the first is the one that fails ``lvsconf diff``
#: kernel label prefix of a record the kernel lane replayed without running it
REPLAYED = "lane "
LABELS = ("unexplained", "modelled", "improved", "failing", "equivalent", "changed")


class UpgradeError(ValueError):
    """The two reports cannot be compared as given (the message names the fix)."""


@dataclass(frozen=True, slots=True)
class FlowChange:
    index: int  # 0-based
    flow: str
    old: str  # observed outcome on the old kernel ('' when absent)
    new: str
    old_expected: str
    new_expected: str


@dataclass(frozen=True, slots=True)
class TableChange:
    step: int  # 0-based scenario step after which the table was read
    old: list[str] | None  # observed template rows (None: not exposed)
    new: list[str] | None


@dataclass(slots=True)
class Change:
    key: Key
    label: str
    why: str
    old: dict[str, Any]
    new: dict[str, Any]
    flows: list[FlowChange] = field(default_factory=list)
    tables: list[TableChange] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the failing side's own problem lines


@dataclass(slots=True)
class Lane:
    """One implementation compared across the two reports."""

    implementation: str
    old_kernel: str
    new_kernel: str
    old_level: KernelLevel | None
    new_level: KernelLevel | None
    reasons: list[tuple[str, str]]


@dataclass(slots=True)
class Comparison:
    lanes: list[Lane]
    changes: list[Change]
    only_old: Counter[str]  # "impl@kernel" -> records present in OLD only
    only_new: Counter[str]

    @property
    def unexplained(self) -> list[Change]:
        return [c for c in self.changes if c.label == "unexplained"]

    def counts(self) -> dict[str, int]:
        return {label: sum(c.label == label for c in self.changes) for label in LABELS}


# --------------------------------------------------------------------------- record fields


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _checks(rec: dict[str, Any]) -> list[dict[str, Any]]:
    value = rec.get("templates")
    return [c for c in value if isinstance(c, dict)] if isinstance(value, list) else []


def _rows(check: dict[str, Any] | None, side: str) -> list[str] | None:
    if check is None:
        return []
    value = check.get(side)
    return None if value is None else _strings(value)


_EXPIRES = re.compile(r"^(\d+)s$|^\?$")


def _split_row(row: str) -> tuple[str, int | None]:
    """A template row without its ``expires`` field (``TCP a:0 > v:80 => d:80 NONE 59s``)."""
    tokens = row.split()
    if len(tokens) > 7 and _EXPIRES.match(tokens[7]):
        expires = int(tokens[7][:-1]) if tokens[7] != "?" else None
        return " ".join(tokens[:7] + tokens[8:]), expires
    return row, None


def rows_equal(a: list[str] | None, b: list[str] | None) -> bool:
    """Two template tables agree: same rows, ``expires`` within the kernel's timer slack."""
    if a is None or b is None:
        return a is b
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b, strict=True):
        (ka, ea), (kb, eb) = _split_row(ra), _split_row(rb)
        if ka != kb or (ea is None) != (eb is None):
            return False
        if ea is not None and eb is not None and abs(ea - eb) > expires_tolerance(max(ea, eb)):
            return False
    return True


def level_of(rec: dict[str, Any]) -> KernelLevel | None:
    """The kernel level the model replicated for ``rec``: its ``model_level``, else the level
    named in its kernel label (``6.1.0-56-amd64 (6.1.192)``), None when unknown."""
    candidates = [str(rec.get("model_level") or "")]
    label = str(rec.get("kernel") or "")
    candidates += re.findall(r"\(([^()]*)\)", label) + [label]
    for text in candidates:
        if not text:
            continue
        try:
            return parse_release(text)
        except ValueError:
            continue
    return None


# --------------------------------------------------------------------------- comparison


def _flow_changes(a: dict[str, Any], b: dict[str, Any]) -> list[FlowChange]:
    fa, fb = _strings(a.get("flows")), _strings(b.get("flows"))
    oa, ob = _strings(a.get("observed")), _strings(b.get("observed"))
    ea, eb = _strings(a.get("expected")), _strings(b.get("expected"))

    def at(values: list[str], i: int) -> str:
        return values[i] if i < len(values) else ""

    return [
        FlowChange(i, at(fb, i) or at(fa, i), at(oa, i), at(ob, i), at(ea, i), at(eb, i))
        for i in range(max(len(oa), len(ob)))
        if at(oa, i) != at(ob, i)
    ]


def _pairs(
    a: dict[str, Any], b: dict[str, Any]
) -> list[tuple[int, dict[str, Any] | None, dict[str, Any] | None]]:
    ca, cb = _checks(a), _checks(b)
    out = []
    for i in range(max(len(ca), len(cb))):
        x, y = (ca[i] if i < len(ca) else None), (cb[i] if i < len(cb) else None)
        step = (x or y or {}).get("step", i)
        out.append((step if isinstance(step, int) else i, x, y))
    return out


def _table_changes(a: dict[str, Any], b: dict[str, Any]) -> list[TableChange]:
    out = []
    for step, x, y in _pairs(a, b):
        old, new = _rows(x, "observed"), _rows(y, "observed")
        if not rows_equal(old, new):
            out.append(TableChange(step, old, new))
    return out


def _model_changed(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if _strings(a.get("expected")) != _strings(b.get("expected")):
        return True
    return any(
        not rows_equal(_rows(x, "expected"), _rows(y, "expected")) for _, x, y in _pairs(a, b)
    )


def _equivalence(rec: dict[str, Any]) -> bool:
    return rec.get("grading") == "equivalence" or rec["verdict"] == "equivalent"


def classify(a: dict[str, Any], b: dict[str, Any], lane: Lane) -> Change | None:
    """The change from record ``a`` (old kernel) to ``b`` (new), None when nothing changed."""
    va, vb = a["verdict"], b["verdict"]
    change = Change((a["rule"], a["implementation"], a["family"]), "", "", a, b)
    if _strings(a.get("flows")) and _strings(b.get("flows")):  # both ran traffic: compare it
        change.flows, change.tables = _flow_changes(a, b), _table_changes(a, b)
    moved = bool(change.flows or change.tables)
    if va in GOOD and vb not in GOOD:
        change.label, change.why = "unexplained", f"regression: {va} -> {vb}"
    elif va not in GOOD and vb in GOOD:
        change.label, change.why = "improved", f"{va} -> {vb}"
    elif not moved:
        if va == vb:
            return None
        change.label, change.why = "changed", f"{va} -> {vb}, same behaviour"
    elif va == vb == "exact" and _model_changed(a, b):
        names = ", ".join(name for name, _ in lane.reasons)
        change.label = "modelled"
        change.why = f"the model predicts it for {_levels(lane)}" + (
            f" ({names})" if names else " (no named change in impl/kernel_changes.py)"
        )
    elif vb not in GOOD:
        change.label, change.why = "failing", f"{va} -> {vb}, behaviour changed"
    elif _equivalence(a) and _equivalence(b):
        change.label, change.why = "equivalent", "different servers, graded by equivalence"
    else:
        change.label = "unexplained"
        change.why = f"behaviour changed ({va} -> {vb}) but the model predicts no change"
    if vb not in GOOD or va not in GOOD:
        change.problems = problem_lines(b if vb not in GOOD else a)
    return change


def _levels(lane: Lane) -> str:
    old = lane.old_level.label if lane.old_level else "?"
    new = lane.new_level.label if lane.new_level else "?"
    return f"{old} -> {new}"


def _one_kernel(records: Sequence[dict[str, Any]], side: str, option: str) -> dict[str, str]:
    """implementation -> its single kernel on this side (several: the user must choose).

    A case the kernel lane could not run is recorded under ``lane <spec>`` (no kernel booted
    to name): in a report of one lane, those records belong to the lane's one kernel."""
    kernels: dict[str, set[str]] = {}
    for r in records:
        kernels.setdefault(r["implementation"], set()).add(r["kernel"])
    out = {}
    for impl, found in kernels.items():
        booted = {k for k in found if not k.startswith(REPLAYED)} or found
        if len(booted) > 1:
            raise UpgradeError(
                f"{side} holds {impl} on {len(booted)} kernels ({', '.join(sorted(booted))}); "
                f"choose one with {option} TEXT (matched against the kernel label)"
            )
        out[impl] = next(iter(booted))
    return out


def compare(old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]) -> Comparison:
    """Compare two sets of records (each with one kernel per implementation)."""
    ko = _one_kernel(old, "OLD", "--old-kernel")
    kn = _one_kernel(new, "NEW", "--new-kernel")
    a = {(r["rule"], r["implementation"], r["family"]): r for r in old}
    b = {(r["rule"], r["implementation"], r["family"]): r for r in new}
    lanes: dict[str, Lane] = {}
    for impl in sorted(ko.keys() & kn.keys()):
        lo = next((lv for k, r in a.items() if k[1] == impl and (lv := level_of(r))), None)
        ln = next((lv for k, r in b.items() if k[1] == impl and (lv := level_of(r))), None)
        reasons = differences(lo, ln) if lo and ln else []
        lanes[impl] = Lane(impl, ko[impl], kn[impl], lo, ln, reasons)
    changes = [c for k in sorted(a.keys() & b.keys()) if (c := classify(a[k], b[k], lanes[k[1]]))]
    changes.sort(key=lambda c: (LABELS.index(c.label), c.key))
    return Comparison(
        list(lanes.values()),
        changes,
        Counter(f"{k[1]}@{ko[k[1]]}" for k in a.keys() - b.keys()),
        Counter(f"{k[1]}@{kn[k[1]]}" for k in b.keys() - a.keys()),
    )


def select(
    records: Sequence[dict[str, Any]], kernel: str | None, impl: str | None
) -> list[dict[str, Any]]:
    """Records whose kernel label contains ``kernel`` and whose implementation is ``impl``."""
    return [
        r
        for r in records
        if (kernel is None or kernel in r["kernel"])
        and (impl is None or r["implementation"] == impl)
    ]
