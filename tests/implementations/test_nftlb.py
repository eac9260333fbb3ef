"""nftlb through the black-box contract: farm mapping (pure), the glue's requests against a
recording API, the manifest's unsupported declarations, and real farms in namespaces (skipped
with a reason when the nftlb binary is not installed)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness import addresses, runs
from harness.implementations import nftlb
from harness.implementations.exec import ExecHandle
from harness.implementations.nftlb import (
    MISSING,
    Glue,
    Links,
    Nftlb,
    NftlbError,
    backend_json,
    farm_json,
)
from harness.implementations.registry import DEFAULT_ORDER, resolve
from harness.topology import Net
from harness.traffic.engine import send_flows as send
from impl.ipvsadm import load_rules, render_rules
from impl.scenario import (
    AddDest,
    EditDest,
    EditService,
    Scenario,
    Send,
    ServiceConfig,
    SetSysctl,
)
from impl.types import (
    IPV4,
    IPV6,
    Dest,
    Flow,
    Fwd,
    FwmarkRule,
    Proto,
    ProtoTimeouts,
    Service,
    ServiceKey,
    Sysctls,
)

V4_KEY = ServiceKey(IPV4, Proto.TCP, addresses.vip(IPV4, 0), 80)
V6_KEY = ServiceKey(IPV6, Proto.UDP, addresses.vip(IPV6, 1), 53)
LINKS = Links(
    "d0",
    "br0",
    "02:00:00:00:00:01",
    {addresses.rip(f, i): f"02:00:00:00:01:{i:02x}" for f in (IPV4, IPV6) for i in range(3)},
)


def _dests(
    family: object = IPV4, fwd: Fwd = Fwd.DR, port: int = 0, weights: tuple[int, ...] = (1, 1, 1)
) -> tuple[Dest, ...]:
    return tuple(
        Dest(addresses.rip(family, i), port, weight=w, fwd=fwd)  # type: ignore[arg-type]
        for i, w in enumerate(weights)
    )


def _scenario(*configs: ServiceConfig, steps: tuple[object, ...] = (), **kw: object) -> Scenario:
    return Scenario("t", configs, steps, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- farm mapping


def test_persistent_dr_service_is_a_dsr_farm_with_srcip_persistence() -> None:
    farm = farm_json("lvs0", Service(V4_KEY, "rr", timeout=120), _dests(), LINKS)
    assert {
        k: farm[k]
        for k in (
            "family",
            "virtual-addr",
            "virtual-ports",
            "protocol",
            "mode",
            "scheduler",
            "persistence",
            "persist-ttl",
        )
    } == {
        "family": "ipv4",
        "virtual-addr": "198.19.0.1",
        "virtual-ports": "80",
        "protocol": "tcp",
        "mode": "dsr",
        "scheduler": "rr",
        "persistence": "srcip",
        "persist-ttl": "120",
    }
    assert (farm["iface"], farm["oface"], farm["ether-addr"]) == ("d0", "br0", "02:00:00:00:00:01")
    # backends newest first (the IPVS list order rr walks), each with its real server's MAC
    assert [b["ip-addr"] for b in farm["backends"]] == [
        "198.18.10.13",
        "198.18.10.12",
        "198.18.10.11",
    ]
    assert [b["ether-addr"] for b in farm["backends"]] == [
        "02:00:00:00:01:02",
        "02:00:00:00:01:01",
        "02:00:00:00:01:00",
    ]
    # nftlb applies keys in order: backends after oface/ether-addr, or they stay config_error
    assert list(farm)[-1] == "backends"


def test_nat_service_is_a_dnat_farm_with_backend_ports_and_no_interfaces() -> None:
    farm = farm_json("lvs1", Service(V4_KEY, "rr"), _dests(fwd=Fwd.NAT, port=8080), LINKS)
    assert farm["mode"] == "dnat"
    assert "persistence" not in farm and "iface" not in farm
    assert {b["port"] for b in farm["backends"]} == {"8080"}
    assert all("ether-addr" not in b for b in farm["backends"])


def test_ipv6_udp_service() -> None:
    farm = farm_json("lvs2", Service(V6_KEY, "rr", timeout=3), _dests(IPV6), LINKS)
    assert (farm["family"], farm["protocol"], farm["virtual-addr"]) == (
        "ipv6",
        "udp",
        "2001:db8:f::2",
    )


def test_wrr_carries_weights_and_rr_sends_weight_one() -> None:
    dests = _dests(weights=(4, 3, 2))
    wrr = farm_json("a", Service(V4_KEY, "wrr"), dests, LINKS)
    rr = farm_json("b", Service(V4_KEY, "rr"), dests, LINKS)
    # both are nftlb rr (numgen inc); only wrr's backends carry the IPVS weights
    assert wrr["scheduler"] == rr["scheduler"] == "rr"
    assert [b["weight"] for b in wrr["backends"]] == ["2", "3", "4"]
    assert [b["weight"] for b in rr["backends"]] == ["1", "1", "1"]


def test_weight_zero_is_a_down_backend_with_a_valid_weight() -> None:
    b = backend_json(Dest(addresses.rip(IPV4, 0), weight=0), LINKS)
    assert (b["state"], b["weight"]) == ("down", "1")  # nftlb refuses weight 0


def test_backend_names_follow_the_dest_identity() -> None:
    a = backend_json(Dest(addresses.rip(IPV4, 0), 80, fwd=Fwd.NAT), LINKS)["name"]
    b = backend_json(Dest(addresses.rip(IPV4, 0), 81, fwd=Fwd.NAT), LINKS)["name"]
    c = backend_json(Dest(addresses.rip(IPV4, 0), 80, weight=5, fwd=Fwd.NAT), LINKS)["name"]
    assert a != b and a == c


def test_dr_dest_outside_the_topology_is_refused() -> None:
    with pytest.raises(NftlbError, match="MAC"):
        backend_json(Dest(ipaddress.ip_address("198.18.12.1")), LINKS)


class RecordingAPI:
    """Stands in for the daemon: records every request the glue makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []

    def call(self, method: str, path: str, body: object | None = None) -> object:
        self.calls.append((method, path, body))
        return {}


