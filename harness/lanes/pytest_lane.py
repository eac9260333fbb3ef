"""The pytest side of kernel lanes (``--kernel``): run kernel-marked items where the lane says.

Several lanes (``--kernel a,b`` or repeated) give every conformance kernel case an item per lane
(``[kernel@<lane>-<family>]``, parametrised by the conformance plugin with the lane on the
``kernel`` marker); each lane boots its own guest, one after another, for its own items.

Host lane: items run here as usual (a host without IPVS fails them with one line).
VM lane: the host does not run kernel items itself. At the first one it boots ONE guest that
runs this same venv's pytest on exactly those node ids with ``--kernel host``; a recorder in the
guest (``--lvs-guest-results PATH``) writes one JSON line per phase report into the guest's
writable directory, and each host item then *reports the guest's reports as its own* (same
outcome, longrepr, duration, skip reason, wasxfail, user_properties; :mod:`guest_records`).
Under pytest-xdist the first worker that needs a lane's guest boots it for every item of that
lane under a lock keyed by xdist's testrunuid and the lane; the other workers wait and read the
same results file.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness import runs, settings
from harness.lanes import debian, guest_python, provision, vm
from harness.lanes import guest_workers as guest_workers_module
from harness.lanes.guest_records import (
    GuestRecorder,
    failed_records,
    finished,
    group_records,
    replay_report,
)
from harness.lanes.provision import Lane, LaneError

SLOWDOWN = "20"  # Python in a TCG guest is ~20x slower (docs/architecture.md §6.5)
KERNEL_MARK = "kernel"


# ---------------------------------------------------------------- host side: the guest command


def guest_pytest_args(config: pytest.Config, nodeids_file: Path, results: Path) -> list[str]:
    """pytest arguments for the guest: the same node ids and the options that matter."""
    # -p no:hypothesispytest (and no:xdist for one process): importing those plugins costs
    # 15-30 s under TCG (tests that use hypothesis still import it themselves).
    # LVSCONF_GUEST_WORKERS=N (default 4) runs the guest's pytest with N xdist workers: most
    # cases wait on kernel timers, so the waits overlap (docs/architecture.md §6, item 10).
    workers = guest_workers()
    args = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest"]
    if workers > 1:
        # each worker forked from the guest's zygote (harness/lanes/guest_workers.py)
        stub = f"{sys.executable} -S {guest_workers_module.STUB}"
        args += ["--tx", f"{workers}*popen//python={stub}", "--dist", "worksteal"]
    else:
        args += ["-p", "no:xdist"]
    args += [
        "-p",
        "harness.lanes.pytest_lane",
        "-v",
        "--kernel",
        "host",
        "--lvs-guest-results",
        str(results),
    ]
    inifile = config.inipath
    if inifile is not None:
        args += ["-c", str(inifile)]
    args += ["--rootdir", str(config.rootpath)]
    # no -m/-k: the node ids are exact, and a lane's -k (``-k sid``) means nothing in the guest
    opt = config.option
    impl = config.getoption("--impl", default=None)
    if impl:
        args += ["--impl", impl]
    timeout = getattr(opt, "timeout", None)
    if timeout:
        args += ["--timeout", str(float(timeout) * float(SLOWDOWN))]
    args.append(f"@{nodeids_file}")
    return args


def guest_workers() -> int:
    raw = os.environ.get("LVSCONF_GUEST_WORKERS", str(settings.GUEST_WORKERS))
    if not raw.isdigit() or int(raw) < 1:
        raise LaneError(f"LVSCONF_GUEST_WORKERS={raw!r} is not a positive integer; e.g. 2")
    return int(raw)


#: modules the guest loads before pytest starts: ip_vs (its sysctls exist only after), and what
#: the suite's probes and topologies would load on demand. On demand, every guest worker probed
#: while they loaded: 2.2 s per probe in an idle guest, 0.3 s once loaded (measured, 6.1).
#: A module the kernel lacks is skipped (modprobe -a goes on); the probes then say so.
GUEST_MODULES = ("ip_vs", "veth", "bridge", "ipip", "ip6_tunnel", "sctp", "nf_tables", "tun")


#: where the guest's zygote listens (a tmpfs of the guest; harness/lanes/guest_workers.py)
GUEST_ZYGOTE = "/run/lvsconf-zygote.sock"


def guest_command(python: str, pytest_args: list[str], prelude: str = "") -> str:
    """The guest's shell command: ``prelude`` (the guest Python in memory,
    :mod:`harness.lanes.guest_python`), load :data:`GUEST_MODULES`, start the zygote the
    workers are forked from (when there are workers), then pytest."""
    argv = " ".join(shlex.quote(a) for a in [python, "-m", "pytest", *pytest_args])
    modules = " ".join(GUEST_MODULES)
    steps = [prelude] if prelude else []
    steps.append(f"modprobe -q -a {modules}")
    if "--tx" in pytest_args:
        zygote = shlex.quote(GUEST_ZYGOTE)
        steps.append(f"export {guest_workers_module.SOCKET_ENV}={zygote}")
        # by path, not -m: importing the project's packages here would keep pytest from
        # rewriting them in the workers; -P: nor is the script's directory put on sys.path
        script = shlex.quote(str(Path(guest_workers_module.__file__)))
        steps.append(f"{{ {shlex.quote(python)} -P {script} {zygote} & }}")
    steps.append(f"exec {argv}")
    return "; ".join(steps)


class GuestEcho:
    """Which guest output lines to echo: all but the guest's FAILURES/ERRORS sections (each
    host item prints its own failure text, the guest's, once)."""

    def __init__(self) -> None:
        self.hiding = False

    def show(self, line: str) -> bool:
        if line.startswith("=") and line.endswith("="):
            title = line.strip("= ")
            self.hiding = title in ("FAILURES", "ERRORS")
        return not self.hiding


