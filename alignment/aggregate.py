"""Aggregated feedback: the alignment model's training examples, from feedback logs.

For every (history key {C1..CK}, candidate cluster Cn), over all impressions of an item of Cn to a
member whose last K clusters were the key:

    impressions, clicks, likes, shares, skips, dwell clicks
    engagement = (w_click clicks + w_like likes + w_share shares + w_skip skips + w_dwell dwell_clicks)
                 / impressions

dwell clicks are the clicks whose dwell reached dwell_click_s seconds (a fixed threshold; the ranker's
long_dwell label is a per-context percentile, ranking/labels.py).

Aggregating over members cancels most of one member's noise (the papers' "collective feedback").
Then, as the papers prescribe and all configurable: pairs with fewer than `min_impressions` feedback
events are dropped; engagement is normalised to [0, 1] over the kept pairs; the label is rounded to
a multiple of `interval`. The pairwise view (two candidates of one key, the better one first) is
built from the same labels, for the Bradley-Terry variant.

Two engines give the same result: pyarrow in-process for small logs, Ray Data for large ones (one
task per log part, then a distributed group-by). Rows are checked by catalog.feedback, the rules
ranker training applies too (a column missing or of the wrong type, nulls, actions other than 0/1,
NaN, infinite or negative dwell, an unknown cluster, a key of the wrong length, negative positions or
ids): rows that break one are set aside in a quarantine table with the reason and the part they came
from, and counted. A part that cannot be read at all is quarantined as a whole (one row, counted in
`quarantined_parts`) and the rest is aggregated, unless `strict_logs` makes it an error.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog.feedback import (
    FeedbackRules,
    check_feedback,
    log_files,
    quarantine_stats,
    raise_if_unreadable,
    read_part,
)
from catalog.schemas import FEEDBACK_PAIRS, FEEDBACK_PREFERENCES, FEEDBACK_QUARANTINE, SOURCES

ENGINES = ("auto", "pyarrow", "ray")
NORMALISATIONS = ("minmax", "rank", "none")
COUNTS = ("impressions", "clicks", "likes", "shares", "skips", "dwell_clicks")
SUMS = pa.schema(
    [pa.field("key", pa.string()), pa.field("cluster_id", pa.int32())]
    + [pa.field(c, pa.int64()) for c in COUNTS]
)


@dataclass(frozen=True)
class AggregationConfig:
    sources: tuple[str, ...] = ("explore",)  # impressions that count: novel clusters the cache chose
    click_weight: float = 1.0
    like_weight: float = 2.0
    share_weight: float = 3.0
    skip_weight: float = -1.0  # an explicit skip is negative feedback
    dwell_click_weight: float = 1.0  # weight of a dwell click (on top of its click_weight as a click)
    # a click whose dwell reached this many seconds is a dwell click (a fixed threshold; the ranker's
    # long_dwell label is a per-context percentile, ranking/labels.py)
    dwell_click_s: float = 60.0
    min_impressions: int = 5  # pairs with fewer feedback events are too noisy to learn from
    normalise: str = "minmax"  # minmax: (e - min) / (max - min); rank: percentile; none: clip to [0, 1]
    interval: float = 0.1  # labels rounded to multiples of this (0: not rounded)
    min_gap: float = 0.2  # pairwise set: label difference for one candidate to count as preferred
    engine: str = "auto"  # auto: pyarrow below ray_threshold_mib of logs, Ray Data above
    ray_threshold_mib: int = 256
    # pyarrow engine: logs above this many MiB are aggregated in hash partitions spilled to disk (one
    # partition per this many MiB of logs), so memory stays flat as logs grow; 0: always in memory
    spill_mib: float = 16.0
    strict_logs: bool = False  # an unreadable log part is an error (default: quarantined whole, rest used)

    def __post_init__(self):
        object.__setattr__(self, "sources", tuple(self.sources))
        bad = [s for s in self.sources if s not in SOURCES]
        if bad or not self.sources:
            raise ValueError(f"AggregationConfig.sources={list(self.sources)}: use some of {SOURCES}.")
        if self.normalise not in NORMALISATIONS:
            raise ValueError(f"AggregationConfig.normalise={self.normalise!r}: use one of {NORMALISATIONS}.")
        if self.engine not in ENGINES:
            raise ValueError(f"AggregationConfig.engine={self.engine!r}: use one of {ENGINES}.")
        if self.min_impressions < 1:
            raise ValueError(f"AggregationConfig.min_impressions={self.min_impressions}: must be >= 1.")
        if not 0 <= self.interval <= 0.5:
            raise ValueError(
                f"AggregationConfig.interval={self.interval}: must be in [0, 0.5] (0: no rounding)."
            )
        if not 0 < self.min_gap <= 1:
            raise ValueError(f"AggregationConfig.min_gap={self.min_gap}: must be in (0, 1].")
        if self.spill_mib < 0:
            raise ValueError(
                f"AggregationConfig.spill_mib={self.spill_mib}: must be >= 0 (0: never spill to disk)."
            )
        if self.dwell_click_s < 0:
            raise ValueError(f"AggregationConfig.dwell_click_s={self.dwell_click_s}: must be >= 0 seconds.")

    def weights(self) -> np.ndarray:
        """Weights of clicks, likes, shares, skips, dwell clicks, in COUNTS[1:] order."""
        w = (
            self.click_weight,
            self.like_weight,
            self.share_weight,
            self.skip_weight,
            self.dwell_click_weight,
        )
        return np.array(w)


@dataclass
class AggregatedFeedback:
    pairs: pa.Table  # FEEDBACK_PAIRS, sorted by key then cluster
    preferences: pa.Table  # FEEDBACK_PREFERENCES
    quarantine: pa.Table  # FEEDBACK_QUARANTINE
    stats: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# one log part: validate, then sum per (key, cluster)


def check_events(raw: pa.Table, k: int, n_clusters: int, part: str = "<table>") -> tuple[pa.Table, pa.Table]:
    """(good rows as FEEDBACK_LOG, quarantined rows as FEEDBACK_QUARANTINE) of one log table, by the
    rules of catalog.feedback."""
    return check_feedback(raw, FeedbackRules(k, n_clusters), part)


def key_text(history_key: pa.ChunkedArray | pa.Array) -> pa.Array:
    """'3,17' for [3, 17]: the key's text form (also its field in the Redis cache)."""
    return pc.binary_join(pc.cast(history_key, pa.list_(pa.string())), ",")


