"""nftlb (Debian's nftables load balancer daemon) as a third-party implementation under test.

``Nftlb().install(net, scenario)`` starts ``nftlb`` in the foreground inside the director
namespace (its nftables tables must land in that namespace's ruleset only), with the REST API on
127.0.0.1 of that namespace and a random key, waits (bounded) until the API answers, and posts
one farm per scenario service. The harness talks to the API over a TCP socket opened inside the
namespace (http.client, no curl). On exit the daemon gets SIGTERM (then SIGKILL) and its tables
are deleted; it also dies with the harness (PR_SET_PDEATHSIG) and is recorded in the run's owner
record so the sweep of a crashed run kills it.

Mapping (what nftlb can express of an IPVS service):

* ``proto vip:vport`` -> farm ``protocol`` + ``virtual-addr`` + ``virtual-ports`` (one port).
* persistent -> ``persistence: "srcip"``, ``persist-ttl`` = timeout. IPVS keys a per-vport
  service's template <proto, caddr, vaddr, vport>; an nftlb farm has its own session map and
  matches exactly one proto/vaddr/vport here, so the farm's ``srcip`` map already carries the
  proto, vaddr and vport parts of that key (``"srcip dstport"`` would only matter for a farm
  spanning several ports, i.e. IPVS port-zero/fwmark services, which are unsupported).
* rr -> ``rr`` (weights 1), wrr -> ``rr`` with weights (see SCHEDULERS); dests -> backends
  in IPVS list order (newest first), ``state up``, weight 0 -> ``state down``.
* NAT -> mode ``dnat`` (backend ``port`` = dest port); DR -> mode ``dsr`` (netdev ingress on the
  client link, destination MAC rewritten to the real server's, forwarded to the bridge). nftlb
  picks that ingress device by routing the VIP, and the topology's VIPs are local on lo, so farm
  changes are posted with the VIPs briefly routed out of the client link (vips_routed_out).

nftlb exposes sessions, not IPVS templates (no per-connection state, TTL refreshed by every
packet: src/nft.c ``ct mark != 0 update @persist-<farm>``), so ``templates()`` and
``connections()`` return None and cases are graded by equivalence (``exact = False``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import addresses, processes, runs
from harness.nft import NftError, nft
from impl.scenario import (
    AddDest,
    EditDest,
    EditService,
    Scenario,
    SetSysctl,
)
from impl.types import (
    IPV4,
    Connection,
    Dest,
    Fwd,
    IPAddress,
    Proto,
    ProtoTimeouts,
    Service,
    ServiceKey,
    Sysctls,
    Template,
    full_netmask,
)

if TYPE_CHECKING:
    from harness.topology import Net

API_HOST = "127.0.0.1"
API_PORT = 5555
READY_TIMEOUT = 15.0
HTTP_TIMEOUT = 10.0
MISSING = "nftlb not found: apt-get install nftlb"

#: scheduler name (ipvsadm) -> nftlb scheduler. Both are nftlb's "rr": it renders
#: ``numgen inc mod <sum of weights> map { 0-3 : a, 4-6 : b, ... }``, a deterministic walk in
#: which each backend takes weight consecutive picks, so every cycle has IPVS wrr's proportions.
#: nftlb's "weight" scheduler is ``numgen random`` (measured), which IPVS has no counterpart of.
#: For IPVS rr (weights ignored unless 0) every up backend gets weight 1.
SCHEDULERS: dict[str, str] = {"rr": "rr", "wrr": "rr"}
WEIGHTED: frozenset[str] = frozenset({"wrr"})
#: forwarding method -> nftlb farm mode
MODES: dict[Fwd, str] = {Fwd.NAT: "dnat", Fwd.DR: "dsr"}
PROTOCOLS: dict[Proto, str] = {Proto.TCP: "tcp", Proto.UDP: "udp", Proto.SCTP: "sctp"}
#: the tables nftlb creates (README "How it works"); removed after the daemon is gone
TABLES: tuple[str, ...] = ("ip nftlb", "ip6 nftlb", "netdev nftlb")
FTP_PORT = 21
IFA_F_NODAD = 0x02  # an IPv6 VIP put back on lo is usable at once


class NftlbError(RuntimeError):
    """nftlb is missing, did not start, or refused a request; one line naming the fix."""


# ---------------------------------------------------------------- what nftlb cannot express


def _service_reason(svc: Service) -> str | None:
    key = svc.key
    if key.fwmark:
        return f"fwmark service {key}: nftlb farms match addresses and ports, not marks"
    if key.vport == 0:
        return f"port-zero service {key}: an nftlb farm needs its virtual ports"
    if key.vport == FTP_PORT:
        return f"FTP service {key}: nftlb has no IPVS FTP fallback or FTP persistence key"
    if key.proto not in PROTOCOLS:
        return f"service {key}: protocol {key.proto.label} is not a farm protocol"
    if svc.netmask is not None and svc.netmask != full_netmask(key.family):
        return f"service {key}: persistence netmask/granularity (nftlb keys exact addresses)"
    if svc.ops:
        return f"service {key}: one-packet scheduling (nftlb has no OPS)"
    if svc.pe:
        return f"service {key}: persistence engine {svc.pe} (nftlb has no SIP Call-ID key)"
    if svc.scheduler not in SCHEDULERS:
        return (
            f"service {key}: scheduler {svc.scheduler} (nftlb maps only rr and wrr; its "
            "weight is random and hash/symhash are not IPVS schedulers)"
        )
    if svc.sched_flags:
        return f"service {key}: scheduler flags {svc.sched_flags!r}"
    return None


def _dest_reason(key: ServiceKey, dest: Dest) -> str | None:
    if dest.fwd not in MODES:
        return f"dest {dest.addr} of {key}: forwarding {dest.fwd.value} (nftlb does dnat and dsr)"
    if dest.u_threshold or dest.l_threshold:
        return f"dest {dest.addr} of {key}: connection thresholds"
    if dest.weight == 0 and dest.fwd is Fwd.NAT:
        # a "down" dnat backend leaves the dnat map while its clients' persist entries keep its
        # ct mark, so their packets are not translated at all (measured: answered locally)
        return (
            f"dest {dest.addr} of {key}: weight 0 on a NAT dest (nftlb has no quiescent "
            "dnat backend)"
        )
    return None


def unsupported_reason(scenario: Scenario) -> str | None:
    """One line naming the first thing of ``scenario`` nftlb cannot express, None if none."""
    if scenario.fwmark_rules:
        return "fwmark rules: nftlb farms match addresses and ports, not marks"
    if scenario.sysctls != Sysctls():
        return "IPVS sysctls other than the defaults (nftlb has no counterpart)"
    if scenario.timeouts != ProtoTimeouts():
        return "IPVS protocol timeouts other than the defaults (nftlb uses conntrack's)"
    fwd_of: dict[ServiceKey, set[Fwd]] = {}
    for config in scenario.services:
        reason = _service_reason(config.service)
        if reason:
            return reason
        fwd_of[config.service.key] = set()
        for dest in config.dests:
            reason = _dest_reason(config.service.key, dest)
            if reason:
                return reason
            fwd_of[config.service.key].add(dest.fwd)
    for step in scenario.steps:
        if isinstance(step, EditService):
            return "EditService: nftlb farms are not edited in place like ipvsadm -E"
        if isinstance(step, SetSysctl):
            return f"sysctl {step.name}: IPVS sysctls have no nftlb counterpart"
        if isinstance(step, (AddDest, EditDest)):
            reason = _dest_reason(step.key, step.dest)
            if reason:
                return reason
            fwd_of.setdefault(step.key, set()).add(step.dest.fwd)
    for key, methods in fwd_of.items():
        if len(methods) > 1:
            return (
                f"service {key} mixes forwarding methods "
                f"({', '.join(sorted(m.value for m in methods))}); an nftlb farm has one mode"
            )
    return None


# ---------------------------------------------------------------- farm mapping (pure)


def farm_name(index: int) -> str:
    """Farm names end up in nft object names (``persist-<farm>``): short and plain."""
    return f"lvs{index}"


def backend_name(dest_addr: IPAddress, port: int) -> str:
    """A backend name from the IPVS dest identity (address, port): edits find it again."""
    return f"b{int(dest_addr):x}p{port}"


class Links:
    """The director's link facts a DSR farm needs (read from the topology at install)."""

    def __init__(
        self, client_if: str, bridge: str, bridge_mac: str, rs_macs: Mapping[IPAddress, str]
    ) -> None:
        self.client_if = client_if
        self.bridge = bridge
        self.bridge_mac = bridge_mac
        self.rs_macs = dict(rs_macs)

    @classmethod
    def of(cls, net: Net) -> Links:
        n = len(net.rs)
        macs = {addresses.rip(f, i): net.rs_mac(i) for f in net.topology.families for i in range(n)}
        return cls(net.director_client_if, net.director_bridge, net.director_mac(), macs)


