"""A synthetic world with the catalog's schemas, for scale tests: millions of members, thousands of clusters.

The world is generated member chunk by member chunk and streamed to parquet, so memory stays bounded
by `chunk_members` whatever `n_members` is. Its structure, all seeded:

- clusters are split into contiguous level-1 groups; every cluster has a unique name built from a
  word list plus its id, and keywords (theme words, group theme, era);
- cluster sizes (items per cluster) follow a log-normal law; items are contiguous per cluster;
- each member has `topics_per_member` groups with Dirichlet weights; an interaction picks a group by
  those weights, a cluster in it with a power-law preference rotated per member, and an item in the
  cluster with a power-law popularity; with probability `stickiness` it stays in the previous cluster,
  so histories have runs and learnable transitions;
- ratings rise with the member's weight on the group; gaps between interactions are exponential.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from catalog.build import MANIFEST
from catalog.histories import build_histories
from catalog.io import ParquetStreamWriter, write_json
from catalog.schemas import CLUSTERS, HISTORIES, INTERACTIONS, ITEMS, MEMBERS

_THEMES = (
    "space",
    "mystery",
    "romance",
    "heist",
    "war",
    "family",
    "sports",
    "music",
    "horror",
    "comedy",
    "noir",
    "western",
    "fantasy",
    "history",
    "cooking",
    "travel",
    "science",
    "crime",
    "animation",
    "documentary",
    "superhero",
    "spy",
    "courtroom",
    "medical",
    "teen",
    "survival",
    "political",
    "satire",
    "martial-arts",
    "disaster",
    "mythology",
    "cyberpunk",
)
_MOODS = (
    "dark",
    "light",
    "epic",
    "quiet",
    "quirky",
    "gritty",
    "classic",
    "modern",
    "cozy",
    "tense",
    "indie",
    "retro",
    "lavish",
    "raw",
    "witty",
    "bleak",
)
_OCCUPATIONS = ("student", "engineer", "artist", "educator", "healthcare", "writer", "retired", "other")


@dataclass(frozen=True)
class SyntheticConfig:
    n_members: int = 100_000  # members to generate
    n_clusters: int = 1_000  # M
    n_groups: int = 40  # level-1 groups (contiguous ranges of clusters)
    mean_items_per_cluster: float = 20.0  # log-normal cluster sizes with this mean
    mean_interactions: float = 40.0  # per member (1 + geometric)
    topics_per_member: int = 3  # groups a member is interested in
    stickiness: float = 0.35  # chance an interaction stays in the previous cluster
    chunk_members: int = 50_000  # members per generated chunk: bounds memory
    min_rating: float = 4.0  # positive threshold for histories
    start_unix: int = 1_600_000_000  # earliest timestamp
    seed: int = 0

    def __post_init__(self):
        for name in ("n_members", "n_clusters", "n_groups", "topics_per_member", "chunk_members"):
            if getattr(self, name) < 1:
                raise ValueError(f"SyntheticConfig.{name}={getattr(self, name)}: must be >= 1.")
        if self.n_groups > self.n_clusters:
            raise ValueError(
                f"SyntheticConfig.n_groups={self.n_groups} exceeds n_clusters={self.n_clusters}."
            )
        if self.topics_per_member > self.n_groups:
            raise ValueError(
                f"SyntheticConfig.topics_per_member={self.topics_per_member} exceeds "
                f"n_groups={self.n_groups}."
            )
        if not 0 <= self.stickiness < 1:
            raise ValueError(f"SyntheticConfig.stickiness={self.stickiness}: must be in [0, 1).")
        if self.mean_items_per_cluster < 1 or self.mean_interactions < 1:
            raise ValueError("SyntheticConfig.mean_items_per_cluster and mean_interactions must be >= 1.")


@dataclass(frozen=True)
class _World:
    """The member-independent part: cluster layout and item ranges."""

    group_of: np.ndarray  # (M,) group of each cluster
    group_start: np.ndarray  # (G+1,) first cluster of each group
    cluster_size: np.ndarray  # (M,) items per cluster
    item_start: np.ndarray  # (M+1,) first item index of each cluster
    item_cluster: np.ndarray  # (I,) cluster of each item index
    years: np.ndarray  # (M,) era of each cluster


def _world(cfg: SyntheticConfig) -> _World:
    rng = np.random.default_rng([cfg.seed, 1])
    group_start = np.linspace(0, cfg.n_clusters, cfg.n_groups + 1).round().astype(np.int64)
    group_of = np.repeat(np.arange(cfg.n_groups), np.diff(group_start))
    sigma = 0.8
    sizes = rng.lognormal(np.log(cfg.mean_items_per_cluster) - sigma**2 / 2, sigma, cfg.n_clusters)
    sizes = np.maximum(1, sizes.round()).astype(np.int64)
    item_start = np.r_[0, np.cumsum(sizes)]
    item_cluster = np.repeat(np.arange(cfg.n_clusters, dtype=np.int32), sizes)
    years = rng.integers(1950, 2026, cfg.n_clusters)
    return _World(group_of, group_start, sizes, item_start, item_cluster, years)


def _cluster_table(cfg: SyntheticConfig, w: _World) -> pa.Table:
    rng = np.random.default_rng([cfg.seed, 2])
    theme = rng.integers(len(_THEMES), size=cfg.n_clusters)
    mood = rng.integers(len(_MOODS), size=cfg.n_clusters)
    group_theme = [_THEMES[(g * 7) % len(_THEMES)] for g in range(cfg.n_groups)]
    names, keywords, descriptions = [], [], []
    for c in range(cfg.n_clusters):
        t, m, g = _THEMES[theme[c]], _MOODS[mood[c]], group_theme[w.group_of[c]]
        era = f"{w.years[c] // 10 * 10}s"
        names.append(f"{m}-{t}-{c:04d}")
        keywords.append([m, t, g, era])
        descriptions.append(f"{m} {t}; {g} family; {era}")
    return pa.table(
        {
            "cluster_id": pa.array(np.arange(cfg.n_clusters, dtype=np.int32)),
            "name": names,
            "keywords": keywords,
            "description": descriptions,
            "parent_id": pa.array(w.group_of.astype(np.int32)),
            "parent_name": [f"{group_theme[g]}-{g:03d}" for g in w.group_of],
            "n_items": pa.array(w.cluster_size.astype(np.int32)),
        },
        schema=CLUSTERS,
    )


def _item_chunks(cfg: SyntheticConfig, w: _World, n_ratings: np.ndarray, chunk: int = 200_000):
    rng = np.random.default_rng([cfg.seed, 3])
    n_items = len(w.item_cluster)
    for lo in range(0, n_items, chunk):
        idx = np.arange(lo, min(n_items, lo + chunk))
        clusters = w.item_cluster[idx]
        themes = [_THEMES[(w.group_of[c] * 7) % len(_THEMES)] for c in clusters]
        years = np.clip(w.years[clusters] + rng.integers(-4, 5, len(idx)), 1900, 2026)
        yield pa.table(
            {
                "item_id": pa.array(idx + 1, pa.int64()),
                "title": [f"item {i + 1}" for i in idx],
                "year": pa.array(years.astype(np.int32)),
                "genres": [[t] for t in themes],
                "cluster_id": pa.array(clusters),
                "n_ratings": pa.array(n_ratings[idx].astype(np.int32)),
            },
            schema=ITEMS,
        )


def _member_chunk(cfg: SyntheticConfig, w: _World, lo: int, hi: int) -> tuple[pa.Table, pa.Table]:
    """MEMBERS and INTERACTIONS rows of members lo..hi-1 (ids lo+1..hi)."""
    rng = np.random.default_rng([cfg.seed, 4, lo])
    n = hi - lo
    ids = np.arange(lo + 1, hi + 1, dtype=np.int64)
    members = pa.table(
        {
            "member_id": ids,
            "age": pa.array(rng.integers(16, 75, n).astype(np.int32)),
            "gender": pa.array(np.where(rng.random(n) < 0.5, "F", "M")),
            "occupation": pa.array(np.array(_OCCUPATIONS)[rng.integers(len(_OCCUPATIONS), size=n)]),
            "zip_code": pa.array([f"{z:05d}" for z in rng.integers(0, 100_000, n)]),
        },
        schema=MEMBERS,
    )

    topics = np.argsort(rng.random((n, cfg.n_groups)), axis=1)[:, : cfg.topics_per_member]  # (n, T)
    weights = rng.dirichlet(np.full(cfg.topics_per_member, 0.7), size=n)  # (n, T)
    shift = rng.integers(0, 1 << 30, size=(n, cfg.topics_per_member))
    counts = rng.geometric(1.0 / cfg.mean_interactions, size=n)  # >= 1 each
    row_member = np.repeat(np.arange(n), counts)  # (R,)
    r = len(row_member)

    t = (rng.random(r)[:, None] > np.cumsum(weights, 1)[row_member]).sum(1)
    t = np.minimum(t, cfg.topics_per_member - 1)
    group = topics[row_member, t]
    g_lo, g_size = w.group_start[group], np.diff(w.group_start)[group]
    rank = (g_size * rng.random(r) ** 2.5).astype(np.int64)  # power law towards a group's first clusters
    cluster = g_lo + (rank + shift[row_member, t]) % g_size
    # stickiness: stay in the previous interaction's cluster (forward fill within a member)
    first = np.r_[True, row_member[1:] != row_member[:-1]]
    stay = (rng.random(r) < cfg.stickiness) & ~first
    src = np.where(stay, 0, np.arange(r))
    np.maximum.accumulate(src, out=src)
    cluster, t = cluster[src], t[src]

    c_size = w.cluster_size[cluster]
    item_idx = w.item_start[cluster] + (c_size * rng.random(r) ** 1.8).astype(np.int64)
    strength = weights[row_member, t]
    rating = np.clip(np.round(2.4 + 3.2 * strength + rng.normal(0, 0.9, r)), 1, 5).astype(np.float32)
    member_start = cfg.start_unix + rng.integers(0, 2 * 365 * 86400, n)
    gaps = rng.exponential(6 * 3600, r).astype(np.int64)
    csum = np.cumsum(gaps)
    base = np.repeat(csum[first] - gaps[first], counts)
    ts = member_start[row_member] + (csum - base)
    interactions = pa.table(
        {
            "member_id": ids[row_member],
            "item_id": item_idx + 1,
            "rating": rating,
            "timestamp": ts,
        },
        schema=INTERACTIONS,
    )
    return members, interactions


def generate_world(
    out_dir: str | os.PathLike, config: SyntheticConfig | None = None, progress: bool = False
) -> dict:
    """Write a catalog folder (same tables and manifest as a MovieLens catalog). Returns the manifest."""
    cfg = config or SyntheticConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until the manifest is rewritten
    t0 = time.perf_counter()
    w = _world(cfg)
    item_ids = np.arange(1, len(w.item_cluster) + 1, dtype=np.int64)
    counts = {
        "clusters": cfg.n_clusters,
        "items": len(item_ids),
        "members": 0,
        "interactions": 0,
        "histories": 0,
        "positives": 0,
    }
    with ParquetStreamWriter(out / "clusters.parquet", CLUSTERS) as cw:
        cw.write(_cluster_table(cfg, w))
    n_ratings = np.zeros(len(item_ids), np.int64)  # per item, over all chunks; items are written last
    chunks = range(0, cfg.n_members, cfg.chunk_members)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="synthetic members", unit="chunk")
    with (
        ParquetStreamWriter(out / "members.parquet", MEMBERS) as mw,
        ParquetStreamWriter(out / "interactions.parquet", INTERACTIONS) as xw,
        ParquetStreamWriter(out / "histories.parquet", HISTORIES) as hw,
    ):
        for lo in chunks:
            hi = min(cfg.n_members, lo + cfg.chunk_members)
            members, interactions = _member_chunk(cfg, w, lo, hi)
            histories = build_histories(interactions, item_ids, w.item_cluster, min_rating=cfg.min_rating)
            mw.write(members)
            xw.write(interactions)
            hw.write(histories)
            n_ratings += np.bincount(interactions["item_id"].to_numpy() - 1, minlength=len(item_ids))
            counts["members"] += members.num_rows
            counts["interactions"] += interactions.num_rows
            counts["histories"] += histories.num_rows
            counts["positives"] += int(np.sum(histories["n_positive"].to_numpy()))
    with ParquetStreamWriter(out / "items.parquet", ITEMS) as iw:
        for table in _item_chunks(cfg, w, n_ratings):
            iw.write(table)
    elapsed = time.perf_counter() - t0
    manifest = {
        "source": {"dataset": "synthetic", "generator": "catalog.synthetic"},
        "config": {"synthetic": asdict(cfg), "min_rating": cfg.min_rating, "history_k": 2},
        "counts": counts,
        "timings": {"generate_s": elapsed},
        "created_unix": int(time.time()),
    }
    write_json(manifest, out / MANIFEST)
    return manifest
