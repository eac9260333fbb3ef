"""``lvsconf predict``: what would kernel IPVS do with these rules and these flows?

    lvsconf predict --rules rules.txt --flow 'tcp 198.18.16.10:40000 -> 198.19.0.1:80' \\
        [--flow ...] [--flows FILE] [--at SECONDS] [--kernel-release REL] \\
        [--sysctl name=value] [--json]

``--flow``, ``--flows`` and ``--at`` are taken in command-line order; ``--at`` sets the model
clock (absolute seconds since the rules were loaded) before the flows that follow it.
Bad input prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from impl.errors import ModelError
from impl.ipvsadm import parse_rules, replay
from impl.kernel_level import DEFAULT, parse_release
from impl.predict import Event, PredictError, parse_flow, parse_flows_file, parse_time, predict


class _Ordered(argparse.Action):
    """Append ``(option, value)`` to one shared list, keeping the command-line order."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        events = getattr(namespace, "events", None) or []
        events.append((self.dest, values))
        namespace.events = events


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "predict",
        help="predict IPVS verdicts and templates for flows",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--rules",
        required=True,
        metavar="FILE",
        help="ipvsadm-save / ipvsadm -Sn output or ipvsadm command lines",
    )
    p.add_argument(
        "--flow",
        action=_Ordered,
        metavar="FLOW",
        dest="flow",
        help="'PROTO SADDR:SPORT -> DADDR:DPORT [mark=N] [KIND]'",
    )
    p.add_argument(
        "--flows",
        action=_Ordered,
        metavar="FILE",
        dest="flows",
        help="file with one flow per line and '@ SECONDS' time lines",
    )
    p.add_argument(
        "--at",
        action=_Ordered,
        metavar="SECONDS",
        dest="at",
        help="set the clock (absolute seconds) before the following flows",
    )
    p.add_argument(
        "--kernel-release",
        metavar="REL",
        default=None,
        help="kernel to model, e.g. 6.1.192 or 6.12.117 (default 6.1.192)",
    )
    p.add_argument(
        "--sysctl",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="net.ipv4.vs sysctl, e.g. expire_quiescent_template=1",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=run, events=None)


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise PredictError(
            f"cannot read {what} {path!r}: {exc} (give a readable text file)"
        ) from None


def _sysctls(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().removeprefix("net.ipv4.vs.")
        try:
            out[name] = int(value, 0)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise PredictError(
                f"bad --sysctl {item!r} (write NAME=INTEGER, e.g. expire_quiescent_template=1)"
            )
    return out


def run(args: argparse.Namespace) -> int:
    try:
        level = DEFAULT
        if args.kernel_release:
            try:
                level = parse_release(args.kernel_release)
            except ValueError as exc:
                raise PredictError(f"--kernel-release: {exc}") from None
        ops = parse_rules(_read(args.rules, "rules file"), args.rules)
        replay(ops, args.rules)  # state errors (dest without service, ...) name the rules line
        events: list[Event] = []
        for kind, value in args.events or []:
            if kind == "flow":
                events.append(parse_flow(value, "--flow"))
            elif kind == "at":
                events.append(parse_time(value, "--at"))
            else:
                events.extend(parse_flows_file(_read(value, "flows file"), value))
        if not any(not hasattr(e, "seconds") for e in events):
            raise PredictError("no flows given (add --flow '...' or --flows FILE)")
        results = predict(ops, events, level, _sysctls(args.sysctl))
    except ModelError as exc:
        print(f"lvsconf predict: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump([r.as_json() for r in results], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for r in results:
            print(r)
    return 0
