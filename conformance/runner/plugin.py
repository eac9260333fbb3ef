"""pytest integration of the conformance cases: items, the ``case`` fixture, verdicts, reports.

- Every ``@rule`` test taking ``case`` is parametrised over implementation x family, with ids
  like ``[kernel-ipv4]``. Kernel items carry the ``kernel`` marker (the VM lane runs them in the
  guest), slow rules the ``slow`` marker, declared divergences ``xfail(strict=True)``.
- Each decisive report carries a JSON-able record in ``user_properties`` (``("lvsconf", {...})``)
  so records survive pytest-xdist and the VM round trip; the controller collects them.
- ``--lvs-report DIR`` writes results.json, index.html and summary.md
  (:mod:`conformance.runner.report`) into a new directory swapped in at DIR only when the run
  has results; the report it replaces is kept as DIR.prev.
- Never a vacuous green: selecting no case is an error; a case that passes without running a
  scenario, or whose scenario did not conform, fails; the terminal's last line reads
  ``N passed, N failed, N skipped`` over the conformance verdicts.
"""

from __future__ import annotations

import itertools
import os
import platform
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conformance.runner import report as lvs_report
from conformance.runner import schedule
from conformance.runner.case import Case, ModelFactory, TrafficFn, Unsupported
from conformance.runner.grading import CaseResult
from conformance.runner.rules import RuleInfo, rule_of
from harness.api import Implementation
from harness.implementations.registry import ImplError, Selection, resolve
from harness.lanes.pytest_lane import lane_ids, replayed
from impl.kernel_level import DEFAULT, KernelLevel, parse_release
from impl.types import Family

RECORD_KEY = "lvsconf"
#: set by ``lvsconf run``: an empty selection is an error even without --lvs-report
REQUIRE_CASES_ENV = "LVSCONF_REQUIRE_CASES"
#: set by ``lvsconf run``: one progress line per finished case instead of pytest's letters
PROGRESS_ENV = "LVSCONF_PROGRESS"

#: what a declared divergence may raise: a failed conformance assertion, or this plugin's
#: "scenario did not conform" failure (pytest.fail)
DIVERGENCE_EXCEPTIONS = (AssertionError, pytest.fail.Exception)

_selection_key = pytest.StashKey[Selection]()
_session_key = pytest.StashKey["ConformanceSession"]()


# --------------------------------------------------------------------------- configuration


def pytest_configure(config: pytest.Config) -> None:
    # also declared in pyproject.toml; repeated here so an installed suite run from any
    # directory (no ini file) still knows its markers under --strict-markers
    config.addinivalue_line("markers", "kernel: needs kernel IPVS (runs in the kernel lane)")
    config.addinivalue_line("markers", "slow: long-running conformance case")
    session = ConformanceSession(config)
    config.stash[_session_key] = session
    config.pluginmanager.register(session, "lvsconf-conformance-session")
    report_dir = config.getoption("lvs_report", default=None)
    if report_dir:  # a run replaces the report directory: refuse a target it could harm, now
        try:
            lvs_report.check_target(Path(report_dir))
        except lvs_report.ReportError as exc:
            raise pytest.UsageError(f"--lvs-report: {exc}") from None
    names = config.getoption("impl", default=None)
    if names:  # an explicit --impl is validated at once: one clear line, not a traceback
        try:
            config.stash[_selection_key] = resolve(names)
        except ImplError as exc:
            raise pytest.UsageError(str(exc)) from None


def selection(config: pytest.Config) -> Selection:
    """The implementations of this run (default selection resolved on first use)."""
    if _selection_key not in config.stash:
        try:
            config.stash[_selection_key] = resolve(config.getoption("impl", default=None))
        except ImplError as exc:
            raise pytest.UsageError(str(exc)) from None
    return config.stash[_selection_key]