def partial_sums(events: pa.Table, config: AggregationConfig) -> pa.Table:
    """SUMS rows: counts per (key, cluster) of the configured sources' events of one table."""
    events = events.filter(pc.is_in(events["source"], pa.array(config.sources)))
    if events.num_rows == 0:
        return SUMS.empty_table()
    click = events["click"]
    dwell_click = pc.and_(click, pc.greater_equal(events["dwell_s"], config.dwell_click_s))
    t = pa.table(
        {
            "key": key_text(events["history_key"]),
            "cluster_id": events["cluster_id"],
            "impressions": pa.chunked_array([np.ones(events.num_rows, np.int64)]),
            "clicks": pc.cast(click, pa.int64()),
            "likes": pc.cast(events["like"], pa.int64()),
            "shares": pc.cast(events["share"], pa.int64()),
            "skips": pc.cast(events["skip"], pa.int64()),
            "dwell_clicks": pc.cast(dwell_click, pa.int64()),
        }
    )
    return _sum_by_pair(t)


def _sum_by_pair(t: pa.Table) -> pa.Table:
    g = t.group_by(["key", "cluster_id"]).aggregate([(c, "sum") for c in COUNTS])
    return pa.table(
        {f.name: g[f.name if f.name in ("key", "cluster_id") else f"{f.name}_sum"] for f in SUMS}
    ).cast(SUMS)


def _part_sums(
    path: str, config: AggregationConfig, k: int, n_clusters: int, *, strict: bool
) -> tuple[pa.Table, pa.Table, int]:
    """(sums, quarantined, rows read) of one log part; an unreadable part is one quarantine row (strict:
    an error)."""
    part = read_part(path, FeedbackRules(k, n_clusters), strict=strict)
    return partial_sums(part.good, config), part.quarantine, part.rows


# ------------------------------------------------------------------------------------------
# all pairs: filter, normalise, round


def _rank01(x: np.ndarray) -> np.ndarray:
    """Percentile rank in [0, 1], ties sharing their mean rank."""
    if len(x) < 2:
        return np.full(len(x), 0.5)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts + 1) / 2.0  # 0-based mean rank of each distinct value
    return mean_rank[inv] / (len(x) - 1)


