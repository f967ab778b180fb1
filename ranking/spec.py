"""Feature spec files: a user's own dataset described for the ranker (like a CTR library's dataset YAML).

A spec (YAML, JSON or TOML) names the label columns, the categorical and numeric fields and the history
columns; `load_spec` turns it into an unfitted FeatureSchema, `user_examples` reads the user's parquet
(train / valid / test files, or one file split by one time cut) and fits the schema on the training
part. Example (what `python -m jobs.export_movielens_ctr` writes next to MovieLens as parquet):

    name: movielens-ctr              # recorded in the checkpoint's schema
    tasks: [like]                    # label columns, 0/1 (or probabilities)
    time_column: timestamp           # orders rows; one file is split by time on it
    sparse:                          # categorical fields
      - {name: member_id, kind: qr, buckets: 65536, min_count: 5}   # hashed ids, rare/new -> learned row
      - {name: item_id, kind: qr, min_count: 5}
      - {name: gender, kind: table}                                 # small vocabulary, fitted on train
      - {name: genres, kind: table, multi: true, max_values: 6}     # a list column, mean-pooled
    dense:                           # numeric fields; NaN/null -> the training mean
      - {name: age}
      - {name: n_views, log1p: true}
    history:                         # optional: the member's recent items, for TransAct
      items: hist_items              # list column of item ids (read like item_field's values)
      actions: hist_actions          # optional list column of action codes 1..n_actions-1
      item_field: item_id
      n_actions: 6
      length: 10
    calibration: [gender]            # optional: 'table' fields that shift the calibration layer
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ranking.columns import require
from ranking.data import parquet_files
from ranking.datasets import Examples, split_parts
from ranking.schema import DenseField, FeatureSchema, HistorySpec, SparseField

SPEC_KEYS = ("name", "tasks", "time_column", "sparse", "dense", "history", "calibration")
_FITTED = {"vocab", "id_kind", "admitted", "fill"}  # set by fitting, never by a spec


def _read(path: Path) -> dict:
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json", ".toml"):
        raise ValueError(
            f"feature spec {path}: unknown file type {suffix!r}; use .yaml, .yml, .json or .toml."
        )
    text = path.read_text()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # json, toml and yaml each raise their own error type
        raise ValueError(f"feature spec {path} is not valid {suffix[1:]}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(
            f"feature spec {path}: expected a mapping of {list(SPEC_KEYS)}, got {type(data).__name__}."
        )
    return data


def _entries(path, data: dict, key: str, cls) -> tuple:
    items = data.get(key, [])
    if not isinstance(items, list):
        raise ValueError(
            f"feature spec {path}: '{key}' must be a list of fields, got {type(items).__name__}."
        )
    allowed = {f.name for f in fields(cls)} - _FITTED
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or "name" not in item:
            raise ValueError(
                f"feature spec {path}: {key}[{i}] = {item!r}; give a mapping with at least 'name'."
            )
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise ValueError(
                f"feature spec {path}: {key}[{i}] ({item['name']!r}) has unknown key(s) {unknown}; "
                f"allowed: {sorted(allowed)}."
            )
        try:
            out.append(cls(**item))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"feature spec {path}: {key}[{i}] ({item['name']!r}): {exc}") from exc
    return tuple(out)


def schema_from_spec(data: dict, path: str | Path = "<spec>") -> tuple[FeatureSchema, str]:
    """(unfitted FeatureSchema, time column) from a parsed spec mapping; every mistake is a ValueError
    naming the key, the value and the fix."""
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"feature spec {path}: unknown key(s) {unknown}; allowed: {list(SPEC_KEYS)}.")
    tasks = data.get("tasks")
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks or not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise ValueError(
            f"feature spec {path}: tasks={tasks!r}; give the label column(s), e.g. tasks: [click]."
        )
    history = data.get("history")
    hist = None
    if history is not None:
        if not isinstance(history, dict):
            raise ValueError(f"feature spec {path}: history must be a mapping, got {history!r}.")
        allowed = {f.name for f in fields(HistorySpec)}
        bad = sorted(set(history) - allowed)
        if bad:
            raise ValueError(
                f"feature spec {path}: history has unknown key(s) {bad}; allowed: {sorted(allowed)}."
            )
        hist = HistorySpec(**{"actions": "", **history})
        if not 2 <= hist.n_actions or hist.length < 1:
            raise ValueError(f"feature spec {path}: history n_actions >= 2 and length >= 1, got {history!r}.")
    sparse = _entries(path, data, "sparse", SparseField)
    dense = _entries(path, data, "dense", DenseField)
    if not sparse and not dense:
        raise ValueError(
            f"feature spec {path}: no 'sparse' or 'dense' fields; name the model's input columns."
        )
    time_column = data.get("time_column", "")
    if not isinstance(time_column, str):
        raise ValueError(f"feature spec {path}: time_column={time_column!r} must be a column name.")
    try:
        schema = FeatureSchema(
            sparse=sparse,
            dense=dense,
            tasks=tuple(tasks),
            history=hist,
            calibration=tuple(data.get("calibration", ())),
            dataset=str(data.get("name", "user")),
        )
    except ValueError as exc:
        raise ValueError(f"feature spec {path}: {exc}") from exc
    return schema, time_column


def load_spec(path: str | Path) -> tuple[FeatureSchema, str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"feature spec {path}: no such file. Write one (see ranking/spec.py) or export the "
            "MovieLens example: python -m jobs.export_movielens_ctr --out DIR."
        )
    return schema_from_spec(_read(path), path)


def spec_dict(schema: FeatureSchema, time_column: str = "") -> dict:
    """The spec of an (unfitted or fitted) schema: what `schema_from_spec` reads back to the same structure."""

    def entry(f, cls) -> dict:
        d = {"name": f.name}
        for k in fields(cls):
            v = getattr(f, k.name)
            if k.name not in _FITTED and k.name != "name" and (v != k.default or k.name == "kind"):
                d[k.name] = v
        return d

    out = {
        "name": schema.dataset or "user",
        "tasks": list(schema.tasks),
        "sparse": [entry(f, SparseField) for f in schema.sparse],
        "dense": [entry(f, DenseField) for f in schema.dense],
    }
    if time_column:
        out["time_column"] = time_column
    if schema.history:
        out["history"] = {k.name: getattr(schema.history, k.name) for k in fields(HistorySpec)}
    if schema.calibration:
        out["calibration"] = list(schema.calibration)
    return out


def _read_parquet(path) -> pa.Table:
    files = parquet_files(path)
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def user_examples(
    schema: FeatureSchema,
    *,
    train=None,
    valid=None,
    test=None,
    data=None,
    time_column: str = "",
    test_fraction: float = 0.2,
    valid_fraction: float = 0.1,
) -> Examples:
    """A user's parquet as Examples: `train`, `test` (and optionally `valid`) files or folders, or one
    `data` file split by one cut on `time_column` (latest test_fraction test, the valid_fraction
    before it validation). The schema is fitted on the training part."""
    if data is not None:
        if train is not None or test is not None or valid is not None:
            raise ValueError(
                "give either --data (one file, split by time) or --train/--test (and --valid), not both."
            )
        table = _read_parquet(data)
        if not time_column:
            raise ValueError(
                "--data is split by time: set time_column in the feature spec (or --time-column), or give "
                "--train and --test files."
            )
        require(table, [time_column], f"--data {data}")
        ts = pc.cast(table[time_column], pa.int64()).to_numpy(zero_copy_only=False)
        idx = np.arange(table.num_rows)
        part = split_parts(idx, ts, idx, "global-time", test_fraction, valid_fraction)
        tr, va, te = (table.filter(pa.array(part == k)).sort_by(time_column) for k in range(3))
        va = va if va.num_rows else None
    else:
        if train is None or test is None:
            raise ValueError(
                "--dataset files needs --train and --test parquet (and optionally --valid), or --data."
            )
        tr, te = _read_parquet(train), _read_parquet(test)
        va = _read_parquet(valid) if valid is not None else None
    need = schema.columns + list(schema.tasks)
    for name, t in (("train", tr), ("valid", va), ("test", te)):
        if t is not None:
            require(t, need, f"the {name} part")
    return Examples(tr, te, schema.fit(tr), va)
