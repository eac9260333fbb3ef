"""``lvsconf predict``: what would kernel IPVS do with these rules and these flows?

    lvsconf predict --rules rules.txt --flow 'tcp 198.18.16.10:40000 -> 198.19.0.1:80' \\
        [--flow ...] [--flows FILE] [--at SECONDS] [--kernel-release REL] \\
        [--sysctl name=value] [--json]
    lvsconf predict --scenario FILE [--kernel-release REL] [--json]

``--flow``, ``--flows`` and ``--at`` are taken in command-line order; ``--at`` sets the model
clock (absolute seconds since the rules were loaded) before the flows that follow it.
``--scenario`` reads one timeline file (rules, flows, waits, edits, sysctls; see README
"Scenario files"): one result per flow, in order; an ``expect`` line the model breaks is
printed as ``FILE:LINE: expected ..., the model decides ...`` and the exit status is 1.
Bad input prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from impl.errors import ModelError
from impl.ipvsadm import replay
from impl.kernel_level import DEFAULT, KernelLevel, parse_release
from impl.predict import (
    FLOW_SYNTAX,
    Event,
    PredictError,
    Prediction,
    bounded,
    check_line_lengths,
    clip,
    parse_flow,
    parse_flows_file,
    parse_time,
    predict,
)
from impl.timeline import expect_failures, parse_sysctl, parse_timeline, predict_timeline
from lvsconf.realconf import read_rules


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
        metavar="FILE",
        help="ipvsadm-save / ipvsadm -Sn output or ipvsadm command lines",
    )
    p.add_argument(
        "--scenario",
        metavar="FILE",
        help="a scenario file: rules, flows, waits, edits and sysctls in time order",
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
            f"cannot read {what} {clip(path)}: {exc} (give a readable text file)"
        ) from None


def _sysctls(items: list[str]) -> dict[str, int]:
    return dict(parse_sysctl(item, "--sysctl") for item in items)


def _level(release: str | None) -> KernelLevel:
    if not release:
        return DEFAULT
    try:
        return parse_release(release)
    except ValueError as exc:
        raise PredictError(f"--kernel-release: {exc}") from None


def _print(results: list[Prediction], as_json: bool) -> None:
    if as_json:
        json.dump([r.as_json() for r in results], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for r in results:
            print(r)


def _run_scenario(args: argparse.Namespace) -> int:
    extra = [
        name
        for name, given in (
            ("--rules", args.rules),
            ("--flow/--flows/--at", args.events),
            ("--sysctl", args.sysctl),
        )
        if given
    ]
    if extra:
        raise PredictError(
            f"--scenario does not combine with {', '.join(extra)} (write them into the "
            "scenario file: rule lines, flow lines, @ SECONDS, sysctl NAME=VALUE)"
        )
    level = _level(args.kernel_release)
    timeline = parse_timeline(_read(args.scenario, "scenario file"), args.scenario)
    if not timeline.scenario.flows():
        raise PredictError(f"{args.scenario}: no flows (add a flow line such as {FLOW_SYNTAX})")
    results = predict_timeline(timeline, level)
    _print(results, args.json)
    broken = expect_failures(timeline, [r.verdict for r in results], args.scenario)
    for line in broken:
        print(f"lvsconf predict: {line}", file=sys.stderr)
    return 1 if broken else 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.scenario:
            return _run_scenario(args)
        if not args.rules:
            raise PredictError("give --rules FILE (with --flow/--flows) or --scenario FILE")
        level = _level(args.kernel_release)
        check_line_lengths(_read(args.rules, "rules file"), args.rules)  # cheap parsing after
        ops = read_rules(args.rules).ops  # ipvsadm text or keepalived.conf (lvsconf.realconf)
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
        print(f"lvsconf predict: {bounded(str(exc))}", file=sys.stderr)
        return 2
    _print(results, args.json)
    return 0