def backend_json(dest: Dest, links: Links, weighted: bool = True) -> dict[str, str]:
    """One nftlb backend for an IPVS dest (values are strings, as nftlb's API wants);
    ``weighted`` False (IPVS rr) sends weight 1, since nftlb's rr honours weights."""
    # nftlb refuses weight 0 ("must be >=1"). IPVS weight 0 means quiescent: no new clients,
    # existing ones stay. nftlb's "down" does that: the backend leaves the scheduler map while
    # the persist map still points clients at it (measured on dsr farms; on dnat farms it does
    # not, so unsupported_reason refuses weight 0 there).
    obj = {
        "name": backend_name(dest.addr, dest.port),
        "ip-addr": str(dest.addr),
        "weight": str(max(dest.weight, 1) if weighted else 1),
        "state": "up" if dest.weight > 0 else "down",
    }
    if dest.fwd is Fwd.NAT and dest.port:
        obj["port"] = str(dest.port)
    if dest.fwd is Fwd.DR:
        mac = links.rs_macs.get(dest.addr)
        if mac is None:
            raise NftlbError(
                f"dest {dest.addr}: not a real server of this topology, so its MAC "
                "(needed by an nftlb dsr backend) is unknown; use addresses.rip()"
            )
        obj["ether-addr"] = mac
    return obj


