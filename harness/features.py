"""What the running kernel offers, probed by trying (cached per process).

Each probe creates the object inside a throwaway namespace of the run (never in the host
namespace). Creating a link of a kind whose module is not loaded makes the kernel load it
(``rtnl-link-<kind>``), and a tunnel module's init creates its fallback device (tunl0,
ip6tnl0) in *every* namespace, the host's included (``ipip_init_net``/``ip6_tnl_init_net``
run for init_net too; net/ipv4/ipip.c, net/ipv6/ip6_tunnel.c, 6.1). So the tunnel kinds are
only tried when their module is already there (loaded or built in, or the kernel has no
modules); a module that is installed but not loaded counts as available without loading it.
``ip_vs`` is probed with ``modprobe`` when the tool exists (it creates no device).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from harness import runs

_REASONS = {
    "ip_vs": "kernel has no IPVS (no /proc/net/ip_vs, modprobe ip_vs failed); "
    "run in a VM lane with --kernel",
    "ipip": "kernel has no ipip tunnel (link kind 'ipip' unsupported): IPv4 TUN real servers "
    "are capture-only, no decapsulation",
    "ip6tnl": "kernel has no ip6tnl tunnel (link kind 'ip6tnl' unsupported): IPv6 TUN real "
    "servers are capture-only, no decapsulation",
    "sctp": "kernel has no SCTP stack (socket(IPPROTO_SCTP) unsupported)",
    "veth": "kernel has no veth (link kind 'veth' unsupported): no topology can be built",
    "bridge": "kernel has no bridge (link kind 'bridge' unsupported): no topology can be built",
    "nftables": "nftables unavailable (nft missing or kernel lacks nf_tables)",
    "tun": "no TUN/TAP (/dev/net/tun cannot be opened)",
}


@dataclass(frozen=True, slots=True)
class KernelFeatures:
    ip_vs: bool
    ipip: bool
    ip6tnl: bool
    sctp: bool
    veth: bool
    bridge: bool
    nftables: bool
    tun: bool

    def missing(self, name: str) -> str:
        """Reason text for a missing feature (for a skip); '' when it is present."""
        if name not in _REASONS:
            raise KeyError(f"unknown kernel feature {name!r}; known: {', '.join(_REASONS)}")
        return "" if getattr(self, name) else _REASONS[name]

    def summary(self) -> str:
        return " ".join(
            f"{f.name}={'yes' if getattr(self, f.name) else 'no'}" for f in fields(self)
        )


def _link_kind(ipr: IPRoute, kind: str, ifname: str, **extra: object) -> bool:
    try:
        ipr.link("add", ifname=ifname, kind=kind, **extra)
    except NetlinkError as exc:
        if exc.code in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENODEV):
            return False
        if exc.code == errno.EEXIST:
            # A tunnel with no parameters duplicates the module's own fallback device
            # (tunl0/ip6tnl0, created with the namespace): the kind exists.
            return True
        raise
    return True


#: link kind -> the module that provides it
TUNNEL_MODULES = {"ipip": "ipip", "ip6tnl": "ip6_tunnel"}
PROC_MODULES = Path("/proc/modules")
MODULES_ROOT = Path("/lib/modules")


def module_state(
    module: str, proc_modules: Path = PROC_MODULES, modules_root: Path = MODULES_ROOT
) -> str:
    """``loaded``, ``builtin``, ``installed`` (loadable, not loaded), ``absent``, or ``static``
    (the kernel has no loadable modules), read from files only: nothing is loaded."""
    try:
        loaded = {line.split(" ", 1)[0] for line in proc_modules.read_text().splitlines()}
    except FileNotFoundError:
        return "static"
    if module in loaded:
        return "loaded"
    tree = modules_root / os.uname().release
    for name, state in (("modules.builtin", "builtin"), ("modules.dep", "installed")):
        try:
            lines = (tree / name).read_text().splitlines()
        except FileNotFoundError:
            continue
        # "kernel/net/ipv4/ipip.ko[.xz]: deps" -> "ipip" (file names may use '-' for '_')
        names = {ln.split(":", 1)[0].rsplit("/", 1)[-1].split(".ko")[0] for ln in lines}
        if module in {n.replace("-", "_") for n in names}:
            return state
    return "absent"


def _tunnel_kind(ipr: IPRoute, kind: str, ifname: str) -> bool:
    state = module_state(TUNNEL_MODULES[kind])
    if state == "installed":
        return True  # trying would load it and put its fallback device in the host namespace
    if state == "absent":
        return False
    return _link_kind(ipr, kind, ifname)


def _ip_vs(ns: str) -> bool:
    with runs.enter_netns(ns):
        if os.path.exists("/proc/net/ip_vs"):
            return True
    exe = shutil.which("modprobe")
    if exe is None:
        return False
    subprocess.run([exe, "-q", "ip_vs"], capture_output=True, timeout=30, check=False)
    with runs.enter_netns(ns):
        return os.path.exists("/proc/net/ip_vs")


def _sctp(ns: str) -> bool:
    with runs.enter_netns(ns):
        try:
            socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
        except OSError:
            return False
    return True


def _nftables(ns: str) -> bool:
    # harness.nft enters namespaces with os.setns (Python >= 3.12); use libc here
    exe = shutil.which("nft")
    if exe is None:
        return False
    proc = subprocess.run(
        [exe, "add", "table", "inet", "lvsconf_probe"],
        capture_output=True,
        timeout=30,
        preexec_fn=runs.netns_preexec(ns),
        check=False,
    )
    return proc.returncode == 0


def _tun() -> bool:
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR))
    except OSError:
        return False
    return True


def _probe(run: runs.Run) -> KernelFeatures:
    ns = run.name("-probe")
    runs.create_netns(ns)
    try:
        with runs.enter_netns(ns):
            ipr = IPRoute()
        try:
            veth = _link_kind(ipr, "veth", "pv0", peer="pv1")
            bridge = _link_kind(ipr, "bridge", "pbr")
            ipip = _tunnel_kind(ipr, "ipip", "pipip")
            ip6tnl = _tunnel_kind(ipr, "ip6tnl", "pip6")
        finally:
            ipr.close()
        return KernelFeatures(
            ip_vs=_ip_vs(ns),
            ipip=ipip,
            ip6tnl=ip6tnl,
            sctp=_sctp(ns),
            veth=veth,
            bridge=bridge,
            nftables=_nftables(ns),
            tun=_tun(),
        )
    finally:
        runs.remove_netns(ns)


_result: KernelFeatures | None = None


def probe(run: runs.Run | None = None) -> KernelFeatures:
    """Probe the kernel once per process (later calls return the cached answer)."""
    global _result
    if _result is None:
        _result = _probe(run or runs.default_run())
    return _result
