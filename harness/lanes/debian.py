"""Debian kernels by name, through a private apt configuration under the cache.

``~/.cache/lvsconf/apt/`` holds its own ``sources.list`` (every suite in :data:`SUITES`, plus its
``-security`` suite where Debian has one), its own lists, archives and an empty dpkg status, so
the host's apt sources, lists and ``/boot`` are never read or written. Every ``apt-get`` /
``apt-cache`` call gets ``-o Dir::Etc::SourceList=… -o Dir::State::Lists=… -o Dir::Cache=…``.
The lists are refreshed when older than :data:`MAX_AGE` (``LVSCONF_APT_MAX_AGE`` seconds).

A name resolves to a :class:`Pick` — a kernel release and the packages that carry it:

- a suite or codename (``bullseye``, ``stable``, ``sid``, ``unstable`` …): the newest
  ``linux-image-amd64`` of that suite or its security suite, and the image it depends on;
- a package version of ``linux-image-amd64`` (``6.1.192-3``, as ``lvsconf kernel list`` shows);
- a release (``5.10.0-32-amd64``, ``7.2.13+deb14-amd64``) or a package name.

Package layouts (:func:`layout_for`): one ``linux-image-<release>`` with ``/lib/modules``; its
``-unsigned`` variant where only that exists (6.12 in bookworm-security); or, from 7.x in sid, a
``linux-image-<release>`` that only depends on ``linux-binary-<release>`` (the image, at
``/usr/lib/modules/<release>/vmlinuz``), ``linux-modules-<release>`` (``.ko.xz``) and
``linux-base-<release>`` (``modules.builtin``, ``modules.order``, ``config``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.lanes.errors import LaneError, Runner, run_command

#: Debian suites in the private sources list, oldest first (codenames; aliases such as
#: ``stable`` come from each suite's own Release file)
SUITES: tuple[str, ...] = ("bullseye", "bookworm", "trixie", "forky", "sid")
#: suites without a security suite
NO_SECURITY = frozenset({"sid"})
META = "linux-image-amd64"
MAX_AGE = 86400.0
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY = "http://deb.debian.org/debian-security"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
LIST_HINT = "see what each suite offers with: lvsconf kernel list"

_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+~:_-]*")
_FLAVOUR = re.compile(r"-(amd64|cloud-amd64|rt-amd64)(-unsigned)?$")


# ---------------------------------------------------------------- the private configuration


def host_mirrors(paths: Sequence[Path] | None = None) -> tuple[str, str]:
    """(Debian mirror, security mirror) the host's apt sources use, else deb.debian.org.

    ``LVSCONF_DEBIAN_MIRROR`` / ``LVSCONF_DEBIAN_SECURITY_MIRROR`` override them."""
    if paths is None:
        etc = Path("/etc/apt")
        paths = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]
    mirror = security = ""
    for path in paths:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            for uri, suites in _sources_entries(path.read_text()):
                if any(s.endswith("-security") for s in suites):
                    security = security or uri
                elif any(s.split("-")[0] in SUITES for s in suites):
                    mirror = mirror or uri
    return (
        os.environ.get("LVSCONF_DEBIAN_MIRROR") or mirror or DEFAULT_MIRROR,
        os.environ.get("LVSCONF_DEBIAN_SECURITY_MIRROR") or security or DEFAULT_SECURITY,
    )


def _sources_entries(text: str) -> Iterator[tuple[str, list[str]]]:
    """(URI, suites) of one-line (``deb URI suite …``) and deb822 (``URIs:``) entries."""
    for stanza in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^(\w[\w-]*):[ \t]*(.*)$", stanza, re.M))
        if "URIs" in fields and "Suites" in fields and "deb" in fields.get("Types", "deb").split():
            for uri in fields["URIs"].split():
                yield uri.rstrip("/"), fields["Suites"].split()
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            yield words[1].rstrip("/"), [words[2]]


@dataclass(frozen=True, slots=True)
class AptConfig:
    """The private apt configuration rooted at ``root`` (``<cache>/apt``)."""

    root: Path
    mirror: str = DEFAULT_MIRROR
    security: str = DEFAULT_SECURITY
    keyring: Path = KEYRING
    run: Runner = field(default=run_command, compare=False)

    @property
    def sources_list(self) -> Path:
        return self.root / "sources.list"

    @property
    def lists(self) -> Path:
        return self.root / "lists"

    @property
    def stamp(self) -> Path:
        return self.root / "updated"

    def sources_text(self) -> str:
        opts = f"[arch=amd64 signed-by={self.keyring}]"
        lines = ["# lvsconf: private apt sources for kernel lanes (never the host's)"]
        for suite in SUITES:
            lines.append(f"deb {opts} {self.mirror} {suite} main")
            if suite not in NO_SECURITY:
                lines.append(f"deb {opts} {self.security} {suite}-security main")
        return "\n".join(lines) + "\n"

    @property
    def conf(self) -> Path:
        return self.root / "apt.conf"

    def conf_text(self) -> str:
        """Read after the host's apt.conf.d (``-c``): the host's update and dpkg hooks
        (appstream, packagekit) must not run for private lists, and a container's
        docker-clean must not switch off the package cache (else every call re-parses ~50 MB
        of lists: 5-8 s each, measured)."""
        cleared = (
            "APT::Update::Pre-Invoke",
            "APT::Update::Post-Invoke",
            "APT::Update::Post-Invoke-Success",
            "DPkg::Pre-Invoke",
            "DPkg::Post-Invoke",
        )
        lines = [f"#clear {key};" for key in cleared]
        lines += [
            'Dir::Cache::pkgcache "pkgcache.bin";',
            'Dir::Cache::srcpkgcache "srcpkgcache.bin";',
        ]
        return "\n".join(lines) + "\n"

    def options(self) -> list[str]:
        settings = {
            "Dir::Etc::SourceList": str(self.sources_list),
            "Dir::Etc::SourceParts": "/dev/null",
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": str(self.root / "preferences.d"),
            "Dir::State::Lists": str(self.lists),
            "Dir::State::status": str(self.root / "status"),
            "Dir::Cache": str(self.root / "cache"),
            # the archive's signatures are checked; only the Valid-Until date is not, so a
            # mirror that is a frozen snapshot (as on this project's CI machines) still works
            "Acquire::Check-Valid-Until": "false",
            "Acquire::Languages": "none",
            # the cache lives in root's home, which apt's _apt sandbox user cannot enter
            "APT::Sandbox::User": "root",
        }
        out = ["-c", str(self.conf)]
        for key, value in settings.items():
            out += ["-o", f"{key}={value}"]
        return out

    def argv(self, tool: str, *args: str) -> list[str]:
        return [tool, *self.options(), *args]

    def prepare(self) -> None:
        """Create the directories and files; a changed sources list makes the lists stale."""
        for d in (self.lists / "partial", self.root / "cache" / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        (self.root / "preferences.d").mkdir(exist_ok=True)
        (self.root / "status").touch()
        _write_if_changed(self.conf, self.conf_text())
        text = self.sources_text()
        if _write_if_changed(self.sources_list, text):
            self.stamp.unlink(missing_ok=True)

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the last successful update (None: never)."""
        try:
            mtime = self.stamp.stat().st_mtime
        except OSError:
            return None
        return (time.time() if now is None else now) - mtime

    def cmd(self, tool: str, *args: str) -> str:
        """Run an apt tool with this configuration; its stdout, or LaneError naming the fix."""
        out = self.run(self.argv(tool, *args))
        if out.returncode != 0:
            raise LaneError(f"{tool} {' '.join(args)} failed: {_last_error(out.stderr)}")
        return out.stdout


