"""``lvsconf diff``: an upgrade report labelling behaviour changes modelled or unexplained."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pytest

from conformance.runner.report import problem_lines
from conformance.runner.upgrade import compare, rows_equal
from impl.kernel_changes import CHANGES, differences
from impl.kernel_level import KernelLevel, parse_release
from lvsconf.cli import main

OLD_K = "6.1.0-40-amd64 (6.1.182)"
NEW_K = "6.1.0-56-amd64 (6.1.192)"
FLOWS = ["tcp 198.18.16.1:40000 -> 198.19.0.1:80", "tcp 198.18.16.1:40001 -> 198.19.0.1:80"]
ROW = "TCP 198.18.16.1:0 > 198.19.0.1:{vport} => 198.18.10.11:{dport} NONE {expires}s"


def _rec(rule: str, kernel: str, verdict: str = "exact", **extra: Any) -> dict[str, Any]:
    rec = {
        "rule": rule,
        "implementation": "kernel",
        "kernel": kernel,
        "family": "ipv4",
        "verdict": verdict,
        "flows": FLOWS,
        "expected": ["rs1:80", "rs1:80"],
        "observed": ["rs1:80", "rs1:80"],
        "templates": [_check(ROW.format(vport=80, dport=80, expires=59))],
    }
    return rec | extra


def _check(observed: str, expected: str | None = None, step: int = 0) -> dict[str, Any]:
    return {"step": step, "at": 1.0, "expected": [expected or observed], "observed": [observed]}


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.mkdir()
    (path / "results.json").write_text(json.dumps({"schema": 1, "meta": {}, "results": records}))
    return path


INVALIDATED_OLD = ROW.format(vport="FFFF", dport="FFFF", expires=59)
INVALIDATED_NEW = ROW.format(vport=80, dport="FFFF", expires=59)
CASE_LINE = "case = <harness.casework.Case object at 0x7f3a2c1d>"
PROBLEM = f"flow 2 ({FLOWS[1]}): expected rs1:80, observed rs2:80"

OLD = [
    # the template the kernel invalidates keeps its vport on the new kernel, as the model says
    _rec("removed-dest", OLD_K, templates=[_check(INVALIDATED_OLD)]),
    # exact before, fails after: a regression
    _rec("port-reuse", OLD_K),
    # only the timer slack differs (59s vs 57s): no change
    _rec("timer", OLD_K),
    # an implementation run on the old kernel only
    _rec("timer", "host", implementation="reference"),
    _rec("port-reuse", "host", implementation="reference"),
]
NEW = [
    _rec("removed-dest", NEW_K, templates=[_check(INVALIDATED_NEW)]),
    _rec(
        "port-reuse",
        NEW_K,
        "fail",
        observed=["rs1:80", "rs2:80"],
        problems=[PROBLEM],
        detail=f"{CASE_LINE}\n\n    def test_port_reuse(case):\nE   AssertionError: ...",
    ),
    _rec(
        "timer",
        NEW_K,
        templates=[_check(ROW.format(vport=80, dport=80, expires=57))],
    ),
]


def test_modelled_and_unexplained_changes_are_labelled() -> None:
    cmp = compare(OLD, NEW)
    labels = {c.key[0]: c.label for c in cmp.changes}
    assert labels == {"removed-dest": "modelled", "port-reuse": "unexplained"}
    modelled = next(c for c in cmp.changes if c.label == "modelled")
    assert not modelled.flows and len(modelled.tables) == 1
    assert (modelled.tables[0].old, modelled.tables[0].new) == (
        [INVALIDATED_OLD],
        [INVALIDATED_NEW],
    )
    assert "6.1.182 -> 6.1.192" in modelled.why and "no_invisible_templates" in modelled.why
    regression = next(c for c in cmp.changes if c.label == "unexplained")
    assert regression.why == "regression: exact -> fail"
    assert regression.problems == [PROBLEM]
    assert [(f.index, f.old, f.new) for f in regression.flows] == [(1, "rs1:80", "rs2:80")]
    assert sum(cmp.only_old.values()) == 2 and not cmp.only_new


def test_cli_side_by_side_one_sided_line_and_exit_status(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a, b = _write(tmp_path / "a", OLD), _write(tmp_path / "b", NEW)
    assert main(["diff", str(a), str(b), "--html", str(tmp_path / "diff.html")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "MODELLED removed-dest [kernel-ipv4]: the model predicts it for 6.1.182 -> 6.1.192" in (
        "\n".join(out)
    )
    side = next(i for i, ln in enumerate(out) if ln.startswith("  templates after step 1"))
    assert out[side + 1].split(" | ") == [f"    {INVALIDATED_OLD}", f"{INVALIDATED_NEW}  <--"]
    assert "UNEXPLAINED port-reuse [kernel-ipv4]: regression: exact -> fail" in out
    assert f"  - {PROBLEM}" in out and not any("object at 0x" in ln for ln in out)
    assert "    2 tcp 198.18.16.1:40001 -> 198.19.0.1:80: rs1:80 | rs2:80" in out
    one_sided = [ln for ln in out if "only in" in ln or "absent" in ln]
    assert one_sided == ["one side only, not compared: 2 only in OLD (reference@host: 2)"]
    assert out[-1] == "2 changed: 1 unexplained, 1 modelled; unexplained changes found"
    page = (tmp_path / "diff.html").read_text()
    assert '<span class="l l-modelled">modelled</span>' in page
    assert f'<tr class="differs"><td><code>{html.escape(INVALIDATED_OLD)}</code></td>' in page
    assert "no_invisible_templates" in page and PROBLEM.replace(">", "&gt;") in page


def test_only_modelled_changes_exit_zero(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a = _write(tmp_path / "a", [OLD[0], OLD[2]])
    b = _write(tmp_path / "b", [NEW[0], NEW[2]])
    assert main(["diff", str(a), str(b)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 changed: 1 modelled; nothing unexplained"


def test_behaviour_change_the_model_does_not_predict_is_unexplained() -> None:
    old = [_rec("r", OLD_K)]
    new = [_rec("r", NEW_K, "diverges", observed=["rs1:80", "rs3:80"])]
    (change,) = compare(old, new).changes
    assert change.label == "unexplained" and "model predicts no change" in change.why
    # the same change with the model predicting it, but not exact on the new kernel: unexplained
    new = [
        _rec("r", NEW_K, "diverges", expected=["rs1:80", "rs3:80"], observed=["rs1:80", "rs3:80"])
    ]
    assert compare(old, new).changes[0].label == "unexplained"


def test_improvements_and_verdict_only_changes_pass() -> None:
    old = [_rec("a", OLD_K, "fail"), _rec("b", OLD_K, "skip", flows=[], observed=[])]
    new = [_rec("a", NEW_K), _rec("b", NEW_K, "unsupported", flows=[], observed=[])]
    cmp = compare(old, new)
    assert [c.label for c in cmp.changes] == ["improved", "changed"] and not cmp.unexplained


def test_cases_the_lane_could_not_run_belong_to_its_kernel() -> None:
    lost = "kernel lane (sid): guest lost (vng status 255); console tail: ..."
    old = [_rec("a", OLD_K), _rec("b", OLD_K)]
    new = [_rec("a", NEW_K), _rec("b", "lane sid", "fail", flows=[], observed=[], detail=lost)]
    cmp = compare(old, new)
    assert [lane.new_kernel for lane in cmp.lanes] == [NEW_K]
    assert cmp.lanes[0].new_level == parse_release("6.1.192")
    (change,) = cmp.changes
    assert change.label == "unexplained" and change.problems == [lost]
    assert not change.flows and not change.tables  # no traffic ran on the new side


def test_several_kernels_on_one_side_need_a_choice(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    merged = _write(tmp_path / "merged", OLD[:3] + NEW)
    assert main(["diff", str(merged), str(merged)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "choose one with --old-kernel" in err[0]
    code = main(
        ["diff", str(merged), str(merged), "--old-kernel", "6.1.182", "--new-kernel", "6.1.192"]
    )
    assert code == 1
    assert "2 changed: 1 unexplained, 1 modelled" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        ("[]", "has no 'results' list"),
        ('{"results": [1]}', "record 0 is not an object"),
        ('{"results": [{"rule": "x"}]}', "record 0 lacks implementation, kernel"),
        (
            '{"results": [{"rule": 1, "implementation": "k", "kernel": "k", "family": "ipv4", '
            '"verdict": "exact"}]}',
            "record 0: rule must be text",
        ),
        ("[" * 100000 + "]" * 100000, "is not JSON"),
    ],
)
def test_malformed_results_are_one_line_exit_2(
    tmp_path: Path, capsys, content: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    good = _write(tmp_path / "good", OLD)
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main(["diff", str(good), str(bad)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and len(err[0]) < 400, err
    assert "Traceback" not in captured.err and not captured.out


def test_odd_evidence_fields_do_not_crash() -> None:
    old = [_rec("r", OLD_K, observed=5, templates="x", expected={"a": 1})]
    new = [
        _rec("r", NEW_K, "fail", observed=["rs2:80"], templates=[{"step": "z", "observed": [1]}])
    ]
    (change,) = compare(old, new).changes
    assert change.label == "unexplained" and change.flows[0].new == "rs2:80"


def test_reports_without_a_common_implementation_are_refused(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a = _write(tmp_path / "a", OLD[3:])
    b = _write(tmp_path / "b", NEW)
    assert main(["diff", str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "lvsconf diff: no implementation is in both reports (OLD: reference; NEW: kernel); "
        "compare reports of the same implementation"
    ]


def test_missing_report_is_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a = _write(tmp_path / "a", OLD)
    assert main(["diff", str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no results at" in err[0]


def test_expires_within_timer_slack_is_no_change() -> None:
    row = ROW.format(vport=80, dport=80, expires=59)
    assert rows_equal([row], [ROW.format(vport=80, dport=80, expires=57)])
    assert not rows_equal([row], [ROW.format(vport=80, dport=80, expires=29)])
    assert not rows_equal([row], None) and rows_equal(None, None)


def test_problem_lines_never_show_the_case_object() -> None:
    detail = f"{CASE_LINE}\n\n    def test_x(case):\nE   AssertionError: flows differ\nE   more"
    assert problem_lines({"detail": detail}) == ["AssertionError: flows differ", "more"]
    assert problem_lines({"detail": "x\n\nproblems:\n  - flow 1: a\n  - flow 2: b"}) == [
        "flow 1: a",
        "flow 2: b",
    ]
    assert problem_lines({"detail": CASE_LINE + "\nguest crashed"}) == ["guest crashed"]


def test_every_named_kernel_change_is_a_kernel_level_property() -> None:
    for change in CHANGES:
        assert isinstance(getattr(KernelLevel, change.name), property), change.name
        assert change.reason and change.reference
    old, new = parse_release("6.1.183"), parse_release("6.1.192")
    assert [name for name, _ in differences(old, new)] == ["no_invisible_templates"]
    assert [n for n, _ in differences(parse_release("6.1.182"), new)] == [
        "totalconns",
        "overload_rework",
        "no_invisible_templates",
    ]
    assert differences(new, new) == []