def _needs_kernel_ipvs(impl: Implementation) -> bool:
    return bool(getattr(impl, "needs_kernel_ipvs", impl.name == "kernel"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    info = rule_of(metafunc.function)
    if info is None or "case" not in metafunc.fixturenames:
        return
    params = []
    for impl in selection(metafunc.config).impls:
        # several --kernel lanes: one item per lane (``kernel@sid-ipv4``), else ``kernel-ipv4``
        lanes = lane_ids(metafunc.config) if _needs_kernel_ipvs(impl) else [None]
        for lane, family in itertools.product(lanes, info.families):
            marks: list[pytest.MarkDecorator] = []
            if _needs_kernel_ipvs(impl):
                marks.append(pytest.mark.kernel(lane=lane) if lane else pytest.mark.kernel)
            if info.slow:
                marks.append(pytest.mark.slow)
            reason = info.diverges.get(impl.name)
            if reason:
                # Only a conformance failure is the declared divergence: an implementation that
                # fails to start, or a harness error, must stay a failure, not pass as DIVERGES.
                marks.append(
                    pytest.mark.xfail(
                        strict=True, raises=DIVERGENCE_EXCEPTIONS, reason=f"diverges: {reason}"
                    )
                )
            name = f"{impl.name}@{lane}" if lane else impl.name
            params.append(
                pytest.param((impl.name, family), id=f"{name}-{family.label}", marks=marks)
            )
    metafunc.parametrize("case", params, indirect=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist (controller): tell each worker the distribution mode, which workers do not see."""
    node.workerinput[schedule.DIST_KEY] = node.config.getoption("dist", "no")


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> Generator[None, None, None]:
    """Under xdist's worksteal, start the longest cases first, one per worker
    (:mod:`conformance.runner.schedule`). Runs after every other implementation of this hook:
    after -k/-m deselection and after the kernel lanes put their replayed items first."""
    yield
    workers = schedule.xdist_workers(config)
    if workers <= 1 or not schedule.longest_first(workers):
        return  # one process, or few workers per CPU: collection order (see schedule)
    impls = {i.name: (i, level_for(i)) for i in selection(config).impls}

    def cost(item: pytest.Item) -> float:
        callspec = getattr(item, "callspec", None)
        params = callspec.params.get("case") if callspec is not None else None
        found = impls.get(params[0]) if isinstance(params, tuple) else None
        return 0.0 if found is None else schedule.planned_seconds(item, *found)

    fixed = next((n for n, item in enumerate(items) if not replayed(item)), len(items))
    items[:] = schedule.spread(items, cost, fixed=fixed, workers=workers)


# --------------------------------------------------------------------------- the case fixture


def running_level() -> KernelLevel:
    """The stable level of the running kernel (what the model must replicate for ``kernel``)."""
    try:
        return parse_release(Path("/proc/version").read_text())
    except (OSError, ValueError):
        pass
    try:
        return parse_release(platform.release())
    except ValueError:
        return DEFAULT


def kernel_label() -> str:
    """``uname -r`` plus the Debian stable level from /proc/version when it names one."""
    release = platform.release()
    try:
        level = parse_release(Path("/proc/version").read_text())
    except (OSError, ValueError):
        return release
    return f"{release} ({level.label})" if level.exact else release


def level_for(impl: Implementation) -> KernelLevel:
    """The kernel behaviour the model replicates for ``impl``."""
    level = getattr(impl, "level", None)
    if isinstance(level, KernelLevel):
        return level
    return running_level() if _needs_kernel_ipvs(impl) else DEFAULT


@dataclass(frozen=True, slots=True)
class CaseEnvironment:
    """Where a case runs: how it gets a fresh director, sends traffic, builds the model.

    The ``lvs_case_env`` fixture provides the real one (fresh_net, the traffic engine, the
    reference model); the runner's own tests override the fixture with in-process fakes."""

    net_provider: Callable[[], Any]
    traffic: TrafficFn | None = None
    model_factory: ModelFactory | None = None
    sleep: Callable[[float], None] | None = None


def renewing(get_net: Callable[[], Any]) -> Callable[[], Any]:
    """A net provider giving a fresh director to every scenario run of one case: the first
    run gets ``fresh_net`` as is (renewed by the fixture), later runs renew it again."""
    runs = 0

    def provider() -> Any:
        nonlocal runs
        net = get_net()
        if runs:
            net.renew_director()  # a second scenario in one case starts from empty IPVS state
        runs += 1
        return net

    return provider


@pytest.fixture
def lvs_case_env(request: pytest.FixtureRequest) -> CaseEnvironment:
    """Name: lvs_case_env. Scope: function. Depends on: fresh_net (lazily, on first run).

    The real environment: the session topology with a renewed director per scenario run."""
    return CaseEnvironment(net_provider=renewing(lambda: request.getfixturevalue("fresh_net")))


@pytest.fixture
def case(request: pytest.FixtureRequest, lvs_case_env: CaseEnvironment) -> Case:
    """Name: case. Scope: function. Depends on: lvs_case_env, kernel_features (only when the
    rule needs kernel features).

    One conformance case on one implementation x family (parametrised by this plugin)."""
    info: RuleInfo | None = rule_of(request.function)
    if info is None or not hasattr(request, "param"):
        raise pytest.UsageError(
            f"{request.node.nodeid}: the case fixture is for @rule conformance tests only; "
            "decorate the test with conformance.runner.rules.rule"
        )
    impl_name, family = request.param
    impl = next(i for i in selection(request.config).impls if i.name == impl_name)
    if info.needs:
        features = request.getfixturevalue("kernel_features")
        for need in info.needs:
            reason = features.missing(need)
            if reason:
                pytest.skip(f"needs kernel feature {need}: {reason}")
    env = lvs_case_env
    optional: dict[str, Any] = {
        k: v
        for k, v in (
            ("traffic", env.traffic),
            ("model_factory", env.model_factory),
            ("sleep", env.sleep),
        )
        if v is not None
    }
    return Case(
        rule_id=info.rule_id,
        impl=impl,
        family=Family(family),
        level=level_for(impl),
        net_provider=env.net_provider,
        **optional,
    )


# --------------------------------------------------------------------------- records


def _short(longrepr: object, limit: int = 4000) -> str:
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # skip: (path, lineno, reason)
        return str(longrepr[2]).removeprefix("Skipped: ")
    text = str(longrepr)
    return text if len(text) <= limit else text[: limit - 20] + "\n... (truncated)"


def _decide(item: pytest.Item, rep: pytest.TestReport, case_obj: Case | None) -> str | None:
    """The verdict of this report, None when the phase decides nothing (setup passed)."""
    if hasattr(rep, "wasxfail"):
        return "diverges" if rep.skipped else "fail"
    if rep.when == "setup":
        if rep.skipped:
            return "skip"
        return "error" if rep.failed else None
    if rep.when == "teardown":
        return "error" if rep.failed else None
    if rep.skipped:
        if case_obj is not None and case_obj.unsupported_reason is not None:
            return "unsupported"
        return "skip"
    if rep.failed:
        return "fail"
    result = case_obj.result if case_obj is not None else None
    assert result is not None
    return result.verdict


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
    """A passing case must have run a scenario, and every scenario it ran must conform.

    Checked inside the call phase, so a declared divergence (xfail strict) still applies. The
    message is the evidence; this hook's traceback would only hide it (pytrace=False)."""
    outcome = yield
    case_obj = pyfuncitem.funcargs.get("case")
    if isinstance(case_obj, Case):
        if not case_obj.results:
            pytest.fail(
                "case passed without running a scenario (never a vacuous green): "
                "call case.play(scenario) and check its result",
                pytrace=False,
            )
        bad = next((r for r in case_obj.results if r.verdict == "fail"), None)
        if bad is not None:
            pytest.fail(
                "scenario did not conform (the test did not assert it):\n" + bad.explain(),
                pytrace=False,
            )
    return outcome


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, Any]:
    rep: pytest.TestReport = yield
    info = rule_of(getattr(item, "function", None))
    if info is None or "case" not in getattr(item, "fixturenames", ()):
        return rep
    funcargs = getattr(item, "funcargs", {})
    case_obj = funcargs.get("case") if isinstance(funcargs.get("case"), Case) else None
    verdict = _decide(item, rep, case_obj)
    if verdict is None:
        return rep
    if rep.failed and case_obj is not None:
        attach_evidence(rep, case_obj.results, str(call.excinfo.value) if call.excinfo else "")
    callspec = getattr(item, "callspec", None)
    impl_name, family = callspec.params["case"] if callspec is not None else ("?", 0)
    record = build_record(info, item.nodeid, impl_name, family, verdict, rep, kernel_label())
    if case_obj is not None:  # the level the model replicated (lvsconf diff names its changes)
        record["model_level"] = case_obj.level.label
    if case_obj is not None and case_obj.result is not None:
        record.update(case_obj.result.to_record())
        record["verdict"] = verdict  # the pytest outcome wins (xfail, errors after the run)
        record["runs"] = len(case_obj.results)
    rep.user_properties.append((RECORD_KEY, record))
    return rep


EVIDENCE_SECTION = "lvsconf evidence"


def attach_evidence(rep: pytest.TestReport, results: Sequence[CaseResult], message: str) -> None:
    """Evidence once: a case's assertions state only their claim, and a failing case gets the
    evidence of every scenario it ran here (scenario as ipvsadm, flows, both template tables),
    shown under the failure and carried back from a VM lane with the report. Skipped for a
    scenario whose explanation the failure's ``message`` already carries (``assert_conforms``)."""
    for i, result in enumerate(results, 1):
        text = result.explain()
        if text in message:
            continue
        title = EVIDENCE_SECTION if len(results) == 1 else f"{EVIDENCE_SECTION}: run {i}"
        rep.sections.append((title, text))


def build_record(
    info: RuleInfo,
    nodeid: str,
    impl_name: str,
    family: int,
    verdict: str,
    rep: pytest.TestReport,
    kernel: str,
) -> dict[str, Any]:
    """The record of one case item (evidence fields are added by the caller when it ran)."""
    detail = (
        ""
        if verdict in ("exact", "equivalent")
        else _short(getattr(rep, "wasxfail", None) if verdict == "diverges" else rep.longrepr)
    )
    return {
        "rule": info.rule_id,
        "title": info.title,
        "source": info.source,
        "nodeid": nodeid,
        "implementation": impl_name,
        "kernel": kernel,
        "family": Family(family).label if family else "?",
        "verdict": verdict,
        "phase": rep.when,
        "duration": round(rep.duration, 4),
        "finished": time.time(),
        "detail": detail,
    }


def record_of(report: pytest.TestReport) -> dict[str, Any] | None:
    for key, value in getattr(report, "user_properties", ()):
        if key == RECORD_KEY and isinstance(value, dict):
            return value
    return None


VERDICT_WORDS = {
    "exact": ("passed", ".", "EXACT"),
    "equivalent": ("passed", ".", "EQUIVALENT"),
    "diverges": ("xfailed", "x", "DIVERGES"),
    "unsupported": ("skipped", "s", "UNSUPPORTED"),
    "skip": ("skipped", "s", "SKIPPED"),
    "fail": ("failed", "F", "FAIL"),
}


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(
    report: pytest.TestReport, config: pytest.Config
) -> tuple[str, str, str] | None:
    """Verdict words in verbose output (EXACT, EQUIVALENT, DIVERGES, ...), pytest's categories."""
    record = record_of(report)
    verdict = record.get("verdict") if record is not None else None
    if verdict is None or report.when != "call" and verdict not in ("skip", "unsupported"):
        return None  # setup/teardown errors keep pytest's own "error" category
    words = VERDICT_WORDS.get(verdict)
    if words is not None and os.environ.get(PROGRESS_ENV):
        return words[0], "", words[2]  # lvsconf run prints its own progress line per case
    return words


# --------------------------------------------------------------------------- the session


def _is_case(item: pytest.Item) -> bool:
    return rule_of(getattr(item, "function", None)) is not None and "case" in getattr(
        item, "fixturenames", ()
    )


def _counts(records: list[dict[str, Any]]) -> tuple[int, int, int]:
    passed = sum(r["verdict"] in ("exact", "equivalent", "diverges") for r in records)
    failed = sum(r["verdict"] in ("fail", "error") for r in records)
    skipped = sum(r["verdict"] in ("skip", "unsupported") for r in records)
    return passed, failed, skipped


def summary_line(records: list[dict[str, Any]]) -> str:
    """The last line of every run: ``N passed, N failed, N skipped``."""
    passed, failed, skipped = _counts(records)
    return f"{passed} passed, {failed} failed, {skipped} skipped"


def _meta(config: pytest.Config) -> dict[str, Any]:
    sel = config.stash.get(_selection_key, None)
    return {
        "implementations": list(sel.names) if sel else [],
        "left_out": [{"implementation": n, "reason": r} for n, r in sel.missing] if sel else [],
        "kernel_option": config.getoption("kernel", default=None),
        "host_kernel": kernel_label(),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class ConformanceSession:
    """Per-config state: collects records (also those xdist workers and the VM lane send back),
    checks the selection, prints the matrix and the last line, writes the report."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.records: dict[str, dict[str, Any]] = {}
        self.deselected_cases = 0
        #: nodeid -> (rule, implementation name, family) of every case item collected here
        self.cases: dict[str, tuple[RuleInfo, str, int]] = {}
        self.progress = bool(os.environ.get(PROGRESS_ENV))
        self.total: int | None = None
        self.done = 0

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    @pytest.hookimpl(tryfirst=True)  # before xdist serialises the report to the controller
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = record_of(report)
        if record is None:
            record = self._record_for_replayed(report)
        if record is None:
            return
        first = record["nodeid"] not in self.records
        self.records[record["nodeid"]] = record  # later phases (teardown error) win
        if self.progress and first and not self.is_worker:
            self.done += 1
            tr = self.config.pluginmanager.get_plugin("terminalreporter")
            if tr is not None:
                total = str(self.total) if self.total is not None else "?"
                tr.write_line(
                    f"[{self.done:>{len(total)}}/{total}] {record['rule']} "
                    f"[{_param_id(record)}] {record['verdict']} "
                    f"({record['duration']:.1f}s)"
                )

    def _record_for_replayed(self, report: pytest.TestReport) -> dict[str, Any] | None:
        """A case report that never went through makereport here (a kernel lane that could not
        run the item replays a bare failure): record it, so it counts and shows in the matrix."""
        known = self.cases.get(report.nodeid)
        if known is None or report.passed or report.nodeid in self.records:
            return None
        info, impl_name, family = known
        verdict = "skip" if report.skipped else ("fail" if report.when == "call" else "error")
        if hasattr(report, "wasxfail"):
            verdict = "diverges"
        lane = _lane_of(report) or self.config.getoption("kernel", default=None) or "auto"
        record = build_record(
            info, report.nodeid, impl_name, family, verdict, report, f"lane {lane}"
        )
        report.user_properties.append((RECORD_KEY, record))
        return record

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # with xdist the controller does not collect; every worker collects the same items
        self.total = len(ids)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected_cases += sum(1 for i in items if _is_case(i))

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            info = rule_of(getattr(item, "function", None))
            callspec = getattr(item, "callspec", None)
            if info is not None and callspec is not None and "case" in callspec.params:
                impl_name, family = callspec.params["case"]
                self.cases[item.nodeid] = (info, impl_name, int(family))
        self.total = sum(1 for i in items if _is_case(i))
        if self.total:
            return
        required = bool(self.config.getoption("lvs_report", default=None)) or bool(
            os.environ.get(REQUIRE_CASES_ENV)
        )
        if self.deselected_cases or required:
            raise pytest.UsageError(
                "no conformance case selected (never a vacuous green): check -k/-m/--impl and "
                "the paths given; list the cases with: pytest --collect-only -q conformance"
            )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        records = list(self.records.values())
        if not records or self.is_worker:
            return
        terminalreporter.write_sep("=", "lvsconf conformance matrix")
        for line in lvs_report.matrix_text(records).splitlines():
            terminalreporter.write_line(line)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Generator[None, Any, Any]:
        # Outermost wrapper: pytest's terminal reporter prints its stats line inside, so the
        # lines written here come after it and the summary is the last line of the run.
        result = yield
        records = list(self.records.values())
        if self.is_worker:
            return result
        out_dir = self.config.getoption("lvs_report", default=None)
        report_line = self._write_report(Path(out_dir), records) if out_dir else None
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if report_line:
            (tr.write_line if tr is not None else print)(report_line)
        if tr is not None and records:
            sel = self.config.stash.get(_selection_key, None)
            for name, reason in sel.missing if sel else ():
                tr.write_line(f"not run: {name} ({reason})")
            lanes = sorted({f"{r['implementation']}@{r['kernel']}" for r in records})
            tr.write_line(f"lanes: {', '.join(lanes)}")
            tr.write_line(summary_line(records))
        return result

    def _write_report(self, out_dir: Path, records: list[dict[str, Any]]) -> str:
        """Swap a new report in when the run has results (the replaced one is kept as
        DIR.prev); a run without any result leaves the previous report alone. Returns the
        line saying where the report is."""
        if not records:
            return f"lvsconf report: {lvs_report.kept_message(out_dir)}"
        replaced = lvs_report.has_report(out_dir)
        xml = self.config.getoption("xmlpath", default=None)  # ci/test: junit.xml in the report
        carry = (
            [Path(xml).name]
            if xml and Path(os.path.abspath(xml)).parent == Path(os.path.abspath(out_dir))
            else []
        )
        try:
            written = lvs_report.write(out_dir, records, meta=_meta(self.config), carry=carry)
        except (lvs_report.ReportError, OSError) as exc:
            return f"lvsconf report: not written ({exc})"
        kept = f" (previous: {lvs_report.previous(out_dir)})" if replaced else ""
        return f"lvsconf report: {written.index_html}{kept}"


def _param_id(record: dict[str, Any]) -> str:
    """``kernel@sid-ipv4`` from the record's node id (``implementation-family`` without one)."""
    head, sep, params = str(record.get("nodeid", "")).rpartition("[")
    return params.rstrip("]") if sep else f"{record['implementation']}-{record['family']}"


def _lane_of(report: pytest.TestReport) -> str | None:
    """The lane label in a kernel item's node id (``[kernel@sid-ipv4]`` -> ``sid``)."""
    _head, sep, params = report.nodeid.rpartition("[")
    name = params.rstrip("]").rpartition("-")[0] if sep else ""  # the family label is last
    return name.partition("@")[2] or None


def records(config: pytest.Config) -> list[dict[str, Any]]:
    """The records of this session so far (for ``lvsconf run`` and tests)."""
    return list(config.stash[_session_key].records.values())


__all__ = ["RECORD_KEY", "Unsupported", "case", "record_of", "records", "summary_line"]
