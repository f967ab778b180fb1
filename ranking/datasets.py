"""Example tables for the ranker, built from catalog tables.

- `movielens_ctr`: MovieLens-100K as a CTR task (like = rating >= 4) split by time, with member and
  item features and the member's causal history (every earlier rating: item and rating as the action).
- `feedback_examples`: the multi-task feedback logs that sim/ and production write (click, like,
  share, skip, long dwell), joined with member and item features and the member's rating history.

Each builder returns plain Arrow tables plus the (unfitted) FeatureSchema that reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog.features import item_features, member_features, member_rating_histories, position_bucket
from catalog.schemas import FEEDBACK_LOG
from ranking.labels import fit_long_dwell, long_dwell_labels
from ranking.schema import DenseField, FeatureSchema, HistorySpec, LongDwellSpec, SparseField

MOVIELENS = "movielens-ctr"
FEEDBACK = "feedback-log"
FEEDBACK_TASKS = ("click", "like", "share", "skip", "long_dwell")
ACTIONS = 6  # history action = the rating 1..5; 0 pads


@dataclass
class Examples:
    train: pa.Table
    test: pa.Table
    schema: FeatureSchema  # fitted on `train`
    valid: pa.Table | None = None  # for per-epoch validation and early stopping; None: no validation


def _activity(n_prev: np.ndarray) -> np.ndarray:
    return np.array(["0", "1-9", "10-49", "50-199", "200+"])[
        np.searchsorted([1, 10, 50, 200], n_prev, "right")
    ]


def _lookup(keys: np.ndarray, ids: np.ndarray, name: str) -> np.ndarray:
    order = np.argsort(keys)
    pos = np.searchsorted(keys, ids, sorter=order).clip(0, len(keys) - 1)
    rows = order[pos]
    if not np.array_equal(keys[rows], ids):
        bad = ids[keys[rows] != ids][0]
        raise ValueError(
            f"{name} {int(bad)} is not in the catalog; rebuild the examples with the catalog it came from."
        )
    return rows


def _list_column(values: np.ndarray, offsets: np.ndarray, type_: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type_))


SPLITS = ("global-time", "member-time")
MOVIELENS_FEATURES = ("standard", "full")
ID_MIN_COUNT = 5  # member and item ids seen fewer times in training share the learned rare row


def split_parts(
    member: np.ndarray,
    ts: np.ndarray,
    item: np.ndarray,
    split: str,
    test_fraction: float,
    valid_fraction: float,
) -> np.ndarray:
    """(N,) part per row: 0 train, 1 valid, 2 test.

    'global-time': one time cut for everyone; the latest `test_fraction` of rows is the test part and
    the `valid_fraction` before it the validation part (members first seen late appear only in test,
    like real new members). 'member-time': each member's latest `test_fraction` of rows is test and the
    `valid_fraction` before it validation (every test member was seen in training).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {SPLITS}.")
    if not 0 < test_fraction < 1 or not 0 <= valid_fraction < 1 or test_fraction + valid_fraction >= 1:
        raise ValueError(
            f"test_fraction={test_fraction}, valid_fraction={valid_fraction}: each in [0, 1) (test > 0) "
            "and together below 1."
        )
    n = len(member)
    if split == "global-time":
        rank = np.empty(n, np.int64)
        rank[np.lexsort((item, member, ts))] = np.arange(n)
        frac = rank / max(n, 1)
    else:
        order = np.lexsort((item, ts, member))
        m = member[order]
        first = np.r_[True, m[1:] != m[:-1]]
        start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        count = np.diff(np.r_[np.nonzero(first)[0], n])[np.cumsum(first) - 1]
        frac = np.empty(n)
        frac[order] = (np.arange(n) - start) / count
    part = np.zeros(n, np.int8)
    part[frac >= 1 - test_fraction - valid_fraction - 1e-12] = 1
    part[frac >= 1 - test_fraction - 1e-12] = 2
    if valid_fraction == 0:
        part[part == 1] = 0
    return part