@pytest.fixture
def glue_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., list[object]]:
    """Apply states in order with a fresh Glue each time (one process per apply, as the
    contract runs it); returns each apply's requests. VIP moves are recorded, not done."""
    moved: list[set[object]] = []

    @contextlib.contextmanager
    def fake_routed_out(client_if: str, vips: set[object]) -> Iterator[None]:
        moved.append(vips)
        yield

    monkeypatch.setattr(nftlb, "vips_routed_out", fake_routed_out)

    def apply(*states: tuple[ServiceConfig, ...]) -> list[object]:
        out: list[object] = []
        for state in states:
            api = RecordingAPI()
            # as the contract hands it over: ipvsadm-save text (DR dest ports become vport)
            Glue(api, LINKS, tmp_path).apply(load_rules(render_rules(state)))  # type: ignore[arg-type]
            out.append(api.calls)
        out.append(moved)
        return out

    return apply


def test_glue_posts_new_farms_at_once_then_only_what_changed(
    glue_calls: Callable[..., list[object]],
) -> None:
    dests = _dests()
    first = (ServiceConfig(Service(V4_KEY, "rr", timeout=60), dests),)
    second = (ServiceConfig(Service(V4_KEY, "rr", timeout=60), (dests[0], dests[2])),)
    third = (ServiceConfig(first[0].service, (dests[0], dests[2], replace(dests[1], weight=0))),)
    install, delete, add, moved = glue_calls(first, second, third)
    assert [(m, p) for m, p, _ in install] == [("POST", "/farms")]  # type: ignore[attr-defined]
    assert install[0][2]["farms"][0]["name"] == "lvs0"  # type: ignore[index]
    gone = nftlb.backend_name(dests[1].addr, 80)
    assert delete == [("DELETE", f"/farms/lvs0/backends/{gone}", None)]
    ((method, path, body),) = add  # type: ignore[misc]
    assert (method, path) == ("POST", "/farms")
    assert body["farms"][0]["backends"][0]["state"] == "down"
    assert moved == [{V4_KEY.vaddr}] * 3  # every change of a dsr farm moves its VIP


def test_glue_recreates_a_destless_farm_in_the_mode_of_its_first_dest(
    glue_calls: Callable[..., list[object]],
) -> None:
    empty = (ServiceConfig(Service(V4_KEY, "rr", timeout=5)),)
    filled = (ServiceConfig(Service(V4_KEY, "rr", timeout=5), _dests()[:1]),)
    install, refill, _ = glue_calls(empty, filled)
    assert install[0][2]["farms"][0]["mode"] == "dnat"  # type: ignore[index]
    assert [(m, p) for m, p, _ in refill] == [  # type: ignore[attr-defined]
        ("DELETE", "/farms/lvs0"),
        ("POST", "/farms"),
    ]
    assert refill[1][2]["farms"][0]["mode"] == "dsr"  # type: ignore[index]


# ---------------------------------------------------------------- unsupported


def _svc(**kw: object) -> ServiceConfig:
    key = kw.pop("key", V4_KEY)
    return ServiceConfig(Service(key, **kw), _dests())  # type: ignore[arg-type]


FWM = ServiceKey(IPV4, Proto.TCP, None, 0, fwmark=3)


