"""The house rules of the repository: which room may import which, and one code style.

Rooms (see README, *Architecture*): ``impl`` is the model (pure), ``harness`` the lab,
``conformance`` the suite, ``lvsconf`` the command line on top. The model imports nothing of the
others; the lab imports nothing of the suite or the CLI; the suite nothing of the CLI.
"""

from __future__ import annotations

import ast
import re
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


# ---------------------------------------------------------------- the repository stands alone

#: documents that live outside the repository; a cite of one cannot be followed by a user
#: (spelled in two parts so that this file does not cite them itself)
OUTSIDE_DOCS = re.compile(
    "|".join(
        re.escape(a + b)
        for a, b in (
            ("ipvs-", "semantics"),
            ("infra", ".md"),
            ("house-", "style"),
            ("prior-", "art"),
            ("DESIGN", ".md"),
            ("/work/", "shared"),
            ("../", "shared"),
        )
    )
)
TEXT_SUFFIXES = {".py", ".md", ".toml", ".sh"}
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
#: ``docs/semantics.md §2.2``: a cite of one of the project's docs, optionally of a section
DOC_CITE = re.compile(r"docs/([\w-]+\.md)(?: §([0-9]+(?:\.[0-9]+)*))?")
#: a relative Markdown link to a document, ``[text](kernel-differences.md)``
MD_LINK = re.compile(r"\]\(((?!https?:|#)[^)#\s]+\.md)(?:#[^)]*)?\)")
HEADING = re.compile(r"^#{2,4} ([0-9]+(?:\.[0-9]+)*)\.? ", re.MULTILINE)


def text_files(root: Path) -> list[Path]:
    """Every source and documentation file under ``root`` (the scripts in ci/ included)."""
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or SKIP_DIRS & set(rel.parts) or rel.parts[0].endswith(".egg-info"):
            continue
        if path.suffix in TEXT_SUFFIXES or rel.parts[0] == "ci":
            found.append(path)
    return found


def outside_cites(root: Path) -> list[str]:
    """``path:line: text`` of every line that cites a document outside the repository."""
    return [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for path in text_files(root)
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE_DOCS.search(line)
    ]


def sections(doc: Path) -> set[str]:
    """The numbered sections of a doc (``## 2. ...`` -> "2", ``### 2.2 ...`` -> "2.2")."""
    return set(HEADING.findall(doc.read_text()))


def broken_doc_cites(root: Path) -> list[str]:
    """Cites of ``docs/<name>.md [§N]`` whose document or section does not exist, and relative
    Markdown links to a missing document. Item numbers below a section (``§1.5.7``, ``§8.32``)
    resolve to their nearest numbered heading."""
    broken = []
    for path in text_files(root):
        rel = path.relative_to(root)
        text = path.read_text(errors="replace")
        for name, number in DOC_CITE.findall(text):
            doc = root / "docs" / name
            if not doc.is_file():
                broken.append(f"{rel}: docs/{name} does not exist")
                continue
            parts = number.split(".") if number else []
            have = sections(doc) if parts else set()
            if parts and not any(".".join(parts[:k]) in have for k in range(len(parts), 0, -1)):
                broken.append(f"{rel}: docs/{name} has no §{number}")
        if path.suffix == ".md":
            for target in MD_LINK.findall(text):
                if DOC_CITE.fullmatch(target):
                    continue  # checked as a cite above
                if not (path.parent / target).is_file():
                    broken.append(f"{rel}: link to missing {target}")
    return broken


def test_no_cite_of_a_document_outside_the_repository() -> None:
    found = outside_cites(ROOT)
    assert not found, "cite kernel source or docs/ instead:\n" + "\n".join(found)


def test_cited_docs_and_sections_exist() -> None:
    broken = broken_doc_cites(ROOT)
    assert not broken, "\n".join(broken)


def test_the_cite_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    docs = "docs/"  # joined at run time, so this file cites no missing document itself
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "semantics.md").write_text("## 1. One\n### 1.5 Five\n## 8. Rules\n")
    (tmp_path / "docs" / "a.md").write_text("[ok](semantics.md) [gone](nowhere.md)\n")
    (tmp_path / "m.py").write_text(
        "# see " + "ipvs-" + "semantics §1.5\n"
        "# fine: docs/semantics.md §1.5.7, docs/semantics.md §8.32, docs/semantics.md\n"
        f"# broken: {docs}semantics.md §2.2 and {docs}missing.md\n"
    )
    assert [c.split(": ", 1)[0] for c in outside_cites(tmp_path)] == ["m.py:1"]
    assert sorted(broken_doc_cites(tmp_path)) == [
        f"{docs}a.md: link to missing nowhere.md",
        f"m.py: {docs}missing.md does not exist",
        f"m.py: {docs}semantics.md has no §2.2",
    ]
