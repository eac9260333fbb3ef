"""``lvsconf sweep``: remove namespaces and processes of lvsconf runs whose owner is gone.

Only runs with an owner record in /run/lvsconf/owners whose process (pid + start time) no
longer exists are swept; live runs and names without a record are left alone.
"""

from __future__ import annotations

import argparse
import os
import sys

from harness import runs


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("sweep", help="remove what crashed or killed lvsconf runs left")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("lvsconf sweep: needs root (network namespaces); run it with sudo", file=sys.stderr)
        return 2
    report = runs.sweep()
    for line in report.lines():
        print(line)
    if not report.removed_anything:
        print("nothing to sweep")
    if report.live:
        print(f"left alone (live runs): {', '.join(report.live)}")
    return 0
