"""``lvsconf run``: argument mapping and bad input (one line, exit 2), without running cases."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from lvsconf.cli import build_parser
from lvsconf.commands import run as run_cmd


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", *argv])


def test_defaults_run_the_installed_suite_without_slow_cases() -> None:
    argv = run_cmd.pytest_args(_args())
    assert argv[0] == str(run_cmd.conformance_dir())
    assert argv[argv.index("--lvs-report") + 1] == "lvs-report"
    assert argv[argv.index("-m") + 1] == "not slow"
    assert "--impl" not in argv and "--kernel" not in argv
    # workers by default (the cases' timer waits overlap), spread by worksteal
    assert argv[argv.index("-n") + 1] == str(run_cmd.default_workers())
    assert argv[argv.index("--dist") + 1] == "worksteal"
    one = run_cmd.pytest_args(_args("-n", "0"))
    assert one[one.index("-n") + 1] == "0" and "--dist" not in one
    # kernel IPVS only, in VMs: the guest has the workers, the host runs one process
    vm_only = run_cmd.pytest_args(_args("--impl", "kernel", "--kernel", "sid"))
    assert vm_only[vm_only.index("-n") + 1] == "0"
    # a host lane (native IPVS) overlaps its waits with host workers again
    on_host = run_cmd.pytest_args(_args("--impl", "kernel", "--kernel", "host"))
    assert on_host[on_host.index("-n") + 1] == str(run_cmd.default_workers())
    mixed = run_cmd.pytest_args(_args("--impl", "kernel,reference", "--kernel", "sid"))
    assert mixed[mixed.index("-n") + 1] == str(run_cmd.default_workers())


def test_options_map_onto_pytest() -> None:
    argv = run_cmd.pytest_args(
        _args(
            "--impl",
            "reference",
            "--kernel",
            "6.1.0-56-amd64",
            "--report",
            "out",
            "-n",
            "2",
            "-k",
            "fwmark",
            "--slow",
            "--",
            "-x",
        )
    )
    assert argv[argv.index("--impl") + 1] == "reference"
    assert argv[argv.index("--kernel") + 1] == "6.1.0-56-amd64"
    assert argv[argv.index("--lvs-report") + 1] == "out"
    assert argv[argv.index("-n") + 1] == "2"
    assert argv[argv.index("-k") + 1] == "fwmark"
    assert "-m" not in argv  # --slow: slow rules included
    assert argv[-1] == "-x"


def test_bad_worker_count_is_rejected() -> None:
    with pytest.raises(run_cmd.RunInputError, match="-n zero: expected a number of workers"):
        run_cmd.pytest_args(_args("-n", "zero"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--impl", "nope"], "lvsconf: --impl 'nope': unknown implementation"),
        (
            ["--impl", "no_such_module_h7x:Thing"],
            "lvsconf: --impl no_such_module_h7x:Thing: cannot import module no_such_module_h7x",
        ),
        (["-n", "-3"], "lvsconf: -n -3: expected a number of workers (0: one process) or auto"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lvsconf.cli", "run", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr


def test_each_case_gets_a_timeout() -> None:
    argv = run_cmd.pytest_args(_args("--case-timeout", "30"))
    assert argv[argv.index("--timeout") + 1] == "30"
    with pytest.raises(run_cmd.RunInputError, match="--case-timeout 0: expected a positive"):
        run_cmd.pytest_args(_args("--case-timeout", "0"))


def test_list_names_every_rule_with_its_source() -> None:
    from conformance.runner.rules import REGISTRY

    lines = run_cmd.list_rules()
    ids = [ln.split()[0] for ln in lines if not ln.startswith(" ")]
    assert ids == sorted(ids) and set(ids) <= set(REGISTRY)
    assert len(ids) >= 1
    assert sum(ln.startswith("    source: ") for ln in lines) == len(ids)
