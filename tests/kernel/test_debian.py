"""Kernel names through the private apt configuration, on apt output recorded from Debian's
archive (tests/kernel/data/apt, December 2026: bullseye 5.10, bookworm 6.1, trixie 6.12, forky
and sid 7.2 in the split linux-binary/linux-modules layout). No network."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.lanes import debian, provision
from harness.lanes.errors import LaneError

DATA = Path(__file__).parent / "data" / "apt"


def test_policy_table_newest_first_with_archives() -> None:
    table = debian.parse_policy((DATA / "policy_linux-image-amd64.txt").read_text())
    assert table[0] == ("7.2.13-1", ("sid",))
    assert ("6.12.118-1", ("trixie-security",)) in table
    assert debian.newest_in_suite(table, "bullseye") == "5.10.262-1"  # security beats main
    assert debian.newest_in_suite(table, "bookworm") == "6.1.192-3"
    assert debian.newest_in_suite(table, "trixie") == "6.12.118-1"
    assert debian.newest_in_suite(table, "buster") is None


def test_aliases_come_from_the_release_files(fake_apt: Path) -> None:
    aliases = debian.suite_aliases(provision.private_apt().lists)
    assert aliases["stable"] == "trixie" and aliases["oldstable"] == "bookworm"
    assert aliases["oldoldstable"] == "bullseye" and aliases["unstable"] == "sid"
    assert aliases["testing"] == "forky"
    assert not any(k.endswith("-security") for k in aliases)


@pytest.mark.parametrize(
    ("spec", "release", "layout"),
    [
        ("bullseye", "5.10.0-46-amd64", "image"),
        ("oldoldstable", "5.10.0-46-amd64", "image"),
        ("bookworm", "6.1.0-57-amd64", "image"),
        ("stable", "6.12.118+deb13-amd64", "image"),
        ("trixie", "6.12.118+deb13-amd64", "image"),
        ("testing", "7.2.12+deb14-amd64", "split"),
        ("sid", "7.2.13+deb14-amd64", "split"),
        ("unstable", "7.2.13+deb14-amd64", "split"),
        ("5.10.0-32-amd64", "5.10.0-32-amd64", "image"),
        ("linux-image-5.10.0-32-amd64", "5.10.0-32-amd64", "image"),
        ("7.2.13+deb14-amd64", "7.2.13+deb14-amd64", "split"),
        ("6.1.192-3", "6.1.0-57-amd64", "image"),  # a linux-image-amd64 version
        ("5.10.223-1", "5.10.0-32-amd64", "image"),
    ],
)
def test_names_resolve_to_a_release_and_its_layout(
    fake_apt: Path, spec: str, release: str, layout: str
) -> None:
    pick = debian.resolve(spec, provision.private_apt())
    assert (pick.release, pick.layout) == (release, layout)
    if layout == "split":
        assert pick.packages == (
            f"linux-binary-{release}",
            f"linux-modules-{release}",
            f"linux-base-{release}",
        )
    else:
        assert pick.packages == (f"linux-image-{release}",)


def test_unsigned_variant_when_no_signed_image_exists(fake_apt: Path, tmp_path: Path) -> None:
    # bookworm-security shipped 6.12 as -unsigned only; recorded: the unsigned stanza
    signed = DATA / "show_linux-image-6.12.117+deb12-amd64.txt"
    apt = provision.private_apt()
    assert debian.resolve("6.12.117+deb12-amd64", apt).layout == "image"

    def without_signed(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        if argv[-1] == signed.name.removeprefix("show_").removesuffix(".txt"):
            return subprocess.CompletedProcess(list(argv), 100, "", "E: No packages found")
        return apt.run(argv)

    only_unsigned = debian.AptConfig(apt.root, apt.mirror, apt.security, run=without_signed)
    pick = debian.resolve("6.12.117+deb12-amd64", only_unsigned)
    assert pick.layout == "unsigned"
    assert pick.packages == ("linux-image-6.12.117+deb12-amd64-unsigned",)
    assert pick.release == "6.12.117+deb12-amd64"


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("9.9.9", "unknown kernel '9.9.9': not a suite"),
        ("6.1.0-999-amd64", "unknown kernel 6.1.0-999-amd64: no package linux-image-6.1.0-999"),
        ("buster", "unknown kernel 'buster'"),
        ("$(touch x)", "not a kernel name"),
    ],
)
def test_unknown_names_are_one_line_naming_the_list_command(
    fake_apt: Path, spec: str, says: str
) -> None:
    with pytest.raises(LaneError) as err:
        debian.resolve(spec, provision.private_apt())
    msg = str(err.value)
    assert says in msg and "\n" not in msg and "lvsconf kernel list" in msg


def test_private_configuration_never_names_host_apt_state(tmp_path: Path) -> None:
    apt = debian.AptConfig(tmp_path / "apt")
    argv = apt.argv("apt-get", "update")
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    for key in ("Dir::Etc::SourceList", "Dir::State::Lists", "Dir::Cache", "Dir::State::status"):
        assert opts[key].startswith(str(tmp_path / "apt")), key
    assert opts["Dir::Etc::SourceParts"] == "/dev/null"
    assert argv[argv.index("-c") + 1] == str(tmp_path / "apt" / "apt.conf")
    apt.prepare()
    text = apt.sources_list.read_text()
    for suite in ("bullseye", "bookworm", "trixie", "sid"):
        assert f" {suite} main" in text
    assert " bookworm-security main" in text and "sid-security" not in text
    conf = apt.conf.read_text()
    assert "#clear APT::Update::Post-Invoke-Success;" in conf  # no host hooks for our lists
    assert 'Dir::Cache::pkgcache "pkgcache.bin";' in conf


def test_refresh_only_when_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        calls.append([a for a in argv if a in ("update",)])
        return subprocess.CompletedProcess(list(argv), 0, "", "")

    apt = debian.AptConfig(tmp_path / "apt", run=run)
    debian.refresh(apt)
    debian.refresh(apt)
    assert calls == [["update"]]  # the second call found fresh lists
    monkeypatch.setenv("LVSCONF_APT_MAX_AGE", "0")
    debian.refresh(apt)
    assert len(calls) == 2


def test_failed_update_keeps_old_lists_or_says_how_to_fix(tmp_path: Path) -> None:
    def offline(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(argv), 100, "", "E: Failed to fetch x\n")

    apt = debian.AptConfig(tmp_path / "apt", run=offline)
    with pytest.raises(LaneError, match="apt-get update .* failed: E: Failed to fetch x; check"):
        debian.refresh(apt)
    apt.stamp.write_text("old\n")
    said: list[str] = []
    debian.refresh(apt, said.append, force=True)
    assert said[-1].startswith("apt-get update failed (E: Failed to fetch x); using lists")


def test_host_mirror_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LVSCONF_DEBIAN_MIRROR", raising=False)
    monkeypatch.delenv("LVSCONF_DEBIAN_SECURITY_MIRROR", raising=False)
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://sec.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert debian.host_mirrors([deb822]) == (
        "http://mirror.example/debian",
        "http://sec.example/debian-security",
    )
    one_line = tmp_path / "sources.list"
    one_line.write_text("# x\ndeb [arch=amd64] http://m.example/debian trixie main\n")
    assert debian.host_mirrors([one_line]) == ("http://m.example/debian", debian.DEFAULT_SECURITY)
    ubuntu = tmp_path / "ubuntu.list"
    ubuntu.write_text("deb http://archive.ubuntu.com/ubuntu jammy main\n")
    assert debian.host_mirrors([ubuntu]) == (debian.DEFAULT_MIRROR, debian.DEFAULT_SECURITY)


def test_host_suite_for_auto(tmp_path: Path) -> None:
    osr = tmp_path / "os-release"
    osr.write_text('ID=debian\nVERSION_CODENAME="bookworm"\n')
    assert provision.host_suite(osr) == "bookworm"
    osr.write_text("ID=ubuntu\nVERSION_CODENAME=jammy\n")
    assert provision.host_suite(osr) == "stable"
    assert provision.host_suite(tmp_path / "missing") == "stable"
