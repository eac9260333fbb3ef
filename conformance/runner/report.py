"""Conformance reports from result records: results.json, index.html, summary.md, terminal matrix.

One result model (the records the pytest plugin collects, one per case item), several views:

- ``results.json``: ``{"schema": 1, "meta": {...}, "results": [record, ...]}``;
- ``index.html``: a static matrix, rules down, implementation x kernel across, every cell
  linking to the evidence section of its record (flows, both template tables, scenario);
- ``summary.md``: totals, the matrix and the failures (a CI job summary);
- :func:`matrix_text`: the same matrix for a terminal.

A record carries at least ``rule``, ``implementation``, ``kernel``, ``family``, ``verdict``;
cases that ran a scenario add ``flows``, ``expected``, ``observed``, ``templates``, ``timings``.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.files import umask, write_file

SCHEMA = 1
VERDICTS = ("exact", "equivalent", "diverges", "unsupported", "skip", "fail", "error")
LETTERS = {
    "exact": "E",
    "equivalent": "Q",
    "diverges": "D",
    "unsupported": "U",
    "skip": "S",
    "fail": "F",
    "error": "!",
}
LEGEND = (
    "E exact  Q equivalent  D diverges (declared)  U unsupported  S skipped  F fail  "
    "! error  - not run; a cell lists ipv4 then ipv6"
)
REQUIRED_FIELDS = ("rule", "implementation", "kernel", "family", "verdict")
FAMILIES = ("ipv4", "ipv6")


class ReportError(ValueError):
    """A record or results file is malformed (names the field and the fix)."""


@dataclass(frozen=True, slots=True)
class ReportPaths:
    results_json: Path
    index_html: Path
    summary_md: Path


Column = tuple[str, str]  # (implementation, kernel)


def validate(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check every record has the fields the views need and a known verdict."""
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ReportError(f"record {i} is not an object; regenerate the report")
        missing = [f for f in REQUIRED_FIELDS if f not in rec]
        if missing:
            raise ReportError(
                f"record {i} lacks {', '.join(missing)}: each result needs "
                f"{', '.join(REQUIRED_FIELDS)}"
            )
        odd = [f for f in REQUIRED_FIELDS if not isinstance(rec[f], str)]
        if odd:
            raise ReportError(f"record {i}: {', '.join(odd)} must be text; regenerate the report")
        if rec["verdict"] not in VERDICTS:
            raise ReportError(
                f"record {i} ({rec['rule']}): unknown verdict {rec['verdict']!r}; "
                f"one of {', '.join(VERDICTS)}"
            )
        out.append(rec)
    return out


def _order(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (r["rule"], r["implementation"], r["kernel"], r["family"]))


def columns(records: Sequence[dict[str, Any]]) -> list[Column]:
    return sorted({(r["implementation"], r["kernel"]) for r in records})


