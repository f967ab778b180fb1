"""Build the MovieLens-100K catalog: clusters, items, members, interactions, histories.

python -m jobs.build_catalog --out runs/catalog [--config catalog.toml] [--n-clusters 48] ...

The tables and manifest.json are written into --out over those of an earlier catalog; an --out that
holds files but no catalog file is refused before anything is built.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from catalog import (
    CATALOG_FILES,
    CatalogConfig,
    TaxonomyConfig,
    build_movielens_catalog,
    catalog_summary_lines,
    check_output_folder,
)
from jobs.cli import job_parser
from jobs.common import merge_config, run_main


class CatalogFields(BaseModel):
    """The catalog settings every job that builds a catalog accepts (flags or `--config`)."""

    model_config = ConfigDict(extra="forbid")
    n_clusters: int = Field(48, ge=2, description="M, interest clusters")
    n_groups: int = Field(8, ge=1, description="level-1 groups")
    n_factors: int = Field(24, ge=1, description="rating-matrix SVD rank")
    history_k: int = Field(2, ge=1, description="K, history key length")
    min_rating: float = Field(4.0, ge=1, le=5, description="positive engagement threshold")
    holdout_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="each member's last share of ratings kept from the system for the simulator",
    )
    seed: int = Field(0, description="taxonomy seed")

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

    out: str = Field("runs/catalog", description="output folder")


def main(argv: list[str] | None = None) -> None:
    args = job_parser(CatalogJobConfig, __doc__).parse_args(argv)

    def body() -> int:
        cfg = merge_config(CatalogJobConfig, args)
        check_output_folder(cfg.out, CATALOG_FILES, job="jobs.build_catalog", what="catalog")
        t0 = time.perf_counter()
        catalog = build_movielens_catalog(cfg.catalog_config())
        out = catalog.save(Path(cfg.out))
        for line in catalog_summary_lines(catalog):
            print(line)
        print(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
        return 0

    run_main(body)


if __name__ == "__main__":
    main()