def normalise(engagement: np.ndarray, how: str) -> np.ndarray:
    if how == "rank":
        return _rank01(engagement)
    if how == "minmax":
        lo, hi = (engagement.min(), engagement.max()) if len(engagement) else (0.0, 0.0)
        return (engagement - lo) / (hi - lo) if hi > lo else np.full(len(engagement), 0.5)
    return np.clip(engagement, 0.0, 1.0)


def round_to(labels: np.ndarray, interval: float) -> np.ndarray:
    if not interval:
        return labels
    return np.clip(np.round(np.round(labels / interval) * interval, 6), 0.0, 1.0)


def finalize(sums: pa.Table, config: AggregationConfig) -> tuple[pa.Table, dict]:
    """FEEDBACK_PAIRS from partial sums (several rows of one pair are added up), and counts."""
    return _finalize_reduced(*_reduce(sums, config), config)


def _reduce(sums: pa.Table, config: AggregationConfig) -> tuple[pa.Table, int]:
    """(the pairs of `sums` added up and kept by min_impressions, the number of distinct pairs seen)."""
    t = _sum_by_pair(sums) if sums.num_rows else SUMS.empty_table()
    return t.filter(pc.greater_equal(t["impressions"], config.min_impressions)), t.num_rows


def _finalize_reduced(t: pa.Table, n_pairs: int, config: AggregationConfig) -> tuple[pa.Table, dict]:
    """FEEDBACK_PAIRS from summed pairs that passed min_impressions (n_pairs: pairs seen before that)."""
    t = t.sort_by([("key", "ascending"), ("cluster_id", "ascending")])
    counts = np.stack([t[c].to_numpy() for c in COUNTS[1:]], axis=1).astype(np.float64)  # (P, 5)
    impressions = t["impressions"].to_numpy().astype(np.float64)
    engagement = counts @ config.weights() / np.maximum(impressions, 1)
    labels = round_to(normalise(engagement, config.normalise), config.interval)
    keys = pc.cast(pc.split_pattern(t["key"], ","), pa.list_(pa.int32()))
    pairs = pa.table(
        {
            "history_key": keys,
            "cluster_id": t["cluster_id"],
            **{c: t[c] for c in COUNTS},
            "engagement": pa.array(engagement, pa.float64()),
            "label": pa.array(labels, pa.float32()),
        },
        schema=FEEDBACK_PAIRS,
    )
    stats = {
        "pairs_seen": n_pairs,
        "pairs_kept": pairs.num_rows,
        "pairs_below_min_impressions": n_pairs - pairs.num_rows,
        "keys_kept": len(set(t["key"].to_pylist())),
        "impressions_kept": int(impressions.sum()),
        "label_mean": round(float(labels.mean()), 4) if len(labels) else None,
        "label_values": len(np.unique(labels)),
    }
    return pairs, stats


def preferences(pairs: pa.Table, min_gap: float, *, chunk: int = 1 << 18) -> pa.Table:
    """Every two candidates of one key whose labels differ by at least min_gap, the better one first.

    Keys in order of first appearance, candidates in their order within the key, the preferred one
    outer. Vectorised over blocks of about `chunk` candidate comparisons, so memory stays bounded
    however many candidates a key has."""
    if pairs.num_rows == 0:
        return FEEDBACK_PREFERENCES.empty_table()
    codes = pc.dictionary_encode(key_text(pairs["history_key"])).combine_chunks().indices.to_numpy()
    order = np.argsort(codes, kind="stable")  # rows of one key together, keys by first appearance
    sizes = np.bincount(codes)
    size_of_row = np.repeat(sizes, sizes)  # in that order: the size of each row's key
    start_of_row = np.repeat(np.cumsum(sizes) - sizes, sizes)  # and where the key's rows start
    labels = pairs["label"].to_numpy().astype(np.float64)[order]
    clusters = pairs["cluster_id"].to_numpy()[order]
    work = np.cumsum(size_of_row)  # comparisons up to and including each row
    out, row = [], 0
    while row < len(order):
        # the rows whose comparisons fit in one block (at least one row)
        end = max(row + 1, int(np.searchsorted(work, (work[row - 1] if row else 0) + chunk, side="right")))
        n = size_of_row[row:end]
        a = np.repeat(np.arange(row, end), n)
        b = np.repeat(start_of_row[row:end], n) + np.arange(len(a)) - np.repeat(np.cumsum(n) - n, n)
        gap = labels[a] - labels[b]
        keep = gap >= min_gap - 1e-9
        out.append((a[keep], b[keep], gap[keep]))
        row = end
    a, b, gap = (np.concatenate(x) for x in zip(*out, strict=True))
    return pa.table(
        {
            "history_key": pairs["history_key"].take(pa.array(order[a])),
            "preferred": pa.array(clusters[a], pa.int32()),
            "other": pa.array(clusters[b], pa.int32()),
            "gap": pa.array(gap, pa.float32()),
        },
        schema=FEEDBACK_PREFERENCES,
    )