def _write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.rename(path)
    return True


def _last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("E:")]
    return (errors or lines or ["(no message)"])[-1]


def apt_config(root: Path, run: Runner = run_command) -> AptConfig:
    mirror, security = host_mirrors()
    return AptConfig(root, mirror, security, run=run)


def max_age() -> float:
    raw = os.environ.get("LVSCONF_APT_MAX_AGE", "")
    try:
        return float(raw) if raw else MAX_AGE
    except ValueError:
        raise LaneError(f"LVSCONF_APT_MAX_AGE={raw!r} is not a number of seconds") from None


@contextlib.contextmanager
def _update_lock(apt: AptConfig) -> Iterator[None]:
    fd = os.open(apt.root / "update.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def refresh(
    apt: AptConfig, progress: Callable[[str], None] = lambda _m: None, force: bool = False
) -> None:
    """``apt-get update`` the private lists when they are older than :func:`max_age`.

    A failed update with lists already present keeps them (said on ``progress``); without lists
    it is a :class:`LaneError`."""
    if not apt.keyring.exists():
        raise LaneError(f"{apt.keyring} missing: apt-get install debian-archive-keyring")
    apt.root.mkdir(parents=True, exist_ok=True)
    with _update_lock(apt):
        apt.prepare()
        age = apt.age()
        if not force and age is not None and age < max_age():
            return
        progress(f"updating the private apt lists in {apt.root} (suites: {', '.join(SUITES)}) …")
        out = apt.run(apt.argv("apt-get", "-q", "update"))
        if out.returncode == 0:
            apt.stamp.write_text(f"{time.time()}\n")
            return
        why = _last_error(out.stderr)
        if age is None:
            raise LaneError(
                f"apt-get update (private lists in {apt.lists}) failed: {why}; check the network "
                "or proxy, or set LVSCONF_DEBIAN_MIRROR"
            )
        progress(f"apt-get update failed ({why}); using lists from {age / 3600:.0f} h ago")


