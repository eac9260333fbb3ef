"""Package layouts, fetched and unpacked into the cache (packages built here with dpkg-deb, in
the layouts Debian uses; the recorded apt answers resolve the names). No network, no VM."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.lanes import debian, provision
from harness.lanes.errors import LaneError

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def _deb(out: Path, package: str, files: dict[str, bytes]) -> None:
    root = out.parent / f"build-{package}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1\nArchitecture: amd64\nMaintainer: t <t@t>\n"
        "Description: test\n"
    )
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    subprocess.run(
        ["dpkg-deb", "-Zgzip", "-b", str(root), str(out / f"{package}_1_amd64.deb")],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(root)


def _modules(prefix: str, suffix: str, skip: str = "") -> dict[str, bytes]:
    return {
        f"{prefix}/kernel/{m}{suffix}": b""
        for m in provision.REQUIRED_MODULES
        if not skip or skip not in m
    }


def _packages(tmp: Path, release: str, skip: str = "") -> dict[str, Path]:
    """Every package of the three layouts for ``release``, built into ``tmp/debs``."""
    debs = tmp / "debs"
    debs.mkdir(exist_ok=True)
    lib = f"lib/modules/{release}"
    usr = f"usr/lib/modules/{release}"
    image = {f"boot/vmlinuz-{release}": b"\0kernel", **_modules(lib, ".ko", skip)}
    _deb(debs, f"linux-image-{release}", image)
    _deb(debs, f"linux-image-{release}-unsigned", image)
    _deb(debs, f"linux-binary-{release}", {f"{usr}/vmlinuz": b"\0kernel"})
    _deb(debs, f"linux-modules-{release}", _modules(usr, ".ko.xz", skip))
    _deb(debs, f"linux-base-{release}", {f"{usr}/modules.builtin": b"", f"{usr}/config": b""})
    return {p.name.split("_")[0]: p for p in debs.glob("*.deb")}


def _downloader(debs: dict[str, Path], log: list[tuple[str, ...]]) -> provision.Download:
    def download(_apt: debian.AptConfig, packages: Sequence[str], dest: Path) -> None:
        log.append(tuple(packages))
        for p in packages:
            shutil.copy(debs[p], dest)

    return download


@pytest.mark.parametrize(
    ("spec", "release", "image_rel", "moddir_rel"),
    [
        ("bookworm", "6.1.0-57-amd64", "boot/vmlinuz-6.1.0-57-amd64", "lib/modules"),
        (
            "sid",
            "7.2.13+deb14-amd64",
            "usr/lib/modules/7.2.13+deb14-amd64/vmlinuz",
            "usr/lib/modules",
        ),
    ],
)
def test_fetch_unpacks_each_layout_into_the_cache_and_indexes_it(
    fake_apt: Path, tmp_path: Path, spec: str, release: str, image_rel: str, moddir_rel: str
) -> None:
    log: list[tuple[str, ...]] = []
    fetched = provision.fetch(spec, download=_downloader(_packages(tmp_path, release), log))
    root = provision.kernels_dir() / release
    assert fetched.tree.image == root / image_rel
    assert fetched.tree.moddir == root / moddir_rel / release
    assert (fetched.tree.moddir / "modules.dep").exists()  # depmod ran, usr/ trees too
    assert not list(provision.kernels_dir().glob("*.part*"))
    assert fetched.pick is not None and log == [fetched.pick.packages]
    # the image path alone finds the same tree (what vng and --kernel PATH do)
    assert provision.find_tree(fetched.tree.image).moddir == fetched.tree.moddir
    again = provision.fetch(spec, download=_downloader({}, log))
    assert again.cached and len(log) == 1
    # a release already in the cache needs no apt at all
    assert provision.fetch(release, apt=None, download=_downloader({}, log)).cached


def test_unsigned_layout(fake_apt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = "6.12.117+deb12-amd64"
    real_layout = debian.layout_for

    def only_unsigned(apt: debian.AptConfig, rel: str, spec: str = "") -> debian.Pick:
        pick = real_layout(apt, rel, spec)
        pkg = f"linux-image-{rel}-unsigned"
        return debian.Pick(pick.spec, rel, "unsigned", (pkg,), pick.version, pick.suite)

    monkeypatch.setattr(debian, "layout_for", only_unsigned)
    log: list[tuple[str, ...]] = []
    fetched = provision.fetch(release, download=_downloader(_packages(tmp_path, release), log))
    assert log == [(f"linux-image-{release}-unsigned",)]
    assert fetched.tree.image.name == f"vmlinuz-{release}"


def test_a_tree_without_required_modules_is_refused_and_not_cached(
    fake_apt: Path, tmp_path: Path
) -> None:
    release = "7.2.13+deb14-amd64"
    debs = _packages(tmp_path, release, skip="9p")
    with pytest.raises(LaneError, match="lacks modules 9p, 9pnet_virtio"):
        provision.fetch("sid", download=_downloader(debs, []))
    assert not list(provision.kernels_dir().iterdir())


def test_xz_modules_need_a_kmod_that_reads_xz(
    fake_apt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provision, "kmod_features", lambda run=None: {"ZSTD"})
    debs = _packages(tmp_path, "7.2.13+deb14-amd64")
    with pytest.raises(LaneError, match="XZ-compressed modules but the host's kmod"):
        provision.fetch("sid", download=_downloader(debs, []))


def test_host_kmod_reads_xz() -> None:
    """The guest runs the host's modprobe: sid's .ko.xz load only with a +XZ kmod."""
    if shutil.which("kmod") is None:
        pytest.skip("no kmod")
    assert "XZ" in provision.kmod_features()
