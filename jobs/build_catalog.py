"""Build the MovieLens-100K catalog: clusters, items, members, interactions, histories.

python -m jobs.build_catalog --out runs/catalog [--config catalog.toml] [--n-clusters 48] ...

The tables and manifest.json are written into --out over those of an earlier catalog; an --out that
holds files but no catalog file is refused before anything is built.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from catalog.build import MANIFEST, TABLE_SCHEMAS, CatalogConfig, build_movielens_catalog, summary_lines
from catalog.outputs import check_output_folder
from catalog.taxonomy import TaxonomyConfig
from jobs.common import merge_config, run_main


class CatalogFields(BaseModel):
    """The catalog settings every job that builds a catalog accepts (flags or `--config`)."""

    model_config = ConfigDict(extra="forbid")
    n_clusters: int = Field(48, ge=2)
    n_groups: int = Field(8, ge=1)
    n_factors: int = Field(24, ge=1)
    history_k: int = Field(2, ge=1)
    min_rating: float = Field(4.0, ge=1, le=5)
    holdout_fraction: float = Field(0.2, ge=0, lt=1)
    seed: int = 0

    def catalog_config(self) -> CatalogConfig:
        tax = TaxonomyConfig(
            n_clusters=self.n_clusters, n_groups=self.n_groups, n_factors=self.n_factors, seed=self.seed
        )
        return CatalogConfig(
            taxonomy=tax,
            min_rating=self.min_rating,
            history_k=self.history_k,
            holdout_fraction=self.holdout_fraction,
        )


class CatalogJobConfig(CatalogFields):
    """What `--config` may hold (TOML or JSON); flags override it."""

    out: str = "runs/catalog"


# what marks a folder as a catalog (an interrupted save leaves tables without the manifest)
CATALOG_FILES = (MANIFEST, *(f"{name}.parquet" for name in TABLE_SCHEMAS))
FLAGS = ["out", "n_clusters", "n_groups", "n_factors", "history_k", "min_rating", "holdout_fraction", "seed"]


def add_catalog_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-clusters", dest="n_clusters", type=int, help="M, interest clusters (default 48)")
    p.add_argument("--n-groups", dest="n_groups", type=int, help="level-1 groups (default 8)")
    p.add_argument("--n-factors", dest="n_factors", type=int, help="rating-matrix SVD rank (default 24)")
    p.add_argument("--history-k", dest="history_k", type=int, help="K, history key length (default 2)")
    p.add_argument(
        "--min-rating", dest="min_rating", type=float, help="positive engagement threshold (default 4)"
    )
    p.add_argument(
        "--holdout-fraction",
        dest="holdout_fraction",
        type=float,
        help="each member's last share of ratings kept from the system for the simulator (default 0.2)",
    )
    p.add_argument("--seed", type=int, help="taxonomy seed (default 0)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="output folder (default runs/catalog)")
    p.add_argument("--config", help="TOML or JSON file with the fields of CatalogJobConfig")
    add_catalog_flags(p)
    args = p.parse_args(argv)

    def body() -> int:
        cfg = merge_config(CatalogJobConfig, args, FLAGS)
        check_output_folder(cfg.out, CATALOG_FILES, job="jobs.build_catalog", what="catalog")
        t0 = time.perf_counter()
        catalog = build_movielens_catalog(cfg.catalog_config())
        out = catalog.save(Path(cfg.out))
        for line in summary_lines(catalog):
            print(line)
        print(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
        return 0

    run_main(body)


if __name__ == "__main__":
    main()
