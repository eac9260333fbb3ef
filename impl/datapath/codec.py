"""JSON for the shared vocabulary: the datapath's config file and its control channel.

A closed registry of types (no pickle: the control socket must not execute what it receives).
Dataclasses become ``{"$": "Name", field: value...}``, enums ``{"$e": "Name", "v": value}``,
addresses/networks ``{"$a": "..."}``/``{"$n": "..."}``, tuples ``{"$t": [...]}``.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import json
from typing import Any

from impl import scenario as _scenario
from impl import types as _types


class CodecError(ValueError):
    """A JSON document names a type or field the codec does not know."""


_CLASSES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        _types.ServiceKey,
        _types.Service,
        _types.Dest,
        _types.FwmarkRule,
        _types.Flow,
        _types.Decision,
        _types.Template,
        _types.Connection,
        _types.Sysctls,
        _types.ProtoTimeouts,
        _scenario.Scenario,
        _scenario.ServiceConfig,
        _scenario.Send,
        _scenario.Advance,
        _scenario.AddDest,
        _scenario.EditDest,
        _scenario.DelDest,
        _scenario.EditService,
        _scenario.SetSysctl,
    )
}
_ENUMS: dict[str, type[enum.Enum]] = {
    cls.__name__: cls for cls in (_types.Family, _types.Proto, _types.Fwd, _types.SvcFlag)
}


def to_jsonable(obj: Any) -> Any:
    """Plain JSON data for ``obj`` (registered dataclasses, enums, addresses, containers)."""
    if isinstance(obj, enum.Enum):
        return {"$e": type(obj).__name__, "v": obj.value}
    if isinstance(obj, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return {"$a": str(obj)}
    if isinstance(obj, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return {"$n": str(obj)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = type(obj).__name__
        if _CLASSES.get(name) is not type(obj):
            raise CodecError(f"type {name} is not in the datapath codec registry")
        out: dict[str, Any] = {"$": name}
        for f in dataclasses.fields(obj):
            out[f.name] = to_jsonable(getattr(obj, f.name))
        return out
    if isinstance(obj, tuple):
        return {"$t": [to_jsonable(x) for x in obj]}
    if isinstance(obj, list):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, bytes):
        return {"$b": obj.hex()}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise CodecError(f"cannot encode {type(obj).__name__} for the datapath")


def from_jsonable(data: Any) -> Any:
    """Inverse of :func:`to_jsonable`."""
    if isinstance(data, list):
        return [from_jsonable(x) for x in data]
    if not isinstance(data, dict):
        return data
    if "$" in data:
        cls = _CLASSES.get(data["$"])
        if cls is None:
            raise CodecError(f"unknown type {data['$']!r} in datapath JSON")
        kwargs = {k: from_jsonable(v) for k, v in data.items() if k != "$"}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise CodecError(f"bad fields for {data['$']}: {exc}") from None
    if "$e" in data:
        ecls = _ENUMS.get(data["$e"])
        if ecls is None:
            raise CodecError(f"unknown enum {data['$e']!r} in datapath JSON")
        return ecls(data["v"])
    if "$a" in data:
        return ipaddress.ip_address(data["$a"])
    if "$n" in data:
        return ipaddress.ip_network(data["$n"])
    if "$t" in data:
        return tuple(from_jsonable(x) for x in data["$t"])
    if "$b" in data:
        return bytes.fromhex(data["$b"])
    return {k: from_jsonable(v) for k, v in data.items()}


def dumps(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    return from_jsonable(json.loads(text))
