"""The pictures, drawn with matplotlib (installed with MLflow) on its file-only backend: the
evaluate stage's reliability diagram (is a 0.8 answer right 80% of the time?) and risk-coverage
curve (how good are the answers we give if we give only the most confident ones?), and the recipe
study's learning curve.

Each draws the calibrated confidence beside the raw span score, so the gain is visible; files are
written atomically like every report.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medqa.calibration import reliability_bins
from medqa.fileio import write_bytes_atomic

BINS = 10


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: draw to files only
    matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text: searchable, small
    import matplotlib.pyplot as plt

    return plt


def reliability_png(path: Path, series: dict[str, Sequence[float]], right: Sequence[float]) -> None:
    """One line per confidence series (name -> confidences of the answers), against the diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for name, conf in series.items():
        points = reliability_bins(conf, right, BINS)
        x, y = [p[0] for p in points], [p[1] for p in points]
        ax.plot(x, y, marker="o", label=name)
    ax.set(
        xlabel="confidence (bin mean)",
        ylabel="share exactly right",
        xlim=(0, 1),
        ylim=(0, 1),
        title="Reliability of answers (test)",
    )
    ax.legend(loc="upper left")
    _save(fig, path)


def risk_coverage_png(
    path: Path, series: dict[str, tuple[Sequence[float], Sequence[float]]]
) -> None:
    """Answered F1 against coverage (share of all questions answered), one line per ordering."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (coverage, answered_f1) in series.items():
        ax.plot(coverage, answered_f1, label=name)
    ax.set(
        xlabel="coverage (share of test questions answered)",
        ylabel="F1 of the answers given",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="Answering only the most confident",
    )
    ax.legend(loc="lower left")
    _save(fig, path)


def learning_curve_svg(path: Path, curves: dict[str, list[dict[str, Any]]]) -> None:
    """Dev and test F1 against the share of training questions, one line pair per curve (the
    first solid, the next dashed): does more data still help?"""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, (label, curve) in enumerate(curves.items()):
        for key, colour in (("test_f1", "#1f5fa8"), ("dev_f1", "#c0392b")):
            points = [(p["tokenize.train_fraction"], p[key]) for p in curve if p[key] is not None]
            if points:
                x, y = zip(*points)
                name = f"{key.removesuffix('_f1')} F1, {label}"
                ax.plot(x, y, marker="o", color=colour, linestyle="--" if n else "-", label=name)
    ax.set(xlabel="share of training questions", ylabel="F1", xlim=(0, 1.02), ylim=(0, None))
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.legend(loc="lower right")
    _save(fig, path, "svg")


def _save(fig: Any, path: Path, fmt: str = "png") -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    write_bytes_atomic(Path(path), buf.getvalue())
