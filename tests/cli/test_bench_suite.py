"""``lvsconf bench suite``: the verdict comparison between its serial and tuned runs."""

from __future__ import annotations

from lvsconf.bench.suite import LaneRun, compare, equal_verdicts


def _run(mode: str, verdicts: dict[str, str]) -> LaneRun:
    return LaneRun("kernel", mode, 1.0, None, [0.1] * len(verdicts), verdicts, 0)


def test_verdicts_are_compared_case_by_case() -> None:
    serial = _run("serial", {"a": "exact", "b": "exact", "c": "fail"})
    tuned = _run("tuned", {"a": "exact", "b": "fail", "d": "exact"})
    assert equal_verdicts(serial, tuned) == 1
    assert compare(serial, tuned) == [
        "    b: serial exact, tuned fail",
        "    c: serial fail, tuned not run",
        "    d: serial not run, tuned exact",
    ]
    assert compare(serial, serial) == [] and equal_verdicts(serial, serial) == 3