@pytest.mark.parametrize(
    ("scenario", "needle"),
    [
        (_scenario(ServiceConfig(Service(FWM, timeout=5), _dests())), "fwmark: fwmark service"),
        (
            _scenario(
                _svc(), fwmark_rules=(FwmarkRule(1, IPV4, ipaddress.ip_network("198.19.0.1/32")),)
            ),
            "fwmark: 1 fwmark rule(s)",
        ),
        (
            _scenario(_svc(key=ServiceKey(IPV4, Proto.TCP, addresses.vip(IPV4, 0), 0), timeout=5)),
            "port-zero: ",
        ),
        (
            _scenario(_svc(key=ServiceKey(IPV4, Proto.TCP, addresses.vip(IPV4, 0), 21), timeout=5)),
            "ftp: FTP service",
        ),
        (_scenario(_svc(timeout=5, netmask=0xFFFFFF00)), "netmask: "),
        (_scenario(_svc(ops=True)), "ops: "),
        (_scenario(_svc(pe="sip", timeout=5)), "pe: "),
        (_scenario(_svc(scheduler="lc")), "sched:lc: "),
        (_scenario(_svc(), sysctls=Sysctls(sloppy_tcp=1)), "sysctls: "),
        (_scenario(_svc(), timeouts=ProtoTimeouts(tcpfin=1)), "timeouts: "),
        (_scenario(_svc(), steps=(EditService(Service(V4_KEY, "wrr")),)), "edit-service: "),
        (
            _scenario(_svc(), steps=(SetSysctl("expire_nodest_conn", 1),)),
            "sysctls: sysctl expire_nodest_conn",
        ),
        (
            _scenario(
                ServiceConfig(Service(V4_KEY), (Dest(addresses.rip(IPV4, 0), u_threshold=2),))
            ),
            "thresholds: ",
        ),
        (_scenario(ServiceConfig(Service(V4_KEY), _dests(fwd=Fwd.TUN))), "tun: "),
        (
            _scenario(
                ServiceConfig(Service(V4_KEY), _dests(fwd=Fwd.NAT)),
                steps=(AddDest(V4_KEY, Dest(addresses.rip(IPV4, 2), 1, fwd=Fwd.DR)),),
            ),
            "mixed-forwarding: ",
        ),
        (
            _scenario(
                ServiceConfig(Service(V4_KEY), _dests(fwd=Fwd.NAT)),
                steps=(EditDest(V4_KEY, Dest(addresses.rip(IPV4, 0), weight=0, fwd=Fwd.NAT)),),
            ),
            "weight-zero-nat: ",
        ),
    ],
)
def test_unsupported_names_the_feature_in_one_line(scenario: Scenario, needle: str) -> None:
    reason = Nftlb().unsupported(scenario)
    assert reason is not None and reason.startswith(needle) and "\n" not in reason


def test_what_nftlb_expresses_is_supported() -> None:
    sc = _scenario(
        ServiceConfig(Service(V4_KEY, "rr", timeout=60), _dests()),
        ServiceConfig(Service(V6_KEY, "wrr"), _dests(IPV6, Fwd.NAT, weights=(1, 0, 2))[:1]),
        steps=(
            AddDest(V4_KEY, Dest(addresses.rip(IPV4, 2), weight=0)),
            Send((Flow(Proto.TCP, addresses.cip(IPV4), 40000, addresses.vip(IPV4), 80),)),
        ),
    )
    assert Nftlb().unsupported(sc) is None


# ---------------------------------------------------------------- start-up and registry


def test_missing_binary_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert nftlb.main(["serve"], {"LVSCONF_SCRATCH": str(tmp_path)}) == 1
    assert capsys.readouterr().err == f"nftlb glue serve: {MISSING}\n"
    assert MISSING == "nftlb not found: apt-get install nftlb"


def test_the_builtin_is_the_manifest_through_the_contract() -> None:
    impl = Nftlb()
    assert (impl.name, impl.exact) == ("nftlb", False)
    m = impl.manifest
    assert m.start is not None and m.start[1:] == ("-m", "harness.implementations.nftlb", "serve")
    assert m.templates is None and m.stop is not None


def test_command_line_binds_the_api_to_loopback_with_the_key() -> None:
    cmd = nftlb.command("/usr/sbin/nftlb", "k3y")
    assert cmd == [
        "/usr/sbin/nftlb",
        "-k",
        "k3y",
        "-H",
        "127.0.0.1",
        "-P",
        "5555",
        "-L",
        "2",
        "-l",
        "7",
    ]
    assert "-d" not in cmd  # foreground: the pid we hold is the daemon's


def test_registry_resolves_nftlb_but_keeps_it_out_of_the_default() -> None:
    assert resolve("nftlb").names == ("nftlb",)
    assert "nftlb" not in DEFAULT_ORDER


# ---------------------------------------------------------------- real packets


