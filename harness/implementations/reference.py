"""The reference implementation under test: the userspace datapath process in the director ns.

``ReferenceDatapath().install(net, scenario)`` writes the scenario and the director's link names
into a config file, starts ``python -m impl.datapath`` inside the director namespace, waits
(bounded) for its ``ready`` line, and yields a handle that talks to it over the control socket.
On exit — test passed, failed, or pytest interrupted — the process gets SIGTERM (then SIGKILL
after a grace period), its routing changes are removed, and its temp dir deleted. It also dies
by itself with its parent (PR_SET_PDEATHSIG), and it is recorded in the run's owner record so
the sweep of a crashed run kills it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import addresses, processes, runs, settings
from impl.datapath import plumbing
from impl.datapath.config import DatapathConfig
from impl.datapath.control import ControlClient
from impl.kernel_level import DEFAULT, KernelLevel
from impl.scenario import Scenario
from impl.types import Connection, Dest, IPAddress, Service, ServiceKey, Template

if TYPE_CHECKING:
    from harness.topology import Net

READY_TIMEOUT = 15.0
#: what ``python -m impl.datapath`` runs; forked from a pre-imported server by default where
#: that is safe (harness/processes.py, ``fork_is_safe``), else and with
#: ``LVSCONF_DATAPATH_START=exec`` a fresh interpreter per start
DATAPATH_MAIN = "impl.datapath.process:main"


class DatapathStartError(RuntimeError):
    """The datapath process did not become ready; the message carries its own error line."""


class ReferenceHandle:
    """A running reference director (harness.api.DirectorHandle) plus datapath extras."""

    def __init__(
        self,
        control: ControlClient,
        process: processes.ChildProcess,
        ready: dict[str, Any],
        log: Path,
    ) -> None:
        self.control = control
        self.process = process
        self.ready = ready
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def now(self) -> float:
        return float(self.control.call("now"))

    def add_dest(self, key: ServiceKey, dest: Dest) -> None:
        self.control.call("add_dest", key=key, dest=dest)

    def edit_dest(self, key: ServiceKey, dest: Dest) -> None:
        self.control.call("edit_dest", key=key, dest=dest)

    def del_dest(self, key: ServiceKey, addr: IPAddress, port: int) -> None:
        self.control.call("del_dest", key=key, addr=addr, port=port)

    def edit_service(self, service: Service) -> None:
        self.control.call("edit_service", service=service)

    def set_sysctl(self, name: str, value: int) -> None:
        self.control.call("set_sysctl", name=name, value=value)

    def templates(self) -> list[Template] | None:
        return list(self.control.call("templates")["templates"])

    def connections(self) -> list[Connection] | None:
        return list(self.control.call("connections"))

    def ip_vs_conn(self) -> str | None:
        """The template and connection table rendered like /proc/net/ip_vs_conn."""
        text = self.control.call("templates")["text"]
        return None if text is None else str(text)

    def stats(self) -> dict[str, int]:
        """What the datapath did, by action (dr, nat, tun, snat, local, unreachable, drop, ...)."""
        return dict(self.control.call("stats")["counters"])

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


class ReferenceDatapath:
    """``--impl reference``: the reference model forwarding real packets in the director."""

    name = "reference"
    exact = True

    def __init__(self, level: KernelLevel = DEFAULT, model: str = "impl.director:Director") -> None:
        self.level = level
        self.model = model

    def unsupported(self, scenario: Scenario) -> str | None:
        return None  # the model is the reference: everything it models, it forwards

    def config(self, net: Net, scenario: Scenario) -> DatapathConfig:
        fams = net.topology.families
        n = len(net.rs)
        return DatapathConfig(
            scenario=scenario,
            client_if=net.director_client_if,
            segment_if=net.director_segment_if,
            rs_macs={addresses.rip(f, i): net.rs_mac(i) for f in fams for i in range(n)},
            client_nets=tuple(addresses.CLIENT_POOL[f] for f in fams),
            rs_nets=tuple(
                ipaddress.ip_network(f"{addresses.DIP[f]}/{addresses.RS_PREFIX[f]}", strict=False)
                for f in fams
            ),
            level=self.level.text or self.level.label,
            model=self.model,
        )

    @contextlib.contextmanager
    def install(self, net: Net, scenario: Scenario) -> Iterator[ReferenceHandle]:
        with start(net.director.netns, self.config(net, scenario), run=net.run) as handle:
            yield handle


@contextlib.contextmanager
def start(
    netns: str, config: DatapathConfig, run: runs.Run | None = None, timeout: float = READY_TIMEOUT
) -> Iterator[ReferenceHandle]:
    """Run the datapath for ``config`` in namespace ``netns`` until the block exits."""
    with contextlib.ExitStack() as stack:
        workdir = processes.workdir(stack, run, netns, "dp")
        cfg_path, sock_path = workdir / "config.json", workdir / "control"
        log_path = workdir / "log"
        config.dump(cfg_path)
        stack.callback(_cleanup_netns, netns, config)  # after the process has stopped (LIFO)
        argv = ["--config", str(cfg_path), "--control", str(sock_path)]
        proc: processes.ChildProcess
        if settings.current().datapath_start == "fork" and processes.fork_is_safe():
            proc = stack.enter_context(
                processes.forked_in_netns(DATAPATH_MAIN, argv, netns, run, log_path)
            )
        else:
            log = stack.enter_context(log_path.open("wb"))
            root = Path(__file__).resolve().parents[2]
            pythonpath = (str(root), os.environ.get("PYTHONPATH", ""))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in pythonpath if p))
            proc = stack.enter_context(
                processes.netns_process(
                    [sys.executable, "-m", "impl.datapath", *argv],
                    netns,
                    run,
                    log,
                    stdout_pipe=True,
                    env=env,
                )
            )
        ready = _wait_ready(proc, log_path, timeout)
        control = ControlClient(sock_path)
        stack.callback(control.close)
        yield ReferenceHandle(control, proc, ready, log_path)


def _wait_ready(proc: processes.ChildProcess, log: Path, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DatapathStartError(
                f"datapath (pid {proc.pid}) not ready within {timeout:.0f}s; "
                f"its log: {processes.last_line(log)}"
            )
        readable, _, _ = select.select([proc.stdout], [], [], left)
        if readable:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                proc.wait(timeout=processes.STOP_GRACE)
                raise DatapathStartError(
                    f"datapath exited with status {proc.returncode} before "
                    f"it was ready: {processes.last_line(log)}"
                )
            buf += chunk
    line = buf.split(b"\n", 1)[0]
    ready: dict[str, Any] = json.loads(line)
    if not ready.get("ready"):
        raise DatapathStartError(f"datapath said {line!r} instead of ready")
    return ready


def _cleanup_netns(netns: str, config: DatapathConfig) -> None:
    """Safety net after the process is gone: remove its rules if it could not (SIGKILL)."""
    from pyroute2 import IPRoute

    try:
        with runs.enter_netns(netns):
            ipr = IPRoute()
    except runs.RunError:
        return  # the namespace is already gone, and everything in it
    with ipr:
        plumbing.remove(ipr, config)


def leftovers(netns: str, config: DatapathConfig) -> list[str]:
    """What the datapath left in ``netns`` (rules, TUN): empty when clean."""
    from pyroute2 import IPRoute

    with runs.enter_netns(netns):
        ipr = IPRoute()
    with ipr:
        return plumbing.leftovers(ipr, config)


__all__ = ["ReferenceDatapath", "ReferenceHandle", "DatapathStartError", "start", "leftovers"]
