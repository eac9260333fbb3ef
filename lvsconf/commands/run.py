"""``lvsconf run``: run the conformance suite and print the verdict matrix.

Wraps pytest on the installed ``conformance`` package. Defaults work on a fresh machine: every
implementation available (the reference always; kernel IPVS on the host when it has IPVS, else
in a VM lane), the report in ``lvs-report/``, slow rules left out unless ``--slow``. Progress is
one line per finished case (``[ 3/40] rule [impl-family] verdict``); the run ends with the matrix
(rule x implementation@kernel, verdict letters) and the line ``N passed, N failed, N skipped``.

Exit status: 0 all conform, 1 some case failed, 2 bad input or nothing selected (one line saying
what and how to fix), 3 internal error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from conformance.runner.plugin import PROGRESS_ENV, REQUIRE_CASES_ENV
from harness import runs
from harness.implementations.registry import ImplError, resolve
from harness.lanes import provision
from harness.lanes.provision import JoinKernels, LaneError

DEFAULT_REPORT = "lvs-report"
#: per-case pytest-timeout: a wedged case fails alone (slow rules wait ~60-120 s on purpose)
CASE_TIMEOUT = 600.0
WORKERS_PER_CPU = 4
MAX_WORKERS = 8


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "run",
        help="run the conformance suite (every implementation available) and report",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument(
        "--impl",
        metavar="NAMES",
        help="implementations, comma separated: kernel, reference, module:attr "
        "(default: every implementation available here)",
    )
    parser.add_argument(
        "--kernel",
        metavar="LANES",
        action=JoinKernels,
        help="kernel lane(s), comma separated or repeated: host, auto, a Debian suite "
        "(bullseye, bookworm, trixie, sid, stable, ...), a release, a linux-image-amd64 version "
        "or an image path; several lanes boot one VM after another, a column each "
        "(default: host if it has IPVS, else auto in a VM)",
    )
    parser.add_argument(
        "--report",
        metavar="DIR",
        default=DEFAULT_REPORT,
        help=f"report directory (default: {DEFAULT_REPORT}/)",
    )
    parser.add_argument(
        "-n",
        dest="workers",
        metavar="N",
        help="pytest-xdist workers: a number (0: one process) or auto "
        f"(default: {default_workers()}, four per CPU up to {MAX_WORKERS}: most cases wait on "
        "timers, so their waits overlap; 0 when only kernel lanes in VMs run, whose guests "
        "have workers of their own)",
    )
    parser.add_argument(
        "-k",
        dest="keyword",
        metavar="EXPR",
        help="only cases matching EXPR (pytest -k: rule function names, ids "
        "such as reference-ipv6)",
    )
    parser.add_argument(
        "--slow", action="store_true", help="include slow rules (timeouts of tens of seconds)"
    )
    parser.add_argument(
        "--list", action="store_true", help="list the rules (id, families, kernel source) and exit"
    )
    parser.add_argument(
        "--case-timeout",
        type=float,
        default=CASE_TIMEOUT,
        metavar="SECONDS",
        help=f"fail a case that takes longer (default {CASE_TIMEOUT:g}; scaled in a VM lane)",
    )
    parser.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help="after --: extra pytest arguments"
    )
    parser.set_defaults(func=run)


def xdist_workers(parent: int | None = None) -> list[int]:
    """Pids of the xdist workers this process started (execnet's popen children)."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in os.listdir("/proc"):
        fields = runs.proc_stat(entry) if entry.isdigit() else None
        if fields is None or int(fields[1]) != parent:
            continue
        with contextlib.suppress(OSError):
            if b"exec(eval(sys.stdin.readline()))" in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
    return found


def _forward_first_interrupt_to_workers() -> None:
    """Ctrl-C in a terminal reaches every process of the run; ``kill -INT``/``-TERM`` (a CI
    runner, a script) reaches this one only, and the xdist workers, which own the namespaces,
    datapaths and VMs, would be cut off without their teardown. The first SIGINT/SIGTERM is
    passed on to the workers (each tears down its own, with the project's interrupt policy),
    then handled here by that policy: KeyboardInterrupt once, later ones only a notice."""
    runs.install_interrupt_policy()
    for sig in (signal.SIGINT, signal.SIGTERM):
        policy = signal.getsignal(sig)
        if not callable(policy):
            continue  # ignored when we started (a background job): leave it so

        def forward(signum: int, frame: Any, policy: Any = policy) -> None:
            if not _forwarded["done"]:
                _forwarded["done"] = True
                for pid in xdist_workers():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signum)
            policy(signum, frame)

        signal.signal(sig, forward)


_forwarded = {"done": False}


def default_workers() -> int:
    """Workers of ``lvsconf run`` without ``-n``: measured with ``lvsconf bench suite``, the
    reference lane on 2 CPUs takes 141 s in one process, 52 s with 4 workers, 43 s with 8."""
    return min(MAX_WORKERS, WORKERS_PER_CPU * (os.cpu_count() or 1))


