"""``--plot``: per-layer error against tolerance on a log scale (matplotlib, an optional extra)."""

from __future__ import annotations

import io
from pathlib import Path

from .._errors import InvalidArgumentError
from ._html import PLOT_SOFTWARE, write_report_file
from ._report import EquivalenceReport


def plot_report(report: EquivalenceReport, path: str | Path) -> None:
    """Write a PNG of each position's max abs error (end to end and isolated) and its tolerance, whole or not at
    all; an existing file is replaced only when it is a report this package wrote.

    Raises:
        InvalidArgumentError: when matplotlib is missing (install ``flax-torch-bridge[plot]``), or ``path`` holds
            something else.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise InvalidArgumentError("--plot needs matplotlib: pip install 'flax-torch-bridge[plot]'") from e
    positions = [row.index for row in report.layers]
    labels = [f"{row.index}\n{row.kind}" for row in report.layers]
    floor = 1e-30  # log scale: exact zeros drawn at the bottom
    figure, axes = plt.subplots(figsize=(max(6.0, 0.8 * len(positions)), 4.0))
    axes.semilogy(
        positions, [max(r.end_to_end.max_abs, floor) for r in report.layers], "o-", label="max abs error (end to end)"
    )
    iso = [max(r.isolated.max_abs, floor) if r.isolated else float("nan") for r in report.layers]
    axes.semilogy(positions, iso, "s--", label="max abs error (isolated)")
    axes.semilogy(
        positions, [max(r.end_to_end.tolerance_at_worst, floor) for r in report.layers], "k:", label="tolerance"
    )
    if report.first_divergence is not None:
        axes.axvline(report.first_divergence.index, color="red", alpha=0.3, label="first divergence")
    axes.set_xticks(positions, labels)
    axes.set_ylabel("absolute error")
    axes.set_title("flax-torch-bridge: " + ("equivalent" if report.ok else "NOT equivalent"))
    axes.legend(fontsize="small")
    figure.tight_layout()
    png = io.BytesIO()
    try:
        figure.savefig(png, format="png", metadata=PLOT_SOFTWARE)  # the mark that lets a later plot replace it
    finally:
        plt.close(figure)
    write_report_file(path, png.getvalue())
