"""Which kernel behaviour to model: IPVS changed at stable patch level and between series.

Every behaviour that differs between the Debian kernels the suite runs on (bullseye 5.10,
bookworm 6.1, trixie 6.12, sid 7.2) is one named property of :class:`KernelLevel`, citing the
kernel source that makes the change; docs/kernel-differences.md describes each one, the release
where it starts and how it was confirmed on a real kernel (docs/semantics.md §5.2).

A release is given as a Debian ``uname -v``/``/proc/version`` text (``... Debian 6.1.192-3 ...``),
a plain upstream version (``6.12.117``), or an ABI string (``6.1.0-56-amd64``, which names no
patch level: then the newest known behaviour is assumed and :attr:`KernelLevel.exact` is False).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (major, minor) -> first patch level with the change; other series: see KernelLevel._since
_TOTALCONNS = {(6, 1): 183, (6, 12): 104}
# 7.2 got this fix as a stable update too (upstream 7.2.10, Debian 7.2.10-1)
_NO_INVISIBLE_TEMPLATES = {(6, 1): 191, (6, 12): 113, (7, 2): 10}
#: First series with the per-netns connection table (upstream "ipvs: switch to per-net
#: connection table"): in 7.2.13's source (7.2's base: no Debian 7.2 stable update touches
#: it), not in 6.12.118's. The patch went to nf-next on 2026-02-26, so 7.0 lacks it; 7.1 could
#: not be checked (Debian ships neither its source nor its modules any more).
_PER_NETNS_CONN_TABLE = (7, 2)
#: ip_vs_twos.c is in the 6.1 source, but Debian builds it only from 6.11.2-1
#: ("net/netfilter/ipvs: Enable IP_VS_TWOS as module", Closes: #1082903); bullseye's 5.10 has
#: no such file. The model replicates Debian kernels.
_DEBIAN_TWOS = (6, 11)


@dataclass(frozen=True, slots=True)
class KernelLevel:
    major: int
    minor: int
    patch: int | None  # None: unknown patch level (assume newest behaviour)
    text: str = ""

    @property
    def exact(self) -> bool:
        return self.patch is not None

    def _since(self, table: dict[tuple[int, int], int]) -> bool:
        first = table.get((self.major, self.minor))
        if first is None:  # other series: newer than 6.12 has it (in its base), older does not
            return (self.major, self.minor) > (6, 12)
        return self.patch is None or self.patch >= first

    @property
    def totalconns(self) -> bool:
        """Overhead is ``active*256 + totalconns`` (else ``active*256 + inactconns``): stable
        "ipvs: add totalconns for dest" (6.1.183, 6.12.104; in 7.2's base; not in 5.10.262)."""
        return self._since(_TOTALCONNS)

    @property
    def overload_rework(self) -> bool:
        """OVERLOAD set when totalconns reaches u, cleared below l (same patch set as totalconns).

        Older: set at every bind while total >= u; cleared at unbind below l (or 4*total < 3*u);
        an edit that removes or raises u clears it.
        """
        return self._since(_TOTALCONNS)

    @property
    def no_invisible_templates(self) -> bool:
        """Templates never take ONE_PACKET from dest conn_flags (ip_vs_conn.c ip_vs_bind_dest;
        stable 6.1.191, 6.12.113, 7.2.10; absent from bullseye's 5.10.262)."""
        return self._since(_NO_INVISIBLE_TEMPLATES)

    @property
    def invalidate_by_dport(self) -> bool:
        """An invalid template is marked by ``dport = 0xFFFF`` alone: it keeps its vport and its
        place in the hash chain, and the plain template lookup skips it by that dport.

        net/netfilter/ipvs/ip_vs_conn.c ip_vs_check_template() and ip_vs_ct_in_get() (7.2.13).
        Before (5.10-6.12: ip_vs_check_template()) it was unhashed and rehashed with vport,
        dport = 0xFFFF and cport 0, so only a key with vport 65535 could find it again.
        Consequences: a valid template whose dest port is 65535 is invisible too (persistence
        to a real server on port 65535 is lost), and the SIP pe's ct_match, which does not look
        at dport, can still find an invalidated Call-ID template.
        """
        return (self.major, self.minor) >= _PER_NETNS_CONN_TABLE

    @property
    def conn_tab_per_netns(self) -> bool:
        """The connection table belongs to the netns, is attached with the first service and
        resized with the load; /proc/net/ip_vs prints its current size (ip_vs_ctl.c
        ip_vs_info_seq_start / get_conn_tab_size, 7.2.13), where older kernels print the
        global ip_vs_conn_tab_size (4096)."""
        return (self.major, self.minor) >= _PER_NETNS_CONN_TABLE

    @property
    def has_twos(self) -> bool:
        """Debian's kernel ships ip_vs_twos (from 6.11.2-1; see _DEBIAN_TWOS)."""
        return (self.major, self.minor) >= _DEBIAN_TWOS

    @property
    def label(self) -> str:
        return f"{self.major}.{self.minor}" + (f".{self.patch}" if self.patch is not None else ".x")


DEFAULT = KernelLevel(6, 1, 192, "6.1.192")

_DEBIAN = re.compile(r"Debian (\d+)\.(\d+)\.(\d+)")
_LINUX = re.compile(r"Linux version (\d+)\.(\d+)")
_PLAIN = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(.*)$")


def parse_release(text: str) -> KernelLevel:
    """Parse a kernel release description; raises ValueError with a clear message."""
    text = text.strip()
    # /proc/version also names the compiler ("gcc-12 (Debian 12.2.0-14)"): only a Debian
    # version of the kernel's own series is its stable level.
    series = _LINUX.search(text)
    for deb in _DEBIAN.finditer(text):
        if series is None or (deb[1], deb[2]) == (series[1], series[2]):
            return KernelLevel(int(deb[1]), int(deb[2]), int(deb[3]), text)
    if series is not None:
        text = text[series.start(1) :].split()[0]
    m = _PLAIN.match(text)
    if not m:
        raise ValueError(f"not a kernel release: {text!r} (expected e.g. 6.1.192 or 6.12.117)")
    major, minor = int(m[1]), int(m[2])
    patch = int(m[3]) if m[3] is not None else None
    # Debian ABI strings (6.1.0-56-amd64) carry 0 as patch: the stable level is unknown.
    if patch == 0 and m[4].startswith("-"):
        patch = None
    return KernelLevel(major, minor, patch, text)