def only_vm_lanes(impl: str | None, kernel: str | None) -> bool:
    """True when the run is kernel IPVS only and every kernel lane boots a VM: the guest runs
    its own workers, and host workers would only compete with it for the CPU (measured on
    2 CPUs, Debian 6.1 lane: 174 s with 8 host workers, 158 s with one process)."""
    if impl is None or {i.strip() for i in impl.split(",")} != {"kernel"}:
        return False
    try:
        return all(
            provision.resolve_lane(spec).is_vm for spec in provision.split_specs(kernel) or [None]
        )
    except LaneError:
        return False  # pytest reports the bad lane with its own one line


class RunInputError(ValueError):
    """A ``lvsconf run`` argument is unusable (the message names it and the fix)."""


def conformance_dir() -> Path:
    """Where the installed conformance package lives."""
    import conformance

    # __path__ rather than __file__: an editable install made before conformance/__init__.py
    # existed maps the package as a namespace package, which has no __file__
    return Path(next(iter(conformance.__path__))).resolve()


#: the conformance suite has no property tests, and Hypothesis's pytest plugin cost each
#: process ~0.8 s of CPU (measured: one case with 8 workers took 13.1 s of CPU with it, 6.7 s
#: without), which is most of a worker's start
NO_HYPOTHESIS = ("-p", "no:hypothesispytest")


def pytest_args(args: argparse.Namespace) -> list[str]:
    """The pytest command line for ``args`` (validated; raises :class:`RunInputError`)."""
    argv = [str(conformance_dir()), "-q", "-p", "no:cacheprovider", *NO_HYPOTHESIS]
    if args.impl:
        argv += ["--impl", args.impl]
    if args.kernel:
        argv += ["--kernel", args.kernel]
    argv += ["--lvs-report", str(args.report)]
    workers = args.workers
    if workers is None:
        workers = "0" if only_vm_lanes(args.impl, args.kernel) else str(default_workers())
    if not (workers == "auto" or workers.isdigit()):
        raise RunInputError(f"-n {workers}: expected a number of workers (0: one process) or auto")
    argv += ["-n", workers]
    if workers != "0":
        # contiguous ranges, stolen from the end: the worker holding a VM lane's items waits
        # for the guest while the others take its host items (harness/lanes/pytest_lane.py)
        argv += ["--dist", "worksteal"]
    if args.keyword:
        argv += ["-k", args.keyword]
    if not args.slow:
        argv += ["-m", "not slow"]
    if args.case_timeout <= 0:
        raise RunInputError(f"--case-timeout {args.case_timeout:g}: expected a positive number")
    argv += ["--timeout", f"{args.case_timeout:g}"]
    extra = list(args.pytest_args or [])
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return argv + extra


def list_rules() -> list[str]:
    """Every rule of the installed suite: id, families, needs, source, and the rule itself."""
    import importlib
    import pkgutil

    from conformance.runner.rules import REGISTRY

    for info in pkgutil.iter_modules([str(conformance_dir())]):
        if info.name.startswith("test_"):
            importlib.import_module(f"conformance.{info.name}")
    lines = []
    for rule_id in sorted(REGISTRY):
        r = REGISTRY[rule_id]
        extra = [f.label for f in r.families]
        extra += [f"needs {n}" for n in r.needs] + (["slow"] if r.slow else [])
        extra += [f"diverges on {name}" for name in r.diverges]
        lines += [f"{rule_id}  ({', '.join(extra)})", f"    {r.title}", f"    source: {r.source}"]
    return lines


def run(args: argparse.Namespace) -> int:
    if args.list:
        print("\n".join(list_rules()))
        return 0
    try:
        resolve(args.impl)  # a bad --impl name is one line here, before pytest starts
        argv = pytest_args(args)
    except (ImplError, RunInputError) as exc:
        print(f"lvsconf: {exc}", file=sys.stderr)
        return 2
    print(f"lvsconf: pytest {' '.join(argv)}", file=sys.stderr)
    _forward_first_interrupt_to_workers()
    saved = {k: os.environ.get(k) for k in (REQUIRE_CASES_ENV, PROGRESS_ENV)}
    os.environ[REQUIRE_CASES_ENV] = "1"  # an empty selection is an error, not a green
    os.environ[PROGRESS_ENV] = "1"
    try:
        code = pytest.main(argv)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if code in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.NO_TESTS_COLLECTED):
        if code == pytest.ExitCode.NO_TESTS_COLLECTED:
            print(
                f"lvsconf: no conformance case collected from {conformance_dir()}; "
                "is the conformance package installed with its test_*.py modules?",
                file=sys.stderr,
            )
        return 2
    if code == pytest.ExitCode.OK:
        return 0
    if code in (pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.INTERRUPTED):
        return 1 if code == pytest.ExitCode.TESTS_FAILED else 130
    return 3
