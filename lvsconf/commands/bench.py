"""``lvsconf bench model|traffic|datapath|suite``: benchmarks printing figures and a ratio line.

Each target lives in :mod:`lvsconf.bench.<target>` exposing ``add_arguments(parser)`` and
``run(args) -> int``. Benchmarks measure side by side in one run; they assert nothing.
"""

from __future__ import annotations

import argparse
import importlib

TARGETS = ("model", "traffic", "datapath", "suite")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "bench", help="print benchmark figures (model, traffic, datapath, suite)"
    )
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name in TARGETS:
        try:
            module = importlib.import_module(f"lvsconf.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name is None or not f"lvsconf.bench.{name}".startswith(exc.name):
                raise
            continue
        p = targets.add_parser(name, help=(module.__doc__ or name).strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(func=module.run)