def farm_modes(scenario: Scenario) -> dict[ServiceKey, Fwd]:
    """Each service's forwarding method, from its dests or else the dests its steps add (one
    mode per farm: unsupported_reason refuses mixes); dnat when no dest ever appears."""
    modes: dict[ServiceKey, Fwd] = {}
    for config in scenario.services:
        if config.dests:
            modes[config.service.key] = config.dests[0].fwd
    for step in scenario.steps:
        if isinstance(step, (AddDest, EditDest)):
            modes.setdefault(step.key, step.dest.fwd)
    return {c.service.key: modes.get(c.service.key, Fwd.NAT) for c in scenario.services}


def farm_json(
    name: str,
    service: Service,
    dests: tuple[Dest, ...] | list[Dest],
    links: Links,
    fwd: Fwd | None = None,
) -> dict[str, Any]:
    """One nftlb farm for an IPVS service and its dests (see the module docstring)."""
    key = service.key
    reason = _service_reason(service)
    if reason:
        raise NftlbError(f"cannot map to an nftlb farm: {reason}")
    if fwd is None:
        fwd = dests[0].fwd if dests else Fwd.NAT
    farm: dict[str, Any] = {
        "name": name,
        "family": "ipv4" if key.family is IPV4 else "ipv6",
        "virtual-addr": str(key.vaddr),
        "virtual-ports": str(key.vport),
        "protocol": PROTOCOLS[key.proto],
        "mode": MODES[fwd],
        "scheduler": SCHEDULERS[service.scheduler],
        "state": "up",
    }
    if service.timeout is not None:
        farm["persistence"] = "srcip"
        farm["persist-ttl"] = str(service.timeout)
    if fwd is Fwd.DR:
        farm.update(
            {"iface": links.client_if, "oface": links.bridge, "ether-addr": links.bridge_mac}
        )
    # last: nftlb applies keys in document order, and a dsr backend validated before the
    # farm's oface/ether-addr are known stays in state config_error (never scheduled)
    # reversed: IPVS lists a service's dests newest first and rr walks that list; nftlb's rr
    # (numgen inc) walks backends in document order, so this keeps the two walks alike
    weighted = service.scheduler in WEIGHTED
    farm["backends"] = [backend_json(d, links, weighted) for d in reversed(dests)]
    return farm


# ---------------------------------------------------------------- the REST API