# ---------------------------------------------------------------- host side: lanes of a session


def lane_ids(config: Any) -> list[str | None]:
    """Node-id labels of this session's kernel lanes: ``[None]`` for one lane (ids stay
    ``kernel-ipv4``), else one readable label per ``--kernel`` spec (``kernel@sid-ipv4``)."""
    option = getattr(getattr(config, "option", None), "kernel", None)
    specs = provision.split_specs(option)
    if len(specs) < 2:
        return [None]
    labels: list[str | None] = []
    for spec in specs:
        label = lane_label(spec)
        while label in labels:
            label += "_"
        labels.append(label)
    return labels


def lane_label(spec: str) -> str:
    """``sid`` -> ``sid``; an image path -> its release (``vmlinuz-6.1.0-57-amd64`` ->
    ``6.1.0-57-amd64``, ``…/modules/7.2.13+deb14-amd64/vmlinuz`` -> ``7.2.13+deb14-amd64``)."""
    if "/" in spec:
        path = Path(spec)
        spec = path.parent.name if path.name == "vmlinuz" else path.name.removeprefix("vmlinuz-")
    return re.sub(r"[^A-Za-z0-9.+~_-]", "_", spec) or "lane"


def guest_nodeid(nodeid: str, label: str | None) -> str:
    """The id the guest (one lane, ``--kernel host``) gives a host item of lane ``label``."""
    if label is None:
        return nodeid
    head, sep, params = nodeid.rpartition("[")
    return head + sep + params.replace(f"@{label}-", "-", 1) if sep else nodeid


@dataclass
class LaneRun:
    """One kernel lane of the session: its spec, what it resolved to, its items and results."""

    index: int
    spec: str | None
    label: str | None  # in node ids; None when the session has one lane
    lane: Lane | None = None
    error: str | None = None  # the lane cannot start: every item of it errors with this
    nodeids: list[str] = field(default_factory=list)  # host node ids
    results: dict[str, list[dict[str, Any]]] | None = None  # by guest node id
    guest_error: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    release: str = ""

    @property
    def name(self) -> str:
        return self.label or self.spec or (self.lane.label() if self.lane else "default")


