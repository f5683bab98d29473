"""Writing the reports: CSV files, the label-efficiency plot (PNG) and a text table for stdout.

The plot uses Matplotlib's object API with the Agg canvas (no pyplot, no display needed).
Files are made in memory and written whole (``storage.write_bytes``), so ``path`` may be a URL.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ramen_jax import storage


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_csv(path, rows: Sequence[dict], columns: Sequence[str]) -> str:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(columns))
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row[c]) for c in columns})
    storage.write_text(path, text.getvalue())
    return str(path)


def text_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    cells = [[str(c) for c in columns]] + [[_cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in cells
    )


def plot_curve(path, rows: Sequence[dict], metric: str, title: str) -> str:
    """Mean +- std of ``metric`` against the number of labels, one line per probe."""
    figure = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for probe in dict.fromkeys(r["probe"] for r in rows):
        points = sorted(
            (r["labels"], r["mean"], r["std"])
            for r in rows
            if r["probe"] == probe and r["metric"] == metric
        )
        labels, means, stds = zip(*points, strict=True)
        axes.errorbar(labels, means, yerr=stds, marker="o", capsize=3, label=probe)
    axes.set_xscale("log")
    axes.set_xlabel("labelled training samples")
    axes.set_ylabel(metric)
    axes.set_title(title, fontsize=9)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png")
    storage.write_bytes(path, png.getvalue())
    return str(path)
