"""``lvsconf check`` and the ``*.scn`` collector: bad files are one line (exit 2) before any
namespace exists; conformance/regressions/ is collected with the suite; on the reference a
conforming file passes and a file whose expect line the model breaks fails (exit 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lvsconf.cli import main

ROOT = Path(__file__).resolve().parents[2]
REGRESSIONS = ROOT / "conformance" / "regressions"


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("-A -t 10.0.0.1:80 -s rr\ntcp 198.18.16.1:1 -> 10.0.0.1:80\n", "not a VIP of the lab"),
        (
            "-A -t 198.19.0.1:80 -s rr\n-a -t 198.19.0.1:80 -r 198.18.10.99\n"
            "tcp 198.18.16.1:1 -> 198.19.0.1:80\n",
            "real server 198.18.10.99 is not in the lab",
        ),
        ("-A -t 198.19.0.1:80 -s rr\ntcp 203.0.113.1:1 -> 198.19.0.1:80\n", "client pool"),
        ("-A -t 198.19.0.1:80 -s rr\n", "no flows"),
        ("-A -t 198.19.0.1:80 -s nope\n", "bad.scn:1:"),
    ],
)
def test_bad_scenario_file_is_one_line(
    tmp_path: Path, text: str, part: str, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "bad.scn"
    f.write_text(text)
    assert main(["check", str(f), "--impl", "reference"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and part in err, err


def test_check_wants_scenario_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "rules.txt"
    f.write_text("-A -t 198.19.0.1:80\n")
    assert main(["check", str(f), "--impl", "reference"]) == 2
    assert "not a scenario file (name it *.scn)" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "missing.scn"), "--impl", "reference"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_regressions_are_collected_with_the_suite() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "conformance", "--collect-only", "-q"]
        + ["-p", "no:cacheprovider", "--impl", "reference"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    files = sorted(p.name for p in REGRESSIONS.glob("*.scn"))
    assert files, "conformance/regressions/ holds scenario files"
    for name in files:
        assert f"conformance/regressions/{name}::test_scenario[reference-" in proc.stdout


def _check(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lvsconf.cli", "check", *argv, "--impl", "reference"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_check_on_the_reference_passes_and_fails_as_it_should(tmp_path: Path) -> None:
    good = REGRESSIONS / "drain-and-readd.scn"
    proc = _check(str(good))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
    assert proc.stdout.strip().splitlines()[-1] == "1 passed, 0 failed, 0 skipped"
    wrong = tmp_path / "wrong.scn"
    wrong.write_text(
        good.read_text().replace("expect forward 198.18.10.12:80", "expect forward 198.18.10.13:80")
    )
    proc = _check(str(wrong))
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "expected forward 198.18.10.13:80, the model decides forward 198.18.10.12:80" in (
        proc.stdout
    )
