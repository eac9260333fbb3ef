"""The example CI workflow (ci/workflows/kernel-matrix.yml) uses commands lvsconf accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from lvsconf.cli import build_parser

WORKFLOW = Path(__file__).resolve().parents[2] / "ci" / "workflows" / "kernel-matrix.yml"


def _commands(text: str) -> list[list[str]]:
    """Every ``./ci/lvsconf ...`` command, continuation lines joined, up to a pipe."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = re.findall(r"\./ci/lvsconf ([^\n|]+)", joined)
    return [shlex.split(cmd.replace("${{ matrix.kernel }}", "sid")) for cmd in found]


def test_every_lvsconf_command_in_the_workflow_parses() -> None:
    text = WORKFLOW.read_text()
    commands = _commands(text)
    assert [c[0] for c in commands] == ["run", "report", "diff"]
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)  # SystemExit (a failure here) on an unknown option
        assert callable(args.func)
    run = parser.parse_args(commands[0])
    assert (run.impl, run.kernel, run.report) == ("kernel", "sid", "report-sid")


def test_a_job_per_kernel_and_a_merge_job_publishing_the_summary() -> None:
    text = WORKFLOW.read_text()
    assert "kernel: [bullseye, bookworm, trixie, sid]" in text
    assert "needs: kernel" in text and "if: always()" in text
    assert 'cat lvs-report/summary.md >> "$GITHUB_STEP_SUMMARY"' in text
    assert "options: --privileged" in text  # root, namespaces and QEMU inside the container
