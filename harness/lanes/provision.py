"""Kernel trees for VM lanes: find, check and fetch them into the cache; lanes from ``--kernel``.

Nothing is installed on the host: the packages a name resolves to (:mod:`harness.lanes.debian`,
through a private apt configuration) are fetched with ``apt-get download`` into a temporary
directory and unpacked with ``dpkg-deb -x`` into ``~/.cache/lvsconf/kernels/<release>`` (via a
``.part`` directory renamed into place, so a half-unpacked tree is never used), then indexed
with depmod. virtme-ng finds the modules itself by walking up from the image to
``lib/modules`` or ``usr/lib/modules``.

Package names move with ABI bumps (``linux-image-6.1.0-56-amd64`` becomes ``-57`` and old ones
leave the mirror), so suites and ``auto`` are resolved through ``linux-image-amd64``'s current
dependency, never pinned.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.lanes import debian
from harness.lanes.errors import LaneError, Progress, Runner, run_command

#: modules a kernel lane needs, relative to lib/modules/<release>/kernel, without .ko suffix
REQUIRED_MODULES: tuple[str, ...] = (
    "net/netfilter/ipvs/ip_vs",
    "net/netfilter/ipvs/ip_vs_rr",
    "net/netfilter/ipvs/ip_vs_wrr",
    "net/netfilter/ipvs/ip_vs_sh",
    "net/netfilter/ipvs/ip_vs_mh",
    "net/netfilter/ipvs/ip_vs_lc",
    "net/netfilter/ipvs/ip_vs_wlc",
    "net/netfilter/ipvs/ip_vs_pe_sip",
    "drivers/net/veth",
    "fs/9p/9p",
    "net/9p/9pnet_virtio",
)
_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")

__all__ = ["LaneError", "Progress", "Runner"]


def cache_root() -> Path:
    """``$LVSCONF_CACHE`` or ``~/.cache/lvsconf``."""
    env = os.environ.get("LVSCONF_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lvsconf"


def kernels_dir() -> Path:
    return cache_root() / "kernels"


@dataclass(frozen=True, slots=True)
class KernelTree:
    """An unpacked kernel: ``image`` (vmlinuz) and ``moddir`` (lib/modules/<release>)."""

    release: str
    image: Path
    moddir: Path

    @property
    def root(self) -> Path:
        return _tree_root(self.moddir)


def _tree_root(moddir: Path) -> Path:
    # moddir = <root>/lib/modules/<rel> or <root>/usr/lib/modules/<rel>
    lib = moddir.parent.parent
    return lib.parent.parent if lib.parent.name == "usr" else lib.parent


# ---------------------------------------------------------------- finding and checking trees


def find_tree(image: Path) -> KernelTree:
    """The modules of a kernel image, found as virtme-ng does: walk up to ``lib/modules``."""
    image = image.resolve()
    if not image.is_file():
        raise LaneError(f"kernel image {image} does not exist; give a vmlinuz path or a version")
    release = _release_from_image_name(image)
    for parent in image.parents:
        for lib in (parent / "lib" / "modules", parent / "usr" / "lib" / "modules"):
            if not lib.is_dir():
                continue
            if release and (lib / release).is_dir():
                return KernelTree(release, image, lib / release)
            subdirs = sorted(p for p in lib.iterdir() if p.is_dir())
            if len(subdirs) == 1:
                return KernelTree(subdirs[0].name, image, subdirs[0])
    raise LaneError(
        f"no lib/modules/<release> found above {image}; unpack the image's modules next to it "
        "(dpkg-deb -x linux-image-….deb DIR) and pass DIR/boot/vmlinuz-…"
    )


def _release_from_image_name(image: Path) -> str:
    if image.name == "vmlinuz" and image.parent.parent.name == "modules":
        return image.parent.name  # usr/lib/modules/<release>/vmlinuz (sid's linux-binary)
    return image.name.removeprefix("vmlinuz-") if image.name.startswith("vmlinuz-") else ""


def missing_modules(moddir: Path) -> list[str]:
    """Names of :data:`REQUIRED_MODULES` absent from ``moddir`` (built-in ones count as present)."""
    builtin = set()
    bfile = moddir / "modules.builtin"
    if bfile.exists():
        builtin = {line.strip().removesuffix(".ko") for line in bfile.read_text().splitlines()}
    missing = []
    for mod in REQUIRED_MODULES:
        if f"kernel/{mod}" in builtin:
            continue
        if not any((moddir / "kernel" / f"{mod}{sfx}").exists() for sfx in _MODULE_SUFFIXES):
            missing.append(mod.rsplit("/", 1)[-1])
    return missing


def check_tree(tree: KernelTree) -> KernelTree:
    """Raise :class:`LaneError` unless ``tree`` can run the kernel lane."""
    if not tree.image.is_file():
        raise LaneError(f"kernel image missing: {tree.image}; remove {tree.moddir} and fetch again")
    missing = missing_modules(tree.moddir)
    if missing:
        raise LaneError(
            f"kernel {tree.release} lacks modules {', '.join(missing)} (in {tree.moddir}); use "
            "the generic -amd64 flavour (-cloud has no 9p), e.g. --kernel auto"
        )
    return tree


def tree_in(root: Path, release: str) -> KernelTree | None:
    """The kernel ``release`` unpacked under ``root``, in any layout Debian uses: the image in
    ``boot/vmlinuz-<release>`` or ``usr/lib/modules/<release>/vmlinuz`` (sid's linux-binary),
    the modules in ``lib/modules/<release>`` or ``usr/lib/modules/<release>``."""
    moddirs = [root / "lib" / "modules" / release, root / "usr" / "lib" / "modules" / release]
    images = [root / "boot" / f"vmlinuz-{release}", *(m / "vmlinuz" for m in moddirs)]
    image = next((i for i in images if i.is_file()), None)
    moddir = next((m for m in moddirs if (m / "kernel").is_dir()), None)
    if image is None or moddir is None:
        return None
    return KernelTree(release, image, moddir)


def cached_tree(release: str) -> KernelTree | None:
    return tree_in(kernels_dir() / release, release)


# ---------------------------------------------------------------- fetching


def _depmod(root: Path, release: str) -> None:
    """Index the modules now, inside the cache tree: some .debs ship no modules.dep, and vng
    would otherwise run depmod at the first boot (measured: +~15 s under load). kmod before 33
    knows only ``<base>/lib/modules``, so a ``usr/lib/modules`` tree is indexed with
    ``-b <root>/usr``; compressed ``.ko.xz`` modules need a kmod built with +XZ."""
    base = root / "usr" if (root / "usr" / "lib" / "modules" / release).is_dir() else root
    moddir = base / "lib" / "modules" / release
    if not moddir.is_dir() or (moddir / "modules.dep").exists() or shutil.which("depmod") is None:
        return
    out = run_command(["depmod", "-a", "-b", str(base), release])
    if out.returncode != 0:
        raise LaneError(f"depmod for {release} failed: {out.stderr.strip()}; apt-get install kmod")


def kmod_features(run: Runner = run_command) -> set[str]:
    """The compression formats the host's kmod reads (``+XZ``, ``+ZSTD`` …); the guest runs
    the host's modprobe, so these decide which compressed modules load there."""
    try:
        out = run(["kmod", "--version"])
    except FileNotFoundError:
        return set()
    return {w[1:] for w in out.stdout.split() if w.startswith("+")}


def _check_compression(tree: KernelTree, run: Runner = run_command) -> None:
    needs = {
        fmt
        for fmt, sfx in (("XZ", ".ko.xz"), ("ZSTD", ".ko.zst"))
        if (tree.moddir / "kernel" / "net" / "netfilter" / "ipvs" / f"ip_vs{sfx}").exists()
    }
    missing = needs - kmod_features(run)
    if missing:
        raise LaneError(
            f"kernel {tree.release} has {'/'.join(sorted(missing))}-compressed modules but the "
            "host's kmod cannot read them (kmod --version lacks +"
            f"{sorted(missing)[0]}); install a kmod built with it"
        )


@dataclass(frozen=True, slots=True)
class Fetched:
    tree: KernelTree
    package: str  # the packages, joined with " + "
    seconds: float  # 0.0 when it came from the cache
    cached: bool
    pick: debian.Pick | None = None  # None when a release was found in the cache without apt


Download = Callable[[debian.AptConfig, Sequence[str], Path], None]


def download_debs(apt: debian.AptConfig, packages: Sequence[str], dest: Path) -> None:
    """``apt-get download`` ``packages`` into ``dest`` through the private configuration."""
    out = subprocess.run(
        apt.argv("apt-get", "download", "-q", *packages),
        cwd=dest,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise LaneError(
            f"apt-get download {' '.join(packages)} failed: {last}; check the network or proxy"
        )


def private_apt(run: Runner = run_command) -> debian.AptConfig:
    """The private apt configuration under the cache (``<cache>/apt``)."""
    return debian.apt_config(cache_root() / "apt", run)


def host_suite(os_release: Path = Path("/etc/os-release")) -> str:
    """The host's Debian codename when it is one of the private suites, else ``stable``."""
    try:
        text = os_release.read_text()
    except OSError:
        return "stable"
    m = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.M)
    return m[1] if m and m[1] in debian.SUITES else "stable"


def pick(
    spec: str, progress: Progress = lambda _m: None, apt: debian.AptConfig | None = None
) -> debian.Pick:
    """Resolve a name (``auto`` = the host's suite) to a :class:`debian.Pick`; refreshes the
    private lists when stale. Downloads nothing."""
    apt = apt or private_apt()
    debian.refresh(apt, progress)
    return debian.resolve(host_suite() if spec == "auto" else spec, apt)


def check_name(spec: str, progress: Progress = lambda _m: None) -> str:
    """The release ``spec`` names (a cached release needs no apt); LaneError when unknown."""
    if debian.is_release(spec) and cached_tree(debian.release_of_name(spec)) is not None:
        return debian.release_of_name(spec)
    return pick(spec, progress).release


def fetch(
    spec: str,
    progress: Progress = lambda _m: None,
    apt: debian.AptConfig | None = None,
    download: Download = download_debs,
) -> Fetched:
    """Resolve ``spec`` and make sure its tree is unpacked in the cache; checked.

    A release already in the cache needs no apt at all (offline re-runs)."""
    if debian.is_release(spec):
        cached = cached_tree(debian.release_of_name(spec))
        if cached is not None:
            return Fetched(check_tree(cached), spec, 0.0, True)
    chosen = pick(spec, progress, apt)
    tree = cached_tree(chosen.release)
    if tree is not None:
        return Fetched(check_tree(tree), " + ".join(chosen.packages), 0.0, True, chosen)
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise LaneError(f"{tool} not found: kernel lanes need a Debian/Ubuntu host")
    progress(f"fetching kernel {chosen.describe()} …")
    start = time.monotonic()
    tree = unpack_into_cache(chosen, apt or private_apt(), download)
    return Fetched(tree, " + ".join(chosen.packages), time.monotonic() - start, False, chosen)


def unpack_into_cache(chosen: debian.Pick, apt: debian.AptConfig, download: Download) -> KernelTree:
    """Download ``chosen``'s packages, unpack them together, depmod, check, publish atomically."""
    release = chosen.release
    dest = kernels_dir() / release
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + f".part{os.getpid()}")
    with tempfile.TemporaryDirectory(prefix="lvsconf-deb-") as tmp:
        download(apt, chosen.packages, Path(tmp))
        debs = sorted(Path(tmp).glob("*.deb"))
        if len(debs) != len(chosen.packages):
            raise LaneError(
                f"apt-get download {' '.join(chosen.packages)} produced {len(debs)} .deb files"
            )
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir()
        try:
            for deb in debs:
                unpack = run_command(["dpkg-deb", "-x", str(deb), str(part)])
                if unpack.returncode != 0:
                    raise LaneError(f"dpkg-deb -x {deb.name} failed: {unpack.stderr.strip()}")
            tree = tree_in(part, release)
            if tree is None:
                raise LaneError(
                    f"{' + '.join(chosen.packages)} hold no kernel image and modules for "
                    f"{release}; not a kernel package"
                )
            check_tree(tree)
            _check_compression(tree)
            _depmod(part, release)
            # atomic publish: another run that raced us leaves its own (identical) tree
            try:
                part.rename(dest)
            except OSError:
                if cached_tree(release) is None:
                    raise
        finally:
            shutil.rmtree(part, ignore_errors=True)
    tree = cached_tree(release)
    if tree is None:
        raise LaneError(f"kernel {release} vanished from {dest} after unpacking")
    return check_tree(tree)


