"""The feature schema: which columns feed which part of the ranker. Saved with every checkpoint.

A schema is built by a dataset (ranking/datasets.py), fitted on the training table (vocabularies of
small categorical fields, imputation values of numeric fields) and frozen into the checkpoint. Data
scored by a checkpoint must carry the columns its schema names, with compatible types.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ranking.columns import ID_KINDS, float_column, id_kind_of, id_values, list_values, require
from ranking.hashing import field_seed, hash_ids

SPARSE_KINDS = ("qr", "table")


@dataclass(frozen=True)
class SparseField:
    """A categorical column: 'qr' hashes any id into `buckets`; 'table' maps a small known vocabulary.

    Frequency filter: values seen fewer than `min_count` times in training share one learned "rare"
    embedding (a 'table' field's unknown row; a 'qr' field's extra rare row), and so do values never
    seen, such as a new member's id. Without it an unseen id reads QR rows other ids trained, which is
    noise exactly where a new member needs a prior. A 'qr' field keeps no vocabulary: the filter is a
    bitmap over its hash buckets (`admitted`, packed bits in base64; buckets / 8 bytes).

    `multi`: the column is a list of values per row (e.g. genres); their embeddings are mean-pooled
    over at most `max_values` values (the first ones), an empty list reads as the rare/unknown row.
    """

    name: str
    kind: str = "qr"
    buckets: int = 1 << 16  # qr: N, the hash space
    vocab: tuple[str, ...] = ()  # table: known values as strings, fitted on training data
    # qr: 'integer' or 'string', fitted on training data; other id types are refused at scoring.
    # '' (unfitted, or saved before it was recorded) takes the kind of the column's type at scoring.
    id_kind: str = ""
    min_count: int = 1  # values seen fewer times in training read the rare row (1: every seen value kept)
    admitted: str = ""  # qr with min_count > 1: fitted bitmap of buckets kept, base64; '' = no rare row
    multi: bool = False  # a list column, mean-pooled
    max_values: int = 8  # multi: values kept per row

    def __post_init__(self):
        if self.kind not in SPARSE_KINDS:
            raise ValueError(f"SparseField {self.name!r}: kind={self.kind!r}, use one of {SPARSE_KINDS}.")
        if self.id_kind not in ("", *ID_KINDS):
            raise ValueError(f"SparseField {self.name!r}: id_kind={self.id_kind!r}, use one of {ID_KINDS}.")
        if not isinstance(self.min_count, int) or self.min_count < 1:
            raise ValueError(
                f"SparseField {self.name!r}: min_count={self.min_count!r}, must be an integer >= 1."
            )
        if not isinstance(self.max_values, int) or self.max_values < 1:
            raise ValueError(
                f"SparseField {self.name!r}: max_values={self.max_values!r}, must be an integer >= 1."
            )
        if self.kind == "qr" and self.buckets < 2:
            raise ValueError(f"SparseField {self.name!r}: buckets={self.buckets!r}, must be >= 2.")
        object.__setattr__(self, "vocab", tuple(self.vocab))

    @property
    def width(self) -> int:
        """Columns this field takes in a batch's sparse matrix."""
        return self.max_values if self.multi else 1

    @property
    def has_rare_row(self) -> bool:
        """Whether a 'qr' field's embedding has the learned rare/unseen row (set when fitted)."""
        return self.kind == "qr" and bool(self.admitted)

    def admitted_mask(self) -> np.ndarray | None:
        """(buckets,) bool: the hash buckets of frequent ids, or None when every id is kept."""
        if not self.admitted:
            return None
        bits = np.frombuffer(base64.b64decode(self.admitted), np.uint8)
        return np.unpackbits(bits)[: self.buckets].astype(bool)


@dataclass(frozen=True)
class DenseField:
    """A numeric column; NaN, inf and nulls are replaced by `fill` (the training mean after fitting)."""

    name: str
    log1p: bool = False  # apply log(1 + max(x, 0)) first, for counts
    fill: float = 0.0


