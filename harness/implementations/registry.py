"""Resolve ``--impl`` names to :class:`~harness.api.Implementation` objects.

Names are ``kernel`` (kernel IPVS, run in the selected kernel lane: the host when it has IPVS,
else a VM), ``reference`` (the userspace reference datapath), ``nftlb`` (the nftlb daemon) and
``keepalived`` (keepalived programming kernel IPVS; both opt-in, never in the default
selection), ``exec:MANIFEST`` (a black-box program described by a TOML manifest, see
:mod:`harness.implementations.exec`), or ``module:attr`` naming a user's object: an
Implementation instance, or a class / zero-argument factory returning one.

The default (no ``--impl``) is every implementation available here: the reference (the host
kernel has TUN, which is all it needs) and the kernel (through the host or a VM lane). A built-in
whose module is not installed is left out of the default but is an error when named explicitly:
a named implementation that cannot start must never turn into a silent green.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from harness.api import Implementation

#: built-in implementation name -> "module:attr" of its class
BUILTINS: dict[str, str] = {
    "reference": "harness.implementations.reference:ReferenceDatapath",
    "kernel": "harness.implementations.kernel:KernelIPVS",
    # opt-in only (not in DEFAULT_ORDER): a third-party daemon not everybody has installed
    "nftlb": "harness.implementations.nftlb:Nftlb",
    "keepalived": "harness.implementations.keepalived:Keepalived",
}
#: order of the default selection (and of report columns)
DEFAULT_ORDER: tuple[str, ...] = ("kernel", "reference")


class ImplError(ValueError):
    """An ``--impl`` name cannot be resolved; the message names the problem and the fix."""


@dataclass(frozen=True, slots=True)
class Selection:
    """The implementations of one run, and the built-ins left out of the default (with why)."""

    impls: tuple[Implementation, ...]
    missing: tuple[tuple[str, str], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.impls)


def _load_attr(spec: str) -> object:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ImplError(
            f"--impl {spec!r}: expected kernel, reference or module:attr (e.g. mypkg.lb:MyLB)"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ImplError(
            f"--impl {spec}: cannot import module {module_name} ({exc}); check the name and that "
            "it is installed in this environment"
        ) from exc
    obj: object = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImplError(
                f"--impl {spec}: module {module_name} has no attribute {attr_path}; "
                "name an Implementation object, class or factory"
            ) from None
    return obj


def _instantiate(spec: str, obj: object) -> Implementation:
    candidate = obj
    # A class also "looks like" an Implementation (its attributes are there): instantiate it.
    if isinstance(obj, type) or (not isinstance(obj, Implementation) and callable(obj)):
        try:
            candidate = obj()
        except TypeError as exc:
            raise ImplError(
                f"--impl {spec}: calling {obj!r} with no arguments failed ({exc}); name an "
                "Implementation instance or a class/factory that takes no arguments"
            ) from exc
    if not isinstance(candidate, Implementation):
        raise ImplError(
            f"--impl {spec}: {candidate!r} is not an Implementation (needs name, exact, "
            "unsupported(scenario) and install(net, scenario); see harness/api.py)"
        )
    if not isinstance(candidate.name, str) or not candidate.name:
        raise ImplError(f"--impl {spec}: the implementation's name is empty; give it a short name")
    return candidate


def _opt_in_hint() -> str:
    """The built-ins outside the default selection, for the unknown-name message."""
    extra = sorted(set(BUILTINS) - set(DEFAULT_ORDER))
    return f" (opt-in: {', '.join(extra)})" if extra else ""


def resolve_one(name: str) -> Implementation:
    """One ``--impl`` name to an Implementation (raises :class:`ImplError`)."""
    name = name.strip()
    if name in BUILTINS:
        try:
            return _instantiate(name, _load_attr(BUILTINS[name]))
        except ImplError as exc:
            raise ImplError(
                f"--impl {name}: the built-in implementation is not available here ({exc})"
            ) from exc
    if name.startswith("exec:"):
        from harness.implementations.exec import ManifestError, implementation  # noqa: PLC0415

        try:
            return implementation(name)
        except ManifestError as exc:
            raise ImplError(str(exc)) from None
    if ":" in name:
        return _instantiate(name, _load_attr(name))
    raise ImplError(
        f"--impl {name!r}: unknown implementation; use one of {', '.join(sorted(DEFAULT_ORDER))}"
        f"{_opt_in_hint()}, exec:MANIFEST (a black-box program) or module:attr naming your own"
    )


def resolve(
    names: str | Sequence[str] | None,
    *,
    loader: Callable[[str], Implementation] = resolve_one,
) -> Selection:
    """Resolve a comma-separated ``--impl`` value (None = the default selection)."""
    if names is None or (isinstance(names, str) and not names.strip()):
        impls: list[Implementation] = []
        missing: list[tuple[str, str]] = []
        for builtin in DEFAULT_ORDER:
            try:
                impls.append(loader(builtin))
            except ImplError as exc:
                missing.append((builtin, str(exc)))
        if not impls:
            raise ImplError(
                "no implementation is available here: " + "; ".join(reason for _, reason in missing)
            )
        return Selection(tuple(impls), tuple(missing))
    parts = names.split(",") if isinstance(names, str) else list(names)
    wanted = [p.strip() for p in parts if p.strip()]
    if not wanted:
        raise ImplError("--impl is empty; name kernel, reference or module:attr")
    selected: list[Implementation] = []
    for spec in wanted:
        impl = loader(spec)
        if impl.name in {i.name for i in selected}:
            raise ImplError(
                f"--impl {spec}: an implementation named {impl.name!r} is already selected; "
                "names must be unique (they label the report's columns)"
            )
        selected.append(impl)
    return Selection(tuple(selected))
