"""``lvsconf report merge``: the reports of separate jobs make the report of one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conformance.runner import report
from lvsconf.cli import main

#: fields that differ between any two runs of the same case (clock, pytest timing)
VOLATILE = ("duration", "finished", "timings")


def _stable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def _rec(rule: str, kernel: str, family: str, verdict: str) -> dict[str, Any]:
    return {
        "rule": rule,
        "implementation": "kernel",
        "kernel": kernel,
        "family": family,
        "verdict": verdict,
    }


KERNELS = ("5.10.0-32-amd64 (5.10.223)", "6.1.0-56-amd64 (6.1.192)", "7.2.13+deb14-amd64")
RECORDS = [
    _rec(rule, k, fam, "fail" if (rule, k) == ("b", KERNELS[2]) else "exact")
    for rule in ("a", "b")
    for k in KERNELS
    for fam in ("ipv4", "ipv6")
]


def test_merge_of_per_kernel_reports_equals_the_multi_kernel_report(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    single = report.write(tmp_path / "single", RECORDS)
    parts = []
    for i, k in enumerate(KERNELS):
        part = tmp_path / f"report-{i}"
        report.write(part, [r for r in RECORDS if r["kernel"] == k], {"kernel_option": k})
        parts.append(str(part))
    assert main(["report", "merge", *parts, "--out", str(tmp_path / "merged")]) == 0
    out = capsys.readouterr().out
    assert "merged 3 reports: 12 records" in out and "junit.xml: none in the inputs" in out
    merged = tmp_path / "merged"
    assert report.load(merged) == report.load(single.results_json)
    assert report.matrix_text(report.load(merged)) == report.matrix_text(RECORDS)
    assert (merged / "summary.md").read_text() == single.summary_md.read_text()
    meta = json.loads((merged / "results.json").read_text())["meta"]
    assert meta["merged_from"] == parts and meta["kernel_option"] == ", ".join(KERNELS)


def test_merge_of_split_runs_equals_one_run(tmp_path: Path) -> None:
    """Real runs of the fake suite: one full run vs two runs splitting the cases."""
    from runner.test_plugin import _run

    full = _run(tmp_path, "--lvs-report", str(tmp_path / "full"))
    assert full.returncode == 1, full.stdout + full.stderr  # the fake suite has failing cases
    first = _run(tmp_path, "-k", "exact or diverges", "--lvs-report", str(tmp_path / "one"))
    second = _run(
        tmp_path, "-k", "not exact and not diverges", "--lvs-report", str(tmp_path / "two")
    )
    assert first.returncode == 0 and second.returncode == 1, first.stdout + second.stdout
    merged = tmp_path / "merged"
    assert (
        main(
            ["report", "merge", str(tmp_path / "one"), str(tmp_path / "two"), "--out", str(merged)]
        )
        == 0
    )
    whole = report.load(tmp_path / "full")
    assert len(whole) == 7 and _stable(report.load(merged)) == _stable(whole)
    assert report.matrix_text(report.load(merged)) == report.matrix_text(whole)
    summary = (tmp_path / "full" / "summary.md").read_text()
    assert (merged / "summary.md").read_text() == summary


def test_junit_files_are_merged(tmp_path: Path) -> None:
    parts = []
    for i, k in enumerate(KERNELS[:2]):
        part = tmp_path / f"r{i}"
        suite = f'<testsuite name="pytest" tests="1"><testcase name="t{i}"/></testsuite>'
        junit = f"<testsuites>{suite}</testsuites>"
        report.write(part, [r for r in RECORDS if r["kernel"] == k], extra={"junit.xml": junit})
        parts.append(str(part))
    assert main(["report", "merge", *parts, "--out", str(tmp_path / "m")]) == 0
    text = (tmp_path / "m" / "junit.xml").read_text()
    assert text.count("<testsuite ") == 2 and 'name="t0"' in text and 'name="t1"' in text
    assert f'name="pytest ({parts[1]})"' in text


def test_conflicts_and_bad_inputs_are_one_line_and_write_nothing(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a = report.write(tmp_path / "a", RECORDS[:2]).results_json.parent
    b = report.write(tmp_path / "b", RECORDS[1:3]).results_json.parent
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text('{"results": [{"rule": "x"}]}')
    for argv, message in (
        ([str(a), str(b)], "both hold a [kernel-ipv6] on kernel 5.10.0-32-amd64"),
        ([str(a), str(bad)], "record 0 lacks implementation"),
        ([str(a), str(tmp_path / "nope")], "no results at"),
    ):
        assert main(["report", "merge", *argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not (tmp_path / "out").exists()
    assert main(["report"]) == 2
