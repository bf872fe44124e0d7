"""Figures of the benchmarks: matplotlib drawing to files only (no display), and saving a figure."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib's pyplot on the file-only (Agg) backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: int = 130, rect=None) -> None:
    """Lay out ``fig`` (within ``rect``, as ``tight_layout`` takes it, e.g. room left for a legend), write it to
    ``path`` (its folder made if needed) and free it."""
    fig.tight_layout(rect=rect)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
