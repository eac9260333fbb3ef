"""Fixed (non-balancing) directors for the traffic tests, made from routes and nftables."""

from __future__ import annotations

from harness.addresses import rip, vip
from harness.nft import nft
from harness.topology import Net
from impl.types import IPV4, IPV6, Family


def host_prefix(family: Family) -> int:
    return 32 if family is IPV4 else 128


def route_vip_to(net: Net, rs: int, index: int = 0) -> None:
    """Plain routing instead of a balancer: VIP ``index`` is no longer local on the director
    but routed to real server ``rs`` (which has the VIP on its lo)."""
    with net.director.ipr() as ipr:
        for fam in net.topology.families:
            v = vip(fam, index)
            ipr.addr("del", index=1, address=str(v), prefixlen=host_prefix(fam))
            ipr.route(
                "add", dst=f"{v}/{host_prefix(fam)}", gateway=str(rip(fam, rs)), family=int(fam)
            )


def dnat_script(rs: int, vport: int, rport: int, protos: tuple[str, ...] = ("tcp", "udp")) -> str:
    """nft: VIP 0 port ``vport`` DNATed to real server ``rs`` port ``rport`` (both families)."""
    lines = []
    for table, fam, fmt in (("ip", IPV4, "{}"), ("ip6", IPV6, "[{}]")):
        rules = "\n".join(
            f"        {'ip' if fam is IPV4 else 'ip6'} daddr {vip(fam, 0)} {p} dport {vport} "
            f"dnat to {fmt.format(rip(fam, rs))}:{rport}"
            for p in protos
        )
        lines.append(
            f"table {table} h4_dnat {{\n    chain pre {{\n"
            f"        type nat hook prerouting priority -100; policy accept;\n{rules}\n    }}\n}}\n"
        )
    return "".join(lines)


def load_director_nft(net: Net, script: str) -> None:
    """Load ``script`` into the director (fresh_net renews the director for the next test)."""
    nft(net.director.netns, script)