# ------------------------------------------------------------------------------------------
# whole logs


def _pyarrow_sums(files, config, k, n_clusters) -> tuple[pa.Table, pa.Table, int]:
    sums, quarantined, rows = [], [], 0
    for path in files:
        s, q, n = _part_sums(path, config, k, n_clusters, strict=config.strict_logs)
        sums.append(s)
        quarantined.append(q)
        rows += n
    return pa.concat_tables(sums), pa.concat_tables(quarantined), rows


def _bucket_of(sums: pa.Table, buckets: int) -> np.ndarray:
    """The hash partition of each SUMS row's (key, cluster): a pair always lands in the same one."""
    ids = pc.list_flatten(pc.cast(pc.split_pattern(sums["key"], ","), pa.list_(pa.int64()))).to_numpy()
    h = sums["cluster_id"].to_numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        for column in ids.reshape(sums.num_rows, -1).T.astype(np.uint64):
            h = (h * np.uint64(0x100000001B3)) ^ column
        h ^= h >> np.uint64(33)  # MurmurHash3's 64-bit finalizer: every input bit moves the partition
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return (h % np.uint64(buckets)).astype(np.int64)


def _spilled_pairs(
    files, config, k, n_clusters, buckets: int, workdir
) -> tuple[pa.Table, int, pa.Table, int]:
    """External group-by for large logs in one process: each part's sums are split into `buckets` hash
    partitions appended to parquet files in a temporary folder, then each partition is added up and
    filtered alone. Memory: one part plus one partition (logs / buckets), whatever the logs' size.
    Returns (kept pairs, pairs seen, quarantined rows, rows read)."""
    quarantined, rows = [], 0
    with tempfile.TemporaryDirectory(prefix="aggregate-spill-", dir=workdir) as tmp:
        writers: dict[int, pq.ParquetWriter] = {}
        try:
            for path in files:
                sums, q, n = _part_sums(path, config, k, n_clusters, strict=config.strict_logs)
                quarantined.append(q)
                rows += n
                if not sums.num_rows:
                    continue
                bucket = _bucket_of(sums, buckets)
                order = np.argsort(bucket, kind="stable")
                sums, bucket = sums.take(order), bucket[order]
                bounds = np.searchsorted(bucket, np.arange(buckets + 1))
                for b in range(buckets):
                    if bounds[b + 1] > bounds[b]:
                        if b not in writers:
                            writers[b] = pq.ParquetWriter(Path(tmp) / f"bucket-{b:05d}.parquet", SUMS)
                        writers[b].write_table(sums.slice(bounds[b], bounds[b + 1] - bounds[b]))
        finally:
            for w in writers.values():
                w.close()
        kept, seen = [], 0
        for b in sorted(writers):
            t, n = _reduce(pq.read_table(Path(tmp) / f"bucket-{b:05d}.parquet"), config)
            kept.append(t)
            seen += n
    pairs = pa.concat_tables(kept) if kept else SUMS.empty_table()
    return pairs, seen, pa.concat_tables(quarantined), rows


def _part_task(batch: pa.Table, config: dict, k: int, n_clusters: int, quarantine_dir: str) -> pa.Table:
    """Ray Data task: log-part paths in, their SUMS rows out. Quarantined rows and the row count go to
    files named by the part, so a retried task overwrites its own files. An unreadable part never fails
    the task: it is quarantined, and the driver raises for it when strict."""
    import hashlib

    cfg, out = AggregationConfig(**config), []
    for path in batch["path"].to_pylist():
        sums, quarantined, rows = _part_sums(path, cfg, k, n_clusters, strict=False)
        name = Path(quarantine_dir) / hashlib.sha256(path.encode()).hexdigest()[:24]
        pq.write_table(pa.table({"rows": [rows]}), f"{name}.rows.parquet")
        if quarantined.num_rows:
            pq.write_table(quarantined, f"{name}.parquet")
        out.append(sums)
    return pa.concat_tables(out)


