"""The @rule decorator's checks, and the report files (JSON schema, HTML matrix, summary.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance.runner import report
from conformance.runner.rules import KNOWN_FEATURES, REGISTRY, RuleError, rule, rule_of
from harness.features import KernelFeatures
from impl.types import IPV6


def test_rule_records_everything_on_the_function() -> None:
    @rule(
        "unit-rule-a",
        source="core.c 1-2",
        families=(IPV6,),
        needs=("sctp",),
        slow=True,
        diverges={"reference": "traced to core.c 10"},
    )
    def test_a(case: object) -> None:
        """First paragraph
        spans two lines.

        Details."""

    info = rule_of(test_a)
    assert info is not None and REGISTRY["unit-rule-a"] is info
    assert info.families == (IPV6,) and info.needs == ("sctp",) and info.slow
    assert info.diverges == {"reference": "traced to core.c 10"}
    assert info.title == "First paragraph spans two lines."


def test_known_features_are_what_the_probe_answers() -> None:
    assert frozenset(KernelFeatures.__dataclass_fields__) == KNOWN_FEATURES


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule_id": "Bad Id"}, "is not a stable id"),
        ({"source": " "}, "source is empty"),
        ({"needs": ("warp",)}, r"unknown kernel feature\(s\) warp"),
        ({"families": ()}, "families must be a non-empty tuple"),
        ({"diverges": {"reference": ""}}, "has no reason"),
    ],
)
def test_malformed_rules_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"rule_id": "unit-rule-b", "source": "core.c"} | kwargs
    with pytest.raises(RuleError, match=message):
        rule(**args)  # type: ignore[arg-type]


def test_duplicate_rule_id_from_another_function_is_refused() -> None:
    @rule("unit-rule-dup", source="x")
    def test_one(case: object) -> None: ...

    def test_two(case: object) -> None: ...

    with pytest.raises(RuleError, match="declared twice"):
        rule("unit-rule-dup", source="x")(test_two)


def _rec(rule_id: str, impl: str, fam: str, verdict: str, **extra: object) -> dict[str, object]:
    return {
        "rule": rule_id,
        "implementation": impl,
        "kernel": "6.1.0-56-amd64 (6.1.192)",
        "family": fam,
        "verdict": verdict,
        **extra,
    }


RECORDS = [
    _rec(
        "b-rule",
        "kernel",
        "ipv4",
        "exact",
        flows=["tcp a -> b"],
        expected=["rs1:80"],
        observed=["rs1:80"],
        model_decisions=["forward"],
        templates=[{"step": 0, "at": 0.1, "expected": ["T1"], "observed": ["T1"]}],
    ),
    _rec(
        "b-rule",
        "kernel",
        "ipv6",
        "fail",
        detail="flow 1 <differs>",
        flows=["tcp c -> d"],
        expected=["rs1:80"],
        observed=["rs2:80"],
    ),
    _rec("a-rule", "reference", "ipv4", "diverges", detail="declared"),
    _rec("a-rule", "reference", "ipv6", "unsupported"),
]


def test_report_files(tmp_path: Path) -> None:
    paths = report.write(tmp_path / "out", RECORDS, meta={"implementations": ["kernel"]})
    doc = json.loads(paths.results_json.read_text())
    assert doc["schema"] == report.SCHEMA and len(doc["results"]) == 4
    assert [r["rule"] for r in doc["results"]] == ["a-rule", "a-rule", "b-rule", "b-rule"]
    assert report.load(tmp_path / "out") == doc["results"]

    html = paths.index_html.read_text()
    assert '<table class="matrix">' in html
    assert "<th>kernel<br><small>6.1.0-56-amd64 (6.1.192)</small></th>" in html
    # every cell links to an evidence section that exists
    for i in range(4):
        assert f'href="#r{i}"' in html and f'<section id="r{i}">' in html
    assert "flow 1 &lt;differs&gt;" in html  # evidence is escaped
    assert '<tr class="differs">' in html

    md = paths.summary_md.read_text()
    assert "**2 passed, 1 failed, 1 skipped**" in md  # diverges counts as passed
    assert "| `b-rule` | E F | - - |" in md
    assert "## Failures" in md and "flow 1 <differs>" in md


def test_matrix_text() -> None:
    text = report.matrix_text(RECORDS)
    lines = text.splitlines()
    assert lines[0].split() == [
        "rule",
        "kernel@6.1.0-56-amd64",
        "(6.1.192)",
        "reference@6.1.0-56-amd64",
        "(6.1.192)",
    ]
    assert lines[1].split() == ["a-rule", "-", "-", "D", "U"]
    assert lines[2].split() == ["b-rule", "E", "F", "-", "-"]


def test_bad_records_and_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(report.ReportError, match="record 0 lacks kernel"):
        report.validate(
            [{"rule": "x", "implementation": "y", "family": "ipv4", "verdict": "exact"}]
        )
    with pytest.raises(report.ReportError, match="unknown verdict 'great'"):
        report.validate([_rec("x", "y", "ipv4", "great")])
    with pytest.raises(report.ReportError, match="no results at"):
        report.load(tmp_path)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(report.ReportError, match="has no 'results' list"):
        report.load(tmp_path)


def test_summary_names_implementations_left_out(tmp_path: Path) -> None:
    reason = "no module harness.implementations.kernel"
    meta = {"left_out": [{"implementation": "kernel", "reason": reason}]}
    paths = report.write(tmp_path, RECORDS, meta=meta)
    assert f"- not run: **kernel** ({reason})" in paths.summary_md.read_text()


# --------------------------------------------------------------------------- report swap


def _results(directory: Path) -> list[dict[str, object]]:
    return json.loads((directory / "results.json").read_text())["results"]


def test_a_report_is_swapped_in_and_the_replaced_one_kept_one_generation(tmp_path: Path) -> None:
    out = tmp_path / "lvs-report"
    report.write(out, RECORDS[:1])
    report.write(out, RECORDS[:2])
    assert len(_results(out)) == 2 and len(_results(report.previous(out))) == 1
    report.write(out, RECORDS[:3])
    assert len(_results(out)) == 3 and len(_results(report.previous(out))) == 2
    # nothing else is left next to the report (no staging directory, no temporary file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lvs-report", "lvs-report.prev"]
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "results.json", "summary.md"]


def test_a_planted_symlink_is_never_followed(tmp_path: Path) -> None:
    """The old writer wrote DIR/results.json.part following a symlink planted there."""
    out = tmp_path / "lvs-report"
    report.write(out, RECORDS[:1])
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for name in ("results.json", "index.html", "summary.md"):
        (out / f"{name}.part").symlink_to(victim)
    report.write(out, RECORDS)
    assert victim.read_text() == "precious\n"
    assert len(_results(out)) == 4 and not (out / "results.json").is_symlink()


def test_a_symlinked_or_foreign_target_is_refused_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "results.json").write_text("{}")
    out = tmp_path / "lvs-report"
    report.write(out, RECORDS[:1])
    report.previous(out).symlink_to(victim)  # the next swap would move the report there
    with pytest.raises(report.ReportError, match="is a symbolic link"):
        report.write(out, RECORDS)
    assert (victim / "results.json").read_text() == "{}" and len(_results(out)) == 1
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    with pytest.raises(report.ReportError, match="holds files but no lvsconf report"):
        report.write(home, RECORDS)
    assert (home / "notes.txt").read_text() == "mine"
    assert not report.previous(home).exists()


def test_a_run_without_any_case_keeps_the_previous_report(tmp_path: Path) -> None:
    from .test_plugin import _run

    out = tmp_path / "lvs-report"
    first = _run(tmp_path, "--lvs-report", str(out))
    good = (out / "results.json").read_text()
    assert len(json.loads(good)["results"]) == 7, first.stdout + first.stderr
    failed = _run(tmp_path, "-k", "no_such_case", "--lvs-report", str(out))
    assert failed.returncode == pytest.ExitCode.USAGE_ERROR
    assert (out / "results.json").read_text() == good
    assert f"no case ran: the previous report is kept at {out / 'index.html'}" in failed.stdout
    assert not report.previous(out).exists()
    # a run that executed cases replaces it; the replaced report is one generation back, and
    # the junit.xml pytest wrote into the report directory moves into the new report
    again = _run(
        tmp_path, "-k", "exact", "--lvs-report", str(out), "--junitxml", str(out / "j.xml")
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(_results(out)) == 2 and (report.previous(out) / "results.json").read_text() == good
    assert {r["model_level"] for r in _results(out)} == {"6.1.192"}  # what lvsconf diff reads
    assert "<testcase" in (out / "j.xml").read_text()
    assert f"(previous: {report.previous(out)})" in again.stdout


def test_summary_failures_show_the_case_problem_not_the_traceback(tmp_path: Path) -> None:
    detail = "case = <harness.casework.Case object at 0x7f00>\n\n    def test_x(case):\nE   boom"
    failing = _rec(
        "c-rule", "kernel", "ipv4", "fail", detail=detail, problems=["flow 2: rs1 vs rs2"]
    )
    md = report.write(tmp_path / "out", [failing]).summary_md.read_text()
    assert "fail — flow 2: rs1 vs rs2" in md and "object at 0x" not in md
