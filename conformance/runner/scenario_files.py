"""Scenario files (``*.scn``) as conformance cases: one case per file, graded like any other.

pytest collects every ``*.scn`` path it is given or finds under a directory it walks (so
``conformance/regressions/*.scn`` run with the suite, and ``lvsconf check FILE`` runs one file).
Each file becomes a synthetic module holding one ``@rule`` test, ``test_scenario``, which the
conformance plugin parametrises over implementations like a hand-written case: the same
``case`` fixture, runner, grading, evidence, report records and kernel lanes (a VM guest collects
the same file by its node id). The rule id is ``scenario-<file stem>``; the family is the
scenario's own (its addresses say it); the rule text is the file's leading comment.

The case passes when the implementation matches the model (``case.play``) and the model keeps
every ``expect`` line of the file.
"""

from __future__ import annotations

import hashlib
import re
import types
from pathlib import Path
from typing import Any

import pytest

from conformance.runner.case import Case
from conformance.runner.rules import REGISTRY, rule
from harness import addresses
from impl.errors import ModelError
from impl.scenario import AddDest, EditDest, Scenario
from impl.timeline import Timeline, expect_failures, parse_timeline
from impl.types import IPV4, IPV6, Family, Proto

SUFFIX = ".scn"
_RULE_WORD = re.compile(r"[^a-z0-9]+")


class ScenarioFileError(ValueError):
    """A scenario file that cannot run on a real topology (one line: what and the fix)."""


def read_timeline(path: Path, shown: str | None = None) -> Timeline:
    """Parse ``path`` (errors name ``shown``, default the path as given)."""
    name = shown or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioFileError(f"cannot read {name}: {exc} (give a readable text file)") from None
    try:
        timeline = parse_timeline(text, name, name=path.stem)
    except ModelError as exc:
        raise ScenarioFileError(str(exc)) from None
    problem = plan_problem(timeline.scenario)
    if problem:
        raise ScenarioFileError(f"{name}: {problem}")
    return timeline


def family_of(scenario: Scenario) -> Family:
    for cfg in scenario.services:
        return cfg.service.family
    flows = scenario.flows()
    return flows[0].family if flows else IPV4


def plan_problem(scenario: Scenario, real_servers: int = 3) -> str | None:
    """Why real traffic cannot carry this scenario (addresses outside the harness's plan)."""
    if not scenario.flows():
        return "no flows (add a flow line, e.g. tcp 198.18.16.1:40001 -> 198.19.0.1:80)"
    for cfg in scenario.services:
        vaddr, vips = cfg.service.key.vaddr, addresses.VIP_NET[cfg.service.family]
        if vaddr is not None and vaddr not in vips:
            return f"virtual address {vaddr} is not a VIP of the lab (use one in {vips})"
    dests = [d for cfg in scenario.services for d in cfg.dests]
    dests += [s.dest for s in scenario.steps if isinstance(s, AddDest | EditDest)]
    for d in dests:
        index = addresses.rs_index(d.addr)
        if index is None or index >= real_servers:
            rips = ", ".join(str(addresses.rip(d.family, i)) for i in range(real_servers))
            return f"real server {d.addr} is not in the lab (use {rips})"
    for f in scenario.flows():
        pool, vips = addresses.CLIENT_POOL[f.family], addresses.VIP_NET[f.family]
        if f.saddr not in pool:
            return f"client {f.saddr} is outside the client pool (use {pool})"
        if f.daddr not in vips:
            return f"flow destination {f.daddr} is not a VIP of the lab (use one in {vips})"
    return None


def rule_id_for(path: Path) -> str:
    """``scenario-<stem>``; a stem already taken by another file gets a short path hash."""
    stem = _RULE_WORD.sub("-", path.stem.lower()).strip("-") or "file"
    rule_id = f"scenario-{stem}"
    known = REGISTRY.get(rule_id)
    if known is not None and known.origin != _origin(path):
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
        rule_id = f"{rule_id}-{digest}"
    return rule_id


def _origin(path: Path) -> str:
    return f"scenario:{path.resolve()}:test_scenario"


def _leading_comment(path: Path) -> str:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.startswith("#"):
            break
        lines.append(raw.lstrip("#").strip())
    return "\n".join(lines).strip()


def make_test(path: Path, shown: str) -> Any:
    """The ``@rule`` test function for one scenario file."""
    timeline = read_timeline(path, shown)
    scenario = timeline.scenario
    uses_sctp = any(f.proto is Proto.SCTP for f in scenario.flows())

    def test_scenario(case: Case) -> None:
        ftp_data = any(f.sport == 20 for f in scenario.flows())
        result = case.play(scenario, allow_ftpdata=ftp_data)
        broken = expect_failures(timeline, result.model_decisions, shown)
        if broken:
            pytest.fail("\n".join(broken), pytrace=False)
        result.assert_conforms()

    test_scenario.__module__ = f"scenario:{path.resolve()}"
    test_scenario.__doc__ = _leading_comment(path) or f"The timeline of {shown}."
    family = family_of(scenario)
    return rule(
        rule_id_for(path),
        source=f"scenario file {shown} (expected: the reference model)",
        families=(IPV6,) if family is IPV6 else (IPV4,),
        needs=("sctp",) if uses_sctp else (),
    )(test_scenario)


class ScenarioModule(pytest.Module):
    """A ``.scn`` file seen as a module with one test (see the module docstring)."""

    def _getobj(self) -> types.ModuleType:
        shown = self.nodeid.split("::", 1)[0] or str(self.path)
        try:
            func = make_test(self.path, shown)
        except ScenarioFileError as exc:
            raise self.CollectError(str(exc)) from None
        module = types.ModuleType(f"scenario_{self.path.stem}")
        module.__file__ = str(self.path)
        module.test_scenario = func  # type: ignore[attr-defined]
        return module


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix == SUFFIX:
        return ScenarioModule.from_parent(parent, path=file_path)
    return None
