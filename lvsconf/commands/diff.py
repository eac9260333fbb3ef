"""``lvsconf diff OLD NEW``: what changed between two conformance reports.

The kernel-upgrade workflow: run the same suite on two kernels (``--kernel A --report a/``,
``--kernel B --report b/``), then list only the verdicts that differ. Records are matched by
(rule, implementation, family); the kernel is what is compared, so it is not part of the key.
Exit status: 0 when nothing changed for the worse, 1 when a record regressed (was
exact/equivalent/diverges and is now fail, or disappeared), 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from conformance.runner.report import ReportError, load

Key = tuple[str, str, str]
GOOD = frozenset({"exact", "equivalent", "diverges"})


def _index(records: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    return {(r["rule"], r["implementation"], r["family"]): r for r in records}


def _kernels(records: list[dict[str, Any]]) -> str:
    return ", ".join(sorted({str(r.get("kernel", "?")) for r in records})) or "?"


def diff(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> tuple[list[str], bool]:
    """Lines describing every changed verdict, and whether anything regressed."""
    a, b = _index(old), _index(new)
    lines: list[str] = []
    regressed = False
    for key in sorted(a.keys() | b.keys()):
        va = a[key]["verdict"] if key in a else None
        vb = b[key]["verdict"] if key in b else None
        if va == vb:
            continue
        rule, impl, family = key
        worse = (va in GOOD and vb not in GOOD) or (va is not None and vb is None)
        regressed |= worse
        mark = "-" if worse else ("+" if vb in GOOD else "~")
        detail = ""
        if key in b and b[key].get("detail"):
            detail = f"  ({str(b[key]['detail']).splitlines()[0][:120]})"
        change = f"{va or 'absent'} -> {vb or 'absent'}"
        lines.append(f"{mark} {rule} [{impl}-{family}]: {change}{detail}")
    return lines, regressed


def run(args: argparse.Namespace) -> int:
    try:
        old, new = load(Path(args.old)), load(Path(args.new))
    except ReportError as exc:
        print(f"lvsconf diff: {exc}", file=sys.stderr)
        return 2
    lines, regressed = diff(old, new)
    print(f"old: {args.old} (kernel {_kernels(old)}, {len(old)} records)")
    print(f"new: {args.new} (kernel {_kernels(new)}, {len(new)} records)")
    for line in lines:
        print(line)
    print(f"{len(lines)} changed, {'regressions found' if regressed else 'no regressions'}")
    return 1 if regressed else 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "diff",
        help="compare two reports (e.g. two kernels): list only changed verdicts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("old", help="report directory or results.json of the old run")
    parser.add_argument("new", help="report directory or results.json of the new run")
    parser.set_defaults(func=run)
