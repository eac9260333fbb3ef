"""nftlb (Debian's nftables load balancer daemon) through the black-box contract.

``--impl nftlb`` is the manifest next to this file (``nftlb.toml``) run by
:mod:`harness.implementations.exec`: the harness starts ``python -m
harness.implementations.nftlb serve`` in the director namespace, which execs ``nftlb`` in the
foreground with a random key (its nftables tables land in that namespace's ruleset only), polls
``ready`` (``GET /farms``), and pipes the scenario's state as ipvsadm-save text to ``apply`` at
install and after every edit. This module is that glue: ``apply`` turns the text into farms and
compares it with the state it applied before (kept in the scratch directory) to send only what
changed, as an operator would: ``POST /farms`` (a farm, or a backend by name: new or updated),
``DELETE /farms/<f>/backends/<b>``. What nftlb cannot express is declared in the manifest by
feature name (:mod:`harness.implementations.needs`) and graded ``unsupported``.

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
  client link, destination MAC rewritten to the real server's, forwarded out of the segment
  link). nftlb picks that ingress device by routing the VIP, and the topology's VIPs are local on
  lo, so farm changes are posted with the VIPs briefly routed out of the client link
  (vips_routed_out).

nftlb exposes sessions, not IPVS templates (no per-connection state, TTL refreshed by every
packet: src/nft.c ``ct mark != 0 update @persist-<farm>``), so the manifest has no templates
command and cases are graded by equivalence (``exact = false``).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from impl.ipvsadm import load_rules, render_rules, service_option
from impl.scenario import ServiceConfig
from impl.types import IPV4, Dest, Fwd, IPAddress, Proto, Service

MANIFEST = Path(__file__).with_name("nftlb.toml")
API_HOST = "127.0.0.1"
API_PORT = 5555
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
#: the tables nftlb creates (README "How it works"); removed when the case ends
TABLES: tuple[str, ...] = ("ip nftlb", "ip6 nftlb", "netdev nftlb")
IFA_F_NODAD = 0x02  # an IPv6 VIP put back on lo is usable at once


class NftlbError(RuntimeError):
    """nftlb is missing, did not start, or refused a request; one line naming the fix."""


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
        self, client_if: str, segment_if: str, director_mac: str, rs_macs: Mapping[IPAddress, str]
    ) -> None:
        self.client_if = client_if
        self.segment_if = segment_if
        self.director_mac = director_mac
        self.rs_macs = dict(rs_macs)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Links:
        """From the black-box contract's environment (LVSCONF_CLIENT_IF, ...)."""
        pairs = (item.split("=", 1) for item in env["LVSCONF_RS_MACS"].split())
        macs = {ipaddress.ip_address(rip): mac for rip, mac in pairs}
        return cls(
            env["LVSCONF_CLIENT_IF"], env["LVSCONF_SEGMENT_IF"], env["LVSCONF_DIRECTOR_MAC"], macs
        )


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


def farm_json(
    name: str,
    service: Service,
    dests: tuple[Dest, ...] | list[Dest],
    links: Links,
    fwd: Fwd | None = None,
) -> dict[str, Any]:
    """One nftlb farm for an IPVS service and its dests (see the module docstring)."""
    key = service.key
    if key.fwmark or key.proto not in PROTOCOLS or service.scheduler not in SCHEDULERS:
        raise NftlbError(f"cannot map {key} ({service.scheduler}) to an nftlb farm")
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
            {"iface": links.client_if, "oface": links.segment_if, "ether-addr": links.director_mac}
        )
    # last: nftlb applies keys in document order, and a dsr backend validated before the
    # farm's oface/ether-addr are known stays in state config_error (never scheduled)
    # reversed: IPVS lists a service's dests newest first and rr walks that list; nftlb's rr
    # (numgen inc) walks backends in document order, so this keeps the two walks alike
    weighted = service.scheduler in WEIGHTED
    farm["backends"] = [backend_json(d, links, weighted) for d in reversed(dests)]
    return farm


# ---------------------------------------------------------------- the REST API


class NftlbAPI:
    """``Key:``-authenticated JSON calls to the nftlb daemon of this namespace."""

    def __init__(self, key: str, host: str = API_HOST, port: int = API_PORT) -> None:
        self.key, self.host, self.port = key, host, port

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=HTTP_TIMEOUT)
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

    def sessions(self, farm: str) -> Any:
        return self.call("GET", f"/farms/{farm}/sessions")


# ---------------------------------------------------------------- the glue (runs in the namespace)


@contextlib.contextmanager
def vips_routed_out(client_if: str, vips: set[IPAddress]) -> Iterator[None]:
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
    from pyroute2 import IPRoute  # noqa: PLC0415 - only DSR farms need it

    with IPRoute() as ipr:
        oif = ipr.link_lookup(ifname=client_if)[0]
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


