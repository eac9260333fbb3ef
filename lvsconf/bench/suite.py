"""suite: a lane's wall time, tuned against a serial baseline, both measured in this run.

For each lane (``--impl kernel`` with its ``--kernel``, ``--impl reference``, ...), ``lvsconf
run`` runs twice, one after the other, each into a report directory of its own (the user's
``lvs-report/`` is never touched):

- *serial*: the way the suite ran before lanes were tuned: one pytest process on the host, and
  in a VM lane one guest pytest importing over 9p (``LVSCONF_GUEST_PYTHON=share``,
  ``LVSCONF_GUEST_WORKERS=1``);
- *tuned*: the defaults of ``lvsconf run`` now (the guest Python in memory, the lane's workers).

Figures per lane and mode, from the run's own results.json and the wall clock: time to the first
case's start (boot included), seconds per case (median, mean), the lane's total wall time; then
whether every case has the same verdict in both modes (the tuned run must change speed only).
The last line is ``ratio=<serial total / tuned total>`` of the last lane. Exit status 1 when a
verdict differs, else 0; a run that produced no results is an error (exit 3).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformance.runner import report as lvs_report
from harness import settings


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    env: dict[str, str]
    run_args: tuple[str, ...]


def modes(workers: str | None, guest_workers: str | None) -> tuple[Mode, Mode]:
    serial = Mode(
        "serial", {"LVSCONF_GUEST_PYTHON": "share", "LVSCONF_GUEST_WORKERS": "1"}, ("-n", "0")
    )
    tuned_env = {"LVSCONF_GUEST_PYTHON": "memory"}
    if guest_workers:
        tuned_env["LVSCONF_GUEST_WORKERS"] = guest_workers
    tuned = Mode("tuned", tuned_env, ("-n", workers) if workers else ())
    return serial, tuned


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--impl",
        default="kernel,reference",
        help="lanes: implementations, comma separated, one lane each (default kernel,reference)",
    )
    parser.add_argument("--kernel", help="the kernel lane (as lvsconf run --kernel; one lane)")
    parser.add_argument("-k", dest="keyword", metavar="EXPR", help="only cases matching EXPR")
    parser.add_argument(
        "-n",
        dest="workers",
        metavar="N",
        help="host workers of the tuned run (default: lvsconf run's own default)",
    )
    parser.add_argument(
        "--guest-workers",
        metavar="N",
        help="workers in the guest for the tuned run (default: LVSCONF_GUEST_WORKERS, else "
        f"{settings.GUEST_WORKERS})",
    )
    parser.add_argument("--slow", action="store_true", help="include slow rules")
    parser.add_argument(
        "--keep", metavar="DIR", help="keep both runs' reports and output under DIR (new)"
    )


@dataclass
class LaneRun:
    lane: str
    mode: str
    wall: float
    first_case: float | None
    durations: list[float]
    verdicts: dict[str, str]
    code: int


def _run_once(args: argparse.Namespace, impl: str, mode: Mode, out: Path) -> LaneRun:
    report = out / f"{impl}-{mode.name}"
    argv = [sys.executable, "-m", "lvsconf.cli", "run", "--impl", impl, "--report", str(report)]
    if args.kernel and impl == "kernel":
        argv += ["--kernel", args.kernel]
    if args.keyword:
        argv += ["-k", args.keyword]
    if args.slow:
        argv.append("--slow")
    argv += list(mode.run_args)
    env = {**os.environ, **mode.env}
    log = out / f"{impl}-{mode.name}.log"
    print(f"bench suite: {impl} {mode.name}: {' '.join(argv[3:])}", flush=True)
    start_epoch, start = time.time(), time.monotonic()
    with log.open("w") as f:
        code = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    wall = time.monotonic() - start
    records: list[dict[str, Any]] = []
    if (report / "results.json").exists():
        records = [r for r in lvs_report.load(report) if r.get("verdict")]
    starts = [r["finished"] - r.get("duration", 0.0) for r in records if r.get("finished")]
    return LaneRun(
        lane=impl,
        mode=mode.name,
        wall=wall,
        first_case=(min(starts) - start_epoch) if starts else None,
        durations=[float(r.get("duration", 0.0)) for r in records],
        verdicts={r["nodeid"]: r["verdict"] for r in records},
        code=code.returncode,
    )


def _line(r: LaneRun) -> str:
    n = len(r.durations)
    per = (
        f"median {statistics.median(r.durations):.2f} s, mean {statistics.fmean(r.durations):.2f} s"
        if n
        else "no case"
    )
    first = f"{r.first_case:.0f} s" if r.first_case is not None else "-"
    return (
        f"  {r.lane:<10} {r.mode:<7} cases {n:4d}  first case {first:>6}  per case {per}  "
        f"total {r.wall:.0f} s  (exit {r.code})"
    )


def equal_verdicts(serial: LaneRun, tuned: LaneRun) -> int:
    """Cases of the serial run with the same verdict in the tuned run."""
    return sum(1 for nodeid, v in serial.verdicts.items() if tuned.verdicts.get(nodeid) == v)


def compare(serial: LaneRun, tuned: LaneRun) -> list[str]:
    """Cases whose verdict differs between the two runs (or that ran in one only)."""
    out = []
    for nodeid in sorted(set(serial.verdicts) | set(tuned.verdicts)):
        a, b = serial.verdicts.get(nodeid, "not run"), tuned.verdicts.get(nodeid, "not run")
        if a != b:
            out.append(f"    {nodeid}: serial {a}, tuned {b}")
    return out


def run(args: argparse.Namespace) -> int:
    impls = [i.strip() for i in args.impl.split(",") if i.strip()]
    if not impls:
        print("lvsconf bench suite: --impl is empty; e.g. --impl kernel,reference", file=sys.stderr)
        return 2
    if args.keep and Path(args.keep).exists():
        print(
            f"lvsconf bench suite: --keep {args.keep} exists; give a new directory",
            file=sys.stderr,
        )
        return 2
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lvsconf-bench-suite-"))
    out.mkdir(parents=True, exist_ok=True)
    serial_mode, tuned_mode = modes(args.workers, args.guest_workers)
    status, ratio = 0, None
    try:
        for impl in impls:
            serial = _run_once(args, impl, serial_mode, out)
            tuned = _run_once(args, impl, tuned_mode, out)
            print(f"lane {impl}:")
            print(_line(serial))
            print(_line(tuned))
            if not serial.verdicts or not tuned.verdicts:
                print(f"  no results from a run: see {out if args.keep else 'its log'}")
                if not args.keep:
                    for r in (serial, tuned):
                        log = out / f"{impl}-{r.mode}.log"
                        print("\n".join(log.read_text().splitlines()[-15:]))
                status = max(status, 3)
                continue
            diff = compare(serial, tuned)
            print(f"  verdicts: {equal_verdicts(serial, tuned)}/{len(serial.verdicts)} equal")
            if diff:
                print("\n".join(diff))
                status = max(status, 1)
            ratio = serial.wall / tuned.wall
            print(f"  speed-up {ratio:.2f}x (serial {serial.wall:.0f} s, tuned {tuned.wall:.0f} s)")
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    if ratio is not None:
        print(f"ratio={ratio:.2f}")
    return status
