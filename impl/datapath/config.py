"""The datapath process's configuration: a scenario plus where the director's links are.

Written by the harness (:mod:`harness.implementations.reference`) as JSON
(:mod:`impl.datapath.codec`),
read by ``python -m impl.datapath --config FILE``. Validated once, here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from impl.datapath.codec import CodecError, from_jsonable, to_jsonable
from impl.kernel_level import DEFAULT, KernelLevel, parse_release
from impl.scenario import Scenario
from impl.types import IPAddress, IPNetwork


class ConfigError(ValueError):
    """The datapath configuration is unusable; the message names the field and the fix."""


@dataclass(frozen=True, slots=True)
class DatapathConfig:
    """Everything the process needs.

    ``client_if``: the director's link towards the clients (packets to the VIPs arrive there);
    ``segment_if``: the director's link to the real-server segment (DR frames leave there, NAT
    replies arrive there); ``rs_macs``: RIP -> MAC for DR framing; ``client_nets``: where
    clients live (NAT replies towards them are intercepted); ``rs_nets``: where real servers
    live (only replies *from* there are intercepted, so DR/TUN replies, whose source is the VIP,
    are left to the kernel). ``table``/``pref``/``local_pref``: policy routing numbers.
    ``model``: ``module:attr`` of the decision model (the reference Director by default).
    """

    scenario: Scenario
    client_if: str
    segment_if: str
    rs_macs: dict[IPAddress, str] = field(default_factory=dict)
    client_nets: tuple[IPNetwork, ...] = ()
    rs_nets: tuple[IPNetwork, ...] = ()
    tun_name: str = "lvsdp0"
    table: int = 4242
    pref: int = 100
    local_pref: int = 200
    level: str = DEFAULT.text
    model: str = "impl.director:Director"

    def kernel_level(self) -> KernelLevel:
        try:
            return parse_release(self.level)
        except ValueError as exc:
            raise ConfigError(f"config field 'level': {exc}") from None

    def targets(self) -> list[IPNetwork]:
        """Destinations that are the director's business: every VIP and every fwmark net."""
        import ipaddress

        nets: list[IPNetwork] = []
        for sc in self.scenario.services:
            key = sc.service.key
            if not key.fwmark and key.vaddr is not None:
                nets.append(ipaddress.ip_network(key.vaddr))
        nets.extend(rule.daddr for rule in self.scenario.fwmark_rules)
        return list(dict.fromkeys(nets))

    def dump(self, path: Path) -> None:
        data = {f: to_jsonable(getattr(self, f)) for f in self.__slots__}
        data["rs_macs"] = {str(k): v for k, v in self.rs_macs.items()}
        path.write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: Path) -> DatapathConfig:
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read datapath config {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"datapath config {path} is not JSON: {exc}") from None
        import ipaddress

        try:
            values = {k: from_jsonable(v) for k, v in raw.items() if k != "rs_macs"}
            values["rs_macs"] = {
                ipaddress.ip_address(k): v for k, v in raw.get("rs_macs", {}).items()
            }
            config = cls(**values)
        except (CodecError, TypeError, ValueError) as exc:
            raise ConfigError(f"datapath config {path}: {exc}") from None
        if not isinstance(config.scenario, Scenario):
            raise ConfigError(f"datapath config {path}: 'scenario' must be a Scenario")
        for name in ("client_if", "segment_if", "tun_name"):
            value = getattr(config, name)
            if not isinstance(value, str) or not 0 < len(value) <= 15:
                raise ConfigError(
                    f"datapath config {path}: {name}={value!r} is not an "
                    "interface name (1..15 characters)"
                )
        return config
