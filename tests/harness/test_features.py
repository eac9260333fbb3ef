"""The feature probe reads module state from files and never loads a tunnel module: loading
ipip/ip6_tunnel creates tunl0/ip6tnl0 in the host namespace too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import features


def _tree(tmp_path: Path, loaded: str, builtin: str, dep: str) -> tuple[Path, Path]:
    proc = tmp_path / "modules"
    proc.write_text(loaded)
    tree = tmp_path / "lib" / os.uname().release
    tree.mkdir(parents=True)
    (tree / "modules.builtin").write_text(builtin)
    (tree / "modules.dep").write_text(dep)
    return proc, tmp_path / "lib"


@pytest.mark.parametrize(
    ("loaded", "builtin", "dep", "state"),
    [
        ("ipip 36864 0 - Live 0x0\n", "", "", "loaded"),
        ("veth 1 0 - Live 0x0\n", "kernel/net/ipv4/ipip.ko\n", "", "builtin"),
        ("", "", "kernel/net/ipv4/ipip.ko.xz: kernel/net/ipv4/tunnel4.ko.xz\n", "installed"),
        ("", "", "kernel/net/ipv4/ipip_x.ko: \n", "absent"),
    ],
)
def test_module_state_from_files(
    tmp_path: Path, loaded: str, builtin: str, dep: str, state: str
) -> None:
    proc, root = _tree(tmp_path, loaded, builtin, dep)
    assert features.module_state("ipip", proc, root) == state


def test_a_kernel_without_modules_is_static(tmp_path: Path) -> None:
    assert features.module_state("ipip", tmp_path / "none", tmp_path) == "static"


@pytest.mark.parametrize(
    ("state", "tried", "answer"),
    [("installed", False, True), ("absent", False, False), ("loaded", True, True)],
)
def test_a_tunnel_kind_is_tried_only_when_nothing_would_load(
    monkeypatch: pytest.MonkeyPatch, state: str, tried: bool, answer: bool
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(features, "module_state", lambda _module: state)
    monkeypatch.setattr(features, "_link_kind", lambda _ipr, kind, _n: calls.append(kind) or True)
    assert features._tunnel_kind(None, "ip6tnl", "pip6") is answer  # type: ignore[arg-type]
    assert calls == (["ip6tnl"] if tried else [])
