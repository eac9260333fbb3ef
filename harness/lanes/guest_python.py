"""The guest's Python runs from memory: its imports never cross 9p.

virtme-ng hands the guest the host's root over 9p, mounted without a ``cache=`` option, so with
no page cache: every ``stat``, ``open`` and ``read`` an import makes is a round trip through
QEMU's 9p server, and under TCG each one is slow. A pytest start-up makes tens of thousands of
them (measured: docs/architecture.md §6, item 8).

So the host packs what the guest's pytest imports into two tar files:

- the *runtime*: the interpreter's standard library and the environment's site-packages (minus
  developer tools the guest never imports), cached under ``<cache>/guest-python/`` by a
  fingerprint of every file's path, size and mtime, rebuilt only when one changes;
- the *project*: the project's packages with bytecode the host compiled (a guest cannot write
  bytecode back to the read-only share, so without it every project module would be compiled
  again in the guest, under emulation), built for each guest into its own directory.

Both also carry pytest's *rewritten* bytecode for the modules pytest rewrites: test modules, and
every module of a distribution that provides a pytest plugin (``pytest11``), which includes this
project itself. pytest caches rewritten modules in ``__pycache__`` under its own name, and reads
that cache even where it may not write one. Without it every guest process rewrote 87 modules
(about 5 s each under TCG, measured; ~0.35 s on the host).

The guest unpacks both into a tmpfs and bind-mounts each directory over its own path, so paths,
``sys.prefix`` and tracebacks stay exactly those of the host. When any step fails (no tmpfs, not
enough memory), the guest says so in one line and imports over 9p as before: slower, same result.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import py_compile
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.files import atomic_writer
from harness.lanes.provision import cache_root

#: site-packages entries the guest never imports (type checkers and their runtime, linters,
#: installers, the VM launcher itself): 60+ MB less to unpack. Matched against the first path
#: component below site-packages, up to its first "-" (so their dist-info go too).
DEV_ONLY = (
    "mypy",
    "mypyc",
    "mypy_extensions",
    "ast_serialize",
    "librt",
    "pip",
    "setuptools",
    "ruff",
    "virtme",
    "virtme_ng",
)
#: below a site-packages entry: parts no module of the suite imports (scapy's contrib layers)
UNUSED = ("scapy/contrib",)
#: optimised bytecode (python -O / -OO): the guest never runs optimised, ~25 MB
UNUSED_SUFFIXES = (".opt-1.pyc", ".opt-2.pyc")
#: directories of tests, at any depth of the standard library (unittest/test, ctypes/test, ...)
STDLIB_TEST_DIRS = ("test", "tests", "idle_test")
#: standard-library extension modules built for CPython's own tests
STDLIB_TEST_MODULES = ("_test", "_xxtest")
#: standard-library directories nothing here imports (GUI, installers; tests are
#: STDLIB_TEST_DIRS): ~200 MB less
STDLIB_SKIP = (
    "site-packages",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
)
GUEST_MOUNT = "/run/lvsconf-python"
#: zstd level of the tar files (see :func:`compressed`)
ZSTD_LEVEL = 3
SKIP_DIRS = ("__pycache__", ".git", ".venv", "node_modules")


@dataclass(frozen=True, slots=True)
class GuestPython:
    """What a guest needs to run from memory: two tar files and the paths (directories, and
    libpython) the guest covers with their copies."""

    runtime_tar: Path  # .tar, or .tar.zst (see compressed)
    project_tar: Path
    covered: tuple[Path, ...]
    size_mb: int  # unpacked size, for the tmpfs

    def guest_prelude(self) -> str:
        """Shell lines for the guest, before it starts Python (see the module docstring)."""
        mount = shlex.quote(GUEST_MOUNT)
        binds = " && ".join(
            f"mount --bind {mount}{shlex.quote(str(d))} {shlex.quote(str(d))}" for d in self.covered
        )
        steps = " && ".join(
            [
                f"mkdir -p {mount}",
                f"mount -t tmpfs -o size={self.size_mb}m,mode=0755 lvsconf-python {mount}",
                _unpack(self.runtime_tar, mount),
                _unpack(self.project_tar, mount),
                binds,
            ]
        )
        warn = (
            "echo 'lvsconf: could not run the guest Python from memory "
            "(tmpfs, tar or bind mount failed); importing over 9p, slower' >&2"
        )
        return f"{{ {steps}; }} >/dev/null 2>&1 || {warn}"


def _unpack(tar: Path, into: str) -> str:
    """The guest's command to unpack ``tar``: GNU tar runs ``zstd -d`` for a compressed one
    (the guest's root is the host's, so it has the zstd that compressed it)."""
    compression = "-I zstd " if tar.suffix == ".zst" else ""
    return f"tar {compression}-xf {shlex.quote(str(tar))} -C {into}"


def compressed(tar: Path) -> Path:
    """``tar`` compressed with zstd (``<name>.zst`` beside it; the plain file goes), or ``tar``
    itself when the host has no zstd. The guest reads the file over 9p, which under TCG is
    slower than decompressing: measured in a guest, the 119 MB runtime tar took 7.1-7.7 s to
    unpack, its 37 MB zstd file 3.6-4.7 s."""
    zstd = shutil.which("zstd")
    if zstd is None:
        return tar
    out = tar.with_name(tar.name + ".zst")
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    try:
        subprocess.run(
            [zstd, "-q", "-f", f"-{ZSTD_LEVEL}", "-T0", str(tar), "-o", str(tmp)],
            check=True,
            capture_output=True,
        )
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)
    tar.unlink()
    return out


# ---------------------------------------------------------------- what goes in


def shared_library() -> Path | None:
    """The interpreter's libpython when it is built shared (pyenv, many distributions): every
    Python process maps it, 20+ MB over 9p each time."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    path = Path(sysconfig.get_config_var("LIBDIR")) / sysconfig.get_config_var("INSTSONAME")
    return path if path.is_file() else None


