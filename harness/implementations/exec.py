"""Black-box implementations: ``--impl exec:MANIFEST`` runs any program as the director.

A small TOML manifest (README "Implementations under test", the black-box contract) names the
commands; the harness runs them inside the director namespace with the topology described in
the environment (:func:`environment`), hands them the scenario's state as ``ipvsadm-save`` text
(:func:`impl.ipvsadm.render_rules`) at install and after every edit, reads its templates back in
``/proc/net/ip_vs_conn`` format when it offers them, and grades a case ``unsupported`` when the
scenario needs a feature the manifest lists (names: :mod:`harness.implementations.needs`).

Every process it starts goes through :mod:`harness.processes`: it enters the namespace before
exec, dies with the harness, is recorded for the sweep and is stopped (SIGTERM, then SIGKILL)
when the case ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import addresses, processes, runs
from harness.implementations.desired import Desired
from harness.implementations.needs import check_names, first_unsupported
from impl import procfs
from impl.ipvsadm import render_rules
from impl.scenario import Scenario, ServiceConfig
from impl.schedulers.registry import SCHEDULERS
from impl.types import Connection, Dest, FwmarkRule, IPAddress, Service, ServiceKey, Template

if TYPE_CHECKING:
    from harness.topology import Net

PREFIX = "exec:"
PYTHON = "{python}"
DEFAULT_TIMEOUT = 15.0
FWMARK_VIA = ("nft", "file")
TOP_KEYS = {"name", "description", "exact", "unsupported", "schedulers", "start", "ready"}
TOP_KEYS |= {"apply", "fwmark", "templates", "stop"}
SECTION_KEYS = {
    "start": {"command"},
    "ready": {"command", "timeout"},
    "apply": {"command", "signal", "timeout"},
    "fwmark": {"via"},
    "templates": {"command"},
    "stop": {"command"},
}


class ManifestError(ValueError):
    """A manifest is invalid: one line per problem (``FILE: key: what (fix)``)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ExecError(RuntimeError):
    """A black-box command failed or did not answer in time; one line with its own output."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated manifest; commands are argv lists with paths resolved against ``root``."""

    path: Path
    name: str
    exact: bool
    unsupported: frozenset[str]
    apply_command: tuple[str, ...] | None
    apply_signal: signal.Signals | None
    apply_timeout: float
    start: tuple[str, ...] | None = None
    ready: tuple[str, ...] | None = None
    ready_timeout: float = DEFAULT_TIMEOUT
    fwmark_via: str | None = None
    templates: tuple[str, ...] | None = None
    stop: tuple[str, ...] | None = None
    description: str = ""

    @property
    def root(self) -> Path:
        return self.path.parent


# ---------------------------------------------------------------- manifest loading (pure)


class _Problems:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []

    def add(self, key: str, what: str, fix: str) -> None:
        self.lines.append(f"{self.path}: {key}: {what} ({fix})")


