"""Build a catalog folder from MovieLens-100K, and load any catalog folder back.

A catalog folder holds items, clusters, members, interactions and histories as parquet (schemas in
catalog.schemas) plus manifest.json (source, config, counts). Saving removes the manifest first, writes every table
atomically and the manifest last, so a folder with a manifest is complete.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from catalog.histories import build_histories, key_coverage, split_by_time
from catalog.io import conform, read_table, write_json, write_table
from catalog.movielens import GENRES, load_movielens_100k
from catalog.schemas import CLUSTERS, HISTORIES, INTERACTIONS, ITEMS, MEMBERS
from catalog.taxonomy import TaxonomyConfig, build_taxonomy

MANIFEST = "manifest.json"
TABLE_SCHEMAS = {
    "items": ITEMS,
    "clusters": CLUSTERS,
    "members": MEMBERS,
    "interactions": INTERACTIONS,
    "histories": HISTORIES,
}
# what marks a folder as a catalog (an interrupted save leaves tables without the manifest)
CATALOG_FILES = (MANIFEST, *(f"{name}.parquet" for name in TABLE_SCHEMAS))


@dataclass(frozen=True)
class CatalogConfig:
    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)
    min_rating: float = 4.0  # a rating at or above this is a positive engagement
    history_k: int = 2  # K, the history key length
    # Each member's last share of ratings (by time) is held out: the system never sees it; the member
    # simulator (sim/) uses it. 0 keeps everything (real logs, where no simulator stands in for members).
    holdout_fraction: float = 0.2

    def __post_init__(self):
        if not 1 <= self.min_rating <= 5:
            raise ValueError(f"CatalogConfig.min_rating={self.min_rating}: MovieLens ratings are 1..5.")
        if self.history_k < 1:
            raise ValueError(f"CatalogConfig.history_k={self.history_k}: must be >= 1.")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"CatalogConfig.holdout_fraction={self.holdout_fraction}: must be in [0, 1).")


@dataclass
class Catalog:
    """The catalog tables, loaded and validated, with the lookups everything downstream needs."""

    items: pa.Table
    clusters: pa.Table
    members: pa.Table
    interactions: pa.Table
    histories: pa.Table
    manifest: dict
    root: Path | None = None

    @property
    def n_clusters(self) -> int:
        return self.clusters.num_rows

    @property
    def history_k(self) -> int:
        return int(self.manifest.get("config", {}).get("history_k", 2))

    def cluster_names(self) -> list[str]:
        return self.clusters["name"].to_pylist()

    def cluster_descriptions(self) -> list[str]:
        return self.clusters["description"].to_pylist()

    def item_cluster(self) -> tuple[np.ndarray, np.ndarray]:
        return self.items["item_id"].to_numpy(), self.items["cluster_id"].to_numpy()

    @classmethod
    def load(cls, root: str | os.PathLike) -> Catalog:
        root = Path(root)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{root} is not a complete catalog folder: {MANIFEST} is missing. "
                "Build it with `python -m jobs.build_catalog --out DIR`."
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{manifest_path}: not valid JSON ({exc}). The catalog folder is corrupt; rebuild it with "
                "`python -m jobs.build_catalog --out DIR`."
            ) from exc
        tables = {
            name: read_table(root / f"{name}.parquet", schema) for name, schema in TABLE_SCHEMAS.items()
        }
        return cls(**tables, manifest=manifest, root=root)

    def save(self, root: str | os.PathLike) -> Path:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        # the folder reads as incomplete until the manifest is rewritten: a crash mid-save never leaves
        # an old manifest over a mix of old and new tables
        (root / MANIFEST).unlink(missing_ok=True)
        for name, schema in TABLE_SCHEMAS.items():
            write_table(getattr(self, name), root / f"{name}.parquet", schema)
        write_json(self.manifest, root / MANIFEST)
        self.root = root
        return root


def build_movielens_catalog(config: CatalogConfig | None = None, data_dir: str | None = None) -> Catalog:
    """Cluster MovieLens-100K items and build member histories; nothing is written."""
    config = config or CatalogConfig()
    timings = {}
    t0 = time.perf_counter()
    ml = load_movielens_100k(data_dir)
    seen, held_out = split_by_time(ml.interactions, config.holdout_fraction)
    timings["load_s"] = time.perf_counter() - t0

    # everything below sees only the seen part, popularity counts included
    item_ids = ml.items["item_id"].to_numpy()
    counts = np.bincount(seen["item_id"].to_numpy(), minlength=int(item_ids.max()) + 1)[item_ids]
    raw_items = ml.items.append_column("n_ratings", pa.array(counts.astype(np.int32)))
    t0 = time.perf_counter()
    tax = build_taxonomy(raw_items, seen, GENRES, config.taxonomy)
    timings["taxonomy_s"] = time.perf_counter() - t0
    items = raw_items.append_column("cluster_id", pa.array(tax.item_cluster, pa.int32()))
    items = items.select(ITEMS.names)

    t0 = time.perf_counter()
    histories = build_histories(seen, tax.item_ids, tax.item_cluster, min_rating=config.min_rating)
    timings["histories_s"] = time.perf_counter() - t0

    coverage = key_coverage(histories, config.history_k, tax.clusters.num_rows)
    manifest = {
        "source": {
            "dataset": "MovieLens-100K",
            "path": ml.source,
            "citation": "F. M. Harper, J. A. Konstan. The MovieLens Datasets: History and Context. "
            "ACM TiiS 5(4), 2015.",
        },
        "config": {
            "taxonomy": config.taxonomy.to_dict(),
            "min_rating": config.min_rating,
            "history_k": config.history_k,
            "holdout_fraction": config.holdout_fraction,
        },
        "counts": {
            "items": items.num_rows,
            "clusters": tax.clusters.num_rows,
            "members": ml.members.num_rows,
            "interactions": seen.num_rows,
            "held_out_interactions": held_out.num_rows,
            "histories": histories.num_rows,
            "positives": int(np.sum(histories["n_positive"].to_numpy())),
        },
        "coverage": coverage,
        "taxonomy_inertia": tax.inertia,
        "timings": timings,
        "created_unix": int(time.time()),
    }
    tables = {
        "items": items,
        "clusters": tax.clusters,
        "members": ml.members,
        "interactions": seen,
        "histories": histories,
    }
    return Catalog(
        **{name: conform(t, TABLE_SCHEMAS[name], source=name) for name, t in tables.items()},
        manifest=manifest,
    )


def catalog_summary_lines(catalog: Catalog, n_clusters_shown: int = 5) -> list[str]:
    """A short human-readable summary: counts, some clusters with keywords, history-key coverage."""
    m = catalog.manifest
    c, cov = m["counts"], m["coverage"]
    lines = [
        f"catalog: {c['items']} items in {c['clusters']} clusters "
        f"({catalog.clusters['parent_id'].to_numpy().max() + 1} groups), {c['members']} members, "
        f"{c['interactions']} ratings seen ({c.get('held_out_interactions', 0)} held out), "
        f"{c['positives']} positive",
        f"histories: {c['histories']} members, mean length "
        f"{np.mean([len(h) for h in catalog.histories['clusters'].to_pylist()]):.1f} clusters",
        f"history keys (K={cov['k']}): {cov['members_with_key']}/{cov['members']} members have one "
        f"({cov['members_with_key_share']:.0%}); {cov['distinct_keys']} distinct of {cov['possible_keys']} "
        f"possible ({cov['key_space_share']:.1%})",
    ]
    step = max(1, catalog.n_clusters // n_clusters_shown)
    for row in catalog.clusters.to_pylist()[::step][:n_clusters_shown]:
        lines.append(
            f"  cluster {row['cluster_id']:>3} {row['name']:<32} [{row['parent_name']}] "
            f"{row['n_items']:>4} items: {row['description']}"
        )
    return lines
