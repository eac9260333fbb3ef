"""The configuration a director should have now: the scenario's services and dests, with the
scenario's edits applied (for implementations that are re-configured as a whole on each edit:
black-box programs, keepalived)."""

from __future__ import annotations

from impl.scenario import Scenario, ServiceConfig
from impl.types import Dest, IPAddress, Service, ServiceKey


class UnknownService(KeyError):
    """An edit names a service the scenario never configured."""


class Desired:
    """Services in add order, each with its dests in add order (ipvsadm -a semantics)."""

    def __init__(self, scenario: Scenario) -> None:
        self.services: dict[ServiceKey, Service] = {}
        self.dests: dict[ServiceKey, list[Dest]] = {}
        for config in scenario.services:
            self.services[config.service.key] = config.service
            self.dests[config.service.key] = list(config.dests)

    def configs(self) -> tuple[ServiceConfig, ...]:
        return tuple(ServiceConfig(s, tuple(self.dests[k])) for k, s in self.services.items())

    def _list(self, key: ServiceKey) -> list[Dest]:
        if key not in self.dests:
            raise UnknownService(f"no service {key} in this scenario")
        return self.dests[key]

    def add_dest(self, key: ServiceKey, dest: Dest) -> None:
        self._list(key).append(dest)

    def edit_dest(self, key: ServiceKey, dest: Dest) -> None:
        dests = self._list(key)
        dests[:] = [dest if (d.addr, d.port) == (dest.addr, dest.port) else d for d in dests]

    def del_dest(self, key: ServiceKey, addr: IPAddress, port: int) -> None:
        dests = self._list(key)
        dests[:] = [d for d in dests if (d.addr, d.port) != (addr, port)]

    def edit_service(self, service: Service) -> None:
        self._list(service.key)
        self.services[service.key] = service
