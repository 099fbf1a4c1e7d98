"""The report's table drawn with ``rich`` for a terminal: the same rows and columns as ``format_report`` (which
stays the plain text for files, pipes and logs), each call indented under the one it runs in, err/tol coloured
(green within tolerance, red beyond), the first divergence marked and its hint under the table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ._report import format_report

if TYPE_CHECKING:
    from ._compare import Comparison
    from ._report import EquivalenceReport


def print_rich_report(report: EquivalenceReport, console: Console) -> bool:
    """Print the drawn report on ``console`` when its table fits the width; False (nothing printed) when not,
    so the caller prints the plain text rather than columns cut short."""
    drawn, table = _drawn(report)
    if Measurement.get(console, console.options.update(max_width=100_000), table).maximum > console.width:
        return False
    console.print(drawn)
    return True


def _drawn(report: EquivalenceReport) -> tuple[Group, Table]:
    """The renderable (verdict, table, the lines ``format_report`` prints after its table) and its table."""
    first = report.first_divergence
    tree = "matched" in report.settings
    table = Table(show_edge=False, header_style="bold", pad_edge=False, box=None)
    for column in ("", "pos", "layer", "flax path", "torch", "shape", "max abs", "err/tol", "isolated"):
        table.add_column(
            column, justify="right" if column in {"max abs", "err/tol", "isolated"} else "left", no_wrap=True
        )
    for row in report.layers:
        c = row.end_to_end
        divergent = first is not None and first.index == row.index
        marker = Text(">>", "bold red") if divergent else Text("ok", "green") if row.ok else Text("!!", "red")
        path = row.flax_path or "-"
        if tree and path != "(model)":
            path = "  " * (path.count("/") + 1) + path.rsplit("/", 1)[-1]
        table.add_row(
            marker,
            str(row.index),
            row.kind,
            Text(path, "bold" if divergent else ""),
            f"{row.torch_name}:{row.torch_kind}" if row.torch_name else "(none)",
            "x".join(map(str, c.shape)),
            f"{c.max_abs:.2e}",
            _ratio(c),
            _ratio(row.isolated),
        )
    rows = [("out", "output", report.output)] + [("grad", g.name, g.comparison) for g in report.gradients]
    for position, name, c in rows:
        table.add_row(
            Text("ok", "green") if c.ok else Text("!!", "red"),
            position,
            "d loss" if position == "grad" else "output",
            name if position == "grad" else "",
            "",
            "x".join(map(str, c.shape)),
            f"{c.max_abs:.2e}",
            _ratio(c),
            "",
        )
    text = format_report(report).splitlines()
    verdict = Text(text[0], "bold green" if report.ok else "bold red")
    after = [line for line in text[text.index(_header_line(text)) + 1 + len(rows) + len(report.layers) :]]
    return Group(verdict, Text(text[1], "dim"), table, *(Text(line) for line in after)), table


def _header_line(lines: list[str]) -> str:
    return next(line for line in lines if line.lstrip().startswith("pos"))


def _ratio(c: Comparison | None) -> Text:
    if c is None:
        return Text("-")
    if c.shape != c.candidate_shape:
        return Text("shape", "red")
    if c.nonfinite_mismatched:
        return Text("NaN/Inf", "red")
    return Text(f"{c.worst_ratio:.2g}", "green" if c.worst_ratio <= 1 else "bold red")
