"""The house rules of the repository: which room may import which, and one code style.

Rooms (see README, *Architecture*): ``impl`` is the model (pure), ``harness`` the lab,
``conformance`` the suite, ``lvsconf`` the command line on top. The model imports nothing of the
others; the lab imports nothing of the suite or the CLI; the suite nothing of the CLI.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("impl", "harness", "conformance", "lvsconf")
FORBIDDEN: dict[str, set[str]] = {
    "impl": {"harness", "conformance", "lvsconf"},
    "harness": {"conformance", "lvsconf"},
    "conformance": {"lvsconf"},
    "lvsconf": set(),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_rooms_import_only_downwards() -> None:
    broken = []
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            for line, module in _imports(path):
                top = module.split(".")[0]
                if top in FORBIDDEN[room]:
                    broken.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    assert not broken, "imports against the room rules:\n" + "\n".join(broken)


def test_the_rule_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("import os\nfrom conformance.runner import report\n")
    assert (2, "conformance.runner") in _imports(bad)


def _ruff() -> str:
    exe = Path(sys.executable).with_name("ruff")
    found = str(exe) if exe.exists() else shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    return found


@pytest.mark.parametrize(
    "args", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"]
)
def test_ruff(args: list[str]) -> None:
    proc = subprocess.run([_ruff(), *args], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
