"""``lvsconf diff OLD NEW``: an upgrade report, the same implementation on two kernels.

Run the same suite on two kernels (``--kernel A --report a/``, ``--kernel B --report b/``), then
compare. Records are matched by (rule, implementation, family). Per case the diff shows what the
implementation did differently (observed outcome per flow, template rows per step, side by side)
and labels the change:

  modelled     exact on both kernels, and the model predicts the change for that pair of
               kernel levels (with the reason named in impl/kernel_changes.py)
  unexplained  a regression (the verdict got worse), or behaviour that changed while the model
               predicts no change
  improved / failing / equivalent / changed   for information

Records present in one report only are summarised in one line. A report holding several
kernels for one implementation (a merged report) needs --old-kernel / --new-kernel.
Exit status: 1 when something is unexplained, 0 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from conformance.runner.report import ReportError, load, write_file
from conformance.runner.upgrade import UpgradeError, compare, select
from conformance.runner.upgrade_view import last_line, render_html, render_text


def _kernels(records: list[dict[str, Any]]) -> str:
    return ", ".join(sorted({str(r.get("kernel", "?")) for r in records})) or "?"


def _impls(records: list[dict[str, Any]]) -> str:
    return ", ".join(sorted({r["implementation"] for r in records}))


def run(args: argparse.Namespace) -> int:
    try:
        old = select(load(Path(args.old)), args.old_kernel, args.impl)
        new = select(load(Path(args.new)), args.new_kernel, args.impl)
        for side, name, recs in (("OLD", args.old, old), ("NEW", args.new, new)):
            if not recs:
                raise UpgradeError(
                    f"{side} ({name}) has no record matching the kernel/--impl filters; "
                    "check them against the kernel labels in its report"
                )
        cmp = compare(old, new)
        if not cmp.lanes:
            raise UpgradeError(
                f"no implementation is in both reports (OLD: {_impls(old)}; NEW: {_impls(new)}); "
                "compare reports of the same implementation"
            )
        if args.html:
            write_file(Path(args.html), render_html(cmp, args.old, args.new))
    except (ReportError, UpgradeError) as exc:
        print(f"lvsconf diff: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"lvsconf diff: cannot write {args.html}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"old: {args.old} (kernel {_kernels(old)}, {len(old)} records)")
    print(f"new: {args.new} (kernel {_kernels(new)}, {len(new)} records)")
    for line in render_text(cmp):
        print(line)
    if args.html:
        print(f"html: {args.html}")
    print(last_line(cmp))
    return 1 if cmp.unexplained else 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "diff",
        help="upgrade report: what changed between two kernels, modelled or unexplained",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("old", help="report directory or results.json of the old kernel")
    parser.add_argument("new", help="report directory or results.json of the new kernel")
    parser.add_argument("--html", metavar="FILE", help="also write the diff as a static page")
    parser.add_argument(
        "--old-kernel", metavar="TEXT", help="only OLD records whose kernel label contains TEXT"
    )
    parser.add_argument(
        "--new-kernel", metavar="TEXT", help="only NEW records whose kernel label contains TEXT"
    )
    parser.add_argument("--impl", metavar="NAME", help="compare this implementation only")
    parser.set_defaults(func=run)