def _id_fields(buckets: int, min_count: int = 1) -> tuple[SparseField, ...]:
    """Member and item ids (QR-hashed, rare ids on a learned row) and their small categorical features,
    shared by both datasets."""
    return (
        SparseField("member_id", "qr", buckets, min_count=min_count),
        SparseField("item_id", "qr", buckets, min_count=min_count),
        SparseField("cluster_id", "table"),
        SparseField("genre", "table"),
        SparseField("gender", "table"),
        SparseField("occupation", "table"),
    )


def movielens_schema(
    history_length: int = 50, buckets: int = 1 << 16, *, features: str = "full", min_count: int = ID_MIN_COUNT
) -> FeatureSchema:
    """'standard': the features a CTR library's MovieLens example gets (ids, age, gender, occupation,
    zip prefix, release decade, genres as a multi-valued field, the last `history_length` rated items
    with their ratings); 'full' adds the item's cluster, the member's activity (the calibration
    feature), release year, the item's training count and the member's earlier count and like rate."""
    if features not in MOVIELENS_FEATURES:
        raise ValueError(f"features={features!r}: use one of {MOVIELENS_FEATURES}.")
    sparse = [
        SparseField("member_id", "qr", buckets, min_count=min_count),
        SparseField("item_id", "qr", buckets, min_count=min_count),
        SparseField("gender", "table"),
        SparseField("occupation", "table"),
        SparseField("zip_prefix", "table", min_count=2),
        SparseField("decade", "table"),
        SparseField("genres", "table", multi=True, max_values=6),
    ]
    dense = [DenseField("age")]
    calibration: tuple[str, ...] = ()
    if features == "full":
        sparse += [SparseField("cluster_id", "table"), SparseField("activity", "table")]
        dense += [
            DenseField("year"),
            DenseField("item_train_count", log1p=True),
            DenseField("member_n_prev", log1p=True),
            DenseField("member_like_rate_prev"),
        ]
        calibration = ("activity",)
    return FeatureSchema(
        sparse=tuple(sparse),
        dense=tuple(dense),
        tasks=("like",),
        history=HistorySpec("hist_items", "hist_actions", "item_id", ACTIONS, history_length),
        calibration=calibration,
        dataset=MOVIELENS,
    )


