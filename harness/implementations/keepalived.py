"""keepalived (Debian's package, checker subsystem only) as an implementation under test.

``Keepalived().install(net, scenario)`` translates the scenario into a keepalived.conf of
``virtual_server`` blocks (:func:`impl.keepalived.render_conf`), starts ``keepalived -n -l -D -C``
inside the director namespace (no VRRP; pid files in the case's scratch dir), and waits (bounded)
until the namespace's kernel IPVS shows exactly the services and real servers asked for, read
back over generic netlink like ``--impl kernel``. Edits rewrite the file and reload keepalived
with SIGHUP, then wait for IPVS to reflect them the same way. So keepalived configures kernel
IPVS: it runs wherever kernel IPVS runs (the host when it has IPVS, else the VM lane).

What is not keepalived's job is done the way an operator would do it next to keepalived: IPVS
sysctls are written to ``/proc/sys/net/ipv4/vs`` and fwmarks are set by an nftables ruleset.
What keepalived.conf cannot express is graded ``unsupported`` (:func:`unsupported_reason`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from harness import processes, runs
from harness.implementations.desired import Desired
from harness.implementations.kernel import (
    NFT_TABLE,
    KernelConfigMismatch,
    KernelDirector,
    ensure_ip_vs,
    nft_fwmark_ruleset,
    parse_ip_vs_conn,
    read_ip_vs_conn,
    write_sysctl,
)
from harness.nft import NftError, nft
from impl.keepalived import as_programmed, render_conf, unexpressible
from impl.scenario import Scenario, ServiceConfig
from impl.types import Connection, Dest, IPAddress, Service, ServiceKey, Template

if TYPE_CHECKING:
    from harness.topology import Net

READY_TIMEOUT = 30.0
MISSING = "keepalived not found: apt-get install keepalived"


class KeepalivedError(RuntimeError):
    """keepalived is missing, exited, or IPVS did not reflect its configuration in time."""


def unsupported_reason(scenario: Scenario) -> str | None:
    """The first thing of ``scenario`` keepalived.conf cannot express, None if none."""
    return unexpressible(scenario)


def _executable() -> str:
    exe = shutil.which("keepalived") or next(
        (p for p in ("/usr/sbin/keepalived", "/sbin/keepalived") if os.access(p, os.X_OK)), None
    )
    if exe is None:
        raise KeepalivedError(MISSING)
    return exe


def command(exe: str, conf: Path, workdir: Path) -> list[str]:
    """No fork (the pid is ours), log to the console with detail, checker subsystem only (no
    VRRP), our own pid files (several instances may run, one per director namespace)."""
    return [
        exe,
        "-n",
        "-l",
        "-D",
        "-C",
        "-f",
        str(conf),
        "-p",
        str(workdir / "keepalived.pid"),
        "-c",
        str(workdir / "checkers.pid"),
    ]


class KeepalivedHandle:
    """A running keepalived director (harness.api.DirectorHandle)."""

    def __init__(
        self,
        scenario: Scenario,
        netns: str,
        conf: Path,
        log: Path,
        process: subprocess.Popen[bytes],
        ipvs: KernelDirector,
        timeout: float,
    ) -> None:
        self.scenario = scenario
        self.netns = netns
        self.conf = conf
        self.log = log
        self.process = process
        self.ipvs = ipvs
        self.timeout = timeout
        self.desired = Desired(scenario)

    @property
    def pid(self) -> int:
        return self.process.pid

    def reload(self) -> None:
        write_conf(self.conf, self.desired.configs(), self.scenario)
        self._alive("before reload")
        self.process.send_signal(signal.SIGHUP)
        self.wait_reflected()

    def _alive(self, when: str) -> None:
        if self.process.poll() is not None:
            raise KeepalivedError(
                f"keepalived exited with status {self.process.returncode} ({when}): "
                f"{processes.last_line(self.log)}"
            )

    def mismatch(self) -> str | None:
        """What IPVS in the namespace still lacks of the asked state (None: it all matches)."""
        self.ipvs.services = dict(self.desired.services)
        try:
            for key, service in self.desired.services.items():
                self.ipvs.check_service(service)
                dests = self.desired.dests[key]
                for dest in dests:
                    self.ipvs.check_dest(key, dest)
                listed = self.ipvs.dump_dests(key)
                if len(listed) != len(dests):
                    shown = ", ".join(f"{d['addr']}:{d['port']}" for d in listed)
                    return f"{key} lists {len(listed)} dests ({shown}), asked {len(dests)}"
        except KernelConfigMismatch as exc:
            return str(exc)
        return None

    def wait_reflected(self) -> None:
        """Bounded wait until kernel IPVS shows what keepalived.conf says."""
        deadline = time.monotonic() + self.timeout
        delay = 0.02
        while (why := self.mismatch()) is not None:
            self._alive("while configuring IPVS")
            if time.monotonic() > deadline:
                raise KeepalivedError(
                    f"IPVS did not reflect keepalived.conf within {self.timeout:g}s: {why}; "
                    f"keepalived's log: {processes.last_line(self.log)}"
                )
            time.sleep(delay)  # polling interval of a bounded wait
            delay = min(delay * 2, 0.25)

    # -- DirectorHandle
    def now(self) -> float:
        return time.monotonic()

    def add_dest(self, key: ServiceKey, dest: Dest) -> None:
        self.desired.add_dest(key, dest)
        self.reload()

    def edit_dest(self, key: ServiceKey, dest: Dest) -> None:
        self.desired.edit_dest(key, dest)
        self.reload()

    def del_dest(self, key: ServiceKey, addr: IPAddress, port: int) -> None:
        self.desired.del_dest(key, addr, port)
        self.reload()

    def edit_service(self, service: Service) -> None:
        self.desired.edit_service(service)
        self.reload()

    def set_sysctl(self, name: str, value: int) -> None:
        write_sysctl(self.netns, name, value)  # an operator's sysctl, not keepalived's

    def templates(self) -> list[Template] | None:
        return parse_ip_vs_conn(read_ip_vs_conn(self.netns))[0]

    def connections(self) -> list[Connection] | None:
        return parse_ip_vs_conn(read_ip_vs_conn(self.netns))[1]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Keepalived:
    """``--impl keepalived``: keepalived's checker process programming kernel IPVS."""

    name = "keepalived"
    exact = True
    needs_kernel_ipvs = True

    def unsupported(self, scenario: Scenario) -> str | None:
        return unsupported_reason(scenario)

    def programs(self, scenario: Scenario) -> Scenario:
        """The configuration keepalived really gives IPVS (its dest port corrections): the
        model predicts for that (conformance.runner.case)."""
        return as_programmed(scenario)

    @contextlib.contextmanager
    def install(self, net: Net, scenario: Scenario) -> Iterator[KeepalivedHandle]:
        with start(net.director.netns, scenario, run=net.run) as handle:
            yield handle