@dataclass(frozen=True)
class HistorySpec:
    """The member's recent actions for TransAct: list columns of item ids and action codes.

    `actions` '' means the data has no action column: every history item reads as action 1 ("seen").
    The item field may be a 'qr' or a 'table' field; the history's items are looked up like its values.
    """

    items: str = "hist_items"
    actions: str = "hist_actions"  # '' = no action column
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
        if self.history:
            item = next((f for f in self.sparse if f.name == self.history.item_field), None)
            if item is not None and item.multi:
                raise ValueError(
                    f"HistorySpec.item_field={item.name!r} is a multi-valued field; the history's items "
                    "share the embedding of a single-valued item field."
                )
        object.__setattr__(self, "dense", tuple(self.dense))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "calibration", tuple(self.calibration))
        names = [f.name for f in self.sparse]
        for c in self.calibration:
            if c not in names or self.field(c).kind != "table" or self.field(c).multi:
                raise ValueError(
                    f"FeatureSchema.calibration names {c!r}: it must be a single-valued 'table' sparse field."
                )
        if self.history and self.history.item_field not in names:
            raise ValueError(
                f"HistorySpec.item_field={self.history.item_field!r} is not a sparse field; fields are {names}."
            )
        if not self.tasks:
            raise ValueError("FeatureSchema.tasks is empty: name at least one label column.")

    def field(self, name: str) -> SparseField:
        found = next((f for f in self.sparse if f.name == name), None)
        if found is None:
            raise ValueError(
                f"no sparse field {name!r}; the schema's sparse fields are {[f.name for f in self.sparse]}."
            )
        return found

    def sparse_offsets(self) -> dict[str, int]:
        """Each sparse field's first column in a batch's sparse matrix (a multi field takes max_values)."""
        out, at = {}, 0
        for f in self.sparse:
            out[f.name] = at
            at += f.width
        return out

    @property
    def columns(self) -> list[str]:
        """Every input column a batch must carry (labels excluded)."""
        cols = [f.name for f in self.sparse] + [f.name for f in self.dense]
        if self.history:
            cols += [c for c in (self.history.items, self.history.actions) if c]
        return cols

    def signature(self) -> dict:
        """The structure, without fitted values: two schemas with equal signatures read the same data."""
        return {
            "dataset": self.dataset,
            "sparse": [
                (f.name, f.kind, f.buckets if f.kind == "qr" else None) + ((f.max_values,) if f.multi else ())
                for f in self.sparse
            ],
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
        """Vocabularies of 'table' fields, id kinds and frequency filters of 'qr' fields and imputation
        means of dense fields, from training data."""
        require(table, [f.name for f in self.sparse] + [f.name for f in self.dense], "training table")
        sparse = [fit_sparse(f, table[f.name]) for f in self.sparse]
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


def _flat_values(col: pa.ChunkedArray | pa.Array, f: SparseField) -> pa.Array:
    """A field's values as one flat array (a multi field's lists flattened)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not f.multi:
        return col
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        raise ValueError(
            f"column {f.name!r} has type {col.type}; field {f.name!r} is multi-valued and needs a list column "
            "(e.g. list<string> of genres). Set multi=false in the feature spec for a single value per row."
        )
    return list_values(col, f.name)


def fit_sparse(f: SparseField, col: pa.ChunkedArray | pa.Array) -> SparseField:
    """One sparse field fitted on its training column: vocabulary ('table') or id kind and frequency
    filter ('qr'). Values seen fewer than min_count times are left to the rare row."""
    values = _flat_values(col, f)
    if f.kind == "table":
        counts = pc.value_counts(pc.cast(values, pa.string()).drop_null())
        keep = [
            v.as_py()
            for v, n in zip(counts.field("values"), counts.field("counts"), strict=True)
            if n.as_py() >= f.min_count
        ]
        return replace(f, vocab=tuple(sorted(keep)))
    kind = id_kind_of(values.type, f.name)
    f = replace(f, id_kind=kind)
    if f.min_count <= 1:
        return replace(f, admitted="")
    hashed = hash_ids(id_values(values.drop_null(), f.name, kind), field_seed(f.name))
    counts = np.bincount(hashed % f.buckets, minlength=f.buckets)
    bits = np.packbits(counts >= f.min_count)
    return replace(f, admitted=base64.b64encode(bits.tobytes()).decode("ascii"))
