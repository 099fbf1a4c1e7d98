"""The equivalence report as one self-contained HTML page: no network, no external file, every text escaped.

The module tree is nested ``<details>`` (collapsible without script; the blocks holding the first divergence
open, others open to depth 2), each call coloured by err/tol on a log scale (green well within, amber near 1,
red beyond); above it the verdict, the first divergence and its hint, a strip of every call's err/tol (one
column per call: readable for hundreds of calls) and the settings; below, the output and gradient rows. A
short script adds "expand all", "collapse all" and "only failing" buttons; the page reads fully without it.
"""

from __future__ import annotations

import html
import json
import math
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import InvalidArgumentError

if TYPE_CHECKING:
    from ._compare import Comparison
    from ._report import EquivalenceReport, LayerRow

_OPEN_DEPTH = 2
# what marks a file as ours, in its first bytes: only such a file is replaced (a page's meta tag, a plot's PNG text)
GENERATOR = "<meta name='generator' content='flax-torch-bridge'>"
PLOT_SOFTWARE = {"Software": "flax-torch-bridge"}
_MARKS = (GENERATOR.encode(), b"Software\x00flax-torch-bridge")
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:20px;margin:0 0 4px} .verdict-ok{color:#137333} .verdict-bad{color:#b3261e}
.box{border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:12px 0}
.divergence{border-color:#b3261e;background:#fdecea} .hint{font-family:ui-monospace,monospace;white-space:pre-wrap}
table{border-collapse:collapse} td,th{padding:2px 8px;text-align:left;font-variant-numeric:tabular-nums}
th{border-bottom:1px solid #ccc} .settings td:first-child{color:#555}
details{margin-left:18px} summary{cursor:pointer;list-style-position:outside}
.call{display:inline-grid;grid-template-columns:17em 10em 20em 6em 6em;gap:8px;align-items:center}
.leaf{margin-left:18px;padding:1px 0} .name{font-family:ui-monospace,monospace;overflow:hidden;text-overflow:ellipsis}
.ratio{border-radius:4px;padding:0 6px;text-align:right;font-family:ui-monospace,monospace}
.first{outline:2px solid #b3261e;border-radius:4px} .head{font-weight:600;color:#555} .muted{color:#777}
.strip{display:block;width:100%;height:90px;border:1px solid #eee}
button{margin-right:6px} .hide-ok .passes{display:none}
"""
_SCRIPT = """
document.body.dataset.ready='yes';
document.getElementById('expand').onclick=()=>document.querySelectorAll('details').forEach(d=>d.open=true);
document.getElementById('collapse').onclick=()=>document.querySelectorAll('details').forEach(d=>d.open=false);
document.getElementById('failing').onclick=()=>document.getElementById('tree').classList.toggle('hide-ok');
"""


def report_html(report: EquivalenceReport, *, title: str = "flax-torch-bridge equivalence report") -> str:
    """The whole page."""
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>{GENERATOR}<title>{_e(title)}</title>"
        f"<style>{_STYLE}</style></head>\n<body>\n{report_fragment(report)}\n<script>{_SCRIPT}</script>\n"
        "</body></html>\n"
    )


def may_write_report(path: str | Path) -> bool:
    """Whether ``path`` is free, or a regular file holding a page or a plot this package wrote (its mark)."""
    target = Path(path)
    if not target.is_symlink() and not target.exists():
        return True
    try:
        with target.open("rb") as handle:
            start = handle.read(4096)
    except OSError:
        return False
    return target.is_file() and not target.is_symlink() and any(mark in start for mark in _MARKS)


def write_report_file(path: str | Path, data: bytes) -> None:
    """Write ``data`` (a page, a plot) to ``path`` whole or not at all (a temporary beside it, then a rename); an
    existing file is replaced only when it is a report this package wrote.

    Raises:
        InvalidArgumentError: naming the path, when it is something else or cannot be written.
    """
    target = Path(path)
    if not may_write_report(target):
        raise InvalidArgumentError(
            f"{target}: exists and is not a report flax-torch-bridge wrote; not replaced: remove it or name another"
        )
    folder = target.parent if str(target.parent) else Path(".")
    temporary = folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.partial"
    try:  # created as a new file with mode 0o666, so the umask applies as to any file the user writes
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise InvalidArgumentError(f"{target}: cannot write there ({e.strerror}); name a writable folder") from None
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def report_fragment(report: EquivalenceReport) -> str:
    """The page's body without its script (what a notebook shows: ``_repr_html_``)."""
    verdict = "EQUIVALENT" if report.ok else "NOT EQUIVALENT"
    parts = [
        f"<h1 class='{'verdict-ok' if report.ok else 'verdict-bad'}' id='verdict'>{verdict}</h1>",
        "<div class='muted'>err/tol &le; 1 passes: the error over the tolerance two correct ports may differ by</div>",
        _divergence(report),
        *(f"<div class='box divergence'>problem: {_e(p)}</div>" for p in report.problems),
        _strip(report.layers),
        "<div><button id='expand'>expand all</button><button id='collapse'>collapse all</button>"
        "<button id='failing'>only failing</button></div>",
        f"<div id='tree' class='box'><div class='leaf'><span class='call head'><span>Flax call</span><span>kind"
        "</span><span>torch module</span><span>err/tol</span><span>isolated</span></span></div>"
        f"{_tree(report)}</div>",
        _final_rows(report),
        _settings(report.settings),
    ]
    return "\n".join(p for p in parts if p)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _ratio_of(c: Comparison | None) -> float | None:
    if c is None:
        return None
    if c.shape != c.candidate_shape or c.nonfinite_mismatched:
        return math.inf
    return float(c.worst_ratio)


def _colour(ratio: float | None) -> str:
    """A background on a log scale of err/tol: green far below 1, amber towards 1, red above."""
    if ratio is None:
        return "#eee"
    if not math.isfinite(ratio) or ratio > 1:
        return "#f4b4ae"
    level = min(max((math.log10(max(ratio, 1e-6)) + 6) / 6, 0.0), 1.0)  # 1e-6 -> 0, 1 -> 1
    return f"hsl({120 - 75 * level:.0f},60%,{85 - 10 * level:.0f}%)"


def _cell(c: Comparison | None) -> str:
    ratio = _ratio_of(c)
    text = "-" if ratio is None else ("shape" if c is not None and c.shape != c.candidate_shape else f"{ratio:.2g}")
    return f"<span class='ratio' style='background:{_colour(ratio)}'>{_e(text)}</span>"


def _divergence(report: EquivalenceReport) -> str:
    first = report.first_divergence
    if first is None:
        return ""
    hint = f"<div class='hint'>hint: {_e(first.hint)}</div>" if first.hint else ""
    return (
        f"<div class='box divergence' id='first-divergence'><b>first divergence</b> at call {first.index} "
        f"({_e(first.kind)}, {_e(first.mode)}): Flax <code>{_e(first.flax_path)}</code> &harr; torch "
        f"<code>{_e(first.torch_name)}</code>{hint}</div>"
    )


def _strip(rows: tuple[LayerRow, ...]) -> str:
    """An SVG of every call's end-to-end err/tol, log scale, one column per call, the 1 line drawn."""
    if not rows:
        return ""
    width, height, low, high = max(len(rows), 1), 90, -6.0, 3.0
    bars = []
    for i, row in enumerate(rows):
        ratio = _ratio_of(row.end_to_end)
        value = high if ratio is None or not math.isfinite(ratio) else math.log10(max(ratio, 10**low))
        top = min(height * (high - min(value, high)) / (high - low), height - 3)  # a stub even at err/tol 0
        title = f"{row.index} {row.flax_path or '(model)'}: err/tol {'-' if ratio is None else f'{ratio:.2g}'}"
        bars.append(
            f"<rect x='{i}' y='{top:.1f}' width='0.9' height='{height - top:.1f}' fill='{_colour(ratio)}'>"
            f"<title>{_e(title)}</title></rect>"
        )
    one = height * high / (high - low)
    return (
        f"<svg class='strip' id='strip' viewBox='0 0 {width} {height}' preserveAspectRatio='none' role='img' "
        f"aria-label='err/tol of every call, log scale'>{''.join(bars)}"
        f"<line x1='0' x2='{width}' y1='{one:.1f}' y2='{one:.1f}' stroke='#b3261e' stroke-width='0.6' "
        "vector-effect='non-scaling-stroke'/></svg>"
        "<div class='muted'>err/tol of every call, in call order, log scale from 1e-6 to 1e3; the red line is 1</div>"
    )


def _tree(report: EquivalenceReport) -> str:
    """Calls nested by their Flax path; a chain's positions are one flat level."""
    rows = list(report.layers)
    first = report.first_divergence
    paths = [_parts(row.flax_path) for row in rows]
    on_path = set()
    if first is not None:
        target = _parts(first.flax_path)
        on_path = {target[:k] for k in range(len(target) + 1)}
    out: list[str] = []
    stack: list[tuple[str, ...]] = []

    def close_to(depth: int) -> None:
        while len(stack) > depth:
            stack.pop()
            out.append("</details>")

    for i, (row, parts) in enumerate(zip(rows, paths, strict=True)):
        while stack and parts[: len(stack[-1])] != stack[-1]:
            close_to(len(stack) - 1)
        has_children = i + 1 < len(rows) and paths[i + 1][: len(parts)] == parts and len(paths[i + 1]) > len(parts)
        line = _call_line(row, first is not None and first.index == row.index)
        passes = " passes" if row.ok and parts not in on_path else ""
        if has_children:
            opened = " open" if parts in on_path or len(parts) < _OPEN_DEPTH else ""
            out.append(f"<details class='block{passes}'{opened}><summary>{line}</summary>")
            stack.append(parts)
        else:
            out.append(f"<div class='leaf{passes}'>{line}</div>")
    close_to(0)
    return "\n".join(out)


def _parts(path: str) -> tuple[str, ...]:
    return () if path in ("", "(model)") else tuple(path.split("/"))


def _call_line(row: LayerRow, first: bool) -> str:
    name = row.flax_path.rsplit("/", 1)[-1] if row.flax_path else "(model)"
    torch_name = f"{row.torch_name}: {row.torch_kind}" if row.torch_name else "(none)"
    mark = " first" if first else ""
    return (
        f"<span class='call{mark}' data-index='{row.index}'><span class='name' title='{_e(row.flax_path)}'>"
        f"{_e(name)}</span><span>{_e(row.kind)}</span><span class='name muted'>{_e(torch_name)}</span>"
        f"{_cell(row.end_to_end)}{_cell(row.isolated)}</span>"
    )


def _final_rows(report: EquivalenceReport) -> str:
    rows = [("output", report.output)] + [(g.name, g.comparison) for g in report.gradients]
    body = "".join(
        f"<tr class='{'ok' if c.ok else 'bad'}'><td>{_e(name)}</td><td>{_e('x'.join(map(str, c.shape)))}</td>"
        f"<td>{c.max_abs:.2e}</td><td>{_cell(c)}</td></tr>"
        for name, c in rows
    )
    return (
        "<div class='box'><b>output and gradients</b><table id='gradients'><tr><th>what</th><th>shape</th>"
        f"<th>max abs</th><th>err/tol</th></tr>{body}</table></div>"
    )


def _settings(settings: dict[str, Any]) -> str:
    body = "".join(
        f"<tr><td>{_e(key)}</td><td>{_e(value if isinstance(value, str) else json.dumps(value, default=str))}</td></tr>"
        for key, value in settings.items()
    )
    return f"<div class='box'><b>settings</b><table class='settings' id='settings'>{body}</table></div>"