@contextlib.contextmanager
def start(
    netns: str, scenario: Scenario, run: runs.Run | None = None, timeout: float = READY_TIMEOUT
) -> Iterator[KeepalivedHandle]:
    """Run keepalived for ``scenario`` in ``netns`` until the block exits."""
    exe = _executable()
    ensure_ip_vs()
    with contextlib.ExitStack() as stack:
        workdir = processes.workdir(stack, run, netns, "keepalived")
        conf, log_path = workdir / "keepalived.conf", workdir / "log"
        for name, value in scenario.sysctls.changed().items():
            write_sysctl(netns, name, value)
        if scenario.fwmark_rules:
            nft(netns, nft_fwmark_ruleset(scenario.fwmark_rules))
            stack.callback(_drop_table, netns)
        ipvs = KernelDirector(netns)
        stack.callback(ipvs.close)
        log = stack.enter_context(log_path.open("wb"))
        write_conf(conf, scenario.services, scenario)
        proc = stack.enter_context(
            processes.netns_process(command(exe, conf, workdir), netns, run, log)
        )
        handle = KeepalivedHandle(scenario, netns, conf, log_path, proc, ipvs, timeout)
        handle.wait_reflected()
        yield handle


def write_conf(conf: Path, services: tuple[ServiceConfig, ...], scenario: Scenario) -> None:
    """keepalived.conf for ``services``, replaced atomically (a reload never reads half)."""
    tmp = conf.with_suffix(".new")
    tmp.write_text(render_conf(services, scenario.timeouts))
    tmp.replace(conf)


def _drop_table(netns: str) -> None:
    try:
        nft(netns, f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n")
    except NftError:
        if os.path.exists(runs.NETNS_DIR / netns):
            raise


__all__ = ["Keepalived", "KeepalivedHandle", "KeepalivedError", "command", "start", "MISSING"]
