"""Arrow tables to model tensors, with a documented policy for every kind of bad input.

| input | policy |
| --- | --- |
| missing column | ValueError naming the missing and the present columns |
| dense NaN, inf or null | replaced by the field's training mean; counted in `stats['imputed']` |
| unknown value of a 'table' field (or null) | row 0, the shared unknown row; counted in `stats['unknown']` |
| any id of a 'qr' field | hashed; a null id hashes like -1 (integer ids) or "" (string ids) |
| 'qr' id rarer than the field's min_count in training, or never seen | the field's learned rare row; counted in `stats['rare']` |
| multi-valued field: more than max_values values / an empty or null list | the first max_values kept / one unknown value |
| 'qr' id of another type than fitted (e.g. strings for integer ids) | ValueError naming the column and both types |
| whole-number float ids of an integer-id field | cast to int64 first (10.0 hashes like 10); other floats: ValueError |
| history longer than L | the most recent L actions kept; counted in `stats['truncated']` |
| empty or null history | an all-padding row; TransAct reads it as one empty token |
| action code outside 1..n_actions-1, or a null inside a history list | ValueError naming the column |
| label null or NaN, or outside [0, 1] | ValueError naming the column (labels are never imputed) |
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ranking.columns import float_column, id_values, list_values, require
from ranking.hashing import field_seed, hash_ids
from ranking.layers.embeddings import PAD_ID, RARE_ID
from ranking.schema import FeatureSchema


@dataclass
class Batch:
    """Model inputs for B examples (L is the history length, 0 without a history)."""

    sparse: torch.Tensor  # (B, W) int64: hashed ids ('qr'; RARE_ID = rare) or vocabulary rows ('table');
    # one column per field, max_values columns for a multi-valued field (PAD_ID pads)
    dense: torch.Tensor  # (B, F_d) float32
    hist_items: torch.Tensor  # (B, L) int64 hashed item ids, right-aligned
    hist_actions: torch.Tensor  # (B, L) int64 action codes, 0 = padding
    hist_mask: torch.Tensor  # (B, L) bool, True = a real action
    calib: torch.Tensor  # (B, F_c) int64 calibration feature rows
    labels: torch.Tensor | None = None  # (B, T) float32

    def __len__(self) -> int:
        return self.sparse.shape[0]

    def inputs(self) -> tuple[torch.Tensor, ...]:
        return self.sparse, self.dense, self.hist_items, self.hist_actions, self.hist_mask, self.calib

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(**{f.name: _move(getattr(self, f.name), device, non_blocking) for f in fields(self)})

    def slice(self, start: int, stop: int) -> Batch:
        """Rows start..stop-1 (views, no copy)."""
        return Batch(**{f.name: _part(getattr(self, f.name), slice(start, stop)) for f in fields(self)})

    def select(self, rows: torch.Tensor) -> Batch:
        """The rows at `rows` (an int64 index tensor on the batch's device), copied."""
        return Batch(**{f.name: _take(getattr(self, f.name), rows) for f in fields(self)})

    def trim_history(self, keep: int) -> Batch:
        """The batch without the leading history positions that no row fills, keeping at least the last
        `keep` (TransAct's last_k). Histories are right-aligned, so those positions are padding in every
        row: TransAct masks them as keys and leaves them out of its max-pool, so its output is unchanged,
        and its cost, linear in L (attention quadratic), falls with the longest history in the batch.
        One serving request is one member: its own history length. (B, L) -> (B, L')."""
        L = self.hist_mask.shape[1]
        if L <= keep:
            return self
        filled = self.hist_mask.any(dim=0)  # (L,)
        first = int(filled.to(torch.uint8).argmax()) if bool(filled.any()) else L
        start = min(first, L - keep)
        if start == 0:
            return self
        cut = slice(start, L)
        return replace(
            self,
            hist_items=self.hist_items[:, cut],
            hist_actions=self.hist_actions[:, cut],
            hist_mask=self.hist_mask[:, cut],
        )

    def pin_memory(self) -> Batch:
        return Batch(**{f.name: _pin(getattr(self, f.name)) for f in fields(self)})


def _move(t, device, non_blocking):
    return None if t is None else t.to(device, non_blocking=non_blocking)


def _part(t, rows: slice):
    return None if t is None else t[rows]


def _take(t, rows: torch.Tensor):
    return None if t is None else t.index_select(0, rows)


def _pin(t):
    return None if t is None else t.pin_memory()


class Featurizer:
    """Turns tables that carry a schema's columns into `Batch`es; keeps counts of what it repaired."""

    def __init__(self, schema: FeatureSchema, *, with_labels: bool = True, history: bool = True):
        self.schema = schema
        self.with_labels = with_labels
        self.use_history = history and schema.history is not None
        self.stats: Counter = Counter()
        self._seeds = {f.name: field_seed(f.name) for f in schema.sparse}
        self._vocab = {f.name: pa.array(f.vocab, pa.string()) for f in schema.sparse if f.kind == "table"}
        self._admitted = {f.name: f.admitted_mask() for f in schema.sparse if f.has_rare_row}

    def _codes(self, f, values, column: str | None = None) -> np.ndarray:
        """Flat values of field `f` -> int64 rows: hashed ids (RARE_ID where the frequency filter drops
        them) for 'qr', vocabulary rows (0 = unknown or rare) for 'table'."""
        if f.kind == "qr":
            hashed = hash_ids(id_values(values, column or f.name, f.id_kind), self._seeds[f.name])
            admitted = self._admitted.get(f.name)
            if admitted is None:
                return hashed
            keep = admitted[hashed % f.buckets]
            self.stats["rare"] += int((~keep).sum())
            return np.where(keep, hashed, RARE_ID)
        idx = pc.index_in(pc.cast(values, pa.string()), value_set=self._vocab[f.name])
        self.stats["unknown"] += idx.null_count
        return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1

    def sparse_ids(self, name: str, col: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """(N,) rows of a single-valued field, or (N, max_values) of a multi-valued one (PAD_ID pads; an
        empty list reads as one rare/unknown value)."""
        f = self.schema.field(name)
        if not f.multi:
            return self._codes(f, col)
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
            raise ValueError(
                f"column {name!r} has type {col.type}; field {name!r} is multi-valued and needs a list column."
            )
        values = list_values(col, name)
        col = pc.fill_null(col, pa.scalar([], col.type)) if col.null_count else col
        offsets = col.offsets.to_numpy().astype(np.int64)
        offsets = offsets - offsets[0]
        codes = self._codes(f, values) if len(values) else np.zeros(0, np.int64)
        n, M = len(offsets) - 1, f.max_values
        lengths = np.diff(offsets)
        idx = offsets[:-1, None] + np.arange(M)[None, :]
        valid = np.arange(M)[None, :] < np.minimum(lengths, M)[:, None]
        out = np.where(valid, codes[np.where(valid, idx, 0)] if len(codes) else 0, PAD_ID)
        out[lengths == 0, 0] = RARE_ID if f.kind == "qr" else 0
        self.stats["truncated_values"] += int((lengths > M).sum())
        return out.reshape(n, M).astype(np.int64)

    def history(self, table: pa.Table | pa.RecordBatch, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        spec = self.schema.history
        L = spec.length
        out = []
        for name in (spec.items, spec.actions or spec.items):
            col = table[name]
            col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
            if not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type):
                raise ValueError(f"column {name!r} has type {col.type}; a list of ids is needed.")
            col = pc.fill_null(col, pa.scalar([], col.type)) if col.null_count else col
            if col.flatten().null_count:
                raise ValueError(
                    f"column {name!r} has null entries inside its lists; drop them before scoring."
                )
            offsets = col.offsets.to_numpy().astype(np.int64)
            out.append((offsets - offsets[0], col.flatten()))
        (offsets, items), (offsets_a, action_col) = out
        if spec.actions:
            actions = action_col.to_numpy(zero_copy_only=False)
        else:  # no action column: every history item is action 1
            actions = np.ones(len(items), np.int64)
        if not np.array_equal(offsets, offsets_a):
            raise ValueError(f"columns {spec.items!r} and {spec.actions!r} differ in length on some rows.")
        lengths = np.diff(offsets)
        self.stats["truncated"] += int((lengths > L).sum())
        idx = offsets[1:, None] - L + np.arange(L)[None, :]  # (B, L), right-aligned source positions
        valid = idx >= (offsets[1:] - np.minimum(lengths, L))[:, None]
        safe = np.where(valid, idx, 0)
        if len(items) == 0:
            return np.zeros((n, L), np.int64), np.zeros((n, L), np.int64), np.zeros((n, L), bool)
        bad = (actions < 1) | (actions >= spec.n_actions)
        if bad.any():
            raise ValueError(
                f"column {spec.actions!r} holds action code {int(actions[bad][0])}; codes must be in "
                f"1..{spec.n_actions - 1} (0 is padding)."
            )
        # history items read like the item field's own values (hashed, or its vocabulary's rows)
        codes = self._codes(self.schema.field(spec.item_field), items, spec.items)
        return np.where(valid, codes[safe], 0), np.where(valid, actions[safe], 0).astype(np.int64), valid

    def __call__(self, table: pa.Table | pa.RecordBatch) -> Batch:
        s = self.schema
        need = [f.name for f in s.sparse] + [f.name for f in s.dense]
        if self.use_history:
            need += [c for c in (s.history.items, s.history.actions) if c]
        require(table, need + (list(s.tasks) if self.with_labels else []))
        n = table.num_rows
        sparse = np.concatenate(
            [self.sparse_ids(f.name, table[f.name]).reshape(n, -1) for f in s.sparse], axis=1
        )
        dense = np.empty((n, len(s.dense)), np.float32)
        for j, f in enumerate(s.dense):
            x = float_column(table[f.name], f.name)
            if f.log1p:
                x = np.log1p(np.maximum(x, 0))
            bad = ~np.isfinite(x)
            self.stats["imputed"] += int(bad.sum())
            dense[:, j] = np.where(bad, f.fill, x)
        offsets = s.sparse_offsets()
        calib = sparse[:, [offsets[c] for c in s.calibration]]
        if self.use_history:
            hi, ha, hm = self.history(table, n)
        else:
            hi = ha = np.zeros((n, 0), np.int64)
            hm = np.zeros((n, 0), bool)
        labels = None
        if self.with_labels:
            labels = np.stack([float_column(table[t], t) for t in s.tasks], axis=1).astype(np.float32)
            if not np.isfinite(labels).all():
                t = s.tasks[int(np.nonzero(~np.isfinite(labels).all(axis=0))[0][0])]
                raise ValueError(f"label column {t!r} has null or NaN values; drop or fix those rows first.")
            outside = (labels < 0) | (labels > 1)
            if outside.any():
                row, j = (int(i[0]) for i in np.nonzero(outside))
                raise ValueError(
                    f"label column {s.tasks[j]!r} holds {float(labels[row, j])!r}; labels must be in [0, 1] "
                    "(0/1 outcomes or probabilities). Map them first, e.g. like = rating >= 4."
                )
        self.stats["rows"] += n
        return Batch(
            sparse=torch.from_numpy(sparse),
            dense=torch.from_numpy(dense),
            hist_items=torch.from_numpy(np.ascontiguousarray(hi)),
            hist_actions=torch.from_numpy(np.ascontiguousarray(ha)),
            hist_mask=torch.from_numpy(np.ascontiguousarray(hm)),
            calib=torch.from_numpy(np.ascontiguousarray(calib)),
            labels=None if labels is None else torch.from_numpy(labels),
        )
