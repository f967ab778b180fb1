"""The feature schema: which columns feed which part of the ranker. Saved with every checkpoint.

A schema is built by a dataset (ranking/datasets.py), fitted on the training table (vocabularies of
small categorical fields, imputation values of numeric fields) and frozen into the checkpoint. Data
scored by a checkpoint must carry the columns its schema names, with compatible types.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ranking.columns import ID_KINDS, float_column, id_kind_of, require

SPARSE_KINDS = ("qr", "table")


@dataclass(frozen=True)
class SparseField:
    """A categorical column: 'qr' hashes any id into `buckets`; 'table' maps a small known vocabulary."""

    name: str
    kind: str = "qr"
    buckets: int = 1 << 16  # qr: N, the hash space
    vocab: tuple[str, ...] = ()  # table: known values as strings, fitted on training data
    # qr: 'integer' or 'string', fitted on training data; other id types are refused at scoring.
    # '' (unfitted, or saved before it was recorded) takes the kind of the column's type at scoring.
    id_kind: str = ""

    def __post_init__(self):
        if self.kind not in SPARSE_KINDS:
            raise ValueError(f"SparseField {self.name!r}: kind={self.kind!r}, use one of {SPARSE_KINDS}.")
        if self.id_kind not in ("", *ID_KINDS):
            raise ValueError(f"SparseField {self.name!r}: id_kind={self.id_kind!r}, use one of {ID_KINDS}.")
        object.__setattr__(self, "vocab", tuple(self.vocab))


@dataclass(frozen=True)
class DenseField:
    """A numeric column; NaN, inf and nulls are replaced by `fill` (the training mean after fitting)."""

    name: str
    log1p: bool = False  # apply log(1 + max(x, 0)) first, for counts
    fill: float = 0.0


@dataclass(frozen=True)
class HistorySpec:
    """The member's recent actions for TransAct: list columns of item ids and action codes."""

    items: str = "hist_items"
    actions: str = "hist_actions"
    item_field: str = "item_id"  # the sparse field whose embedding the history items share
    n_actions: int = 8  # action codes are 1..n_actions-1; 0 is padding
    length: int = 50  # L: longer histories keep their most recent L actions


@dataclass(frozen=True)
class LongDwellSpec:
    """Long-dwell labels: dwell above the p-th percentile of its context group, tables from training data."""

    dwell: str = "dwell_s"
    groups: tuple[str, ...] = ("position_bucket", "content_type")
    percentile: float = 75.0
    thresholds: dict = field(default_factory=dict)  # "group|values" -> seconds
    fallback: float = 0.0  # threshold for a group unseen in training (the global percentile)


@dataclass(frozen=True)
class FeatureSchema:
    sparse: tuple[SparseField, ...]
    dense: tuple[DenseField, ...]
    tasks: tuple[str, ...]
    history: HistorySpec | None = None
    calibration: tuple[str, ...] = ()  # names of 'table' sparse fields fed to the calibration layer
    long_dwell: LongDwellSpec | None = None
    dataset: str = ""  # which dataset builder made it, e.g. 'movielens-ctr'

    def __post_init__(self):
        object.__setattr__(self, "sparse", tuple(self.sparse))
        object.__setattr__(self, "dense", tuple(self.dense))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "calibration", tuple(self.calibration))
        names = [f.name for f in self.sparse]
        for c in self.calibration:
            if c not in names or self.field(c).kind != "table":
                raise ValueError(f"FeatureSchema.calibration names {c!r}: it must be a 'table' sparse field.")
        if self.history and self.history.item_field not in names:
            raise ValueError(
                f"HistorySpec.item_field={self.history.item_field!r} is not a sparse field; fields are {names}."
            )
        if not self.tasks:
            raise ValueError("FeatureSchema.tasks is empty: name at least one label column.")

    def field(self, name: str) -> SparseField:
        return next(f for f in self.sparse if f.name == name)

    @property
    def columns(self) -> list[str]:
        """Every input column a batch must carry (labels excluded)."""
        cols = [f.name for f in self.sparse] + [f.name for f in self.dense]
        if self.history:
            cols += [self.history.items, self.history.actions]
        return cols

    def signature(self) -> dict:
        """The structure, without fitted values: two schemas with equal signatures read the same data."""
        return {
            "dataset": self.dataset,
            "sparse": [(f.name, f.kind, f.buckets if f.kind == "qr" else None) for f in self.sparse],
            "dense": [(f.name, f.log1p) for f in self.dense],
            "tasks": list(self.tasks),
            "history": asdict(self.history) if self.history else None,
            "calibration": list(self.calibration),
        }

    def check_compatible(self, other: FeatureSchema, *, what: str = "checkpoint") -> None:
        """Refuse data built with a different structure, naming what differs."""
        a, b = self.signature(), other.signature()
        diffs = [k for k in a if a[k] != b[k]]
        if diffs:
            detail = "; ".join(f"{k}: {what} has {a[k]}, data has {b[k]}" for k in diffs)
            raise ValueError(
                f"feature schema mismatch ({detail}). Score this data with a {what} trained on the same "
                "features, or retrain on it."
            )

    def fit(self, table: pa.Table) -> FeatureSchema:
        """Vocabularies of 'table' fields, id kinds of 'qr' fields and imputation means of dense fields,
        from training data."""
        require(table, [f.name for f in self.sparse] + [f.name for f in self.dense], "training table")
        sparse = []
        for f in self.sparse:
            if f.kind == "table":
                values = pc.unique(pc.cast(table[f.name], pa.string())).drop_null().to_pylist()
                f = replace(f, vocab=tuple(sorted(values)))
            else:
                f = replace(f, id_kind=id_kind_of(table[f.name].type, f.name))
            sparse.append(f)
        dense = []
        for f in self.dense:
            x = float_column(table[f.name], f.name)
            x = np.log1p(np.maximum(x, 0)) if f.log1p else x
            finite = x[np.isfinite(x)]
            dense.append(replace(f, fill=float(finite.mean()) if finite.size else 0.0))
        return replace(self, sparse=tuple(sparse), dense=tuple(dense))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSchema:
        hist = d.get("history")
        dwell = d.get("long_dwell")
        return cls(
            sparse=tuple(SparseField(**f) for f in d["sparse"]),
            dense=tuple(DenseField(**f) for f in d["dense"]),
            tasks=tuple(d["tasks"]),
            history=HistorySpec(**hist) if hist else None,
            calibration=tuple(d.get("calibration", ())),
            long_dwell=LongDwellSpec(**{**dwell, "groups": tuple(dwell["groups"])}) if dwell else None,
            dataset=d.get("dataset", ""),
        )