def movielens_ctr(
    catalog,
    *,
    test_fraction: float = 0.2,
    valid_fraction: float = 0.1,
    split: str = "global-time",
    features: str = "full",
    history_length: int = 50,
    history_cap: int = 100,
    min_rating: float = 4.0,
    min_count: int = ID_MIN_COUNT,
    interactions: pa.Table | None = None,
) -> Examples:
    """Every rating in the catalog's interactions (or `interactions`: member_id, item_id, rating,
    timestamp) as one example, split by `split_parts`; the schema is fitted on the training part.

    History features are causal: a row sees only the member's earlier ratings (at most `history_cap`
    are stored; the featurizer keeps the last `history_length`). Item counts come from the training
    part only.
    """
    inter = catalog.interactions if interactions is None else interactions
    m, it = inter["member_id"].to_numpy(), inter["item_id"].to_numpy()
    r, ts = inter["rating"].to_numpy(), inter["timestamp"].to_numpy()
    order = np.lexsort((it, ts, m))
    m, it, r, ts = m[order], it[order], r[order], ts[order]
    n = len(m)
    part = split_parts(m, ts, it, split, test_fraction, valid_fraction)
    like = (r >= min_rating).astype(np.float32)
    first = np.r_[True, m[1:] != m[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    n_prev = np.arange(n) - start
    cum = np.cumsum(like) - like
    like_rate_prev = np.where(n_prev > 0, (cum - cum[start]) / np.maximum(n_prev, 1), np.nan)
    lens = np.minimum(n_prev, history_cap)
    offsets = np.r_[0, np.cumsum(lens)]
    src = np.repeat(np.arange(n) - lens, lens) + (np.arange(offsets[-1]) - np.repeat(offsets[:-1], lens))

    items, members = item_features(catalog), member_features(catalog)
    irow = _lookup(items["item_id"], it, "item_id")
    mrow = _lookup(members["member_id"], m, "member_id")
    train_count = np.bincount(irow[part == 0], minlength=len(items["item_id"]))
    year = items["year"][irow]
    decade = np.where(
        np.isfinite(year), (np.nan_to_num(year) // 10 * 10).astype(np.int64).astype(str), "unknown"
    )
    genres = pa.array(items["genres"], pa.list_(pa.string())).take(pa.array(irow))
    table = pa.table(
        {
            "member_id": pa.array(m, pa.int64()),
            "item_id": pa.array(it, pa.int64()),
            "timestamp": pa.array(ts, pa.int64()),
            "cluster_id": pa.array(items["cluster_id"][irow], pa.int32()),
            "genres": genres,
            "decade": pa.array(decade, pa.string()),
            "gender": pa.array(members["gender"][mrow], pa.string()),
            "occupation": pa.array(members["occupation"][mrow], pa.string()),
            "zip_prefix": pa.array([z[:2] for z in members["zip_code"][mrow]], pa.string()),
            "activity": pa.array(_activity(n_prev), pa.string()),
            "age": pa.array(members["age"][mrow], pa.float32()),
            "year": pa.array(year, pa.float32()),
            "item_train_count": pa.array(train_count[irow].astype(np.float32)),
            "member_n_prev": pa.array(n_prev.astype(np.float32)),
            "member_like_rate_prev": pa.array(like_rate_prev.astype(np.float32)),
            "hist_items": _list_column(it[src], offsets, pa.int64()),
            "hist_actions": _list_column(r[src].round().astype(np.int32), offsets, pa.int32()),
            "like": pa.array(like, pa.float32()),
        }
    )
    train, valid, test = (table.filter(pa.array(part == k)).sort_by("timestamp") for k in range(3))
    schema = movielens_schema(history_length, features=features, min_count=min_count).fit(train)
    return Examples(train, test, schema, valid if valid.num_rows else None)


def popularity_scores(
    train: pa.Table, test: pa.Table, label: str = "like", prior: float = 10.0
) -> np.ndarray:
    """The popularity baseline: each test item's smoothed like rate in the training part."""
    tr_item, y = train["item_id"].to_numpy(), train[label].to_numpy().astype(np.float64)
    mean = y.mean()
    uniq, inv = np.unique(tr_item, return_inverse=True)
    rate = (np.bincount(inv, y) + prior * mean) / (np.bincount(inv) + prior)
    pos = np.searchsorted(uniq, test["item_id"].to_numpy()).clip(0, len(uniq) - 1)
    seen = uniq[pos] == test["item_id"].to_numpy()
    return np.where(seen, rate[pos], mean)


def feedback_schema(
    history_length: int = 50, buckets: int = 1 << 16, percentile: float = 75.0, min_count: int = 1
) -> FeatureSchema:
    return FeatureSchema(
        sparse=(
            *_id_fields(buckets, min_count),
            SparseField("source", "table"),
            SparseField("content_type", "table"),
            SparseField("position_bucket", "table"),
            SparseField("cluster_group", "table"),
        ),
        dense=(
            DenseField("position"),
            DenseField("age"),
            DenseField("year"),
            DenseField("item_n_ratings", log1p=True),
            DenseField("cluster_n_ratings", log1p=True),
        ),
        tasks=FEEDBACK_TASKS,
        history=HistorySpec("hist_items", "hist_actions", "item_id", ACTIONS, history_length),
        calibration=("position_bucket", "content_type"),
        long_dwell=LongDwellSpec("dwell_s", ("position_bucket", "content_type"), percentile),
        dataset=FEEDBACK,
    )


def feedback_features(log: pa.Table, catalog, history_cap: int = 100) -> pa.Table:
    """Join feedback-log rows with member and item features and each member's rating history."""
    missing = [c for c in FEEDBACK_LOG.names if c not in log.schema.names]
    if missing:
        raise ValueError(
            f"feedback log is missing column(s) {missing}; it must follow catalog.schemas.FEEDBACK_LOG."
        )
    items, members = item_features(catalog), member_features(catalog)
    irow = _lookup(items["item_id"], log["item_id"].to_numpy(), "item_id")
    mrow = _lookup(members["member_id"], log["member_id"].to_numpy(), "member_id")
    uniq, per_member_offsets, h_items, h_actions = member_rating_histories(catalog, history_cap)
    hist_items = _list_column(h_items, per_member_offsets, pa.int64())
    hist_actions = _list_column(h_actions, per_member_offsets, pa.int32())
    log_m = log["member_id"].to_numpy()
    pos = np.searchsorted(uniq, log_m).clip(0, max(len(uniq) - 1, 0))
    has = (uniq[pos] == log_m) if len(uniq) else np.zeros(len(log_m), bool)
    take = pa.array(np.where(has, pos, -1)).cast(pa.int64())
    take = pc.if_else(pc.equal(take, -1), pa.scalar(None, pa.int64()), take)
    position = log["position"].to_numpy()
    cols = {
        name: log[name]
        for name in (
            "request_id",
            "member_id",
            "timestamp",
            "item_id",
            "cluster_id",
            "source",
            "content_type",
        )
    }
    cols.update(
        position=pc.cast(log["position"], pa.float32()),
        position_bucket=pa.array(position_bucket(position), pa.string()),
        genre=pa.array(items["genre"][irow], pa.string()),
        cluster_group=pa.array(items["cluster_group"][irow], pa.string()),
        gender=pa.array(members["gender"][mrow], pa.string()),
        occupation=pa.array(members["occupation"][mrow], pa.string()),
        age=pa.array(members["age"][mrow], pa.float32()),
        year=pa.array(items["year"][irow], pa.float32()),
        item_n_ratings=pa.array(items["n_ratings"][irow]),
        cluster_n_ratings=pa.array(items["cluster_n_ratings"][irow]),
        hist_items=hist_items.take(take),
        hist_actions=hist_actions.take(take),
    )
    for t in ("click", "like", "share", "skip", "dwell_s"):
        cols[t] = log[t]
    return pa.table(cols)


def feedback_examples(
    log: pa.Table,
    catalog,
    *,
    test_fraction: float = 0.2,
    valid_fraction: float = 0.1,
    history_length: int = 50,
    percentile: float = 75.0,
) -> Examples:
    """Multi-task examples from feedback logs, split by impression time (train, then the validation
    part, then the test part); long-dwell thresholds and vocabularies are fitted on the training part."""
    if not 0 < test_fraction < 1 or not 0 <= valid_fraction < 1 or test_fraction + valid_fraction >= 1:
        raise ValueError(
            f"test_fraction={test_fraction}, valid_fraction={valid_fraction}: each in [0, 1) (test > 0) "
            "and together below 1."
        )
    table = feedback_features(log, catalog).sort_by([("timestamp", "ascending"), ("request_id", "ascending")])
    cut = int(round(table.num_rows * (1 - test_fraction)))
    vcut = int(round(table.num_rows * (1 - test_fraction - valid_fraction)))
    train, valid, test = table.slice(0, vcut), table.slice(vcut, cut - vcut), table.slice(cut)
    schema = feedback_schema(history_length, percentile=percentile)
    spec = fit_long_dwell(train, schema.long_dwell)
    schema = replace(schema, long_dwell=spec)
    train, valid, test = (with_long_dwell(t, spec) for t in (train, valid, test))
    return Examples(train, test, schema.fit(train), valid if valid.num_rows > 1 else None)


def with_long_dwell(table: pa.Table, spec: LongDwellSpec) -> pa.Table:
    labels = pa.array(long_dwell_labels(table, spec).astype(np.float32))
    if "long_dwell" in table.schema.names:
        return table.set_column(table.schema.get_field_index("long_dwell"), "long_dwell", labels)
    return table.append_column("long_dwell", labels)
