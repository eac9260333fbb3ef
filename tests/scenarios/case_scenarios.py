"""The scenarios every conformance case runs, captured in-process with the runner's fakes.

Each ``@rule`` case is called with a fake ``case`` (tests/runner/fakes.py: a model director on a
virtual clock), once per family it declares; every scenario it hands to ``case.play`` is kept.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from dataclasses import dataclass

from runner.fakes import FakeImpl, make_case  # tests/runner (pytest puts tests/ on the path)

import conformance
from conformance.runner.rules import RuleInfo, rule_of
from impl.scenario import Scenario
from impl.types import Family


@dataclass(frozen=True)
class CaseScenario:
    rule: RuleInfo
    family: Family
    index: int
    scenario: Scenario
    allow_ftpdata: bool

    @property
    def name(self) -> str:
        return f"{self.rule.rule_id}-{self.family.label}-{self.index}"


def case_scenarios() -> list[CaseScenario]:
    out: list[CaseScenario] = []
    for info in pkgutil.iter_modules(conformance.__path__):
        if not info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"conformance.{info.name}")
        for name in sorted(dir(module)):
            rule = rule_of(getattr(module, name))
            if rule is None:
                continue
            for family in rule.families:
                out += _captured(getattr(module, name), rule, family)
    return out


def _captured(func: object, rule: RuleInfo, family: Family) -> list[CaseScenario]:
    case, _ = make_case(FakeImpl(), family, rule.rule_id)
    runs: list[tuple[Scenario, bool]] = []
    original = case.play

    def play(scenario: Scenario, *, allow_ftpdata: bool = False):  # type: ignore[no-untyped-def]
        runs.append((scenario, allow_ftpdata))
        return original(scenario, allow_ftpdata=allow_ftpdata)

    case.play = play  # type: ignore[method-assign]
    # a check on wire details the fakes do not model (e.g. encapsulation) may fail: the
    # scenarios run so far are captured all the same
    with contextlib.suppress(AssertionError):
        func(case)  # type: ignore[operator]
    return [CaseScenario(rule, family, i, s, ftp) for i, (s, ftp) in enumerate(runs)]
