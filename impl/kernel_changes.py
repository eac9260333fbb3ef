"""Named kernel behaviour changes between two kernel levels, for upgrade reports.

Every behaviour the model switches by kernel level is a boolean property of
:class:`impl.kernel_level.KernelLevel`. :data:`CHANGES` names those properties with a one-line
reason and the kernel source that made the change, so ``lvsconf diff`` can say *why* the model
predicts a different outcome on the new kernel. A property added to ``KernelLevel`` for a new
kernel difference gets its row here (tests check every row names a real property).

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from impl.kernel_level import KernelLevel


@dataclass(frozen=True, slots=True)
class KernelChange:
    #: the KernelLevel property that is True from the first level with the change
    name: str
    #: what the kernel does differently, one line
    reason: str
    #: where: kernel source (file, function, release) or the project's docs
    reference: str


CHANGES: tuple[KernelChange, ...] = (
    KernelChange(
        "totalconns",
        "lc/wlc/lblc/lblcr/twos overhead counts totalconns (active*256 + total), which can "
        "change tie-breaks between real servers",
        "net/netfilter/ipvs/ip_vs_ctl.c, stable patch 'ipvs: add totalconns for dest' "
        "(6.1.183, 6.12.104)",
    ),
    KernelChange(
        "overload_rework",
        "the overload flag is set when totalconns reaches the upper threshold and re-evaluated "
        "with hysteresis when a dest is edited",
        "net/netfilter/ipvs/ip_vs_ctl.c __ip_vs_update_dest, stable patch 'ipvs: properly "
        "update the overload flag on dest edit' (6.1.183, 6.12.104)",
    ),
    KernelChange(
        "no_invisible_templates",
        "templates never take ONE_PACKET from a dest's conn_flags",
        "net/netfilter/ipvs/ip_vs_conn.c ip_vs_bind_dest, stable patch 'ipvs: do not "
        "create invisible templates' (6.1.191, 6.12.113, 7.2.10)",
    ),
    KernelChange(
        "has_twos",
        "the twos (random two choices) scheduler exists",
        "net/netfilter/ipvs/ip_vs_twos.c, built by Debian from 6.11.2-1 (CONFIG_IP_VS_TWOS)",
    ),
    KernelChange(
        "invalidate_by_dport",
        "an invalidated template keeps its vport (/proc shows VIP:PORT => RIP:FFFF, not "
        "VIP:FFFF => RIP:FFFF) and the lookup skips templates with dport 0xFFFF: a real server "
        "on port 65535 loses persistence, a port-65535 service no longer finds dead templates, "
        "and a SIP Call-ID template can revive",
        "net/netfilter/ipvs/ip_vs_conn.c ip_vs_check_template, ip_vs_ct_in_get, upstream "
        "'ipvs: switch to per-net connection table' (7.2; docs/kernel-differences.md §1)",
    ),
    KernelChange(
        "conn_tab_per_netns",
        "/proc/net/ip_vs prints the netns's own connection table size (0, then 256) instead "
        "of 4096",
        "net/netfilter/ipvs/ip_vs_ctl.c ip_vs_info_seq_show, get_conn_tab_size (7.2; "
        "docs/kernel-differences.md §2)",
    ),
)


def differences(old: KernelLevel, new: KernelLevel) -> list[tuple[str, str]]:
    """(name, "reason (reference)") for every named behaviour that differs from old to new."""
    return [
        (change.name, f"{change.reason} ({change.reference})")
        for change in CHANGES
        if bool(getattr(old, change.name)) != bool(getattr(new, change.name))
    ]