def runtime_dirs() -> tuple[Path, ...]:
    """The standard library (where ``os`` lives) and this environment's site-packages."""
    paths = sysconfig.get_paths()
    found: list[Path] = [Path(os.__file__).parent]
    for key in ("purelib", "platlib"):
        p = Path(paths[key])
        if p.is_dir() and p not in found:
            found.append(p)
    return tuple(found)


def project_dirs(root: Path) -> tuple[Path, ...]:
    """Top-level directories of the project holding Python files (not the venv, not hidden),
    as absolute paths: they are the guest's paths too."""
    root = root.resolve()
    prefix = Path(sys.prefix).resolve()
    found = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith(".") or child.name in SKIP_DIRS:
            continue
        resolved = child.resolve()
        if resolved == prefix or prefix.is_relative_to(resolved):
            continue
        if any(child.rglob("*.py")):
            found.append(child)
    return tuple(found)


def _skipped(top: Path, rel: Path) -> bool:
    first = rel.parts[0] if rel.parts else ""
    if top.name == "site-packages":
        return (
            first.split("-")[0] in DEV_ONLY
            or "__mypyc" in first
            or any(rel.as_posix().startswith(u) for u in UNUSED)
        )
    return (
        first in STDLIB_SKIP
        or first.startswith("config-")
        or any(part in STDLIB_TEST_DIRS for part in rel.parts)
        or rel.name.startswith(STDLIB_TEST_MODULES)
    )


def _walk(top: Path, keep_pycache: bool) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        rel = here.relative_to(top)
        if rel.parts and _skipped(top, rel):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(
            d
            for d in dirnames
            if (d not in SKIP_DIRS or d == "__pycache__" and keep_pycache)
            and not _skipped(top, rel / d)
        )
        for name in sorted(filenames):
            if name.endswith(UNUSED_SUFFIXES) or _skipped(top, rel / name):
                continue
            yield here / name


# ---------------------------------------------------------------- the runtime tar (cached)


def _rewrite_tail() -> str | None:
    """The name ending of pytest's cached rewritten bytecode (``.<tag>-pytest-<version>.pyc``)."""
    try:
        from _pytest.assertion.rewrite import PYC_TAIL  # noqa: PLC0415
    except ImportError:
        return None
    return str(PYC_TAIL)


#: bumped when what the runtime tar holds changes (2: pytest's rewritten bytecode; 3: no
#: standard-library tests at any depth)
RUNTIME_FORMAT = 3


def _fingerprint(files: list[Path]) -> str:
    h = hashlib.sha256(f"{sys.version}\0{RUNTIME_FORMAT}".encode())
    for f in files:
        st = f.lstat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _arcname(path: Path) -> str:
    return str(path).lstrip("/")