# ---------------------------------------------------------------- parsing apt's output


def parse_policy(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """``apt-cache policy PKG`` -> [(version, archives)] newest first, archives being the
    ``dists/`` names the version comes from (``sid``, ``trixie-security``)."""
    table: list[tuple[str, list[str]]] = []
    in_table = False
    for line in text.splitlines():
        if line.strip() == "Version table:":
            in_table = True
            continue
        if not in_table:
            continue
        version = re.fullmatch(r"\s+(?:\*\*\*\s+)?(\S+)\s+-?\d+", line)
        if version:
            table.append((version[1], []))
            continue
        source = re.fullmatch(r"\s+-?\d+\s+\S+\s+(\S+?)/\S+\s+\S+\s+Packages", line)
        if source and table:
            table[-1][1].append(source[1])
    return [(v, tuple(a)) for v, a in table]


def parse_depends(show: str) -> list[str]:
    """Package names in the first stanza's ``Depends:`` (every alternative, no versions)."""
    stanza = show.split("\n\n", 1)[0]
    m = re.search(r"^Depends:\s*(.*)$", stanza, re.M)
    if m is None:
        return []
    names = []
    for alt in re.split(r"[,|]", m[1]):
        name = alt.strip().split(" ", 1)[0].split(":", 1)[0]
        if name:
            names.append(name)
    return names


def parse_field(show: str, name: str) -> str | None:
    m = re.search(rf"^{name}:\s*(.*)$", show.split("\n\n", 1)[0], re.M)
    return m[1].strip() if m else None


def suite_aliases(lists: Path) -> dict[str, str]:
    """Suite alias -> codename (``stable`` -> ``trixie``), read from the downloaded Release
    files, so the mapping follows Debian's releases without a table here."""
    aliases: dict[str, str] = {}
    for release in sorted(lists.glob("*_InRelease")) + sorted(lists.glob("*_Release")):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            head = release.read_text(errors="replace")[:4000]
            suite = re.search(r"^Suite:\s*(\S+)", head, re.M)
            code = re.search(r"^Codename:\s*(\S+)", head, re.M)
            if suite and code and code[1] in SUITES:
                aliases[suite[1]] = code[1]
    return aliases


# ---------------------------------------------------------------- names to kernels


@dataclass(frozen=True, slots=True)
class Pick:
    """What a ``--kernel`` name resolved to."""

    spec: str
    release: str  # 7.2.13+deb14-amd64
    layout: str  # "image" | "unsigned" | "split"
    packages: tuple[str, ...]  # to download, the image's package first
    version: str = ""  # the kernel package's version
    suite: str | None = None  # codename, when named by suite

    def describe(self) -> str:
        where = f"{self.suite}: " if self.suite else ""
        return f"{where}{self.release} ({self.layout}: {' + '.join(self.packages)})"


def suite_of(spec: str, aliases: dict[str, str]) -> str | None:
    if spec in SUITES:
        return spec
    return aliases.get(spec)


def newest_in_suite(policy: list[tuple[str, tuple[str, ...]]], suite: str) -> str | None:
    """The newest version offered by ``suite`` or its security/updates suites (the policy
    table is newest first)."""
    archives = {suite, f"{suite}-security", f"{suite}-updates"}
    return next((v for v, a in policy if archives.intersection(a)), None)


def release_of_meta(show: str) -> str | None:
    """The release ``linux-image-amd64``'s stanza depends on."""
    for dep in parse_depends(show):
        m = re.fullmatch(r"linux-image-(\d\S*-amd64)", dep)
        if m:
            return m[1]
    return None


def release_of_name(name: str) -> str:
    """``linux-image-6.12.117+deb12-amd64-unsigned`` / ``linux-binary-…`` -> the release."""
    for prefix in ("linux-image-", "linux-binary-", "linux-modules-"):
        name = name.removeprefix(prefix)
    return name.removesuffix("-unsigned")


def is_name(spec: str) -> bool:
    """Whether ``spec`` is spelled like a suite, release, package or version (nothing else
    reaches apt)."""
    return bool(_NAME.fullmatch(spec)) and len(spec) <= 100


def is_release(spec: str) -> bool:
    return bool(_FLAVOUR.search(spec)) or spec.startswith(("linux-image-", "linux-binary-"))


def layout_for(apt: AptConfig, release: str, spec: str = "") -> Pick:
    """The packages that carry ``release``: split (sid 7.x), signed image, or unsigned image."""
    image = f"linux-image-{release}"
    show = _show(apt, image)
    if show is not None:
        deps = parse_depends(show)
        if f"linux-binary-{release}" in deps:
            parts = [f"linux-binary-{release}", f"linux-modules-{release}"]
            parts += [d for d in deps if d == f"linux-base-{release}"]
            version = parse_field(show, "Version") or ""
            return Pick(spec or release, release, "split", tuple(parts), version)
        return Pick(spec or release, release, "image", (image,), parse_field(show, "Version") or "")
    unsigned = _show(apt, f"{image}-unsigned")
    if unsigned is not None:
        version = parse_field(unsigned, "Version") or ""
        return Pick(spec or release, release, "unsigned", (f"{image}-unsigned",), version)
    raise LaneError(
        f"unknown kernel {spec or release}: no package {image} in any suite; {LIST_HINT}"
    )


def _show(apt: AptConfig, package: str) -> str | None:
    out = apt.run(apt.argv("apt-cache", "show", "--no-all-versions", package))
    return out.stdout if out.returncode == 0 and out.stdout.strip() else None


def meta_policy(apt: AptConfig) -> list[tuple[str, tuple[str, ...]]]:
    return parse_policy(apt.cmd("apt-cache", "policy", META))


def resolve(spec: str, apt: AptConfig) -> Pick:
    """A suite, codename, ``linux-image-amd64`` version, release or package name -> a
    :class:`Pick`. The private lists must be fresh (:func:`refresh`)."""
    if not is_name(spec):
        raise LaneError(f"not a kernel name: {spec!r}; {LIST_HINT}")
    suite = suite_of(spec, suite_aliases(apt.lists))
    if suite is not None or not is_release(spec):
        policy = meta_policy(apt)
        if suite is not None:
            version = newest_in_suite(policy, suite)
            if version is None:
                raise LaneError(f"suite {suite} offers no {META}; {LIST_HINT}")
        elif any(v == spec for v, _ in policy):
            version = spec
        else:
            raise LaneError(
                f"unknown kernel {spec!r}: not a suite ({', '.join(SUITES)}, stable, …), a "
                f"release such as 6.1.0-57-amd64, or a {META} version; {LIST_HINT}"
            )
        release = release_of_meta(apt.cmd("apt-cache", "show", f"{META}={version}"))
        if release is None:
            raise LaneError(f"{META} {version} depends on no linux-image-*-amd64; {LIST_HINT}")
        pick = layout_for(apt, release, spec)
        return Pick(spec, pick.release, pick.layout, pick.packages, pick.version, suite)
    return layout_for(apt, release_of_name(spec), spec)


@dataclass(frozen=True, slots=True)
class SuiteOffer:
    suite: str
    aliases: tuple[str, ...]
    version: str | None  # linux-image-amd64 version
    release: str | None


def offers(apt: AptConfig) -> list[SuiteOffer]:
    """What ``linux-image-amd64`` each suite offers now (for ``lvsconf kernel list``)."""
    aliases = suite_aliases(apt.lists)
    policy = meta_policy(apt)
    out = []
    for suite in SUITES:
        names = tuple(sorted(a for a, c in aliases.items() if c == suite and a != suite))
        version = newest_in_suite(policy, suite)
        release = None
        if version is not None:
            release = release_of_meta(apt.cmd("apt-cache", "show", f"{META}={version}"))
        out.append(SuiteOffer(suite, names, version, release))
    return out


def all_releases(apt: AptConfig) -> list[str]:
    """Every generic amd64 kernel release the private lists know (signed or unsigned)."""
    out = apt.cmd(
        "apt-cache", "search", "--names-only", r"^linux-(image|binary)-[0-9].*-amd64(-unsigned)?$"
    )
    names = {
        release_of_name(line.split()[0])
        for line in out.splitlines()
        if line.strip() and "-cloud-" not in line and "-rt-" not in line
    }
    return sorted(names, key=_release_key)


def _release_key(release: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.+-]", release)]
