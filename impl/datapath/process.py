"""The datapath process: TUN in, model decides, sockets out; a control socket on the side.

Started by the harness inside the director namespace (``python -m impl.datapath``). It prints
one JSON line ``{"ready": true, ...}`` on stdout once packets can flow, and exits 0 on
SIGTERM/SIGINT or the ``stop`` control op, undoing its routing changes (LIFO). It asks the
kernel to SIGKILL it if its parent dies (PR_SET_PDEATHSIG), so it can never outlive the harness.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import selectors
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from impl.datapath import plumbing
from impl.datapath.config import ConfigError, DatapathConfig
from impl.datapath.control import ControlServer
from impl.datapath.engine import Engine
from impl.datapath.forward import Senders
from impl.datapath.tun import open_tun, read_batch
from impl.kernel_level import KernelLevel
from impl.scenario import Scenario

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG(SIGKILL): the kernel kills us when the parent thread exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def load_model(spec: str, scenario: Scenario, level: KernelLevel) -> Any:
    """``module:attr`` → ``attr.from_scenario(scenario, level)``."""
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr or "Director")
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"config field 'model': cannot load {spec!r} ({exc}); "
            "use module:attr naming a class with from_scenario()"
        ) from None
    return factory.from_scenario(scenario, level)


class Datapath:
    """One running director: owns the model, the TUN, the sockets and the control server."""

    def __init__(self, config: DatapathConfig, control: Path) -> None:
        self.config = config
        self.control = control
        self.clock = time.monotonic
        self.model = load_model(config.model, config.scenario, config.kernel_level())
        self.stopping = False
        self.engine: Engine | None = None

    # -- control ops ---------------------------------------------------------------------
    def handlers(self) -> dict[str, Any]:
        m = self.model

        def templates(_: dict[str, Any]) -> dict[str, Any]:
            now = self.clock()
            tpl, conns = m.templates(now), m.connections(now)
            return {"now": now, "templates": tpl, "connections": conns, "text": _render(tpl, conns)}

        def stats(_: dict[str, Any]) -> dict[str, Any]:
            counters = dict(self.engine.stats) if self.engine else {}
            return {"now": self.clock(), "pid": os.getpid(), "counters": counters}

        def stop(_: dict[str, Any]) -> bool:
            self.stopping = True
            return True

        return {
            "now": lambda a: self.clock(),
            "templates": templates,
            "connections": lambda a: m.connections(self.clock()),
            "add_dest": lambda a: m.add_dest(a["key"], a["dest"], self.clock()),
            "edit_dest": lambda a: m.edit_dest(a["key"], a["dest"], self.clock()),
            "del_dest": lambda a: m.del_dest(a["key"], a["addr"], a["port"], self.clock()),
            "edit_service": lambda a: m.edit_service(a["service"], self.clock()),
            "set_sysctl": lambda a: m.set_sysctl(a["name"], a["value"]),
            "stats": stats,
            "stop": stop,
        }

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> int:
        config = self.config
        with contextlib.ExitStack() as stack:
            tun_fd = open_tun(config.tun_name)
            stack.callback(os.close, tun_fd)
            ipr = IPRoute()
            stack.callback(ipr.close)
            index = ipr.link_lookup(ifname=config.tun_name)[0]
            for field_name in ("client_if", "segment_if"):
                ifname = getattr(config, field_name)
                if not ipr.link_lookup(ifname=ifname):
                    raise ConfigError(
                        f"config field {field_name!r}: no interface {ifname} in "
                        "the director namespace; name the director's link there"
                    )
            _tell_local_addresses(self.model, ipr)
            stack.enter_context(plumbing.installed(ipr, config, index))
            wire = Senders(tun_fd, config.segment_if, config.rs_macs)
            stack.callback(wire.close)
            self.engine = engine = Engine(
                self.model,
                config.scenario,
                wire,
                config.targets(),
                self.clock,
                list(config.rs_nets) or None,
            )
            selector = selectors.DefaultSelector()
            stack.callback(selector.close)
            server = ControlServer(self.control, selector, self.handlers())
            stack.callback(server.close)
            wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            stack.callback(os.close, wake_r)
            stack.callback(os.close, wake_w)
            stack.callback(signal.set_wakeup_fd, signal.set_wakeup_fd(wake_w))
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, self._on_signal)
            selector.register(wake_r, selectors.EVENT_READ, lambda: _drain_pipe(wake_r))

            def on_tun() -> None:
                for data in read_batch(tun_fd):
                    engine.handle(data)

            selector.register(tun_fd, selectors.EVENT_READ, on_tun)
            ready = {
                "ready": True,
                "pid": os.getpid(),
                "now": self.clock(),
                "tun": config.tun_name,
                "control": str(self.control),
            }
            print(json.dumps(ready), flush=True)
            while not self.stopping:
                for key, _ in selector.select(timeout=1.0):
                    key.data()
        return 0

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True


def _tell_local_addresses(model: Any, ipr: IPRoute) -> None:
    """The model's cache_bypass needs to know the director's local addresses (if it asks)."""
    import ipaddress

    if hasattr(model, "local_addresses"):
        model.local_addresses = {
            ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr()
        }


def _drain_pipe(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 512):
            pass


def _render(templates: list[Any], connections: list[Any]) -> str | None:
    try:
        from impl.procfs import render_ip_vs_conn
    except ImportError:
        return None
    return str(render_ip_vs_conn(templates, connections))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m impl.datapath",
        description="lvsconf reference director: forwards packets for the VIPs with the model",
    )
    parser.add_argument("--config", required=True, type=Path, help="JSON written by the harness")
    parser.add_argument("--control", required=True, type=Path, help="unix socket path to serve")
    parser.add_argument(
        "--keep-with-parent",
        action="store_true",
        help="do not die with the parent process (manual runs only)",
    )
    args = parser.parse_args(argv)
    try:
        if not args.keep_with_parent:
            die_with_parent()
        config = DatapathConfig.load(args.config)
        return Datapath(config, args.control).run()
    except (ConfigError, OSError) as exc:
        print(f"lvsconf-datapath: {exc}", file=sys.stderr, flush=True)
        return 2
