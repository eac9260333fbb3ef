"""Evidence for a failing case: the scenario as ipvsadm, the flow table, both template tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conformance.runner.outcomes import same_outcome
from conformance.runner.templates import format_template, template_sort_key
from impl.scenario import (
    AddDest,
    Advance,
    DelDest,
    EditDest,
    EditService,
    Scenario,
    Send,
    SetSysctl,
    Step,
)

if TYPE_CHECKING:
    from conformance.runner.grading import CaseResult

    pass


def _render_rules(scenario: Scenario) -> str:
    try:
        from impl.ipvsadm import render_rules
    except ImportError:  # the ipvsadm renderer is optional evidence; fall back to a plain list
        return "\n".join(
            f"service {c.service.key} {c.service.scheduler} timeout={c.service.timeout} "
            f"netmask={c.service.netmask} ops={c.service.ops}; dests "
            + ", ".join(f"{d} w={d.weight} {d.fwd.value}" for d in c.dests)
            for c in scenario.services
        )
    return render_rules(scenario.services).rstrip("\n")


def describe_step(step: Step) -> str:
    """One line per scenario step, for the evidence."""
    if isinstance(step, Send):
        mode = "ordered" if step.ordered else "batch"
        return f"send {len(step.flows)} flow(s) ({mode})"
    if isinstance(step, Advance):
        return f"advance {step.seconds:g}s"
    if isinstance(step, AddDest):
        return f"add dest {step.dest} w={step.dest.weight} {step.dest.fwd.value} to {step.key}"
    if isinstance(step, EditDest):
        return f"edit dest {step.dest} w={step.dest.weight} {step.dest.fwd.value} of {step.key}"
    if isinstance(step, DelDest):
        return f"delete dest {step.addr}:{step.port} of {step.key}"
    if isinstance(step, EditService):
        s = step.service
        return f"edit service {s.key} {s.scheduler} timeout={s.timeout} netmask={s.netmask}"
    if isinstance(step, SetSysctl):
        return f"sysctl {step.name}={step.value}"
    return repr(step)


def render_scenario(scenario: Scenario) -> str:
    """The scenario as an ipvsadm script plus fwmark rules, sysctls and steps."""
    lines = [f"# scenario {scenario.name}", _render_rules(scenario)]
    lines += [
        f"# fwmark {r.mark}: {r.proto.label if r.proto else 'any'} to {r.daddr}"
        f" ports {r.dports or 'any'}"
        for r in scenario.fwmark_rules
    ]
    lines += [f"# sysctl net.ipv4.vs.{k}={v}" for k, v in scenario.sysctls.changed().items()]
    lines += [f"# step {i + 1}: {describe_step(s)}" for i, s in enumerate(scenario.steps)]
    return "\n".join(lines)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]


def explain(result: CaseResult) -> str:
    """Human evidence for ``result`` (what a failing case prints)."""
    out = [
        f"rule {result.rule_id} on {result.implementation} ({result.family.label}): "
        f"{result.verdict}" + (" [graded by equivalence]" if result.equivalence else ""),
        "",
        render_scenario(result.scenario),
        "",
        "flows:",
    ]
    rows = [["#", "flow", "model", "expected", "observed", ""]]
    for i, f in enumerate(result.flows):
        e, o = result.expected[i], result.observed[i]
        mark = "" if same_outcome(e, o) else "<-- differs"
        rows.append([str(i + 1), str(f), str(result.model_decisions[i]), str(e), str(o), mark])
    out += ["  " + line for line in _table(rows)]
    for c in result.template_checks:
        out.append("")
        exp = [format_template(t) for t in sorted(c.expected, key=template_sort_key)]
        if c.observed is None:
            out.append(
                f"templates after step {c.step + 1} (t={c.at:.2f}s): model only "
                "(the implementation exposes no table)"
            )
            out += ["  " + line for line in exp or ["(none)"]]
            continue
        obs = [format_template(t) for t in sorted(c.observed, key=template_sort_key)]
        out.append(f"templates after step {c.step + 1} (t={c.at:.2f}s): model | implementation")
        height = max(len(exp), len(obs), 1)
        exp += [""] * (height - len(exp))
        obs += [""] * (height - len(obs))
        if not any(exp) and not any(obs):
            exp[0], obs[0] = "(none)", "(none)"
        width = max(len(x) for x in exp)
        out += [f"  {a.ljust(width)} | {b}".rstrip() for a, b in zip(exp, obs, strict=True)]
    if result.problems:
        out += ["", "problems:"] + [f"  - {p}" for p in result.problems]
    return "\n".join(out)