def _argv(p: _Problems, root: Path, key: str, value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        p.add(key, f"{value!r} is not a command", 'give an argv list, e.g. ["./lb", "apply"]')
        return None
    first = value[0]
    if first == PYTHON:  # lvsconf's own interpreter (glue written in Python, like nftlb's)
        first = sys.executable
    elif "/" in first and not os.path.isabs(first):
        first = str((root / first).resolve())
    return (first, *value[1:])


def _timeout(p: _Problems, key: str, value: object) -> float:
    if value is None:
        return DEFAULT_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 600:
        p.add(key, f"{value!r} is not a timeout", "give seconds, 0 < timeout <= 600")
        return DEFAULT_TIMEOUT
    return float(value)


def _signal(p: _Problems, value: object) -> signal.Signals | None:
    if value is None:
        return None
    name = str(value).upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return signal.Signals[name]
    except KeyError:
        p.add("apply.signal", f"{value!r} is not a signal name", 'use e.g. "HUP" or "USR1"')
        return None


def _section(p: _Problems, doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        p.add(name, f"must be a table, not {type(value).__name__}", f"write [{name}]")
        return {}
    for key in sorted(set(value) - SECTION_KEYS[name]):
        p.add(f"{name}.{key}", "unknown key", f"known: {', '.join(sorted(SECTION_KEYS[name]))}")
    return value


def _unsupported(p: _Problems, value: object) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        p.add("unsupported", f"{value!r} is not a list of names", 'e.g. ["fwmark", "sched:wlc"]')
        return frozenset()
    for line in check_names(value):
        p.add("unsupported", line, "see README, the black-box contract")
    return frozenset(value)


def _schedulers(p: _Problems, value: object) -> frozenset[str]:
    """``schedulers = [...]`` (the ones it has): every other scheduler becomes unsupported."""
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        p.add("schedulers", f"{value!r} is not a list of names", 'e.g. ["rr", "wrr"]')
        return frozenset()
    for line in check_names([f"sched:{v}" for v in value]):
        p.add("schedulers", line, "name IPVS schedulers")
    return frozenset(f"sched:{s}" for s in SCHEDULERS if s not in value)


def parse_manifest(text: str, path: Path) -> Manifest:
    """Validate manifest ``text`` (read from ``path``); :class:`ManifestError` lists problems."""
    p = _Problems(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError([f"{path}: not TOML: {exc} (fix the syntax)"]) from None
    for key in sorted(set(doc) - TOP_KEYS):
        p.add(key, "unknown key", f"known: {', '.join(sorted(TOP_KEYS))}")
    name = doc.get("name")
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        p.add("name", f"{name!r} is not a short name", 'give e.g. name = "mylb" (report column)')
        name = "?"
    exact = doc.get("exact", False)
    if not isinstance(exact, bool):
        p.add("exact", f"{exact!r} is not true/false", "true only if the model predicts it exactly")
    root = path.parent
    start, ready, apply_, fwmark, templates, stop = (
        _section(p, doc, s) for s in ("start", "ready", "apply", "fwmark", "templates", "stop")
    )
    apply_command = _argv(p, root, "apply.command", apply_.get("command"))
    apply_signal = _signal(p, apply_.get("signal"))
    start_command = _argv(p, root, "start.command", start.get("command"))
    if ("command" in apply_) == ("signal" in apply_):
        p.add("apply", "needs exactly one of command or signal", "pipe to a command or signal")
    if apply_signal is not None and start_command is None:
        p.add("apply.signal", "no process to signal", "add [start] command = [...]")
    via = fwmark.get("via")
    if via is not None and via not in FWMARK_VIA:
        p.add("fwmark.via", f"{via!r} is not a way in", f"use one of {', '.join(FWMARK_VIA)}")
    unsupported = _unsupported(p, doc.get("unsupported", []))
    if via is None:
        unsupported |= {"fwmark"}
    unsupported |= _schedulers(p, doc.get("schedulers"))
    manifest = Manifest(
        path=path,
        name=str(name),
        exact=bool(exact),
        unsupported=unsupported,
        apply_command=apply_command,
        apply_signal=apply_signal,
        apply_timeout=_timeout(p, "apply.timeout", apply_.get("timeout")),
        start=start_command,
        ready=_argv(p, root, "ready.command", ready.get("command")),
        ready_timeout=_timeout(p, "ready.timeout", ready.get("timeout")),
        fwmark_via=via,
        templates=_argv(p, root, "templates.command", templates.get("command")),
        stop=_argv(p, root, "stop.command", stop.get("command")),
        description=str(doc.get("description", "")),
    )
    if p.lines:
        raise ManifestError(p.lines)
    return manifest


def load_manifest(spec: str) -> Manifest:
    """The manifest named by ``spec`` (a path, with or without the ``exec:`` prefix)."""
    path = Path(spec.removeprefix(PREFIX)).expanduser().resolve()
    try:
        text = path.read_text()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ManifestError([f"{path}: cannot read the manifest: {why} (check the path)"]) from None
    return parse_manifest(text, path)


# ---------------------------------------------------------------- what the program is told


def rules_text(
    services: list[ServiceConfig] | tuple[ServiceConfig, ...], scenario: Scenario, generation: int
) -> str:
    """The state the program applies: a generation line, sysctl/timeout notes, ipvsadm-save."""
    head = [f"# lvsconf generation {generation}"]
    head += [f"# lvsconf sysctl {k}={v}" for k, v in scenario.sysctls.changed().items()]
    t = scenario.timeouts
    head.append(f"# lvsconf timeouts tcp={t.tcp} tcpfin={t.tcpfin} udp={t.udp}")
    return "\n".join(head) + "\n" + render_rules(tuple(services))


def fwmark_lines(rules: tuple[FwmarkRule, ...]) -> str:
    """``via = "file"``: one rule a line, first match wins (``mark family daddr proto dports``)."""
    out = []
    for r in rules:
        dports = "any" if r.dports is None else f"{r.dports[0]}-{r.dports[1]}"
        proto = "any" if r.proto is None else r.proto.label
        out.append(f"{r.mark} {r.family.label} {r.daddr} {proto} {dports}\n")
    return "".join(out)


def environment(net: Net, scratch: Path, manifest: Manifest) -> dict[str, str]:
    """What the program knows of the topology (README: the black-box contract)."""
    fams = net.topology.families
    n = len(net.rs)
    rips = [addresses.rip(f, i) for f in fams for i in range(n)]
    return dict(
        os.environ,
        LVSCONF_NETNS=net.director.netns,
        LVSCONF_SCRATCH=str(scratch),
        LVSCONF_RULES=str(scratch / "rules"),
        LVSCONF_APPLIED=str(scratch / "applied"),
        LVSCONF_FWMARKS=str(scratch / "fwmarks"),
        LVSCONF_MANIFEST_DIR=str(manifest.root),
        LVSCONF_FAMILIES=" ".join(f.label for f in fams),
        LVSCONF_CLIENT_IF=net.director_client_if,
        LVSCONF_SEGMENT_IF=net.director_segment_if,
        LVSCONF_BRIDGE=net.director_segment_if,  # its older name, kept for existing programs
        LVSCONF_DIRECTOR_MAC=net.director_mac(),
        LVSCONF_VIPS=" ".join(str(v) for f in fams for v in net.vips(f)),
        LVSCONF_RIPS=" ".join(str(r) for r in rips),
        LVSCONF_RS_MACS=" ".join(f"{r}={net.rs_mac(addresses.rs_index(r) or 0)}" for r in rips),
        LVSCONF_DIPS=" ".join(str(addresses.DIP[f]) for f in fams),
        LVSCONF_CLIENT_NETS=" ".join(str(addresses.CLIENT_POOL[f]) for f in fams),
    )


# ---------------------------------------------------------------- the running director


class ExecHandle:
    """A running black-box director (harness.api.DirectorHandle)."""

    def __init__(
        self,
        manifest: Manifest,
        scenario: Scenario,
        netns: str,
        env: dict[str, str],
        log: Path,
        process: subprocess.Popen[bytes] | None,
    ) -> None:
        self.manifest = manifest
        self.scenario = scenario
        self.netns = netns
        self.env = env
        self.log = log
        self.process = process
        self.desired = Desired(scenario)
        self.generation = 0

    # -- commands in the namespace
    def run(self, argv: tuple[str, ...], what: str, timeout: float, stdin: str = "") -> str:
        """Run one command in the director namespace; its stdout, or :class:`ExecError`."""
        try:
            out = subprocess.run(
                list(argv),
                input=stdin.encode(),
                capture_output=True,
                env=self.env,
                cwd=self.manifest.root,
                timeout=timeout,
                check=False,
                preexec_fn=runs.netns_preexec(self.netns),
            )
        except subprocess.TimeoutExpired:
            raise ExecError(f"{self.manifest.name} {what}: no answer within {timeout:g}s") from None
        except OSError as exc:
            raise ExecError(f"{self.manifest.name} {what}: cannot run {argv[0]}: {exc}") from None
        with self.log.open("ab") as log:
            log.write(out.stderr)
        if out.returncode != 0:
            lines = out.stderr.decode(errors="replace").strip().splitlines()
            last = lines[-1] if lines else "(no output)"
            raise ExecError(f"{self.manifest.name} {what} exited {out.returncode}: {last}")
        return out.stdout.decode(errors="replace")

    def check_alive(self, what: str) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ExecError(
                f"{self.manifest.name}: its process exited with status "
                f"{self.process.returncode} ({what}): {processes.last_line(self.log)}"
            )

    def wait_ready(self) -> None:
        """Poll the readiness command (bounded) until it exits 0."""
        if self.manifest.ready is None:
            self.check_alive("at start")
            return
        deadline = time.monotonic() + self.manifest.ready_timeout
        delay, last = 0.01, ""
        while True:
            self.check_alive("before it was ready")
            try:
                self.run(self.manifest.ready, "ready", self.manifest.ready_timeout)
                return
            except ExecError as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise ExecError(f"not ready within {self.manifest.ready_timeout:g}s: {last}")
            time.sleep(delay)  # polling interval of a bounded wait
            delay = min(delay * 2, 0.2)

    # -- applying the state
    def apply(self) -> None:
        """Hand the current state to the program and wait until it says it is in effect."""
        self.generation += 1
        text = rules_text(self.desired.configs(), self.scenario, self.generation)
        m = self.manifest
        if m.apply_command is not None:
            self.run(m.apply_command, "apply", m.apply_timeout, stdin=text)
            return
        rules, applied = Path(self.env["LVSCONF_RULES"]), Path(self.env["LVSCONF_APPLIED"])
        tmp = rules.with_suffix(".new")
        tmp.write_text(text)
        tmp.replace(rules)  # the program never reads a half-written file
        assert self.process is not None and m.apply_signal is not None
        self.check_alive("before apply")
        self.process.send_signal(m.apply_signal)
        deadline = time.monotonic() + m.apply_timeout
        while _read(applied) != str(self.generation):
            self.check_alive("while applying")
            if time.monotonic() > deadline:
                raise ExecError(
                    f"{m.name} did not confirm generation {self.generation} in "
                    f"{applied} within {m.apply_timeout:g}s: {processes.last_line(self.log)}"
                )
            time.sleep(0.02)  # polling interval of a bounded wait

    # -- DirectorHandle
    def now(self) -> float:
        return time.monotonic()  # CLOCK_MONOTONIC is not namespaced

    def add_dest(self, key: ServiceKey, dest: Dest) -> None:
        self.desired.add_dest(key, dest)
        self.apply()

    def edit_dest(self, key: ServiceKey, dest: Dest) -> None:
        self.desired.edit_dest(key, dest)
        self.apply()

    def del_dest(self, key: ServiceKey, addr: IPAddress, port: int) -> None:
        self.desired.del_dest(key, addr, port)
        self.apply()

    def edit_service(self, service: Service) -> None:
        self.desired.edit_service(service)
        self.apply()

    def set_sysctl(self, name: str, value: int) -> None:
        sysctls = replace(self.scenario.sysctls, **{name: value})
        self.scenario = replace(self.scenario, sysctls=sysctls)
        self.apply()

    def _table(self) -> tuple[list[Template], list[Connection]] | None:
        if self.manifest.templates is None:
            return None
        text = self.run(self.manifest.templates, "templates", self.manifest.apply_timeout)
        try:
            return procfs.parse_ip_vs_conn(text)
        except procfs.ProcParseError as exc:
            raise ExecError(f"{self.manifest.name} templates: {exc}") from None

    def templates(self) -> list[Template] | None:
        table = self._table()
        return None if table is None else table[0]

    def connections(self) -> list[Connection] | None:
        table = self._table()
        return None if table is None else table[1]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


class ExecImplementation:
    """``--impl exec:MANIFEST``: a program following the black-box contract."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.name = manifest.name
        self.exact = manifest.exact

    def unsupported(self, scenario: Scenario) -> str | None:
        return first_unsupported(scenario, self.manifest.unsupported)

    @contextlib.contextmanager
    def install(self, net: Net, scenario: Scenario) -> Iterator[ExecHandle]:
        m = self.manifest
        netns = net.director.netns
        tag = "exec-" + hashlib.sha1(m.name.encode()).hexdigest()[:6]
        with contextlib.ExitStack() as stack:
            scratch = processes.workdir(stack, net.run, netns, tag)
            env = environment(net, scratch, m)
            log_path = scratch / "log"
            log_path.touch()
            if scenario.fwmark_rules:
                _install_fwmarks(stack, netns, scenario.fwmark_rules, m, scratch)
            process = None
            if m.start is not None:
                log = stack.enter_context(log_path.open("ab"))
                process = stack.enter_context(
                    processes.netns_process(m.start, netns, net.run, log, env=env)
                )
            handle = ExecHandle(m, scenario, netns, env, log_path, process)
            if m.stop is not None:
                stack.callback(_stop, handle, m.stop)
            handle.wait_ready()
            handle.apply()
            yield handle


def _stop(handle: ExecHandle, argv: tuple[str, ...]) -> None:
    """The manifest's stop command (before the start process is stopped), unless the
    namespace is already gone with everything in it."""
    if os.path.exists(runs.NETNS_DIR / handle.netns):
        handle.run(argv, "stop", handle.manifest.apply_timeout)


def _install_fwmarks(
    stack: contextlib.ExitStack,
    netns: str,
    rules: tuple[FwmarkRule, ...],
    manifest: Manifest,
    scratch: Path,
) -> None:
    if manifest.fwmark_via == "file":
        (scratch / "fwmarks").write_text(fwmark_lines(rules))
        return
    from harness.implementations.kernel import NFT_TABLE, nft_fwmark_ruleset  # noqa: PLC0415
    from harness.nft import nft  # noqa: PLC0415

    nft(netns, nft_fwmark_ruleset(rules))
    stack.callback(
        _forgiving_nft, netns, f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
    )


def _forgiving_nft(netns: str, script: str) -> None:
    from harness.nft import NftError, nft  # noqa: PLC0415

    try:
        nft(netns, script)
    except NftError:
        if os.path.exists(runs.NETNS_DIR / netns):
            raise  # the namespace is still there: the table really could not be removed


def implementation(spec: str) -> ExecImplementation:
    """``exec:PATH`` to an implementation (raises :class:`ManifestError`)."""
    return ExecImplementation(load_manifest(spec))


__all__ = [
    "ExecImplementation",
    "ExecHandle",
    "ExecError",
    "Manifest",
    "ManifestError",
    "parse_manifest",
    "load_manifest",
    "rules_text",
    "fwmark_lines",
    "environment",
    "implementation",
]