@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.topology(real_servers=3, families=(IPV4,), fwd=Fwd.NAT)
def test_persistent_dnat_farm_keeps_each_client_on_one_real_server(net: Net) -> None:
    if shutil.which("nftlb") is None and not os.access("/usr/sbin/nftlb", os.X_OK):
        pytest.skip(MISSING)
    key = ServiceKey(IPV4, Proto.TCP, addresses.vip(IPV4, 0), 80)
    dests = tuple(Dest(addresses.rip(IPV4, i), 8080, fwd=Fwd.NAT) for i in range(3))
    scenario = _scenario(ServiceConfig(Service(key, "rr", timeout=60), dests))
    clients = [addresses.cip(IPV4, 0, h) for h in (1, 2, 3)]
    flows = [
        Flow(Proto.TCP, c, 41000 + 10 * n + j, key.vaddr, 80)  # type: ignore[arg-type]
        for j in range(3)
        for n, c in enumerate(clients)
    ]
    with Nftlb().install(net, scenario) as handle:
        pid = handle.process.pid  # type: ignore[union-attr]
        assert nftlb.leftovers(net.director.netns) == ["ip nftlb"]  # in the director's ruleset
        results = send(net, flows)
        sessions = _sessions(handle)["sessions"]
    servers: dict[object, set[int | None]] = defaultdict(set)
    for r in results:
        assert r.outcome.kind == "forward", f"{r} was not balanced"
        assert (str(r.outcome.addr), r.outcome.port) == (str(dests[r.outcome.rs or 0].addr), 8080)
        servers[r.flow.saddr].add(r.outcome.rs)
    assert all(len(s) == 1 for s in servers.values()), f"a client moved: {dict(servers)}"
    assert len({next(iter(s)) for s in servers.values()}) == 3, "rr spreads the three clients"
    assert sorted(s["client"] for s in sessions) == sorted(str(c) for c in clients)
    # stopped, tables gone, no longer in the run's owner record
    assert runs.proc_start_time(pid) is None
    assert nftlb.leftovers(net.director.netns) == []
    record = json.loads(net.run.record.read_text())
    assert pid not in [c["pid"] for c in record["children"]]


def _sessions(handle: ExecHandle, farm: str = "lvs0") -> Any:
    """nftlb's own session list of a farm (the glue's ``sessions`` command, in the namespace)."""
    argv = (sys.executable, "-m", "harness.implementations.nftlb", "sessions", farm)
    return json.loads(handle.run(argv, "sessions", 10))


def _lo_addresses(net: Net) -> list[str]:
    with net.director.ipr() as ipr:
        return sorted(a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=1))


@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.topology(real_servers=3, families=(IPV6,), fwd=Fwd.DR)
def test_dsr_farm_follows_dest_edits_and_leaves_the_vips_on_lo(net: Net) -> None:
    """DSR farms are rendered with each VIP briefly routed out of the client link
    (vips_routed_out); afterwards the VIPs are local on lo again, and a deleted backend's
    clients are rescheduled (nftlb drops its sessions: the ``revive`` divergence)."""
    if shutil.which("nftlb") is None and not os.access("/usr/sbin/nftlb", os.X_OK):
        pytest.skip(MISSING)
    key = ServiceKey(IPV6, Proto.TCP, addresses.vip(IPV6, 0), 80)
    dests = tuple(Dest(addresses.rip(IPV6, i), fwd=Fwd.DR) for i in range(3))
    scenario = _scenario(ServiceConfig(Service(key, "rr", timeout=60), dests))
    client = addresses.cip(IPV6, 0, 1)
    vaddr = key.vaddr
    assert vaddr is not None
    before = _lo_addresses(net)
    with Nftlb().install(net, scenario) as handle:
        assert _lo_addresses(net) == before
        first = send(
            net,
            [Flow(Proto.TCP, client, 42001, vaddr, 80), Flow(Proto.TCP, client, 42002, vaddr, 80)],
        )
        assert {r.outcome.kind for r in first} == {"forward"}
        rs = first[0].outcome.rs
        assert rs is not None and first[1].outcome.rs == rs
        assert str(first[0].outcome.addr) == str(vaddr)  # DSR: the packet still says VIP
        handle.del_dest(key, dests[rs].addr, dests[rs].port)
        assert _lo_addresses(net) == before
        assert _sessions(handle)["sessions"] == []
        after = send(net, [Flow(Proto.TCP, client, 42003, vaddr, 80)])[0]
        assert after.outcome.kind == "forward" and after.outcome.rs != rs
        # a port no farm serves reaches the director's own stack, as with IPVS
        other = send(net, [Flow(Proto.TCP, client, 42004, vaddr, 81)])[0]
        assert other.outcome.kind == "local"
    assert nftlb.leftovers(net.director.netns) == []
