"""The guest's Python from memory (harness/lanes/guest_python.py), without a VM.

The guest side is the prelude's shell lines; here they run in a private mount namespace
(``unshare --mount``), which is what a guest is for this purpose: the tmpfs and bind mounts
vanish with it, and the host's own mounts are never touched.
"""

from __future__ import annotations

import importlib.util
import io
import marshal
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from harness.lanes import guest_python

ROOT = Path(__file__).resolve().parents[2]


def open_tar(path: Path) -> tarfile.TarFile:
    """A tar file as the guest gets it: zstd-compressed when the host has zstd."""
    if path.suffix != ".zst":
        return tarfile.open(path)
    plain = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return tarfile.open(fileobj=io.BytesIO(plain))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> guest_python.GuestPython:
    base = tmp_path_factory.mktemp("guest-python")
    return guest_python.prepare(ROOT, base, cache=base / "cache")


def test_the_runtime_is_cached_and_leaves_developer_tools_out(
    prepared: guest_python.GuestPython,
) -> None:
    built = prepared.runtime_tar.stat().st_mtime_ns
    again, _ = guest_python.runtime_tar(prepared.runtime_tar.parent.parent)
    assert again == prepared.runtime_tar  # same environment: the same file,
    assert again.stat().st_mtime_ns == built  # not rebuilt
    with open_tar(prepared.runtime_tar) as tar:
        names = tar.getnames()
    site = Path(importlib.util.find_spec("pytest").origin).parent.parent  # type: ignore[arg-type]
    assert f"{str(site).lstrip('/')}/pytest/__init__.py" in names
    assert not any(f"{str(site).lstrip('/')}/mypy/" in n for n in names)
    stdlib = Path(shutil.__file__).parent
    assert f"{str(stdlib).lstrip('/')}/shutil.py" in names
    assert not any(n.startswith(f"{str(stdlib).lstrip('/')}/test/") for n in names)
    assert f"{str(stdlib).lstrip('/')}/unittest/case.py" in names
    assert not any(n.startswith(f"{str(stdlib).lstrip('/')}/unittest/test/") for n in names)
    assert not any("/_testcapi." in n for n in names)


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd")
def test_the_guest_gets_the_tar_files_compressed(prepared: guest_python.GuestPython) -> None:
    """Compressed: the guest reads them over 9p, slower under TCG than decompressing."""
    for built in (prepared.runtime_tar, prepared.project_tar):
        assert built.name.endswith(".tar.zst")
        assert not built.with_suffix("").exists()  # the plain tar is not kept
    assert "tar -I zstd -xf" in prepared.guest_prelude()


def test_project_bytecode_is_the_hosts_and_names_the_real_source(
    prepared: guest_python.GuestPython,
) -> None:
    source = ROOT / "harness" / "lanes" / "guest_python.py"
    pyc = Path(importlib.util.cache_from_source(str(source)))
    with open_tar(prepared.project_tar) as tar:
        names = tar.getnames()
        data = tar.extractfile(str(pyc).lstrip("/")).read()  # type: ignore[union-attr]
    assert str(source).lstrip("/") in names
    assert not any("__pycache__" in n and not n.endswith(".pyc") for n in names)
    # a timestamp pyc: Python in the guest accepts it for this very source
    st = source.stat()
    assert int.from_bytes(data[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
    assert int.from_bytes(data[12:16], "little") == st.st_size & 0xFFFFFFFF
    assert marshal.loads(data[16:]).co_filename == str(source)  # tracebacks show real paths


def in_private_mounts(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a private mount namespace (what a guest is, for the prelude)."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env},
    )


def test_the_prelude_quotes_every_path(tmp_path: Path) -> None:
    odd = tmp_path / "a b$(touch x)"
    gp = guest_python.GuestPython(odd / "r.tar", odd / "p.tar", (odd,), 10)
    text = gp.guest_prelude()
    assert "'" + str(odd / "r.tar") + "'" in text
    assert f"mount --bind {guest_python.GUEST_MOUNT}'{odd}' '{odd}'" in text


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_python_in_a_private_mount_namespace_imports_from_memory(
    prepared: guest_python.GuestPython,
) -> None:
    """What the guest does: after the prelude, the interpreter's standard library,
    site-packages and the project's packages come from the tmpfs, and the suite's modules
    import with their real paths."""
    probe = (
        "import os, shutil, pytest, harness.topology as t; "
        "print(shutil.__file__, pytest.__file__, t.__file__, t.__cached__)"
    )
    script = (
        f"{prepared.guest_prelude()} && "
        "grep -c ' lvsconf-python ' /proc/self/mountinfo && "
        f"cd {ROOT} && {sys.executable} -c '{probe}'"
    )
    out = in_private_mounts(script)
    assert out.returncode == 0, out.stderr
    assert "importing over 9p" not in out.stderr, out.stderr
    lines = out.stdout.split()
    assert int(lines[0]) == 1 + len(prepared.covered)  # the tmpfs and each bind
    assert lines[3] == str(ROOT / "harness" / "topology.py")
    # nothing of it reached the host's own mount table
    assert " lvsconf-python " not in Path("/proc/self/mountinfo").read_text()


REWRITE_PROBE = """
import sys
import _pytest.assertion.rewrite as rewrite
done = []
original = rewrite._rewrite_test
def counted(fn, config):
    done.append(str(fn))
    return original(fn, config)
rewrite._rewrite_test = counted
import pytest
rc = pytest.main(["--co", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                  "--impl", "reference", "conformance/test_forwarding.py"])
print("REWRITTEN", len(done), *done[:5])
sys.exit(rc)
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_pytest_in_the_guest_finds_every_module_already_rewritten(
    prepared: guest_python.GuestPython,
) -> None:
    """pytest rewrites the asserts of test modules and of every module of a plugin's
    distribution (the project is one). The tar files carry that rewritten bytecode, so a
    collection from memory, which may not write bytecode, rewrites nothing itself."""
    script = f'{prepared.guest_prelude()} && cd {ROOT} && {sys.executable} -c "$PROBE"'
    out = in_private_mounts(script, PROBE=REWRITE_PROBE, PYTHONDONTWRITEBYTECODE="1")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    counted = [line for line in out.stdout.splitlines() if line.startswith("REWRITTEN")]
    assert counted == ["REWRITTEN 0"], out.stdout[-2000:]
    assert "test_forwarding.py::test_dport[reference-ipv4]" in out.stdout


def test_a_relative_project_root_gives_the_guest_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    dirs, _ = guest_python.project_tar(Path("."), tmp_path / "p.tar")
    assert dirs and all(d.is_absolute() for d in dirs)
    with tarfile.open(tmp_path / "p.tar") as tar:
        assert (
            str(importlib.util.cache_from_source(str(ROOT / "impl" / "types.py"))).lstrip("/")
            in tar.getnames()
        )
