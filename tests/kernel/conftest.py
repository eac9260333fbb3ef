"""A fake apt for kernel-lane unit tests: ``apt-cache``/``apt-get`` scripts first on PATH that
answer from apt output recorded from Debian's archive (tests/kernel/data/apt), and a private
apt directory whose lists are fresh, so nothing reaches the network."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.lanes import provision

DATA = Path(__file__).parent / "data" / "apt"

FAKE_APT = """#!{python}
# lvsconf test double: answers apt-cache from recorded output, apt-get update with nothing
import sys
from pathlib import Path
data = Path({data!r})
args, skip = [], False
for a in sys.argv[1:]:
    if skip:
        skip = False
    elif a in ("-o", "-c"):
        skip = True
    elif not a.startswith("-"):
        args.append(a)
if Path(sys.argv[0]).name == "apt-get":
    Path({log!r}).open("a").write(" ".join(args) + "\\n")
    sys.exit(0 if args[:1] == ["update"] else 100)
name = {{"policy": "policy_{{}}.txt", "show": "show_{{}}.txt"}}.get(args[0], "?").format(args[-1])
path = data / name
if not path.exists():
    print("E: No packages found", file=sys.stderr)
    sys.exit(100)
sys.stdout.write(path.read_text())
"""


@pytest.fixture
def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """LVSCONF_CACHE in tmp_path, recorded apt on PATH; yields the apt-get call log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt-get.log"
    log.touch()
    script = FAKE_APT.format(python=sys.executable, data=str(DATA), log=str(log))
    for tool in ("apt-cache", "apt-get"):
        (bin_dir / tool).write_text(script)
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{provision.os.environ['PATH']}")
    monkeypatch.setenv("LVSCONF_CACHE", str(tmp_path / "cache"))
    apt = provision.private_apt()
    apt.prepare()
    for release in (DATA / "lists").iterdir():
        shutil.copy(release, apt.lists / release.name)
    apt.stamp.write_text("fresh\n")
    yield log