class Glue:
    """One ``apply``: the farms of the new state, given what was applied before."""

    def __init__(self, api: NftlbAPI, links: Links, scratch: Path) -> None:
        self.api, self.links = api, links
        self.state_path = scratch / "nftlb.state.json"
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.old = load_rules(state.get("rules", ""))
        #: service (ipvsadm -A spelling) -> [farm name, mode]
        self.farms: dict[str, list[str]] = state.get("farms", {})

    def save(self, configs: tuple[ServiceConfig, ...]) -> None:
        state = {"rules": render_rules(configs), "farms": self.farms}
        self.state_path.write_text(json.dumps(state))

    def _dsr_vips(self) -> set[IPAddress]:
        # every dsr VIP, not only the changed farm's: nftlb may re-validate all farms
        vips = set()
        for spelling, (_, mode) in self.farms.items():
            if mode == MODES[Fwd.DR]:
                vips.add(ipaddress.ip_address(spelling.split()[1].rsplit(":", 1)[0].strip("[]")))
        return vips

    def _change(self, method: str, path: str, body: object | None) -> None:
        with vips_routed_out(self.links.client_if, self._dsr_vips()):
            self.api.call(method, path, body)

    def _farm(self, config: ServiceConfig, name: str, fwd: Fwd) -> dict[str, Any]:
        self.farms[service_option(config.service.key)] = [name, MODES[fwd]]
        return farm_json(name, config.service, config.dests, self.links, fwd)

    def apply(self, configs: tuple[ServiceConfig, ...]) -> None:
        """New farms go in one POST (as at install before); then each farm's dest changes."""
        old = {c.service.key: c for c in self.old}
        new_farms = []
        for index, config in enumerate(configs):
            key = config.service.key
            fwd = config.dests[0].fwd if config.dests else Fwd.NAT
            before = old.get(key)
            if service_option(key) not in self.farms:
                new_farms.append(self._farm(config, farm_name(index), fwd))
                continue
            name, mode = self.farms[service_option(key)]
            if before is not None and not before.dests and config.dests and mode != MODES[fwd]:
                # a farm without backends has no sessions: re-create it in the dests' mode
                self._change("DELETE", f"/farms/{name}", None)
                self._change("POST", "/farms", {"farms": [self._farm(config, name, fwd)]})
                continue
            self._dests(name, config, before)
        if new_farms:
            self._change("POST", "/farms", {"farms": new_farms})
        self.save(configs)

    def _dests(self, name: str, config: ServiceConfig, before: ServiceConfig | None) -> None:
        was = {(d.addr, d.port): d for d in (before.dests if before else ())}
        now = {(d.addr, d.port): d for d in config.dests}
        for addr, port in was.keys() - now.keys():
            self._change("DELETE", f"/farms/{name}/backends/{backend_name(addr, port)}", None)
        weighted = config.service.scheduler in WEIGHTED
        for ident, dest in now.items():
            if was.get(ident) != dest:
                # POSTing a backend with an existing name updates it (README "Add a new backend")
                backend = backend_json(dest, self.links, weighted)
                self._change("POST", "/farms", {"farms": [{"name": name, "backends": [backend]}]})


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


def _key_file(env: Mapping[str, str]) -> Path:
    return Path(env["LVSCONF_SCRATCH"]) / "nftlb.key"


def _api(env: Mapping[str, str]) -> NftlbAPI:
    return NftlbAPI(_key_file(env).read_text().strip())


def remove_tables_script() -> str:
    """Delete nftlb's tables; declaring a table first makes the delete succeed either way."""
    return "".join(f"table {t}\ndelete table {t}\n" for t in TABLES)


def main(argv: list[str], env: Mapping[str, str] = os.environ) -> int:
    """``serve`` | ``ready`` | ``apply`` (rules on stdin) | ``sessions FARM`` (nftlb's own
    session list, as JSON: evidence) | ``stop``, inside the namespace."""
    what = argv[0] if argv else ""
    try:
        if what == "serve":
            exe = _executable()
            key = secrets.token_hex(16)
            _key_file(env).write_text(key)
            os.execv(exe, command(exe, key))  # the harness holds nftlb's own pid
        elif what == "ready":
            _api(env).call("GET", "/farms")
        elif what == "apply":
            configs = load_rules(sys.stdin.read(), "<lvsconf apply>")
            Glue(_api(env), Links.from_env(env), Path(env["LVSCONF_SCRATCH"])).apply(configs)
        elif what == "sessions" and len(argv) == 2:
            print(json.dumps(_api(env).sessions(argv[1])))
        elif what == "stop":
            subprocess.run(["nft", "-f", "-"], input=remove_tables_script(), text=True, check=True)
        else:
            raise NftlbError(f"unknown command {what!r}: use serve, ready, apply, sessions or stop")
    except (NftlbError, OSError, http.client.HTTPException, subprocess.CalledProcessError) as exc:
        print(f"nftlb glue {what}: {exc}", file=sys.stderr)
        return 1
    return 0


def Nftlb() -> Any:  # noqa: N802 - the registry names a factory as it would a class
    """``--impl nftlb``: the manifest next to this module, run through the contract."""
    from harness.implementations.exec import ExecImplementation, load_manifest  # noqa: PLC0415

    return ExecImplementation(load_manifest(str(MANIFEST)))


def leftovers(netns: str) -> list[str]:
    """nftlb tables still present in ``netns`` (empty when clean)."""
    from harness.nft import nft_list  # noqa: PLC0415

    text = nft_list(netns)
    return [t for t in TABLES if f"table {t} " in text or f"table {t}\n" in text]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


__all__ = [
    "Nftlb",
    "NftlbAPI",
    "NftlbError",
    "Links",
    "Glue",
    "farm_json",
    "backend_json",
    "command",
    "main",
    "leftovers",
    "MISSING",
    "MANIFEST",
]
