"""Kernel IPVS as an implementation under test (installed into a topology's director namespace).

Services and dests go through the IPVS generic-netlink family with pyroute2, every attribute set
explicitly (its wrapper defaults are wlc, timeout 0, /32, DR) and read back after each change;
``set`` is used for edits (pyroute2's ``update`` verb *deletes*). What pyroute2 cannot express
uses the nearest correct tool inside the namespace: protocol timeouts with ``ipvsadm --set``
(IPVS_CMD_SET_CONFIG attributes are untyped in pyroute2), fwmarks with an nftables ruleset.
Templates and connections come from ``/proc/thread-self/net/ip_vs_conn`` read by a thread that
entered the namespace (``/proc/self/net`` follows the process's main thread).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from harness import runs
from harness.nft import nft
from impl import procfs
from impl.scenario import Scenario
from impl.types import (
    IPV4,
    Connection,
    Dest,
    Family,
    FwmarkRule,
    IPAddress,
    ProtoTimeouts,
    Service,
    ServiceKey,
    SvcFlag,
    Template,
)

if TYPE_CHECKING:
    from harness.topology import Net

T = TypeVar("T")

NFT_TABLE = "lvsconf_fwmark"


class KernelLacksIPVS(RuntimeError):
    """The kernel under the director has no ip_vs; one line with the fix."""


class KernelConfigMismatch(RuntimeError):
    """The kernel reports a service/dest different from what was asked."""


# ---------------------------------------------------------------- module loading


def ensure_ip_vs() -> None:
    """Load ip_vs (the vs sysctls exist only after it); raise :class:`KernelLacksIPVS`."""
    if _ip_vs_loaded():
        return
    exe = shutil.which("modprobe") or "/sbin/modprobe"
    try:
        out = subprocess.run(
            [exe, "ip_vs"], capture_output=True, text=True, timeout=60, check=False
        )
        why = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
    except FileNotFoundError:
        why = "modprobe not found (apt-get install kmod)"
    if not _ip_vs_loaded():
        why = why.removeprefix("modprobe: ")
        raise KernelLacksIPVS(
            f"this kernel has no ip_vs (modprobe ip_vs: {why}); "
            "run with --kernel auto to boot a Debian kernel in a VM"
        )


def _ip_vs_loaded() -> bool:
    return os.path.exists("/sys/module/ip_vs") or os.path.exists("/proc/net/ip_vs")


# ---------------------------------------------------------------- encoding (pure)


def encode_netmask(family: Family, mask: int) -> str:
    """The NETMASK attribute as pyroute2's ``ip4addr`` string.

    IPv4: the mask in network order (a dotted mask). IPv6: the kernel reads the same 4 bytes
    as a *host-order* u32 prefix length (docs/semantics.md §7), so pack it native-endian and let
    pyroute2 emit those bytes verbatim.
    """
    if family is IPV4:
        return socket.inet_ntoa(struct.pack("!I", mask))
    if not 1 <= mask <= 128:
        raise ValueError(f"IPv6 persistence prefix length {mask} is outside 1..128")
    return socket.inet_ntoa(struct.pack("=I", mask))


def decode_netmask(family: Family, value: str) -> int:
    raw = socket.inet_aton(value)
    return struct.unpack("!I" if family is IPV4 else "=I", raw)[0]  # type: ignore[no-any-return]


def service_attrs(svc: Service) -> dict[str, Any]:
    """Every IPVSService field, explicitly (no pyroute2 default is trusted)."""
    key = svc.key
    # netmask before addr: pyroute2's addr filter fills a /32 netmask when none is set yet
    attrs: dict[str, Any] = {
        "af": int(key.family),
        "netmask": encode_netmask(key.family, svc.mask),
        "sched_name": svc.scheduler,
        "flags": {"flags": int(svc.flags), "mask": 0xFFFFFFFF},
        "timeout": svc.timeout or 0,
    }
    if key.fwmark:
        attrs["fwmark"] = key.fwmark
    else:
        if key.vaddr is None:
            raise ValueError(f"service {key} has neither fwmark nor vaddr")
        attrs.update(protocol=int(key.proto), addr=str(key.vaddr), port=key.vport)
    if svc.pe:
        attrs["pe_name"] = svc.pe
    return attrs


def dest_attrs(dest: Dest) -> dict[str, Any]:
    """Every IPVSDest field, explicitly."""
    return {
        "addr_family": int(dest.family),
        "addr": str(dest.addr),
        "port": dest.port,
        "fwd_method": dest.fwd.kernel,
        "weight": dest.weight,
        "u_thresh": dest.u_threshold,
        "l_thresh": dest.l_threshold,
        "tun_type": 0,  # IPIP; GUE/GRE are not in the vocabulary
        "tun_port": 0,
        "tun_flags": 0,
    }


def nft_fwmark_ruleset(rules: tuple[FwmarkRule, ...] | list[FwmarkRule]) -> str:
    """A mangle-prerouting ruleset giving packets their mark; the first matching rule wins
    (``accept`` ends this chain, as :meth:`Scenario.mark` assumes)."""
    lines = [
        f"table inet {NFT_TABLE} {{",
        "  chain prerouting {",
        "    type filter hook prerouting priority mangle; policy accept;",
    ]
    for rule in rules:
        fam = "ip" if rule.family is IPV4 else "ip6"
        match = [
            f"meta nfproto {'ipv4' if rule.family is IPV4 else 'ipv6'}",
            f"{fam} daddr {rule.daddr}",
        ]
        if rule.proto is not None:
            match.append(f"meta l4proto {rule.proto.label}")
        elif rule.dports is not None:
            match.append("meta l4proto { tcp, udp, sctp }")
        if rule.dports is not None:
            lo, hi = rule.dports
            match.append(f"th dport {lo}" if lo == hi else f"th dport {lo}-{hi}")
        lines.append(f"    {' '.join(match)} meta mark set {rule.mark} accept")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- /proc/net/ip_vs_conn


def parse_ip_vs_conn(text: str) -> tuple[list[Template], list[Connection]]:
    """Templates and connections from ``/proc/net/ip_vs_conn`` text (the project's parser)."""
    return procfs.parse_ip_vs_conn(text)


# ---------------------------------------------------------------- namespace helpers


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread that entered ``netns`` (the caller's thread never moves)."""
    box: list[Any] = []

    def body() -> None:
        try:
            with runs.enter_netns(netns):
                box.append((True, fn()))
        except BaseException as exc:  # handed to the caller
            box.append((False, exc))

    t = threading.Thread(target=body, name=f"netns-{netns}")
    t.start()
    t.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def _sysctl_path(name: str) -> str:
    if name == "ip_unprivileged_port_start":
        return "/proc/sys/net/ipv4/ip_unprivileged_port_start"
    if "/" in name or not name.replace("_", "").isalnum():
        raise ValueError(f"not an IPVS sysctl name: {name!r}")
    return f"/proc/sys/net/ipv4/vs/{name}"


def write_sysctl(netns: str, name: str, value: int) -> None:
    path = _sysctl_path(name)

    def write() -> None:
        try:
            with open(path, "w") as f:
                f.write(f"{value}\n")
        except FileNotFoundError:
            raise KernelConfigMismatch(
                f"sysctl {path} does not exist in namespace {netns} (is ip_vs loaded?)"
            ) from None

    in_netns(netns, write)


#: /proc/net/ip_vs_conn is no snapshot: seq_file walks the connection hash table under RCU
#: (net/netfilter/ipvs/ip_vs_conn.c, ip_vs_conn_seq_next), so an entry moved to another bucket
#: during the walk can be listed twice; an invalidated template is moved, rehashed with
#: vport/dport 0xFFFF (ip_vs_check_template, up to 6.12). Seen in a TCG guest (6.1.0-57,
#: sip-invalidated-revive): one invalidated template listed twice, identical to the character,
#: and once in every later read. A listing with two identical lines is read again, a few times
#: at most; one that keeps them is taken as the kernel's state.
REREADS = 3


def read_ip_vs_conn(netns: str) -> str:
    def read() -> str:
        with open("/proc/thread-self/net/ip_vs_conn") as f:
            return f.read()

    text = in_netns(netns, read)
    for _ in range(REREADS):
        if not has_repeated_rows(text):
            break
        text = in_netns(netns, read)
    return text


def has_repeated_rows(text: str) -> bool:
    """Whether two lines of an ip_vs_conn listing are identical (see :data:`REREADS`)."""
    rows = text.splitlines()[1:]  # the first line is the header
    return len(set(rows)) != len(rows)


def set_proto_timeouts(netns: str, timeouts: ProtoTimeouts) -> None:
    """``ipvsadm --set tcp tcpfin udp`` in ``netns`` (pyroute2 types SET_CONFIG as raw hex)."""
    exe = shutil.which("ipvsadm")
    if exe is None:
        raise KernelConfigMismatch(
            "ipvsadm not found (needed for protocol timeouts): apt-get install ipvsadm"
        )
    out = subprocess.run(
        [exe, "--set", str(timeouts.tcp), str(timeouts.tcpfin), str(timeouts.udp)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=runs.netns_preexec(netns),
    )
    if out.returncode != 0:
        raise KernelConfigMismatch(f"ipvsadm --set in {netns} failed: {out.stderr.strip()}")


# ---------------------------------------------------------------- the director handle


def _mask_hashed(flags: int) -> int:
    return flags & ~int(SvcFlag.HASHED)


class KernelDirector:
    """A configured kernel IPVS director in one namespace (a DirectorHandle)."""

    def __init__(self, netns: str) -> None:
        from pyroute2 import IPVS  # noqa: PLC0415 - heavy import, only when used

        self.netns = netns
        # The socket is opened by this thread while inside the namespace and stays bound to it.
        # (IPVS(netns=...) forks a helper per socket; under TCG and load that took tens of
        # seconds with retries.) The first dump binds the generic-netlink family there too.
        with runs.enter_netns(netns):
            self.ipvs = IPVS()
            try:
                self.ipvs.service("dump")
            except BaseException:
                self.ipvs.close()
                raise
        self.services: dict[ServiceKey, Service] = {}

    def close(self) -> None:
        self.ipvs.close()

    # -- clock
    def now(self) -> float:
        return time.monotonic()

    # -- services
    def _svc(self, svc: Service | ServiceKey) -> Any:
        from pyroute2 import IPVSService  # noqa: PLC0415

        service = svc if isinstance(svc, Service) else self.services.get(svc)
        if service is None:
            raise KeyError(f"no service {svc} configured on this director")
        return IPVSService(**service_attrs(service))

    def add_service(self, svc: Service) -> None:
        self.services[svc.key] = svc
        self._netlink(
            "add service", svc.key, lambda: self.ipvs.service("add", service=self._svc(svc))
        )
        self.check_service(svc)

    def edit_service(self, service: Service) -> None:
        if service.key not in self.services:
            raise KeyError(f"no service {service.key} configured on this director")
        self.services[service.key] = service
        self._netlink(
            "set service", service.key, lambda: self.ipvs.service("set", service=self._svc(service))
        )
        self.check_service(service)

    def del_service(self, key: ServiceKey) -> None:
        self._netlink("del service", key, lambda: self.ipvs.service("del", service=self._svc(key)))
        del self.services[key]

    def dump_service(self, key: ServiceKey) -> dict[str, Any]:
        """The kernel's attributes of one service (netlink dump), by our key."""
        for msg in self.ipvs.service("dump"):
            got = _nla_attrs(msg, "IPVS_CMD_ATTR_SERVICE", "IPVS_SVC_ATTR_")
            if _same_key(key, got):
                return got
        raise KernelConfigMismatch(f"service {key} missing from the kernel's service dump")

    def check_service(self, svc: Service) -> None:
        got = self.dump_service(svc.key)
        want = service_attrs(svc)
        seen = {
            "sched_name": got.get("sched_name"),
            "flags": _mask_hashed(int(got["flags"]["flags"])),
            "timeout": got.get("timeout"),
            "netmask": decode_netmask(svc.family, got["netmask"]),
            "pe_name": got.get("pe_name") or None,
        }
        asked = {
            "sched_name": want["sched_name"],
            "flags": want["flags"]["flags"],
            "timeout": want["timeout"],
            "netmask": svc.mask,
            "pe_name": svc.pe,
        }
        _compare(f"service {svc.key}", asked, seen)

    # -- dests
    def add_dest(self, key: ServiceKey, dest: Dest) -> None:
        from pyroute2 import IPVSDest  # noqa: PLC0415

        self._netlink(
            "add dest",
            key,
            lambda: self.ipvs.dest(
                "add", service=self._svc(key), dest=IPVSDest(**dest_attrs(dest))
            ),
        )
        self.check_dest(key, dest)

    def edit_dest(self, key: ServiceKey, dest: Dest) -> None:
        from pyroute2 import IPVSDest  # noqa: PLC0415

        self._netlink(
            "set dest",
            key,
            lambda: self.ipvs.dest(
                "set", service=self._svc(key), dest=IPVSDest(**dest_attrs(dest))
            ),
        )
        self.check_dest(key, dest)

    def del_dest(self, key: ServiceKey, addr: IPAddress, port: int) -> None:
        from pyroute2 import IPVSDest  # noqa: PLC0415

        probe = Dest(addr=addr, port=port)
        self._netlink(
            "del dest",
            key,
            lambda: self.ipvs.dest(
                "del", service=self._svc(key), dest=IPVSDest(**dest_attrs(probe))
            ),
        )
        if any(d["addr"] == str(addr) and d["port"] == port for d in self.dump_dests(key)):
            raise KernelConfigMismatch(f"dest {probe} of {key} is still listed after delete")

    def dump_dests(self, key: ServiceKey) -> list[dict[str, Any]]:
        """The kernel's dests of one service, in its list order."""
        return [
            _nla_attrs(m, "IPVS_CMD_ATTR_DEST", "IPVS_DEST_ATTR_")
            for m in self.ipvs.dest("dump", service=self._svc(key))
        ]

    def check_dest(self, key: ServiceKey, dest: Dest) -> None:
        for got in self.dump_dests(key):
            if ipaddress.ip_address(got["addr"]) == dest.addr and got["port"] == dest.port:
                seen = {
                    "fwd_method": int(got["fwd_method"]) & 0x7,
                    "weight": got["weight"],
                    "u_thresh": got["u_thresh"],
                    "l_thresh": got["l_thresh"],
                    "addr_family": got.get("addr_family", int(dest.family)),
                }
                want = dest_attrs(dest)
                _compare(f"dest {dest} of {key}", {k: want[k] for k in seen}, seen)
                return
        raise KernelConfigMismatch(f"dest {dest} of {key} missing from the kernel's dest dump")

    # -- sysctls and state
    def set_sysctl(self, name: str, value: int) -> None:
        write_sysctl(self.netns, name, value)

    def templates(self) -> list[Template] | None:
        return parse_ip_vs_conn(read_ip_vs_conn(self.netns))[0]

    def connections(self) -> list[Connection] | None:
        return parse_ip_vs_conn(read_ip_vs_conn(self.netns))[1]

    def _netlink(self, what: str, key: ServiceKey, call: Callable[[], object]) -> None:
        from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

        try:
            call()
        except NetlinkError as exc:
            hint = ""
            if "dest" in what and exc.code == 22:
                hint = (
                    "; IPVS refuses a real-server address that is not unicast-routable in "
                    "the director namespace: give it a route to the RIPs"
                )
            raise KernelConfigMismatch(
                f"{what} {key} in namespace {self.netns}: kernel said {exc.args[-1]} "
                f"(errno {exc.code}){hint}"
            ) from exc


def _nla_attrs(msg: Any, nla: str, prefix: str) -> dict[str, Any]:
    """The attributes of a dumped service/dest, decoded from the raw message.

    (pyroute2's ``from_message`` pre-fills its wrapper defaults and copies back only some
    attributes, so timeout, flags, netmask, fwd_method and thresholds would read as defaults.)
    """
    inner = msg.get_attr(nla)
    if inner is None:
        return {}
    return {name.removeprefix(prefix).lower(): value for name, value in inner["attrs"]}


def _same_key(key: ServiceKey, got: dict[str, Any]) -> bool:
    if int(got.get("af", 0)) != int(key.family):
        return False
    if key.fwmark:
        return int(got.get("fwmark", 0)) == key.fwmark
    return (
        not got.get("fwmark")
        and int(got.get("protocol", -1)) == int(key.proto)
        and ipaddress.ip_address(got["addr"]) == key.vaddr
        and got["port"] == key.vport
    )


def _compare(what: str, asked: dict[str, Any], seen: dict[str, Any]) -> None:
    diff = [
        f"{k}: asked {asked[k]!r}, kernel has {seen[k]!r}" for k in asked if asked[k] != seen[k]
    ]
    if diff:
        raise KernelConfigMismatch(f"{what}: " + "; ".join(diff))


# ---------------------------------------------------------------- the implementation


class KernelIPVS:
    """Kernel IPVS in the lane's kernel (the host, or the VM the kernel lane booted)."""

    name = "kernel"
    exact = True

    def unsupported(self, scenario: Scenario) -> str | None:
        return None  # the kernel is the specification

    @contextlib.contextmanager
    def install(self, net: Net, scenario: Scenario) -> Iterator[KernelDirector]:
        with configure(net.director.netns, scenario) as director:
            yield director


@contextlib.contextmanager
def configure(netns: str, scenario: Scenario) -> Iterator[KernelDirector]:
    """Configure kernel IPVS in namespace ``netns`` for ``scenario``; undo on exit."""
    ensure_ip_vs()
    with contextlib.ExitStack() as stack:
        for name, value in scenario.sysctls.changed().items():
            write_sysctl(netns, name, value)
        if scenario.timeouts != ProtoTimeouts():
            set_proto_timeouts(netns, scenario.timeouts)
        if scenario.fwmark_rules:
            nft(netns, nft_fwmark_ruleset(scenario.fwmark_rules))
            stack.callback(_forgiving, lambda: nft(netns, f"delete table inet {NFT_TABLE}\n"))
        director = KernelDirector(netns)
        stack.callback(director.close)
        for cfg in scenario.services:
            director.add_service(cfg.service)
            stack.callback(_forgiving, functools.partial(director.del_service, cfg.service.key))
            for dest in cfg.dests:
                director.add_dest(cfg.service.key, dest)
        yield director


def _forgiving(undo: Callable[[], object]) -> None:
    """Teardown forgives only "already gone" (the namespace may already be deleted)."""
    try:
        undo()
    except (KernelConfigMismatch, OSError, runs.RunError) as exc:
        cause = exc.__cause__ or exc
        if isinstance(exc, runs.RunError) or runs.gone(cause):
            return
        raise
    except KeyError:
        return


__all__ = [
    "KernelIPVS",
    "KernelDirector",
    "KernelLacksIPVS",
    "KernelConfigMismatch",
    "configure",
    "ensure_ip_vs",
    "encode_netmask",
    "decode_netmask",
    "service_attrs",
    "dest_attrs",
    "nft_fwmark_ruleset",
    "parse_ip_vs_conn",
    "read_ip_vs_conn",
    "write_sysctl",
]
