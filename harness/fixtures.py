"""pytest fixtures and hooks for namespaces: the run, the kernel features, topologies.

Layered like pyroute2's fixtures; each docstring states name, scope and dependencies::

    lvs_run (session) ── kernel_features (session)
        │
        ├── lvs_topology (session: one default Topology per xdist worker)
        │       └── fresh_net (function: lvs_topology with a renewed director)
        └── topology_spec (function) ── net (function: built, torn down after the test)
                                     └── make_net (function: factory, one Fwd per real server)

Only a session that uses the harness is touched: at the first use of ``lvs_run``, stale runs
(owner process gone) are swept, with one line if anything went, and SIGINT/SIGTERM become
KeyboardInterrupt, and while pytest tears fixtures down later ones are ignored with a notice
(:func:`harness.runs.install_interrupt_policy`). Other pytest sessions in the same
virtualenv load this plugin but see no sweep and no signal handler.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from harness import runs
from harness.features import KernelFeatures, probe
from harness.topology import Net, Topology, build
from impl.types import IPV4, IPV6, Family, Fwd

NEEDS_ROOT = "needs root (network namespaces)"


def _is_root() -> bool:
    return os.geteuid() == 0


def _require_root() -> None:
    if not _is_root():
        pytest.skip(NEEDS_ROOT)


_notice = {"fd": 0}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "topology(**kwargs): Topology keyword arguments for the topology_spec fixture"
    )
    # output capture is off here: keep the terminal's stderr for the cleanup notice, which a
    # signal handler may have to print while a test's output is being captured
    if not _notice["fd"]:  # once per process (pytester may configure many sessions)
        _notice["fd"] = os.dup(sys.stderr.fileno())
        runs.notice_to(_notice["fd"])


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    # pytest caught the interrupt; what follows (fixture teardown) must not be cut short
    runs.cleanup_started()


def _sweep_stale_runs() -> None:
    report = runs.sweep()
    if report.removed_anything:
        line = (
            f"lvsconf: swept stale runs {', '.join(report.removed_records)}: "
            f"{len(report.removed_namespaces)} namespaces, {len(report.killed)} processes\n"
        )
        # the terminal's stderr: a fixture's own output would be captured and dropped
        os.write(_notice["fd"] or sys.stderr.fileno(), line.encode())


@pytest.fixture(scope="session")
def lvs_run() -> Iterator[runs.Run]:
    """Name: lvs_run. Scope: session (one per xdist worker). Depends on: nothing.

    The run: a unique name prefix and an owner record; closing it removes what is left.
    Its first use in a session sweeps stale runs first."""
    _require_root()
    _sweep_stale_runs()
    run = runs.Run()
    try:
        yield run
    finally:
        run.close()


@pytest.fixture(scope="session")
def kernel_features(lvs_run: runs.Run) -> KernelFeatures:
    """Name: kernel_features. Scope: session. Depends on: lvs_run.

    What the kernel offers (ip_vs, ipip, ip6tnl, sctp, veth, bridge, nftables, tun)."""
    return probe(lvs_run)


@pytest.fixture
def topology_spec(request: pytest.FixtureRequest) -> Topology:
    """Name: topology_spec. Scope: function. Depends on: nothing.

    The Topology to build: ``request.param`` under indirect parametrisation (a Topology or
    a dict of Topology kwargs), else ``@pytest.mark.topology(**kwargs)``, else Topology()."""
    param = getattr(request, "param", None)
    if isinstance(param, Topology):
        return param
    if isinstance(param, dict):
        return Topology(**param)
    marker = request.node.get_closest_marker("topology")
    if marker is not None:
        return Topology(*marker.args, **marker.kwargs)
    return Topology()


@pytest.fixture
def net(lvs_run: runs.Run, topology_spec: Topology) -> Iterator[Net]:
    """Name: net. Scope: function. Depends on: lvs_run, topology_spec.

    The topology built in fresh namespaces; torn down (LIFO) after the test."""
    with build(topology_spec, lvs_run) as built:
        yield built


@pytest.fixture
def make_net(lvs_run: runs.Run) -> Iterator[Callable[..., Net]]:
    """Name: make_net. Scope: function. Depends on: lvs_run.

    Factory: ``make_net(Fwd.DR, Fwd.NAT, Fwd.TUN, families=(IPV4,))`` builds a topology with
    one real server per given method; all are torn down after the test."""
    with contextlib.ExitStack() as stack:

        def _make(*methods: Fwd, families: tuple[Family, ...] = (IPV4, IPV6)) -> Net:
            return stack.enter_context(build(Topology.per_rs(*methods, families=families), lvs_run))

        yield _make


class _SessionTopology:
    def __init__(self, net: Net) -> None:
        self.net = net
        self.used = False


@pytest.fixture(scope="session")
def _lvs_session_topology(lvs_run: runs.Run) -> Iterator[_SessionTopology]:
    with build(Topology(), lvs_run) as built:
        yield _SessionTopology(built)


@pytest.fixture(scope="session")
def lvs_topology(_lvs_session_topology: _SessionTopology) -> Net:
    """Name: lvs_topology. Scope: session (one per xdist worker). Depends on: lvs_run.

    The default Topology (3 real servers, IPv4+IPv6), built once; shared, so tests that
    change the director should use fresh_net instead."""
    _lvs_session_topology.used = True
    return _lvs_session_topology.net


@pytest.fixture
def fresh_net(_lvs_session_topology: _SessionTopology) -> Net:
    """Name: fresh_net. Scope: function. Depends on: lvs_topology.

    The session topology with a renewed (empty) director namespace: fresh IPVS state at
    the cost of one namespace instead of a whole topology."""
    session = _lvs_session_topology
    if session.used:
        session.net.renew_director()
    session.used = True
    return session.net


def skip_unless(features: KernelFeatures, *names: str) -> None:
    """Skip the calling test with the reason of the first missing feature in ``names``."""
    for name in names:
        reason = features.missing(name)
        if reason:
            pytest.skip(reason)


__all__: list[Any] = [
    "NEEDS_ROOT",
    "fresh_net",
    "kernel_features",
    "lvs_run",
    "lvs_topology",
    "make_net",
    "net",
    "skip_unless",
    "topology_spec",
]