class _NetnsHTTPConnection(http.client.HTTPConnection):
    """An HTTPConnection whose socket is created inside a network namespace."""

    def __init__(self, netns: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.netns = netns

    def connect(self) -> None:
        with runs.enter_netns(self.netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class NftlbAPI:
    """``Key:``-authenticated JSON calls to one nftlb daemon inside a namespace."""

    def __init__(self, netns: str, key: str, host: str = API_HOST, port: int = API_PORT) -> None:
        self.netns, self.key, self.host, self.port = netns, key, host, port

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        conn = _NetnsHTTPConnection(self.netns, self.host, self.port, HTTP_TIMEOUT)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Key": self.key})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        text = raw.decode(errors="replace")
        try:
            reply: Any = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError:
            reply = {"raw": text}
        failed = isinstance(reply, dict) and reply.get("response") == "error"
        if resp.status >= 300 or failed:
            raise NftlbError(f"nftlb {method} {path} -> HTTP {resp.status}: {text.strip()[:200]}")
        return reply

    def post_farms(self, *farms: dict[str, Any]) -> None:
        self.call("POST", "/farms", {"farms": list(farms)})

    def sessions(self, farm: str) -> Any:
        return self.call("GET", f"/farms/{farm}/sessions")


# ---------------------------------------------------------------- the running director


@contextlib.contextmanager
def vips_routed_out(net: Net, vips: set[IPAddress]) -> Iterator[None]:
    """While nftlb renders DSR farms, make each VIP routed out of the client link.

    nftlb picks a DSR farm's ingress device by a route lookup of the virtual address
    (``net_get_local_ifidx_per_remote_host``); the topology's VIPs are local on lo, which gives
    ``lo`` and an ingress hook that never sees client packets. So for the duration of a farm
    change each VIP leaves lo and gets a /32 (/128) route via the client link; afterwards the
    VIP is local again (packets to ports no farm matches must reach the director's own stack,
    as with IPVS). No traffic flows during a farm change (scenario steps are sequential).
    """
    if not vips:
        yield
        return
    with net.director.ipr() as ipr:
        oif = ipr.link_lookup(ifname=net.director_client_if)[0]
        moved: list[IPAddress] = []
        try:
            for vip in sorted(vips, key=lambda a: (a.version, int(a))):
                plen = vip.max_prefixlen
                ipr.addr("del", index=1, address=str(vip), prefixlen=plen)
                moved.append(vip)
                ipr.route("add", dst=f"{vip}/{plen}", oif=oif, family=_af(vip))
            yield
        finally:
            for vip in moved:
                plen = vip.max_prefixlen
                with contextlib.suppress(Exception):  # the route may not have been added
                    ipr.route("del", dst=f"{vip}/{plen}", oif=oif, family=_af(vip))
                extra = {} if vip.version == 4 else {"flags": IFA_F_NODAD}
                ipr.addr("add", index=1, address=str(vip), prefixlen=plen, **extra)


def _af(addr: IPAddress) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


class NftlbHandle:
    """A running nftlb director (harness.api.DirectorHandle)."""

    def __init__(
        self,
        api: NftlbAPI,
        process: subprocess.Popen[bytes],
        net: Net,
        farms: dict[ServiceKey, str],
        dsr: set[ServiceKey],
        weighted: set[ServiceKey],
        log: Path,
    ) -> None:
        self.api = api
        self.process = process
        self.net = net
        self.links = Links.of(net)
        self.farms = farms
        self.dsr = dsr  # services whose farm is in dsr mode (changes need vips_routed_out)
        self.weighted = weighted  # services whose backends carry their IPVS weights (wrr)
        self.log = log

    def _change(self, key: ServiceKey, method: str, path: str, body: object | None) -> None:
        # every dsr VIP, not only this farm's: nftlb may re-validate all farms on a change
        vips = {k.vaddr for k in self.dsr if k.vaddr is not None} if key in self.dsr else set()
        with vips_routed_out(self.net, vips):
            self.api.call(method, path, body)

    @property
    def pid(self) -> int:
        return self.process.pid

    def now(self) -> float:
        # CLOCK_MONOTONIC is not namespaced: the harness reads the director's clock directly
        return time.monotonic()

    def _farm(self, key: ServiceKey) -> str:
        try:
            return self.farms[key]
        except KeyError:
            raise NftlbError(f"no nftlb farm for service {key}; add it in the scenario") from None

    def add_dest(self, key: ServiceKey, dest: Dest) -> None:
        backend = backend_json(dest, self.links, key in self.weighted)
        farm = {"name": self._farm(key), "backends": [backend]}
        self._change(key, "POST", "/farms", {"farms": [farm]})

    def edit_dest(self, key: ServiceKey, dest: Dest) -> None:
        # POSTing a backend with an existing name updates it (README "Add a new backend")
        self.add_dest(key, dest)

    def del_dest(self, key: ServiceKey, addr: IPAddress, port: int) -> None:
        path = f"/farms/{self._farm(key)}/backends/{backend_name(addr, port)}"
        self._change(key, "DELETE", path, None)

    def edit_service(self, service: Service) -> None:
        raise NftlbError("nftlb adapter: EditService is unsupported (see Nftlb.unsupported)")

    def set_sysctl(self, name: str, value: int) -> None:
        raise NftlbError(f"nftlb adapter: sysctl {name} has no nftlb counterpart")

    def templates(self) -> list[Template] | None:
        return None  # nftlb sessions are not IPVS templates

    def connections(self) -> list[Connection] | None:
        return None

    def sessions(self, key: ServiceKey) -> Any:
        """nftlb's own session list of the farm for ``key`` (evidence for reports)."""
        return self.api.sessions(self._farm(key))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Nftlb:
    """``--impl nftlb``: the nftlb daemon balancing in the director namespace."""

    name = "nftlb"
    exact = False

    def unsupported(self, scenario: Scenario) -> str | None:
        return unsupported_reason(scenario)

    @contextlib.contextmanager
    def install(self, net: Net, scenario: Scenario) -> Iterator[NftlbHandle]:
        farms = {c.service.key: farm_name(i) for i, c in enumerate(scenario.services)}
        modes = farm_modes(scenario)
        dsr = {key for key, fwd in modes.items() if fwd is Fwd.DR}
        with start(net.director.netns, run=net.run) as (api, proc, log):
            weighted = {c.service.key for c in scenario.services if c.service.scheduler in WEIGHTED}
            handle = NftlbHandle(api, proc, net, farms, dsr, weighted, log)
            if scenario.services:
                bodies = [
                    farm_json(
                        farms[c.service.key], c.service, c.dests, handle.links, modes[c.service.key]
                    )
                    for c in scenario.services
                ]
                vips = {k.vaddr for k in dsr if k.vaddr is not None}
                with vips_routed_out(net, vips):
                    api.post_farms(*bodies)
            yield handle


def _executable() -> str:
    exe = shutil.which("nftlb") or next(
        (p for p in ("/usr/sbin/nftlb", "/sbin/nftlb") if os.access(p, os.X_OK)), None
    )
    if exe is None:
        raise NftlbError(MISSING)
    return exe


def command(exe: str, key: str, host: str = API_HOST, port: int = API_PORT) -> list[str]:
    """The daemon's command line: foreground (so the pid is ours), API on host:port, logs to
    stderr (-L 2) at debug level (-l 7) so a refused farm leaves its reason in the log."""
    return [exe, "-k", key, "-H", host, "-P", str(port), "-L", "2", "-l", "7"]


@contextlib.contextmanager
def start(
    netns: str, run: runs.Run | None = None, timeout: float = READY_TIMEOUT, port: int = API_PORT
) -> Iterator[tuple[NftlbAPI, subprocess.Popen[bytes], Path]]:
    """Run nftlb in ``netns`` until the block exits; yields (api, process, log path)."""
    exe = _executable()
    key = secrets.token_hex(16)
    with contextlib.ExitStack() as stack:
        log_path = processes.workdir(stack, run, netns, "nftlb") / "log"
        log = stack.enter_context(log_path.open("wb"))
        stack.callback(_remove_tables, netns)  # after the daemon has stopped (LIFO)
        # its tables must land in the director namespace's ruleset, never the host's
        proc = stack.enter_context(
            processes.netns_process(command(exe, key, port=port), netns, run, log)
        )
        api = NftlbAPI(netns, key, port=port)
        _wait_ready(api, proc, log_path, timeout)
        yield api, proc, log_path


def _wait_ready(api: NftlbAPI, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    last = "no answer yet"
    while True:
        if proc.poll() is not None:
            raise NftlbError(
                f"nftlb exited with status {proc.returncode} before its API answered: "
                f"{processes.last_line(log)}"
            )
        try:
            api.call("GET", "/farms")
            return
        except (OSError, http.client.HTTPException, NftlbError) as exc:
            last = str(exc) or type(exc).__name__
        if time.monotonic() > deadline:
            raise NftlbError(
                f"nftlb (pid {proc.pid}) API not ready within {timeout:.0f}s "
                f"({last}); its log: {processes.last_line(log)}"
            )
        time.sleep(delay)  # polling interval of a bounded wait
        delay = min(delay * 2, 0.1)


def _remove_tables(netns: str) -> None:
    """Delete nftlb's tables (it may leave them, and SIGKILL certainly does). Declaring a
    table before deleting it makes the delete succeed whether or not it exists."""
    script = "".join(f"table {t}\ndelete table {t}\n" for t in TABLES)
    try:
        nft(netns, script)
    except NftError:
        if os.path.exists(runs.NETNS_DIR / netns):
            raise
        # the namespace is already gone, and its ruleset with it


def leftovers(netns: str) -> list[str]:
    """nftlb tables still present in ``netns`` (empty when clean)."""
    from harness.nft import nft_list

    text = nft_list(netns)
    return [t for t in TABLES if f"table {t} " in text or f"table {t}\n" in text]


__all__ = [
    "Nftlb",
    "NftlbHandle",
    "NftlbAPI",
    "NftlbError",
    "Links",
    "farm_json",
    "backend_json",
    "unsupported_reason",
    "start",
    "command",
    "leftovers",
    "MISSING",
]
