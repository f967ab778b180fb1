"""Per-task ranking and calibration metrics: AUC, logloss, ECE, observed/expected, reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from catalog.metrics import auc, logloss  # noqa: F401  (the ranker's metrics; shared with alignment/)


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, np.ndarray]:
    """Equal-width probability bins: count, mean prediction and observed rate per bin."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, p, bins) / count
        rate = np.bincount(idx, y, bins) / count
    return {"count": count, "mean_p": mean_p, "rate": rate}


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: sum_b (n_b / N) |rate_b - mean_p_b| over equal-width bins."""
    r = reliability(y, p, bins)
    keep = r["count"] > 0
    return float(np.sum(r["count"][keep] / r["count"].sum() * np.abs(r["rate"][keep] - r["mean_p"][keep])))


def observed_expected(y: np.ndarray, p: np.ndarray) -> float:
    """sum(y) / sum(p): 1.0 when predictions add up to what happened."""
    return float(np.sum(y) / max(np.sum(p), 1e-12))


def task_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {
        "auc": auc(y, p),
        "logloss": logloss(y, p),
        "ece": ece(y, p),
        "oe": observed_expected(y, p),
        "positive_rate": float(np.mean(y)),
        "n": int(len(y)),
    }


def reliability_diagram(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, bins: int = 10
) -> Path:
    """Write a reliability-diagram PNG: observed rate against mean prediction per bin, one line per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, (y, p) in curves.items():
        r = reliability(y, p, bins)
        keep = r["count"] > 0
        ax.plot(r["mean_p"][keep], r["rate"][keep], marker="o", label=f"{name} (ECE {ece(y, p, bins):.3f})")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
