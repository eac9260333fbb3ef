"""Views of an upgrade comparison (:mod:`conformance.runner.upgrade`): terminal text and HTML.

Both show, per changed case, its label and why, the case's own problem lines, the flows whose
observed outcome differs (old | new) and the template tables that differ, side by side.
"""

from __future__ import annotations

from conformance.runner.report import CSS, esc
from conformance.runner.upgrade import Change, Comparison, Lane, TableChange, rows_equal


def _lane_line(lane: Lane) -> str:
    old = lane.old_level.label if lane.old_level else "?"
    new = lane.new_level.label if lane.new_level else "?"
    return f"{lane.implementation}: {lane.old_kernel} -> {lane.new_kernel} (model {old} -> {new})"


def one_sided(cmp: Comparison) -> str | None:
    """The single line about records present in one report only (None when there are none)."""
    parts = []
    for side, counter in (("OLD", cmp.only_old), ("NEW", cmp.only_new)):
        if counter:
            lanes = ", ".join(f"{lane}: {n}" for lane, n in sorted(counter.items()))
            parts.append(f"{sum(counter.values())} only in {side} ({lanes})")
    return "one side only, not compared: " + "; ".join(parts) if parts else None


def last_line(cmp: Comparison) -> str:
    counts = ", ".join(f"{n} {label}" for label, n in cmp.counts().items() if n)
    verdict = "unexplained changes found" if cmp.unexplained else "nothing unexplained"
    return f"{len(cmp.changes)} changed" + (f": {counts}" if counts else "") + f"; {verdict}"


def _table_rows(t: TableChange) -> list[tuple[str, str, bool]]:
    old, new = t.old or [], t.new or []
    height = max(len(old), len(new), 1)
    old = old + [""] * (height - len(old))
    new = new + [""] * (height - len(new))
    if t.old is None:
        old[0] = "(not exposed)"
    if t.new is None:
        new[0] = "(not exposed)"
    if not any(old) and not any(new):
        old[0], new[0] = "(none)", "(none)"
    return [(a, b, not rows_equal([a], [b])) for a, b in zip(old, new, strict=True)]


def _title(c: Change) -> str:
    rule, impl, family = c.key
    return f"{rule} [{impl}-{family}]"


def render_text(cmp: Comparison) -> list[str]:
    """Lines for the terminal (without the old/new header and the last line)."""
    out: list[str] = []
    for lane in cmp.lanes:
        out.append(_lane_line(lane))
        out += [f"  model difference: {name} — {reason}" for name, reason in lane.reasons]
    for c in cmp.changes:
        out.append(f"{c.label.upper()} {_title(c)}: {c.why}")
        out += [f"  - {p}" for p in c.problems]
        if c.flows:
            out.append("  flows (old | new):")
            out += [f"    {f.index + 1} {f.flow}: {f.old or '-'} | {f.new or '-'}" for f in c.flows]
        for t in c.tables:
            rows = _table_rows(t)
            width = max(len(a) for a, _, _ in rows)
            out.append(f"  templates after step {t.step + 1} (old | new):")
            out += [
                f"    {a.ljust(width)} | {b}" + ("  <--" if differs else "")
                for a, b, differs in rows
            ]
    line = one_sided(cmp)
    if line:
        out.append(line)
    return out


_DIFF_CSS = """
.l-unexplained{background:#f77} .l-modelled{background:#9cf} .l-improved{background:#7c7}
.l-failing{background:#fb9} .l-equivalent{background:#bdb} .l-changed{background:#ddd}
span.l{padding:0 .4em;border-radius:3px;font-family:monospace}
"""
_DIFFERS = ' class="differs"'


def _html_change(c: Change) -> str:
    parts = [
        f'<section><h3><span class="l l-{esc(c.label)}">{esc(c.label)}</span> '
        f"<code>{esc(_title(c))}</code></h3><p>{esc(c.why)}</p>"
    ]
    if c.problems:
        parts.append("<ul>" + "".join(f"<li>{esc(p)}</li>" for p in c.problems) + "</ul>")
    if c.flows:
        parts.append(
            "<table><tr><th>#</th><th>flow</th><th>old observed</th><th>new observed</th>"
            "<th>old model</th><th>new model</th></tr>"
        )
        parts += [
            f'<tr class="differs"><td>{f.index + 1}</td><td><code>{esc(f.flow)}</code></td>'
            f"<td>{esc(f.old)}</td><td>{esc(f.new)}</td><td>{esc(f.old_expected)}</td>"
            f"<td>{esc(f.new_expected)}</td></tr>"
            for f in c.flows
        ]
        parts.append("</table>")
    for t in c.tables:
        parts.append(
            f"<p>templates after step {t.step + 1}</p><table><tr><th>old kernel</th>"
            "<th>new kernel</th></tr>"
        )
        parts += [
            f"<tr{_DIFFERS if differs else ''}><td><code>{esc(a)}</code></td>"
            f"<td><code>{esc(b)}</code></td></tr>"
            for a, b, differs in _table_rows(t)
        ]
        parts.append("</table>")
    parts.append("</section>")
    return "\n".join(parts)


def render_html(cmp: Comparison, old_name: str, new_name: str) -> str:
    """A static page: the lanes compared, every change side by side, the one-sided line."""
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>lvsconf upgrade diff</title>",
        f"<style>{CSS}{_DIFF_CSS}</style></head><body><h1>lvsconf upgrade diff</h1>",
        f"<p>old: <code>{esc(old_name)}</code><br>new: <code>{esc(new_name)}</code></p>",
    ]
    for lane in cmp.lanes:
        out.append(f"<p>{esc(_lane_line(lane))}</p>")
        if lane.reasons:
            out.append(
                "<ul>"
                + "".join(f"<li><b>{esc(n)}</b>: {esc(r)}</li>" for n, r in lane.reasons)
                + "</ul>"
            )
    out.append(f"<p><b>{esc(last_line(cmp))}</b></p>")
    out += [_html_change(c) for c in cmp.changes]
    line = one_sided(cmp)
    if line:
        out.append(f"<p>{esc(line)}</p>")
    out.append("</body></html>")
    return "\n".join(out)
