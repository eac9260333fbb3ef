"""Grading a case result: exact, equivalent or fail (see :mod:`conformance.runner.case`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from conformance.runner.evidence import explain, render_scenario
from conformance.runner.outcomes import same_outcome
from conformance.runner.templates import (
    TemplateCheck,
    compare_template_keys,
    compare_templates,
    format_template,
    template_sort_key,
)
from harness.api import Outcome
from impl.director import masked, template_key_parts
from impl.lookup import find_service, table_key
from impl.scenario import (
    Scenario,
)
from impl.types import (
    Decision,
    Family,
    Flow,
    Service,
    ServiceKey,
    Template,
)

if TYPE_CHECKING:
    pass


Grade = Literal["exact", "equivalent", "fail"]


def persistence_key(
    services: dict[ServiceKey, Service], flow: Flow, unpriv_start: int = 1024
) -> tuple[object, ...] | None:
    """The template key ``flow`` is scheduled under (the model's own derivation,
    :func:`impl.director.template_key_parts`), None if the service is not persistent.

    Used for equivalence grading only: flows with one key (in one stretch of the scenario, with
    one model-predicted server) must share a real server. The SIP Call-ID is not modelled here.
    """
    table = {table_key(k): v for k, v in services.items()}
    found = find_service(
        table, flow.family, flow.mark, flow.proto, flow.daddr, flow.dport, unpriv_start
    )
    if found is None or not found[0].persistent:
        return None
    svc = found[0]
    proto, vport, vaddr = template_key_parts(
        flow.proto, flow.dport, flow.daddr, svc.key.vport, svc.key.fwmark
    )
    return (flow.family, proto, masked(flow.saddr, svc), vaddr, vport)


# --------------------------------------------------------------------------- result and grading


@dataclass(slots=True)
class CaseResult:
    """What one run of a scenario produced on the implementation and on the model."""

    rule_id: str
    implementation: str
    family: Family
    scenario: Scenario
    flows: list[Flow] = field(default_factory=list)
    expected: list[Outcome] = field(default_factory=list)
    observed: list[Outcome] = field(default_factory=list)
    model_decisions: list[Decision] = field(default_factory=list)
    #: per flow: (persistence key, stretch of the scenario) or None (no persistence)
    groups: list[tuple[object, ...] | None] = field(default_factory=list)
    template_checks: list[TemplateCheck] = field(default_factory=list)
    equivalence: bool = False  # graded by equivalence (model not exact for this case)
    timings: dict[str, float] = field(default_factory=dict)
    verdict: Grade = "fail"
    problems: list[str] = field(default_factory=list)

    @property
    def templates_expected(self) -> list[list[Template]]:
        return [list(c.expected) for c in self.template_checks]

    @property
    def templates_observed(self) -> list[list[Template] | None]:
        return [None if c.observed is None else list(c.observed) for c in self.template_checks]

    def rs(self, i: int) -> int | None:
        """The real server (0-based) that received flow ``i``, None if it was not forwarded."""
        out = self.observed[i]
        return out.rs if out.kind == "forward" else None

    def assert_conforms(self) -> None:
        """Raise AssertionError with :meth:`explain` unless the verdict is exact or equivalent."""
        if self.verdict not in ("exact", "equivalent"):
            raise AssertionError(self.explain())

    def explain(self) -> str:
        """The evidence: scenario as ipvsadm script, flows, template tables side by side."""
        return explain(self)

    def to_record(self) -> dict[str, object]:
        """JSON-serialisable evidence for reports (survives xdist and the VM round trip)."""
        return {
            "verdict": self.verdict,
            "grading": "equivalence" if self.equivalence else "exact",
            "problems": list(self.problems),
            "flows": [str(f) for f in self.flows],
            "expected": [str(o) for o in self.expected],
            "observed": [str(o) for o in self.observed],
            "model_decisions": [str(v) for v in self.model_decisions],
            "templates": [
                {
                    "step": c.step,
                    "at": round(c.at, 3),
                    "expected": [
                        format_template(t) for t in sorted(c.expected, key=template_sort_key)
                    ],
                    "observed": None
                    if c.observed is None
                    else [format_template(t) for t in sorted(c.observed, key=template_sort_key)],
                }
                for c in self.template_checks
            ],
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "scenario": render_scenario(self.scenario),
        }


def grade(result: CaseResult) -> tuple[Grade, list[str]]:
    """Grade ``result``; the list names every problem found (empty for exact)."""
    flow_problems = [
        f"flow {i + 1} ({f}): expected {e}, observed {o}"
        for i, (f, e, o) in enumerate(
            zip(result.flows, result.expected, result.observed, strict=True)
        )
        if not same_outcome(e, o)
    ]
    table_problems = [
        f"templates after step {c.step + 1}: {d}"
        for c in result.template_checks
        if c.observed is not None
        for d in compare_templates(c.expected, c.observed)
    ]
    if not flow_problems and not table_problems:
        return "exact", []
    if not result.equivalence:
        return "fail", flow_problems + table_problems
    problems = _equivalence_problems(result)
    return ("equivalent", []) if not problems else ("fail", problems)


def _equivalence_problems(result: CaseResult) -> list[str]:
    problems: list[str] = []
    for i, (f, e, o) in enumerate(zip(result.flows, result.expected, result.observed, strict=True)):
        if e.kind != o.kind:
            problems.append(f"flow {i + 1} ({f}): expected {e.kind}, observed {o}")
        elif e.kind == "forward" and e.rs == o.rs and e.port != o.port:
            problems.append(f"flow {i + 1} ({f}): expected port {e.port}, observed {o}")
    first: dict[tuple[object, ...], int] = {}
    for i, group in enumerate(result.groups):
        if group is None or result.observed[i].kind != "forward":
            continue
        j = first.setdefault(group, i)
        if result.observed[j].rs != result.observed[i].rs:
            problems.append(
                f"flow {i + 1} ({result.flows[i]}) reached {result.observed[i]} but flow {j + 1} "
                f"with the same persistence template reached {result.observed[j]}"
            )
    for c in result.template_checks:
        if c.observed is not None:
            problems += [
                f"templates after step {c.step + 1}: {d}"
                for d in compare_template_keys(c.expected, c.observed)
            ]
    return problems
