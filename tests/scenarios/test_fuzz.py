"""Differential fuzzing: a deliberately broken model is caught and shrunk to a few lines; a
correct one gives no divergence; the saved file is a scenario file the suite can replay; and a
small ``lvsconf fuzz`` run on the reference in real namespaces ends with the promised line."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from runner.fakes import FakeImpl, make_case  # tests/runner (pytest puts tests/ on the path)

from conformance.runner.fuzz import fuzz, regression_file
from impl.director import Director
from impl.kernel_level import KernelLevel
from impl.scenario import Scenario
from impl.timeline import parse_timeline
from impl.types import IPV4, IPV6, Family, Service

ROOT = Path(__file__).resolve().parents[2]


class NoNetmask(Director):
    """A broken copy of the model: every service's persistence netmask is ignored."""

    def add_service(self, service: Service, now: float = 0.0) -> None:
        super().add_service(replace(service, netmask=None), now)

    def edit_service(self, service: Service, now: float = 0.0) -> None:
        super().edit_service(replace(service, netmask=None), now)


def broken_model(scenario: Scenario, level: KernelLevel) -> Director:
    return NoNetmask.from_scenario(scenario, level)


@pytest.mark.parametrize("family", [IPV4, IPV6], ids=lambda f: f.label)
def test_broken_model_is_caught_and_shrunk(family: Family) -> None:
    case, _ = make_case(FakeImpl(), family, "fuzz")
    case._model_factory = broken_model  # the expected side is the broken model
    outcome = fuzz(case, family, examples=300, seed=1)
    assert outcome.diverged, f"not caught in {outcome.examples} examples"
    text = regression_file(outcome, "fake", 1)
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(lines) <= 6, text  # a service with a netmask, a dest, a flow or two
    assert "-M " in text, text
    # the saved file is a scenario file again
    again = parse_timeline(text, "saved.scn", name="").scenario
    assert again.flows() == outcome.scenario.flows()


@pytest.mark.parametrize("family", [IPV4, IPV6], ids=lambda f: f.label)
def test_correct_model_gives_no_divergence(family: Family) -> None:
    case, _ = make_case(FakeImpl(), family, "fuzz")
    outcome = fuzz(case, family, examples=150, seed=2)
    assert not outcome.diverged, outcome.explain
    assert outcome.examples == 150


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_lvsconf_fuzz_on_the_reference_ends_with_the_counts(tmp_path: Path) -> None:
    """Under 60 s on the reference lane: 6 examples per family."""
    before = set(ROOT.glob(".lvsconf-fuzz-*"))  # other runs may be going on
    proc = subprocess.run(
        [sys.executable, "-m", "lvsconf.cli", "fuzz", "--impl", "reference"]
        + ["--examples", "12", "--seed", "7", "--regressions", str(tmp_path / "reg")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0 and last == "examples=12 divergences=0", (
        proc.stdout[-3000:] + proc.stderr[-2000:]
    )
    assert not (tmp_path / "reg").exists()
    assert set(ROOT.glob(".lvsconf-fuzz-*")) <= before  # the generated module is gone


def test_fuzz_bad_input_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from lvsconf.cli import main

    assert main(["fuzz", "--impl", "reference", "--examples", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["fuzz", "--impl", "kernel,reference", "--examples", "3"]) == 2
    assert "one implementation at a time" in capsys.readouterr().err