# ---------------------------------------------------------------- lanes


@dataclass(frozen=True, slots=True)
class Lane:
    """Where kernel-IPVS tests run: ``host`` (this kernel) or ``vm`` (a booted kernel).

    For a VM lane, ``version`` names a Debian kernel (``auto`` included), fetched when first
    needed, or ``tree`` is a given image with its modules.
    """

    kind: str  # "host" | "vm"
    spec: str
    version: str | None = None
    tree: KernelTree | None = None

    @property
    def is_vm(self) -> bool:
        return self.kind == "vm"

    def label(self) -> str:
        if not self.is_vm:
            return "host"
        return self.tree.release if self.tree is not None else str(self.version)

    def provide(self, progress: Progress = lambda _m: None) -> KernelTree:
        """The kernel tree to boot (fetched into the cache when named by version)."""
        if self.tree is not None:
            return self.tree
        assert self.version is not None
        return fetch(self.version, progress).tree


def host_has_ipvs(run: Runner = run_command) -> bool:
    """True when the running kernel has IPVS (loaded, built in, or a loadable module).

    Uses ``modprobe --dry-run``: the check itself never loads anything into the host.
    """
    if Path("/proc/net/ip_vs").exists() or Path("/sys/module/ip_vs").exists():
        return True
    try:
        return run(["modprobe", "--dry-run", "--quiet", "ip_vs"]).returncode == 0
    except FileNotFoundError:
        return False


