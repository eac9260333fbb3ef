"""Which kernel behaviour to model: IPVS changed at *stable patch level* (docs/semantics.md §5.2).

A release is given as a Debian ``uname -v``/``/proc/version`` text (``... Debian 6.1.192-3 ...``),
a plain upstream version (``6.12.117``), or an ABI string (``6.1.0-56-amd64``, which names no
patch level: then the newest known behaviour is assumed and :attr:`KernelLevel.exact` is False).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (major, minor) -> first patch level with the change (docs/semantics.md §5.2)
_TOTALCONNS = {(6, 1): 183, (6, 12): 104}
_NO_INVISIBLE_TEMPLATES = {(6, 1): 191, (6, 12): 113}


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
        if first is None:  # other series: newer than 6.12 has it, older than 6.1 does not
            return (self.major, self.minor) > (6, 12)
        return self.patch is None or self.patch >= first

    @property
    def totalconns(self) -> bool:
        """Overhead is ``active*256 + totalconns`` (else ``active*256 + inactconns``)."""
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
        """Templates never take ONE_PACKET from dest conn_flags (6.1.191 / 6.12.113)."""
        return self._since(_NO_INVISIBLE_TEMPLATES)

    @property
    def has_twos(self) -> bool:
        return (self.major, self.minor) >= (6, 2)

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
