"""Policy routing in the director namespace that steers VIP traffic into the TUN device.

Picture (director namespace; ``T`` = config.table)::

    client ─client_if──> pref 100: iif client_if, to <VIP|fwmark net>  lookup T ─> TUN ─> process
    rs ───segment_if───> pref 100: iif segment_if, from <rs net> to <client>  lookup T ─> (same)
                         pref 200: lookup local   (moved from pref 0, so the rules above win)
                         table T: default dev TUN (v4 and v6)

The VIPs stay local addresses: a packet the process writes back into the TUN arrives with
iif TUN, matches no pref-100 rule, and reaches the local table at pref 200, i.e. the director's
own stack (the "local" verdict). Everything here is undone by :func:`remove`, which is
idempotent and safe to call after the process died (routes in T vanish with the device).
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from impl.datapath.config import DatapathConfig

_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_LOCAL_TABLE = 255
_GONE = {errno.ENOENT, errno.ESRCH, errno.ENODEV}
TUN_QUEUE = 20000  # packets


def _forgive_gone(exc: NetlinkError) -> None:
    if exc.code not in _GONE:
        raise exc


def _net_kwargs(prefix: str, net: object) -> dict[str, object]:
    return {prefix: str(net.network_address), f"{prefix}_len": net.prefixlen}  # type: ignore[attr-defined]


def _write_sysctl(path: str, value: str) -> str:
    """Write a sysctl of the *current* network namespace; return the old value."""
    p = Path("/proc/sys") / path
    old = p.read_text().strip()
    p.write_text(value)
    return old


@contextlib.contextmanager
def installed(ipr: IPRoute, config: DatapathConfig, tun_index: int) -> Iterator[None]:
    """Install routes, rules and sysctls for ``config``; undo them on exit (LIFO)."""
    with contextlib.ExitStack() as stack:
        stack.callback(remove, ipr, config)
        # no IPv6 link-local on the TUN: else the kernel sends its own MLD/RS chatter into it
        _write_sysctl(f"net/ipv6/conf/{config.tun_name}/addr_gen_mode", "1")
        # a deep queue: bursts (batch traffic, benchmarks) wait for the process, not get dropped
        ipr.link("set", index=tun_index, txqlen=TUN_QUEUE)
        ipr.link("set", index=tun_index, state="up")
        # rp_filter would drop packets we write back into the TUN (their source, a client,
        # is routed via client_if, not the TUN); the effective value is max(all, dev).
        for path in ("net/ipv4/conf/all/rp_filter", f"net/ipv4/conf/{config.tun_name}/rp_filter"):
            old = _write_sysctl(path, "0")
            stack.callback(_restore_sysctl, path, old)
        for path in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
            _write_sysctl(path, "1")  # the topology sets these too; needed to route into the TUN
        _write_sysctl(f"net/ipv6/conf/{config.tun_name}/disable_ipv6", "0")
        ipr.route("add", dst="0.0.0.0/0", oif=tun_index, table=config.table)
        ipr.route("add", dst="::/0", oif=tun_index, table=config.table, family=socket.AF_INET6)
        for target in config.targets():
            ipr.rule(
                "add",
                priority=config.pref,
                table=config.table,
                family=_family(target),
                iifname=config.client_if,
                **_net_kwargs("dst", target),
            )
        for rs_net in config.rs_nets:
            for client_net in config.client_nets:
                if rs_net.version != client_net.version:
                    continue
                ipr.rule(
                    "add",
                    priority=config.pref,
                    table=config.table,
                    family=_family(rs_net),
                    iifname=config.segment_if,
                    **_net_kwargs("src", rs_net),
                    **_net_kwargs("dst", client_net),
                )
        for fam in _FAMILIES:
            # add the new local rule before deleting the old: never a moment without local
            ipr.rule("add", priority=config.local_pref, table=_LOCAL_TABLE, family=fam)
            try:
                ipr.rule("del", priority=0, table=_LOCAL_TABLE, family=fam)
            except NetlinkError as exc:
                _forgive_gone(exc)
        yield


def _restore_sysctl(path: str, old: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # the TUN (and its conf dir) may be gone
        _write_sysctl(path, old)


def _family(net: object) -> int:
    return socket.AF_INET if net.version == 4 else socket.AF_INET6  # type: ignore[attr-defined]


def remove(ipr: IPRoute, config: DatapathConfig) -> None:
    """Remove everything :func:`installed` adds (idempotent; forgives only "already gone")."""
    for fam in _FAMILIES:
        rules = ipr.get_rules(family=fam)
        have_local0 = any(
            r.get("priority") in (None, 0) and r.get("table") == _LOCAL_TABLE for r in rules
        )
        if not have_local0:
            ipr.rule("add", priority=0, table=_LOCAL_TABLE, family=fam)
        for r in rules:
            prio = r.get("priority")
            if r.get("table") == config.table or (
                prio == config.local_pref and r.get("table") == _LOCAL_TABLE
            ):
                kwargs: dict[str, object] = {
                    "priority": prio,
                    "table": r.get("table"),
                    "family": fam,
                }
                for attr, key in (
                    ("FRA_IIFNAME", "iifname"),
                    ("FRA_DST", "dst"),
                    ("FRA_SRC", "src"),
                ):
                    value = r.get_attr(attr)
                    if value is not None:
                        kwargs[key] = value
                if r["dst_len"]:
                    kwargs["dst_len"] = r["dst_len"]
                if r["src_len"]:
                    kwargs["src_len"] = r["src_len"]
                try:
                    ipr.rule("del", **kwargs)
                except NetlinkError as exc:
                    _forgive_gone(exc)
        for dst in ("0.0.0.0/0", "::/0"):
            fam = socket.AF_INET if "." in dst else socket.AF_INET6
            try:
                ipr.route("del", dst=dst, table=config.table, family=fam)
            except NetlinkError as exc:
                if exc.code not in _GONE | {errno.ESRCH, errno.EINVAL}:
                    raise


def leftovers(ipr: IPRoute, config: DatapathConfig) -> list[str]:
    """What of ours is still installed (empty when clean): for tests and the harness's check."""
    found: list[str] = []
    for fam in _FAMILIES:
        for r in ipr.get_rules(family=fam):
            if r.get("table") == config.table:
                found.append(f"rule pref {r.get('priority')} lookup {config.table}")
            if r.get("priority") == config.local_pref and r.get("table") == _LOCAL_TABLE:
                found.append(f"rule pref {config.local_pref} lookup local")
        if not any(
            r.get("priority") in (None, 0) and r.get("table") == _LOCAL_TABLE
            for r in ipr.get_rules(family=fam)
        ):
            found.append(f"no pref 0 local rule (family {fam})")
    if ipr.link_lookup(ifname=config.tun_name):
        found.append(f"link {config.tun_name}")
    return found
