"""The report drawn with ``rich`` for a terminal: the cells of ``format_report`` (which stays the plain text for
files, pipes and logs), with the verdict, each row's mark and its err/tol coloured (green within tolerance, red
beyond) and the row of the first divergence in bold."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ._report import report_cells, report_heading, report_notes

if TYPE_CHECKING:
    from ._report import EquivalenceReport

_MARKS = {"ok": "green", "!!": "red", ">>": "bold red"}
_RATIOS = ("err/tol", "isolated")


def print_rich_report(report: EquivalenceReport, console: Console) -> bool:
    """Print the drawn report on ``console`` when its table fits the width; False (nothing printed) when not,
    so the caller prints the plain text rather than columns cut short."""
    header, rows = report_cells(report)
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    for name in header:
        table.add_column(name, no_wrap=True)
    ratio_columns = [header.index(name) for name in _RATIOS]
    for row in rows:
        cells = [Text(cell) for cell in row]
        cells[0].stylize(_MARKS.get(row[0], ""))
        for i in ratio_columns:
            cells[i].stylize(_ratio_style(row[i]))
        if row[0] == ">>":
            for cell in cells[1:]:
                cell.stylize("bold")
        table.add_row(*cells)
    if Measurement.get(console, console.options.update(max_width=100_000), table).maximum > console.width:
        return False
    verdict, settings = report_heading(report)
    notes = [Text(line, "red" if line.startswith((">>", "problem")) else "") for line in report_notes(report)]
    console.print(Group(Text(verdict, "bold green" if report.ok else "bold red"), Text(settings, "dim"), table, *notes))
    return True


def _ratio_style(cell: str) -> str:
    try:
        return "green" if float(cell) <= 1 else "bold red"
    except ValueError:  # "shape", "NaN/Inf" (red), "-" or "" (no comparison)
        return "bold red" if cell in {"shape", "NaN/Inf"} else ""
