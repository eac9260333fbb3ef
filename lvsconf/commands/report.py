"""``lvsconf report merge DIR... --out DIR``: one report from the reports of separate CI jobs.

A CI matrix runs one job per kernel (``lvsconf run --kernel K --report report-K``); the merge
job combines their results.json into one report (results.json, index.html, summary.md) with a
column per implementation x kernel, the same report a single multi-kernel run writes. A
junit.xml found in an input directory is merged too (its test suites side by side, each named
after its input). Two inputs holding the same case on the same kernel are refused: they are
not separate lanes. Exit status: 0 merged, 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from conformance.runner.report import ReportError, check_target, load_report, write


class MergeError(ValueError):
    """The inputs cannot be merged (the message names the input and the fix)."""


def _directory(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def merge_records(
    reports: list[tuple[Path, list[dict[str, Any]]]],
) -> list[dict[str, Any]]:
    """Every record of every input; a case on one lane in two inputs is a conflict."""
    seen: dict[tuple[str, str, str, str], Path] = {}
    merged: list[dict[str, Any]] = []
    for path, records in reports:
        for r in records:
            key = (r["rule"], r["implementation"], r["kernel"], r["family"])
            if key in seen:
                raise MergeError(
                    f"{seen[key]} and {path} both hold {r['rule']} [{r['implementation']}-"
                    f"{r['family']}] on kernel {r['kernel']}: merge reports of different lanes"
                )
            seen[key] = path
            merged.append(r)
    return merged


def merge_meta(
    metas: list[dict[str, Any]], records: list[dict[str, Any]], inputs: list[Path]
) -> dict[str, Any]:
    """One meta: implementations in order of appearance, the ones no input ran as left out."""
    implementations = list(dict.fromkeys(i for m in metas for i in m.get("implementations") or []))
    ran = {r["implementation"] for r in records}
    left_out: dict[str, dict[str, Any]] = {}
    for m in metas:
        for left in m.get("left_out") or []:
            if isinstance(left, dict) and left.get("implementation") not in ran:
                left_out.setdefault(str(left.get("implementation")), left)
    joined = {
        key: ", ".join(dict.fromkeys(str(m[key]) for m in metas if m.get(key)))
        for key in ("kernel_option", "host_kernel")
    }
    return {
        "implementations": implementations,
        "left_out": list(left_out.values()),
        **joined,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "merged_from": [str(p) for p in inputs],
    }


def merge_junit(inputs: list[Path]) -> tuple[str | None, int]:
    """The inputs' junit.xml test suites under one <testsuites> (None: no input has one)."""
    root = ET.Element("testsuites")
    found = 0
    for path in inputs:
        junit = _directory(path) / "junit.xml"
        if not junit.is_file():
            continue
        try:
            top = ET.parse(junit).getroot()
        except (ET.ParseError, OSError) as exc:
            raise MergeError(
                f"{junit} is not readable XML ({exc}); remove it or regenerate it"
            ) from None
        suites = [top] if top.tag == "testsuite" else top.findall("testsuite")
        for suite in suites:
            suite.set("name", f"{suite.get('name', 'pytest')} ({_directory(path)})")
            root.append(suite)
        found += 1
    return (ET.tostring(root, encoding="unicode") + "\n" if found else None), found


def merge(args: argparse.Namespace) -> int:
    inputs = [Path(p) for p in args.inputs]
    out = Path(args.out)
    try:
        check_target(out)
        loaded = [(p, *load_report(p)) for p in inputs]
        records = merge_records([(p, recs) for p, recs, _ in loaded])
        if not records:
            raise MergeError("the inputs hold no result; nothing to merge")
        junit, junits = merge_junit(inputs)
        meta = merge_meta([m for _, _, m in loaded], records, inputs)
        paths = write(out, records, meta, extra={"junit.xml": junit} if junit else None)
    except (ReportError, MergeError) as exc:
        print(f"lvsconf report merge: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"lvsconf report merge: cannot write {out}: {exc.strerror}", file=sys.stderr)
        return 2
    lanes = sorted({f"{r['implementation']}@{r['kernel']}" for r in records})
    print(f"merged {len(inputs)} reports: {len(records)} records, lanes: {', '.join(lanes)}")
    print(f"junit.xml: merged from {junits} input(s)" if junit else "junit.xml: none in the inputs")
    print(f"lvsconf report: {paths.index_html}")
    return 0


def _usage(parser: argparse.ArgumentParser) -> Any:
    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "report",
        help="work with report directories (merge the reports of separate CI jobs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=_usage(parser))
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    merge_parser = actions.add_parser(
        "merge",
        help="combine report directories (e.g. one per kernel) into one report",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    merge_parser.add_argument("inputs", nargs="+", metavar="DIR", help="report directories")
    merge_parser.add_argument("--out", required=True, metavar="DIR", help="the merged report")
    merge_parser.set_defaults(func=merge)
