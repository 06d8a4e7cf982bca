"""Training-loss curves of several freeze-SFT runs on one axis (the paper's Fig. 6).

Each run directory is a `surgeon train` output: its ``train/loss.csv`` has the curve and
``train/freeze.json`` says what was trained, which labels the line.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from weightsurgeon.errors import SurgeonError

from .runner import REPORT_DIR


def read_loss(run: Path) -> tuple[list[float], list[float]]:
    """(steps, losses) from a run's loss.csv."""
    path = Path(run) / REPORT_DIR / "loss.csv"
    if not path.is_file():
        raise SurgeonError(f"{run}: no {REPORT_DIR}/loss.csv (not a `surgeon train` output?)")
    steps, losses = [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                try:
                    steps.append(float(row["step"]))
                    losses.append(float(row["loss"]))
                except (KeyError, TypeError, ValueError):
                    raise SurgeonError(f"{path}: malformed row {row} (needs numbers in the step and loss columns)") from None
    except UnicodeDecodeError:
        raise SurgeonError(f"{path}: not a loss table (the file is not UTF-8 text)") from None
    return steps, losses


def run_label(run: Path) -> str:
    """'NAME: o_proj,norm,emb,head (9.9%)' from freeze.json, else the directory name."""
    path = Path(run) / REPORT_DIR / "freeze.json"
    try:
        info = json.loads(path.read_text())
        return f"{Path(run).name}: {info['modules']} ({100 * info['trainable_share']:.1f}%)"
    except (OSError, ValueError, KeyError):
        return Path(run).name


def plot_losses(runs: list[Path], out: Path, smooth: int = 1) -> Path:
    """Write a PNG/PDF/SVG (by suffix) overlaying the loss curves; ``smooth`` is a moving-average window."""
    if not runs:
        raise SurgeonError("no runs to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for run in runs:
        steps, losses = read_loss(run)
        if smooth > 1 and len(losses) >= smooth:
            window = [sum(losses[i - smooth + 1 : i + 1]) / smooth for i in range(smooth - 1, len(losses))]
            steps, losses = steps[smooth - 1 :], window
        ax.plot(steps, losses, lw=1.2, label=run_label(run))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out