def rules(records: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({r["rule"] for r in records})


def _cell(
    records: Sequence[dict[str, Any]], rule: str, col: Column
) -> list[tuple[str, int | None]]:
    """Per family: (verdict or '', index of the record in ``records``)."""
    cell: list[tuple[str, int | None]] = []
    for fam in FAMILIES:
        hit = next(
            (
                (i, r)
                for i, r in enumerate(records)
                if r["rule"] == rule
                and (r["implementation"], r["kernel"]) == col
                and r["family"] == fam
            ),
            None,
        )
        cell.append((hit[1]["verdict"], hit[0]) if hit else ("", None))
    return cell


def totals(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    return {v: sum(r["verdict"] == v for r in records) for v in VERDICTS}


def matrix_text(records: Sequence[dict[str, Any]]) -> str:
    """Rule x (implementation, kernel) with verdict letters, for a terminal."""
    recs = _order(validate(records))
    cols = columns(recs)
    head = ["rule"] + [f"{impl}@{kernel}" for impl, kernel in cols]
    rows = [head]
    for rule in rules(recs):
        rows.append(
            [rule]
            + [
                " ".join(LETTERS.get(v, "-") if v else "-" for v, _ in _cell(recs, rule, col))
                for col in cols
            ]
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    counts = totals(recs)
    lines.append(LEGEND)
    lines.append(", ".join(f"{n} {v}" for v, n in counts.items() if n))
    return "\n".join(lines)


# --------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #bbb;padding:.2em .5em;vertical-align:top}
th{background:#eee} td.rule{font-family:monospace}
a.v{display:inline-block;min-width:1.4em;text-align:center;text-decoration:none;color:#000;
    border-radius:3px;margin:0 1px;font-family:monospace}
.v-exact{background:#7c7} .v-equivalent{background:#bdb} .v-diverges{background:#fd8}
.v-unsupported{background:#ccc} .v-skip{background:#ddd} .v-fail{background:#f77}
.v-error{background:#f4a} pre{background:#f6f6f6;padding:.5em;overflow-x:auto}
section{border-top:1px solid #ccc;margin-top:1em} tr.differs td{background:#fdd}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def anchor(index: int) -> str:
    return f"r{index}"


def _evidence(index: int, rec: dict[str, Any]) -> str:
    v = rec["verdict"]
    parts = [
        f'<section id="{anchor(index)}"><h3>{esc(rec["rule"])} — {esc(rec["implementation"])}'
        f" @ {esc(rec['kernel'])} — {esc(rec['family'])}: "
        f'<span class="v v-{esc(v)}">{esc(v)}</span></h3>',
    ]
    if rec.get("title"):
        parts.append(f"<p>{esc(rec['title'])}</p>")
    if rec.get("source"):
        parts.append(f"<p>kernel source: <code>{esc(rec['source'])}</code></p>")
    if rec.get("grading"):
        parts.append(
            f"<p>graded by {esc(rec['grading'])}"
            + (f"; timings {esc(rec.get('timings'))}" if rec.get("timings") else "")
            + "</p>"
        )
    if rec.get("detail"):
        parts.append(f"<pre>{esc(rec['detail'])}</pre>")
    flows = rec.get("flows") or []
    if flows:
        expected, observed = rec.get("expected") or [], rec.get("observed") or []
        model = rec.get("model_decisions") or [""] * len(flows)
        parts.append(
            "<table><tr><th>#</th><th>flow</th><th>model</th><th>expected</th>"
            "<th>observed</th></tr>"
        )
        for i, f in enumerate(flows):
            e = expected[i] if i < len(expected) else ""
            o = observed[i] if i < len(observed) else ""
            cls = ' class="differs"' if e != o else ""
            m = model[i] if i < len(model) else ""
            parts.append(
                f"<tr{cls}><td>{i + 1}</td><td><code>{esc(f)}</code></td>"
                f"<td>{esc(m)}</td><td>{esc(e)}</td><td>{esc(o)}</td></tr>"
            )
        parts.append("</table>")
    for check in rec.get("templates") or []:
        obs = check.get("observed")
        parts.append(
            f"<p>templates after step {int(check.get('step', 0)) + 1} "
            f"(t={esc(check.get('at'))}s)</p><table><tr><th>model</th>"
            f"<th>{'implementation' if obs is not None else 'implementation (not exposed)'}"
            "</th></tr>"
        )
        exp = check.get("expected") or []
        obs_rows = obs or []
        for i in range(max(len(exp), len(obs_rows), 1)):
            a = exp[i] if i < len(exp) else ""
            b = obs_rows[i] if i < len(obs_rows) else ""
            parts.append(f"<tr><td><code>{esc(a)}</code></td><td><code>{esc(b)}</code></td></tr>")
        parts.append("</table>")
    if rec.get("scenario"):
        parts.append(
            f"<details><summary>scenario (ipvsadm)</summary><pre>{esc(rec['scenario'])}"
            "</pre></details>"
        )
    if rec.get("nodeid"):
        parts.append(f"<p><small>pytest {esc(rec['nodeid'])}</small></p>")
    parts.append("</section>")
    return "\n".join(parts)


def render_html(records: Sequence[dict[str, Any]], meta: dict[str, Any] | None = None) -> str:
    """The static index.html: matrix on top, one evidence section per record below."""
    recs = _order(validate(records))
    cols = columns(recs)
    counts = totals(recs)
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>lvsconf conformance</title>",
        f"<style>{CSS}</style></head><body><h1>lvsconf conformance</h1>",
        "<p>" + esc(", ".join(f"{n} {v}" for v, n in counts.items() if n) or "no results") + "</p>",
    ]
    if meta:
        out.append(
            "<p><small>"
            + esc("; ".join(f"{k}: {v}" for k, v in meta.items() if v))
            + "</small></p>"
        )
    out.append(f"<p><small>{esc(LEGEND)}</small></p>")
    out.append(
        '<table class="matrix"><tr><th>rule</th>'
        + "".join(f"<th>{esc(impl)}<br><small>{esc(kernel)}</small></th>" for impl, kernel in cols)
        + "</tr>"
    )
    for rule in rules(recs):
        title = next((r.get("title", "") for r in recs if r["rule"] == rule), "")
        row = [f'<tr><td class="rule" title="{esc(title)}">{esc(rule)}</td>']
        for col in cols:
            links = []
            for fam, (verdict, idx) in zip(FAMILIES, _cell(recs, rule, col), strict=True):
                if idx is None:
                    links.append('<span class="v">-</span>')
                else:
                    links.append(
                        f'<a class="v v-{esc(verdict)}" href="#{anchor(idx)}" '
                        f'title="{esc(fam)}: {esc(verdict)}">{LETTERS[verdict]}</a>'
                    )
            row.append("<td>" + "".join(links) + "</td>")
        out.append("".join(row) + "</tr>")
    out.append("</table><h2>Evidence</h2>")
    out += [_evidence(i, r) for i, r in enumerate(recs)]
    out.append("</body></html>")
    return "\n".join(out)


# --------------------------------------------------------------------------- Markdown


def problem_lines(rec: dict[str, Any], limit: int = 5) -> list[str]:
    """The case's own problem lines: the record's ``problems``, else those in its failure text,
    else pytest's ``E`` lines (never the traceback's ``case = <object at 0x…>`` line)."""
    problems = rec.get("problems")
    lines = [str(p) for p in problems] if isinstance(problems, list) else []
    detail = str(rec.get("detail") or "")
    if not lines and "\nproblems:\n" in detail:
        tail = detail.split("\nproblems:\n", 1)[1].splitlines()
        lines = [ln.strip()[2:] for ln in tail if ln.strip().startswith("- ")]
    if not lines:
        lines = [ln[1:].strip() for ln in detail.splitlines() if ln.startswith("E ")]
        lines = [ln for ln in lines if ln]
    if not lines:
        lines = [
            ln.strip()
            for ln in detail.splitlines()
            if ln.strip() and not re.match(r"^\(?\w+ = <.*>\)?$", ln.strip())
        ][:1]
    return [ln if len(ln) <= 240 else ln[:237] + "..." for ln in lines[:limit]]


def render_summary(records: Sequence[dict[str, Any]], meta: dict[str, Any] | None = None) -> str:
    """summary.md for a CI job summary: totals, the matrix, the failures in short."""
    recs = _order(validate(records))
    cols = columns(recs)
    counts = totals(recs)
    passed = counts["exact"] + counts["equivalent"] + counts["diverges"]
    failed = counts["fail"] + counts["error"]
    skipped = counts["skip"] + counts["unsupported"]
    lines = [
        "# lvsconf conformance",
        "",
        f"**{passed} passed, {failed} failed, {skipped} skipped** "
        f"({', '.join(f'{n} {v}' for v, n in counts.items() if n) or 'no results'})",
        "",
    ]
    if cols:
        lines.append("| rule | " + " | ".join(f"{i} @ {k}" for i, k in cols) + " |")
        lines.append("|---" * (len(cols) + 1) + "|")
        for rule in rules(recs):
            cells = [
                " ".join(LETTERS.get(v, "-") if v else "-" for v, _ in _cell(recs, rule, c))
                for c in cols
            ]
            lines.append(f"| `{rule}` | " + " | ".join(cells) + " |")
        lines += ["", f"_{LEGEND}_", ""]
    for left in (meta or {}).get("left_out", []):
        lines.append(f"- not run: **{left['implementation']}** ({left['reason']})")
    bad = [r for r in recs if r["verdict"] in ("fail", "error")]
    if bad:
        lines.append("## Failures")
        for r in bad:
            first = problem_lines(r, limit=1)
            lines.append(
                f"- `{r['rule']}` {r['implementation']} @ {r['kernel']} {r['family']}: "
                f"{r['verdict']}" + (f" — {first[0][:200]}" if first else "")
            )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- files

#: files a report directory may hold (junit.xml comes from pytest's --junitxml, ci/test)
KNOWN_FILES = ("results.json", "index.html", "summary.md", "junit.xml")
PREV_SUFFIX = ".prev"


def previous(out_dir: Path) -> Path:
    """Where the report a run replaces is kept, one generation back: ``DIR.prev``."""
    return out_dir.with_name(out_dir.name + PREV_SUFFIX)


def has_report(directory: Path) -> bool:
    """Whether ``directory`` (not a symlink) holds a results.json (a regular file)."""
    results = directory / "results.json"
    return (
        not directory.is_symlink()
        and directory.is_dir()
        and results.is_file()
        and not results.is_symlink()
    )


def check_target(out_dir: Path) -> None:
    """Refuse a report target the swap could harm (raises :class:`ReportError`).

    A run replaces the whole directory and keeps the replaced one as ``DIR.prev``: both must be
    absent, empty, or an lvsconf report (a results.json, or only report file names)."""
    for directory in (out_dir, previous(out_dir)):
        if directory.is_symlink():
            raise ReportError(
                f"{directory} is a symbolic link; give --lvs-report a real directory path"
            )
        if not directory.exists():
            continue
        if not directory.is_dir():
            raise ReportError(f"{directory} is not a directory; choose another report directory")
        names = {entry.name for entry in directory.iterdir()}
        if names and not has_report(directory) and not names <= set(KNOWN_FILES):
            raise ReportError(
                f"{directory} holds files but no lvsconf report (no results.json), and a run "
                "replaces the whole directory; choose a new or empty report directory"
            )


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Put ``staging`` at ``out_dir``; a report already there becomes ``out_dir.prev``."""
    if out_dir.exists():
        if has_report(out_dir):
            prev = previous(out_dir)
            if prev.exists():
                shutil.rmtree(prev)  # check_target: an old report, or empty (rmtree: no symlinks)
            os.rename(out_dir, prev)
        else:
            for name in KNOWN_FILES:  # left by a run that never wrote results.json
                with contextlib.suppress(FileNotFoundError):
                    (out_dir / name).unlink()
            out_dir.rmdir()
    os.rename(staging, out_dir)


def write(
    out_dir: Path,
    records: Sequence[dict[str, Any]],
    meta: dict[str, Any] | None = None,
    carry: Sequence[str] = (),
    extra: dict[str, str] | None = None,
) -> ReportPaths:
    """Write a report into a NEW directory next to ``out_dir`` and swap it in.

    The report that was at ``out_dir`` is kept as ``out_dir.prev`` (one generation); files named
    in ``carry`` (e.g. a junit.xml pytest just wrote there) move into the new report, ``extra``
    maps further file names to their text. Callers write only when a run has results: a run
    that ran no case keeps the previous report."""
    recs = _order(validate(records))
    out_dir = Path(out_dir)
    check_target(out_dir)
    out_dir.absolute().parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-", dir=out_dir.absolute().parent))
    doc = {"schema": SCHEMA, "meta": meta or {}, "results": recs}
    try:
        write_file(
            staging / "results.json", json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n"
        )
        write_file(staging / "index.html", render_html(recs, meta))
        write_file(staging / "summary.md", render_summary(recs, meta))
        for name, text in (extra or {}).items():
            write_file(staging / Path(name).name, text)
        for name in carry:
            source = out_dir / name
            if source.is_file() and not source.is_symlink():
                os.rename(source, staging / name)
        os.chmod(staging, 0o777 & ~umask())
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ReportPaths(out_dir / "results.json", out_dir / "index.html", out_dir / "summary.md")


def kept_message(out_dir: Path) -> str:
    """What a run that executed no case says about ``out_dir`` (it leaves it untouched)."""
    if has_report(out_dir):
        return f"no case ran: the previous report is kept at {out_dir / 'index.html'}"
    return f"no case ran: no report written to {out_dir}"


def load_report(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records and meta of a results.json (or of the directory holding one)."""
    if path.is_dir():
        path = path / "results.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(
            f"no results at {path}; run the suite with --lvs-report DIR first"
        ) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ReportError(f"{path} is not JSON ({str(exc)[:200]}); regenerate it") from None
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise ReportError(f"{path} has no 'results' list; is it an lvsconf results.json?")
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    try:
        return validate(doc["results"]), meta
    except ReportError as exc:
        raise ReportError(f"{path}: {exc}") from None


def load(path: Path) -> list[dict[str, Any]]:
    """The records of a results.json (or of the directory holding one)."""
    return load_report(path)[0]