@dataclass
class LaneState:
    config: pytest.Config
    lanes: list[LaneRun] = field(default_factory=list)
    by_nodeid: dict[str, LaneRun] = field(default_factory=dict)

    def say(self, message: str, lane: LaneRun | None = None) -> None:
        """A progress line on the terminal, even while output is captured."""
        tag = f"[kernel lane {lane.name}]" if lane is not None else "[kernel lane]"
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        ctx = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
        with ctx:
            if tr is not None and not hasattr(self.config, "workerinput"):
                tr.write_line(f"{tag} {message}")
            else:
                print(f"{tag} {message}", file=sys.stderr, flush=True)


_STATE = pytest.StashKey[LaneState]()


def pytest_addoption(parser: pytest.Parser) -> None:
    # Registered early only in the guest (``-p harness.lanes.pytest_lane``); on the host this
    # module is registered after parsing, where the option is not needed.
    with contextlib.suppress(ValueError):
        parser.getgroup("lvsconf").addoption(
            "--lvs-guest-results",
            default=None,
            metavar="PATH",
            help="(used inside a kernel-lane guest) write each test report as a JSON line to PATH",
        )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STATE] = LaneState(config)
    results = config.getoption("--lvs-guest-results", default=None)
    # under xdist in the guest only the controller records (workers' reports reach it)
    if results and not hasattr(config, "workerinput"):
        config.pluginmanager.register(GuestRecorder(Path(results)), "lvsconf-guest-recorder")


def _state(config: pytest.Config) -> LaneState:
    return config.stash[_STATE]


def replayed(item: pytest.Item) -> bool:
    """Whether ``item`` is a VM-lane item: this process replays the guest's reports for it
    instead of running it (known after this plugin's collection hook)."""
    state = item.config.stash.get(_STATE, None)
    run = state.by_nodeid.get(item.nodeid) if state is not None else None
    return bool(run is not None and run.lane is not None and run.lane.is_vm)


