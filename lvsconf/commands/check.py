"""``lvsconf check``: run scenario files on real implementations with real traffic.

    lvsconf check FILE [FILE ...] [--impl NAMES] [--kernel LANE] [--report DIR] [-v]

Each file (see README "Scenario files") is one conformance case: the timeline runs on a fresh
director of every selected implementation and on the reference model, through the suite's own
runner, grading and evidence (expected vs observed per flow, template tables side by side),
and the model must keep the file's ``expect`` lines. The run ends with the verdict matrix and
``N passed, N failed, N skipped``.

Exit status: 0 every file conforms, 1 a divergence, 2 bad input (one line: what and the fix),
3 internal error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import pytest

from conformance.runner.plugin import REQUIRE_CASES_ENV
from conformance.runner.scenario_files import SUFFIX, ScenarioFileError, read_timeline
from harness.implementations.registry import ImplError, resolve
from impl.predict import bounded
from lvsconf.commands.run import NO_HYPOTHESIS, conformance_dir


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "check",
        help="run scenario files on real implementations (exit 1 on a divergence)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help=f"scenario file(s), *{SUFFIX}")
    p.add_argument(
        "--impl",
        metavar="NAMES",
        help="implementations, comma separated: kernel, reference, nftlb, module:attr "
        "(default: every implementation available here)",
    )
    p.add_argument(
        "--kernel",
        metavar="LANE",
        help="kernel lane: host, auto, a Debian kernel version or an image path",
    )
    p.add_argument("--report", metavar="DIR", help="write results.json, index.html, summary.md")
    p.add_argument("-v", "--verbose", action="store_true", help="pytest -v")
    p.set_defaults(func=run)


def check_argv(args: argparse.Namespace, staging: Path) -> list[str]:
    """Validate the files and options; the pytest command line (raises ValueError).

    A file outside the repository is copied into ``staging`` (inside it): pytest names items
    relative to the repository, and a VM guest selects them by those names."""
    repo = conformance_dir().parent
    files = []
    for name in args.files:
        path = Path(name)
        if path.suffix != SUFFIX:
            raise ValueError(f"{name}: not a scenario file (name it *{SUFFIX})")
        read_timeline(path, name)  # a bad line is one line here, before pytest starts
        if repo not in path.resolve().parents:
            staging.mkdir(exist_ok=True)
            copy = staging / path.name
            if copy.exists():
                raise ValueError(f"{name}: two files named {path.name} (rename one)")
            shutil.copyfile(path, copy)
            path = copy
        files.append(str(path))
    resolve(args.impl)
    argv = [*files, "-p", "no:cacheprovider", *NO_HYPOTHESIS, "-v" if args.verbose else "-q"]
    if args.impl:
        argv += ["--impl", args.impl]
    if args.kernel:
        argv += ["--kernel", args.kernel]
    if args.report:
        argv += ["--lvs-report", args.report]
    return argv


def run(args: argparse.Namespace) -> int:
    staging = conformance_dir().parent / f".lvsconf-check-{os.getpid()}"
    try:
        return _run(args, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _run(args: argparse.Namespace, staging: Path) -> int:
    try:
        argv = check_argv(args, staging)
    except (ScenarioFileError, ImplError, ValueError) as exc:
        print(f"lvsconf check: {bounded(str(exc))}", file=sys.stderr)
        return 2
    saved = os.environ.get(REQUIRE_CASES_ENV)
    os.environ[REQUIRE_CASES_ENV] = "1"  # nothing collected is an error, never a green
    try:
        code = pytest.main(argv)
    finally:
        if saved is None:
            os.environ.pop(REQUIRE_CASES_ENV, None)
        else:
            os.environ[REQUIRE_CASES_ENV] = saved
    if code == pytest.ExitCode.OK:
        return 0
    if code == pytest.ExitCode.TESTS_FAILED:
        return 1
    if code == pytest.ExitCode.INTERRUPTED:
        return 130
    if code in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.NO_TESTS_COLLECTED):
        return 2
    return 3
