"""``lvsconf diff``: only changed verdicts are listed; a regression sets the exit status."""

from __future__ import annotations

import json
from pathlib import Path

from lvsconf.cli import main
from lvsconf.commands.diff import diff


def _rec(rule: str, verdict: str, kernel: str, family: str = "ipv4") -> dict[str, object]:
    return {
        "rule": rule,
        "implementation": "kernel",
        "kernel": kernel,
        "family": family,
        "verdict": verdict,
    }


def _write(path: Path, records: list[dict[str, object]]) -> Path:
    path.mkdir()
    (path / "results.json").write_text(json.dumps({"schema": 1, "meta": {}, "results": records}))
    return path


def test_only_changes_are_listed_and_regressions_flagged() -> None:
    old = [_rec("a", "exact", "6.1"), _rec("b", "exact", "6.1"), _rec("c", "fail", "6.1")]
    new = [_rec("a", "exact", "6.12"), _rec("b", "fail", "6.12"), _rec("c", "exact", "6.12")]
    lines, regressed = diff(old, new)
    assert regressed
    assert lines == ["- b [kernel-ipv4]: exact -> fail", "+ c [kernel-ipv4]: fail -> exact"]


def test_improvement_only_is_not_a_regression() -> None:
    lines, regressed = diff([_rec("a", "fail", "6.1")], [_rec("a", "exact", "6.12")])
    assert not regressed and len(lines) == 1


def test_disappeared_record_is_a_regression() -> None:
    lines, regressed = diff([_rec("a", "exact", "6.1")], [])
    assert regressed and lines == ["- a [kernel-ipv4]: exact -> absent"]


def test_cli_exit_status_and_bad_input(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a = _write(tmp_path / "a", [_rec("a", "exact", "6.1")])
    b = _write(tmp_path / "b", [_rec("a", "fail", "6.12")])
    assert main(["diff", str(a), str(b)]) == 1
    assert "exact -> fail" in capsys.readouterr().out
    assert main(["diff", str(a), str(a)]) == 0
    assert main(["diff", str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no results at" in err[0]
