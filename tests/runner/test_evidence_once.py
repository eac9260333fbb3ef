"""Evidence once: a case's assertion states only its claim, and the plugin's report hook attaches
the scenario's evidence to the failure, once (child pytest on the in-process fake)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import conformance.runner.plugin as plugin

from .test_plugin import CONFTEST, TESTS_DIR

CASES = '''
from dataclasses import replace
from conformance.runner.rules import rule
from runner.fakes import persistent_scenario
from impl.types import IPV4


@rule("unit-claim", source="nowhere", families=(IPV4,))
def test_claim(case):
    """The scenario conforms, but the rule's own claim is false."""
    r = case.play(persistent_scenario(case))
    r.assert_conforms()
    assert r.rs(0) == 99, "flow 1 reaches rs100"


def _elsewhere(i, flow, outcome):
    return replace(outcome, rs=(outcome.rs + 1) % 3) if i == 2 else outcome


@rule("unit-nonconforming", source="nowhere", families=(IPV4,))
def test_nonconforming(case):
    """assert_conforms raises with the explanation itself."""
    case.impl.perturb = _elsewhere
    try:
        case.play(persistent_scenario(case)).assert_conforms()
    finally:
        case.impl.perturb = None
'''


def _run(tmp_path: Path) -> str:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_cases.py").write_text(textwrap.dedent(CASES))
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])
    )
    env.pop(plugin.PROGRESS_ENV, None)
    env.pop(plugin.REQUIRE_CASES_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts="]
        + ["--rootdir", str(tmp_path), "--impl", "runner.fakes:FAKE"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return proc.stdout


def _failure(out: str, name: str) -> str:
    """The failure block of one test in the terminal summary."""
    start = out.index(f"_ {name}[fake-ipv4] _")
    # the block ends at the next test's header or at the summary that follows the last one
    # (under CI=true pytest prints the whole message again in its short summary)
    ends = [e for e in (out.find("\n___", start + 1), out.find("\n===", start + 1)) if e >= 0]
    return out[start : min(ends, default=len(out))]


def test_a_failed_claim_carries_the_evidence_once(tmp_path: Path) -> None:
    out = _run(tmp_path)
    claim = _failure(out, "test_claim")
    assert "flow 1 reaches rs100" in claim
    assert claim.count(f" {plugin.EVIDENCE_SECTION} ") == 1, claim
    assert claim.count("rule unit-claim on fake (ipv4): exact") == 1, claim  # explain()'s title
    assert "-A -t 198.19.0.1:80" in claim  # the scenario as an ipvsadm script
    nonconforming = _failure(out, "test_nonconforming")
    assert nonconforming.count("rule unit-nonconforming on fake (ipv4): fail") == 1, nonconforming
    assert plugin.EVIDENCE_SECTION not in nonconforming