LANE_HINT = (
    "expected host, auto, a Debian suite (bullseye, bookworm, trixie, sid, stable, …), a "
    "release such as 6.1.0-57-amd64, a linux-image-amd64 version, or a kernel image path"
)


class JoinKernels(argparse.Action):
    """``--kernel a --kernel b,c`` -> ``"a,b,c"``: repeated options join into the one comma
    separated string a single option gives, so every reader of the option sees a string."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        before = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, f"{before},{values}" if before else str(values))


def split_specs(option: str | None) -> list[str]:
    """``--kernel`` (comma separated, repeated options joined by commas) -> lane specs in order,
    duplicates dropped. An empty option is no spec (the default lane)."""
    specs: list[str] = []
    for part in (option or "").split(","):
        part = part.strip()
        if part and part not in specs:
            specs.append(part)
    return specs


def resolve_lane(spec: str | None, has_ipvs: Callable[[], bool] = host_has_ipvs) -> Lane:
    """One ``--kernel`` spec to a lane: None = host when it has IPVS, else ``auto``; ``host``;
    ``auto``; a Debian suite, release or package version (resolved when fetched); or a path to
    a kernel image (checked now)."""
    if spec is None or spec == "":
        return Lane("host", "host") if has_ipvs() else Lane("vm", "auto", version="auto")
    if spec == "host":
        return Lane("host", spec)
    if "/" in spec or Path(spec).exists():
        return Lane("vm", spec, tree=check_tree(find_tree(Path(spec))))
    if not debian.is_name(spec):
        raise LaneError(f"--kernel {spec!r}: {LANE_HINT}; {debian.LIST_HINT}")
    return Lane("vm", spec, version=spec)