def _write_tar(target: Path, members: Iterable[tuple[Path, str]]) -> int:
    """Write ``(file, arcname)`` members to ``target`` atomically; return their total size."""
    target.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    with atomic_writer(target, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for path, arcname in members:
            info = tar.gettarinfo(str(path), arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
                total += info.size
            elif info.issym():
                tar.addfile(info)
    return total


def runtime_paths() -> tuple[Path, ...]:
    """What the runtime tar holds and the guest covers: :func:`runtime_dirs` and libpython."""
    lib = shared_library()
    return (*runtime_dirs(), *((lib,) if lib else ()))


def plugin_modules() -> frozenset[Path]:
    """Source files of the installed distributions that provide pytest plugins (``pytest11``
    entry points, e.g. pytest-xdist): pytest rewrites every module of those."""
    found: set[Path] = set()
    for dist in importlib.metadata.distributions():
        if not any(ep.group == "pytest11" for ep in dist.entry_points):
            continue
        for f in dist.files or ():
            if f.suffix == ".py":
                found.add(Path(str(dist.locate_file(f))).resolve())
    return frozenset(found)


def runtime_tar(cache: Path | None = None) -> tuple[Path, int]:
    """The cached runtime tar for this interpreter and environment, built if missing."""
    tail = _rewrite_tail()
    files = [
        f
        for p in runtime_paths()
        for f in (_walk(p, keep_pycache=True) if p.is_dir() else [p])
        if tail is None or not f.name.endswith(tail)  # pytest's own cache: written afresh below
    ]
    key = _fingerprint(files)
    where = (cache or cache_root()) / "guest-python"
    target = where / f"runtime-{key}.tar"
    size_file = where / f"runtime-{key}.size"  # written last: the tar is complete
    for built in (target.with_name(target.name + ".zst"), target):
        if built.exists() and size_file.exists():
            return built, int(size_file.read_text())
    plugins = plugin_modules()
    with tempfile.TemporaryDirectory(prefix="lvsconf-pyc-") as stage_name:
        members = _with_bytecode(files, Path(stage_name), False, lambda f: f.resolve() in plugins)
        size = _write_tar(target, members)
    built = compressed(target)
    size_file.write_text(f"{size}\n")
    for old in where.glob("runtime-*"):  # one generation: the environment changed
        if old not in (built, size_file):
            old.unlink(missing_ok=True)
    return built, size


# ---------------------------------------------------------------- the project tar (per guest)


def _compiled(source: Path, stage: Path) -> Path | None:
    """Bytecode of ``source`` compiled into ``stage`` (mirroring its path), named and stamped as
    Python would (mtime and size of the source), with the source's own path in tracebacks."""
    cfile = stage / importlib.util.cache_from_source(str(source)).lstrip("/")
    try:
        py_compile.compile(
            str(source),
            cfile=str(cfile),
            dfile=str(source),
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP,
        )
    except py_compile.PyCompileError:
        return None  # the guest reports the syntax error itself, as the host would
    return cfile


def _rewritten(source: Path, stage: Path) -> Path | None:
    """pytest's rewritten bytecode of ``source``, staged where pytest's import hook looks for
    it (``__pycache__/<name>.<tag>-pytest-<version>.pyc``), written by pytest's own functions.
    None when pytest is not importable or its internals differ: the guest then rewrites the
    module itself (slower, same result); a test checks that pytest accepts what is written."""
    try:
        from _pytest.assertion import rewrite  # noqa: PLC0415

        cfile = stage / _arcname(source.parent / "__pycache__" / (source.stem + rewrite.PYC_TAIL))
        source_hash, co = rewrite._rewrite_test(source, None)  # config None: no pass hook
        cfile.parent.mkdir(parents=True, exist_ok=True)
        with open(cfile, "wb") as fp:
            rewrite._write_pyc_fp(fp, source_hash, co)
    except (ImportError, AttributeError, TypeError, ValueError, SyntaxError, OSError):
        return None
    return cfile


def _with_bytecode(
    files: Iterable[Path], stage: Path, compiled: bool, rewritten: Callable[[Path], bool]
) -> Iterator[tuple[Path, str]]:
    """Tar members: each file, plus for a ``.py`` its host-compiled bytecode (``compiled``) and
    pytest's rewritten bytecode when ``rewritten(path)``."""
    for f in files:
        yield f, _arcname(f)
        if f.suffix != ".py":
            continue
        extra = [_compiled(f, stage) if compiled else None]
        extra.append(_rewritten(f, stage) if rewritten(f) else None)
        yield from ((c, c.relative_to(stage).as_posix()) for c in extra if c is not None)


def project_tar(root: Path, target: Path) -> tuple[tuple[Path, ...], int]:
    """Write the project's packages (sources, host-compiled and pytest-rewritten bytecode) to
    ``target``. Every project module gets rewritten bytecode: the project is a pytest plugin's
    distribution, so pytest rewrites all of them (see the module docstring)."""
    dirs = project_dirs(root)
    with tempfile.TemporaryDirectory(prefix="lvsconf-pyc-") as stage_name:
        files = (f for d in dirs for f in _walk(d, keep_pycache=False))
        members = _with_bytecode(files, Path(stage_name), True, lambda _f: True)
        size = _write_tar(target, members)
    return dirs, size


def prepare(root: Path, guest_dir: Path, cache: Path | None = None) -> GuestPython:
    """Both tar files for a guest that runs ``root``'s project; the project tar in ``guest_dir``."""
    runtime, runtime_size = runtime_tar(cache)
    pdirs, project_size = project_tar(root, guest_dir / "project.tar")
    project = compressed(guest_dir / "project.tar")
    size_mb = (runtime_size + project_size) // (1 << 20) + 64  # tar rounding, small files
    return GuestPython(runtime, project, (*runtime_paths(), *pdirs), size_mb)