def _ray_sums(files, config, k, n_clusters, workdir: Path) -> tuple[pa.Table, pa.Table, int]:
    import ray

    qdir = workdir / "quarantine-parts"
    qdir.mkdir(parents=True, exist_ok=True)
    ds = ray.data.from_items(
        [{"path": str(Path(f).resolve())} for f in files], override_num_blocks=len(files)
    )
    ds = ds.map_batches(
        _part_task,
        fn_kwargs={
            "config": asdict(config),
            "k": k,
            "n_clusters": n_clusters,
            "quarantine_dir": str(qdir.resolve()),
        },
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=0.5,
    )
    grouped = ds.groupby(["key", "cluster_id"], num_partitions=max(1, min(len(files), 64)))
    blocks = [b for b in (ray.get(r) for r in grouped.sum(list(COUNTS)).to_arrow_refs()) if b.num_rows]
    if not blocks:
        return SUMS.empty_table(), _read_quarantine(qdir), _rows_read(qdir)
    table = pa.concat_tables(blocks)
    sums = pa.table(
        {f.name: table[f.name if f.name in ("key", "cluster_id") else f"sum({f.name})"] for f in SUMS}
    )
    return sums.cast(SUMS), _read_quarantine(qdir), _rows_read(qdir)


def _read_quarantine(qdir: Path) -> pa.Table:
    parts = [pq.read_table(p) for p in sorted(qdir.glob("*.parquet")) if not p.name.endswith(".rows.parquet")]
    return pa.concat_tables(parts).cast(FEEDBACK_QUARANTINE) if parts else FEEDBACK_QUARANTINE.empty_table()


def _rows_read(qdir: Path) -> int:
    return sum(pq.read_table(p)["rows"][0].as_py() for p in qdir.glob("*.rows.parquet"))


def resolve_engine(logs: list[str | os.PathLike], config: AggregationConfig) -> str:
    """'pyarrow' or 'ray': the configured engine, or for 'auto' the one the logs' total size calls for."""
    if config.engine != "auto":
        return config.engine
    size = sum(os.path.getsize(f) for f in log_files(logs))
    return "ray" if size > config.ray_threshold_mib << 20 else "pyarrow"


def spill_partitions(log_bytes: int, config: AggregationConfig) -> int:
    """Hash partitions the pyarrow engine spills to disk for logs of this size (0: aggregated in memory)."""
    per = config.spill_mib * 2**20
    if not per or log_bytes <= per:
        return 0
    return math.ceil(log_bytes / per)


def aggregate_logs(
    logs: list[str | os.PathLike],
    k: int,
    n_clusters: int,
    config: AggregationConfig | None = None,
    *,
    workdir: str | os.PathLike | None = None,
) -> AggregatedFeedback:
    """Aggregate feedback-log folders (or part files) into pairs, preferences and quarantined rows.

    Args:
        logs: folders written by catalog.logs.FeedbackLogWriter, or single part files.
        k, n_clusters: the catalog's history key length and cluster count (rows are checked against them).
        workdir: where the Ray engine keeps quarantined rows of its tasks (shared storage on a cluster)
            and the pyarrow engine its spilled partitions (removed at the end); the system's temporary
            folder by default.
    """
    config = config or AggregationConfig()
    files = log_files(logs)
    size = sum(os.path.getsize(f) for f in files)
    engine = resolve_engine(logs, config)
    if engine == "ray":
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            sums, quarantined, rows = _ray_sums(files, config, k, n_clusters, Path(tmp))
        if config.strict_logs:
            raise_if_unreadable(quarantined)
        pairs, stats = finalize(sums, config)
        spill_buckets = 0
    else:
        spill_buckets = spill_partitions(size, config)
        if spill_buckets:
            kept, seen, quarantined, rows = _spilled_pairs(
                files, config, k, n_clusters, spill_buckets, workdir
            )
            pairs, stats = _finalize_reduced(kept, seen, config)
        else:
            sums, quarantined, rows = _pyarrow_sums(files, config, k, n_clusters)
            pairs, stats = finalize(sums, config)
    prefs = preferences(pairs, config.min_gap)
    quarantined = quarantined.sort_by([("part", "ascending")]) if quarantined.num_rows else quarantined
    stats = {
        "engine": engine,
        "log_bytes": size,
        "spill_partitions": spill_buckets,
        **quarantine_stats(quarantined, parts=len(files), events=rows),
        **stats,
        "preferences": prefs.num_rows,
    }
    return AggregatedFeedback(pairs, prefs, quarantined, stats)