def _item_label(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker(KERNEL_MARK)
    return marker.kwargs.get("lane") if marker is not None else None


@pytest.hookimpl(trylast=True)  # after -m/-k deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = _state(config)
    kernel_items = [i for i in items if i.get_closest_marker(KERNEL_MARK)]
    if not kernel_items:
        return
    specs: list[str | None] = list(provision.split_specs(config.getoption("--kernel", None)))
    specs = specs or [None]
    labels = lane_ids(config)
    for index, spec in enumerate(specs):
        run = LaneRun(index, spec, labels[index] if len(specs) > 1 else None)
        try:
            run.lane = provision.resolve_lane(spec)
            if run.lane.is_vm and run.lane.version is not None:
                run.release = provision.check_name(run.lane.version)  # unknown name: now
        except LaneError as exc:
            # bad input for the only lane: one line, exit 2; with several lanes, only this
            # lane's items error (the others still run) unless the spelling itself is wrong
            if len(specs) == 1 or not debian.is_name(str(spec)) and "/" not in str(spec):
                raise pytest.UsageError(str(exc)) from None
            run.error = str(exc)
        else:
            if not run.lane.is_vm and not provision.host_has_ipvs():
                from harness.implementations.kernel import KernelLacksIPVS, ensure_ip_vs  # noqa: PLC0415

                try:
                    ensure_ip_vs()
                except KernelLacksIPVS as exc:
                    run.error = f"KernelLacksIPVS: {exc}"
        state.lanes.append(run)
    by_label = {run.label: run for run in state.lanes}
    for item in kernel_items:
        run = by_label.get(_item_label(item), state.lanes[0])  # unlabelled: the first lane
        run.nodeids.append(item.nodeid)
        state.by_nodeid[item.nodeid] = run
    # VM-lane items first (stable): the worker that reaches the first one waits for the whole
    # guest, so it should reach it at once, while the other workers run every host item in the
    # meantime (xdist's worksteal hands out contiguous ranges and steals from their ends).
    in_vm = [i for i in items if replayed(i)]
    if in_vm:
        chosen = {id(i) for i in in_vm}
        items[:] = in_vm + [i for i in items if id(i) not in chosen]


def pytest_report_header(config: pytest.Config) -> str | None:
    lanes = provision.split_specs(config.getoption("--kernel", default=None))
    shown = ", ".join(lanes) if lanes else "default (host if it has IPVS, else auto)"
    return f"lvsconf kernel lane{'s' if len(lanes) > 1 else ''}: {shown}"


def pytest_runtest_setup(item: pytest.Item) -> None:
    run = _state(item.config).by_nodeid.get(item.nodeid)
    if run is not None and run.error and run.lane is not None and not run.lane.is_vm:
        pytest.fail(run.error, pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    state = _state(item.config)
    run = state.by_nodeid.get(item.nodeid)
    if run is None or (run.lane is not None and not run.lane.is_vm):
        return None  # not a kernel item, or the host lane: runs here
    if run.error is not None:
        records = failed_records(f"kernel lane {run.name}: {run.error}", when="setup")
    else:
        if run.results is None:
            # waiting for the VM lock and the whole guest run happen inside this first item's
            # protocol: pytest-timeout's per-case timer (lvsconf run --case-timeout) must not
            # cut them short (measured: 600 s spent waiting for another run's guest killed the
            # session); the guest run has its own bound (LVSCONF_GUEST_TIMEOUT)
            cancel = getattr(item.config.pluginmanager.hook, "pytest_timeout_cancel_timer", None)
            if cancel is not None:
                cancel(item=item)
            _obtain_results(state, run)
        assert run.results is not None
        records = run.results.get(guest_nodeid(item.nodeid, run.label))
        if records is None or not finished(records):
            why = run.guest_error or "the guest did not finish this case (see guest output above)"
            # no result at all: the lane never started (fetch, boot) -> an error, not a verdict
            records = failed_records(
                f"kernel lane ({run.name}): {why}", when="call" if run.results else "setup"
            )
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for rec in records:
        item.ihook.pytest_runtest_logreport(report=replay_report(item, rec))
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    # This item was never set up here, but the previous item left the collectors it shares
    # with it (package, module) set up; tear down what nextitem does not need, as pytest's own
    # runtestprotocol does, or the next local item finds a stale setup stack.
    item.session._setupstate.teardown_exact(nextitem)
    return True


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """One line per VM lane: what it booted, how many cases, how long (the wall time)."""
    state = _state(config)
    for run in state.lanes:
        if run.lane is None or not run.lane.is_vm:
            if run.error:
                terminalreporter.write_line(f"kernel lane {run.name}: not started: {run.error}")
            continue
        if run.error or run.guest_error:
            why = (run.error or run.guest_error or "").splitlines()[0]
            terminalreporter.write_line(f"kernel lane {run.name}: failed: {why}")
        elif "guest_seconds" in run.measurements:
            terminalreporter.write_line(
                f"kernel lane {run.name}: {run.release}, {len(run.nodeids)} case(s), guest "
                f"{run.measurements['guest_seconds']:.0f} s (boot to first case "
                f"{run.measurements.get('first_case', 0.0):.0f} s)"
            )


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workerinput"):
        return
    # xdist controller: remove the shared guest directories of this run's workers
    for d in runs.STATE_DIR.glob(f"guest-{os.getpid()}-*"):
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- booting once per lane


@contextlib.contextmanager
def _shared_dir(config: pytest.Config, run: LaneRun) -> Iterator[tuple[Path, bool]]:
    """(directory for this lane's guest, whether to remove it afterwards), under a lock.

    Under xdist, every worker maps a lane to ``<state dir>/guest-<controller pid>-<testrunuid>-
    <lane>`` and holds its flock while booting or reading, so exactly one guest runs per lane.
    """
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        d = vm.scratch_dir("lvsconf-guest-")
        yield d, True
        return
    d = runs.STATE_DIR / f"guest-{os.getppid()}-{workerinput['testrunuid']}-{run.index}"
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield d, False
    finally:
        os.close(fd)


def _obtain_results(state: LaneState, run: LaneRun) -> None:
    with _shared_dir(state.config, run) as (d, temporary):
        done = d / "done.json"
        try:
            if not done.exists():
                _run_guest(state, run, d)
            summary = json.loads(done.read_text()) if done.exists() else {}
            run.guest_error = summary.get("error")
            run.release = summary.get("release", run.release)
            run.measurements.update(summary.get("measurements", {}))
            results = d / "results.jsonl"
            lines = results.read_text().splitlines() if results.exists() else []
            run.results = group_records(lines)
        finally:
            if temporary:
                shutil.rmtree(d, ignore_errors=True)


def _run_guest(state: LaneState, lane_run: LaneRun, d: Path) -> None:
    config, lane = state.config, lane_run.lane
    assert lane is not None
    results = d / "results.jsonl"
    total = len(lane_run.nodeids)
    guest_ids = [guest_nodeid(n, lane_run.label) for n in lane_run.nodeids]
    (d / "nodeids.txt").write_text("\n".join(guest_ids) + "\n")
    error: str | None = None
    t0 = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=30)
    seen = {"first_output": 0.0, "first_case": 0.0, "done": 0}
    echo = GuestEcho()
    release = lane_run.release

    def say(message: str) -> None:
        state.say(message, lane_run)

    def on_line(line: str) -> None:
        now = time.monotonic() - t0
        if not seen["first_output"]:
            seen["first_output"] = now
        tail.append(line)
        if echo.show(line):
            say(f"guest| {line}")
        if results.exists():
            n = sum(
                1 for r in group_records(results.read_text().splitlines()).values() if finished(r)
            )
            if n and not seen["first_case"]:
                seen["first_case"] = now
            if n != seen["done"]:
                seen["done"] = n
                say(f"{n}/{total} cases")

    try:
        tree = lane.provide(say)
        release = tree.release
        prelude = ""
        if settings.current().guest_python == "memory":
            prelude = guest_python.prepare(config.rootpath, d).guest_prelude()
        run = vm.GuestRun(
            image=tree.image,
            command=guest_command(
                sys.executable, guest_pytest_args(config, d / "nodeids.txt", results), prelude
            ),
            cwd=config.rootpath,
            rwdir=d,
            memory=os.environ.get("LVSCONF_GUEST_MEM", settings.GUEST_MEMORY),
            env={
                "PYTHONDONTWRITEBYTECODE": "1",
                "LVSCONF_SLOWDOWN": SLOWDOWN,
                "LVSCONF_IN_GUEST": "1",
            },
            timeout=float(os.environ.get("LVSCONF_GUEST_TIMEOUT", 300 + 60 * total)),
        )
        vm.check_shell_safe(run, vm.shim_dir())  # before waiting for the lock
        with vm.vm_lock(say):
            accel = vm.choose_accel(tree.image, say)
            say(f"booting {tree.release} ({accel}) for {total} kernel case(s) …")
            res = vm.run_guest(dataclasses.replace(run, accel=accel), on_line)
        lane_run.measurements.update(
            guest_seconds=res.seconds,
            first_output=seen["first_output"],
            first_case=seen["first_case"],
        )
        say(
            f"guest exited with status {res.rc} after {res.seconds:.1f} s "
            f"(first output {seen['first_output']:.1f} s, first case "
            f"{seen['first_case']:.1f} s)"
        )
        if res.rc == 255 or not results.exists():
            error = (
                f"guest lost (vng status {res.rc}: kernel panic, or the guest died before "
                "writing results); console tail:\n"
                + res.console_tail
                + "\n--- guest output tail:\n"
                + "\n".join(tail)
            )
        elif res.rc not in (0, 1):
            error = f"guest pytest exited with status {res.rc}; guest output tail:\n" + "\n".join(
                tail
            )
    except vm.GuestError as exc:
        error = f"{exc}; console tail:\n{exc.console_tail}"
    except LaneError as exc:
        error = str(exc)
    summary = {"error": error, "release": release, "measurements": lane_run.measurements}
    (d / "done.json").write_text(json.dumps(summary))
