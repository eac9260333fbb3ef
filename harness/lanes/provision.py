"""Debian kernels for VM lanes: resolve a name to a package, fetch and unpack it into a cache.

Nothing is installed on the host: ``apt-get download`` fetches the .deb into a temporary
directory and ``dpkg-deb -x`` unpacks it into ``~/.cache/lvsconf/kernels/<release>`` (via a
``.part`` directory renamed into place, so a half-unpacked tree is never used). virtme-ng finds
the modules itself by walking up from the image to ``lib/modules`` (docs/architecture.md §6.1).

Package names move with ABI bumps (``linux-image-6.1.0-56-amd64`` becomes ``-57`` and old ones
leave the mirror), so ``auto`` is resolved through ``linux-image-amd64``'s current dependency,
never pinned.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
Progress = Callable[[str], None]


class LaneError(Exception):
    """A kernel lane cannot be provided; the message is one line naming the problem and the fix."""


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=300)


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


# ---------------------------------------------------------------- resolving names to packages

LIST_HINT = "list available ones with: apt-cache search --names-only '^linux-image-[0-9].*-amd64'"


def package_for(version: str, run: Runner = _run) -> str:
    """The Debian package providing kernel ``version`` (``auto`` = current linux-image-amd64).

    ``version`` is a release (``6.1.0-56-amd64``, ``6.12.117+deb12-amd64``) or a package name.
    Signed packages are preferred; the ``-unsigned`` variant is used when only it exists (6.12
    in bookworm-security).
    """
    if version == "auto":
        out = run(["apt-cache", "depends", "linux-image-amd64"])
        m = re.search(r"^\s*Depends:\s*(linux-image-\S+)", out.stdout, re.M)
        if out.returncode != 0 or m is None:
            raise LaneError(
                "cannot resolve --kernel auto: apt-cache depends linux-image-amd64 names no "
                "kernel; run apt-get update, or name a version (" + LIST_HINT + ")"
            )
        return m[1]
    if not re.fullmatch(r"[0-9A-Za-z.+~_-]+", version):
        raise LaneError(f"not a kernel version: {version!r}; {LIST_HINT}")
    base = version if version.startswith("linux-image-") else f"linux-image-{version}"
    candidates = [base] if base.endswith("-unsigned") else [base, f"{base}-unsigned"]
    for pkg in candidates:
        out = run(["apt-cache", "show", "--no-all-versions", pkg])
        if out.returncode == 0 and out.stdout.strip():
            return pkg
    raise LaneError(f"unknown kernel version {version}: no package {base} in apt; {LIST_HINT}")


def release_of(package: str) -> str:
    """``linux-image-6.12.117+deb12-amd64-unsigned`` -> ``6.12.117+deb12-amd64``."""
    rel = package.removeprefix("linux-image-")
    return rel.removesuffix("-unsigned")


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


def cached_tree(release: str) -> KernelTree | None:
    root = kernels_dir() / release
    image = root / "boot" / f"vmlinuz-{release}"
    for moddir in (root / "lib" / "modules" / release, root / "usr" / "lib" / "modules" / release):
        if image.is_file() and moddir.is_dir():
            return KernelTree(release, image, moddir)
    return None


# ---------------------------------------------------------------- fetching


def _depmod(root: Path, release: str) -> None:
    """Index the modules now, inside the cache tree: some .debs ship no modules.dep, and vng
    would otherwise run depmod at the first boot (measured: +~15 s under load)."""
    moddir = root / "lib" / "modules" / release
    if not moddir.is_dir() or (moddir / "modules.dep").exists() or shutil.which("depmod") is None:
        return
    out = subprocess.run(
        ["depmod", "-a", "-b", str(root), release],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if out.returncode != 0:
        raise LaneError(f"depmod for {release} failed: {out.stderr.strip()}; apt-get install kmod")


@dataclass(frozen=True, slots=True)
class Fetched:
    tree: KernelTree
    package: str
    seconds: float  # 0.0 when it came from the cache
    cached: bool


def fetch(version: str, progress: Progress = lambda _m: None, run: Runner = _run) -> Fetched:
    """Resolve ``version`` and make sure its tree is unpacked in the cache; checked."""
    package = package_for(version, run)
    release = release_of(package)
    tree = cached_tree(release)
    if tree is not None:
        return Fetched(check_tree(tree), package, 0.0, True)
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise LaneError(f"{tool} not found: kernel lanes need a Debian/Ubuntu host")
    progress(f"fetching kernel {package} …")
    start = time.monotonic()
    dest = kernels_dir() / release
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + f".part{os.getpid()}")
    with tempfile.TemporaryDirectory(prefix="lvsconf-deb-") as tmp:
        os.chmod(tmp, 0o755)  # apt's sandbox user must be able to write here; we pass root anyway
        out = subprocess.run(
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise LaneError(f"apt-get download {package} failed: {last}; check apt sources/proxy")
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise LaneError(f"apt-get download {package} produced {len(debs)} .deb files")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir()
        try:
            unpack = subprocess.run(
                ["dpkg-deb", "-x", str(debs[0]), str(part)],
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
            if unpack.returncode != 0:
                raise LaneError(f"dpkg-deb -x {debs[0].name} failed: {unpack.stderr.strip()}")
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
        raise LaneError(f"package {package} has no boot/vmlinuz-{release}; not a kernel image")
    return Fetched(check_tree(tree), package, time.monotonic() - start, False)


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


def host_has_ipvs(run: Runner = _run) -> bool:
    """True when the running kernel has IPVS (loaded, built in, or a loadable module).

    Uses ``modprobe --dry-run``: the check itself never loads anything into the host.
    """
    if Path("/proc/net/ip_vs").exists() or Path("/sys/module/ip_vs").exists():
        return True
    try:
        return run(["modprobe", "--dry-run", "--quiet", "ip_vs"]).returncode == 0
    except FileNotFoundError:
        return False


def resolve_lane(spec: str | None, has_ipvs: Callable[[], bool] = host_has_ipvs) -> Lane:
    """``--kernel`` to a lane: None = host when it has IPVS, else ``auto``; ``host``;
    ``auto``; a Debian version; or a path to a kernel image (checked now)."""
    if spec is None or spec == "":
        return Lane("host", "host") if has_ipvs() else Lane("vm", "auto", version="auto")
    if spec == "host":
        return Lane("host", spec)
    if "/" in spec or Path(spec).exists():
        return Lane("vm", spec, tree=check_tree(find_tree(Path(spec))))
    if spec != "auto" and not re.fullmatch(r"(linux-image-)?\d+\.\d+[0-9A-Za-z.+~_-]*", spec):
        raise LaneError(
            f"--kernel {spec!r}: expected host, auto, a Debian kernel version such as "
            f"6.1.0-56-amd64, or a path to a kernel image; {LIST_HINT}"
        )
    return Lane("vm", spec, version=spec)
