"""Generate a synthetic world (same tables as a catalog) for scale tests, streamed in bounded memory.

python -m jobs.synthesize --out runs/synthetic --members 1000000 --clusters 2000

The tables and manifest.json are written into --out over those of an earlier catalog; an --out that
holds files but no catalog file is refused before anything is generated.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from catalog.outputs import check_output_folder
from catalog.synthetic import SyntheticConfig, generate_world
from jobs.build_catalog import CATALOG_FILES
from jobs.common import merge_config, run_main


class SynthJobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str = "runs/synthetic"
    members: int = Field(100_000, ge=1)
    clusters: int = Field(1_000, ge=2)
    groups: int = Field(40, ge=1)
    chunk_members: int = Field(50_000, ge=1)
    seed: int = 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="output folder (default runs/synthetic)")
    p.add_argument("--config", help="TOML or JSON file with the fields of SynthJobConfig")
    p.add_argument("--members", type=int, help="members to generate (default 100000)")
    p.add_argument("--clusters", type=int, help="M, clusters (default 1000)")
    p.add_argument("--groups", type=int, help="level-1 groups (default 40)")
    p.add_argument("--chunk-members", dest="chunk_members", type=int, help="members per chunk; bounds memory")
    p.add_argument("--seed", type=int)
    args = p.parse_args(argv)

    def body() -> int:
        cfg = merge_config(
            SynthJobConfig, args, ["out", "members", "clusters", "groups", "chunk_members", "seed"]
        )
        check_output_folder(cfg.out, CATALOG_FILES, job="jobs.synthesize", what="catalog")
        t0 = time.perf_counter()
        manifest = generate_world(
            cfg.out,
            SyntheticConfig(
                n_members=cfg.members,
                n_clusters=cfg.clusters,
                n_groups=cfg.groups,
                chunk_members=cfg.chunk_members,
                seed=cfg.seed,
            ),
            progress=True,
        )
        dt = time.perf_counter() - t0
        c = manifest["counts"]
        print(
            f"synthetic world: {c['members']} members, {c['clusters']} clusters, {c['items']} items, "
            f"{c['interactions']} interactions ({c['interactions'] / dt:,.0f} rows/s), "
            f"{c['histories']} histories"
        )
        size = sum(f.stat().st_size for f in Path(cfg.out).glob("*.parquet"))
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # ru_maxrss: KiB on Linux
        print(f"wrote {cfg.out}: {size / 1e6:,.1f} MB of parquet in {dt:.1f}s, peak RSS {peak_mb:,.0f} MB")
        return 0

    run_main(body)


if __name__ == "__main__":
    main()
