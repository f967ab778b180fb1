"""Long-dwell labels (LiRank section 4): a click whose dwell time is above the p-th percentile of its
context group. Raw dwell is dominated by where and what was shown (top slots and long videos get
longer dwell), so the threshold is set per group; the tables come from training data and are saved
with the model, so serving and retraining label the same way."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog.features import position_bucket  # noqa: F401  (the long-dwell groups' position buckets)
from ranking.schema import LongDwellSpec


def _group_keys(table: pa.Table, spec: LongDwellSpec) -> np.ndarray:
    missing = [g for g in spec.groups if g not in table.schema.names]
    if missing:
        raise ValueError(f"long-dwell groups need column(s) {missing}; the table has {table.schema.names}.")
    parts = [np.asarray(pc.cast(table[g], pa.string()).to_pylist(), dtype=object) for g in spec.groups]
    keys = parts[0].astype(str)
    for p in parts[1:]:
        keys = np.char.add(np.char.add(keys, "|"), p.astype(str))
    return keys


def fit_long_dwell(table: pa.Table, spec: LongDwellSpec, min_group: int = 20) -> LongDwellSpec:
    """Per-group p-th percentile of dwell over clicked rows (dwell > 0); groups with fewer than
    `min_group` clicks use the global percentile."""
    if not 0 < spec.percentile < 100:
        raise ValueError(f"LongDwellSpec.percentile={spec.percentile}: must be in (0, 100).")
    dwell = pc.fill_null(table[spec.dwell], 0).to_numpy(zero_copy_only=False).astype(np.float64)
    keys = _group_keys(table, spec)
    clicked = dwell > 0
    if not clicked.any():
        raise ValueError(f"column {spec.dwell!r} has no positive dwell: long-dwell thresholds need clicks.")
    fallback = float(np.percentile(dwell[clicked], spec.percentile))
    thresholds = {}
    for key in np.unique(keys[clicked]):
        d = dwell[clicked & (keys == key)]
        if d.size >= min_group:
            thresholds[str(key)] = float(np.percentile(d, spec.percentile))
    return replace(spec, thresholds=thresholds, fallback=fallback)


def long_dwell_labels(table: pa.Table, spec: LongDwellSpec) -> np.ndarray:
    """(N,) bool: dwell above its group's threshold (unseen groups use the fallback)."""
    if not spec.thresholds and spec.fallback == 0.0:
        raise ValueError(
            "LongDwellSpec has no thresholds: fit it on training data with fit_long_dwell first."
        )
    dwell = pc.fill_null(table[spec.dwell], 0).to_numpy(zero_copy_only=False).astype(np.float64)
    keys = _group_keys(table, spec)
    thr = np.array([spec.thresholds.get(k, spec.fallback) for k in keys.tolist()], dtype=np.float64)
    return (dwell > 0) & (dwell > thr)
