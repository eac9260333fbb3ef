"""Guest test reports as JSON lines, and back into host reports (the VM lane's round trip).

In the guest, :class:`GuestRecorder` appends every phase report of the guest's pytest as one JSON
line; on the host, :func:`replay_report` turns each line back into a report of the host item,
so the host's pytest (and the conformance plugin) see the guest's outcome as the item's own.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import Any

import pytest
from _pytest.reports import TestReport


class GuestRecorder:
    """In the guest: append every phase report as one JSON line (flushed per line, so the
    host still gets what finished before a crash)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(report_record(report), default=repr) + "\n")


def report_record(report: pytest.TestReport) -> dict[str, Any]:
    longrepr: Any = None
    if isinstance(report.longrepr, tuple):  # a skip: (path, lineno, reason)
        longrepr = list(report.longrepr)
    elif report.longrepr is not None:
        longrepr = report.longreprtext
    return {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "longrepr": longrepr,
        "duration": report.duration,
        "wasxfail": getattr(report, "wasxfail", None),
        "user_properties": [list(p) for p in report.user_properties],
        "sections": [list(s) for s in report.sections if not s[0].startswith("Captured log")],
    }


def replay_report(item: pytest.Item, rec: dict[str, Any]) -> TestReport:
    """A host report carrying a guest phase report's outcome as this item's own."""
    longrepr = rec.get("longrepr")
    if isinstance(longrepr, list):
        longrepr = (str(longrepr[0]), int(longrepr[1]), str(longrepr[2]))
    extra = {"wasxfail": rec["wasxfail"]} if rec.get("wasxfail") is not None else {}
    guest_id = rec.get("nodeid")
    # the guest's report records name its own node id; several lanes share one, so each
    # record is renamed to this item's (a record is any dict carrying the guest's node id)
    properties = [
        (key, {**value, "nodeid": item.nodeid})
        if isinstance(value, dict) and value.get("nodeid") == guest_id
        else (key, value)
        for key, value in rec.get("user_properties", [])
    ]
    now = time.time()
    return TestReport(
        nodeid=item.nodeid,
        location=item.location,
        keywords=dict.fromkeys(item.keywords, 1),
        outcome=rec["outcome"],
        longrepr=longrepr,
        when=rec["when"],
        sections=[tuple(s) for s in rec.get("sections", [])],
        duration=float(rec.get("duration") or 0.0),
        start=now,
        stop=now,
        user_properties=properties,
        **extra,
    )


def failed_records(message: str, when: str = "call") -> list[dict[str, Any]]:
    """Phase records of an item the guest never finished: one failed call with ``message``;
    ``when="setup"``: an error (the lane never started), no call."""
    phases = ("setup", "teardown") if when == "setup" else ("setup", "call", "teardown")
    return [
        {
            "when": phase,
            "outcome": "failed" if phase == when else "passed",
            "longrepr": message if phase == when else None,
            "duration": 0.0,
        }
        for phase in phases
    ]


def group_records(lines: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Results file lines -> nodeid -> phase records in order (bad lines are skipped)."""
    out: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        out[rec["nodeid"]].append(rec)
    return dict(out)


def finished(records: list[dict[str, Any]]) -> bool:
    return any(r["when"] == "teardown" for r in records)
