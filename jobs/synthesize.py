"""Generate a synthetic world (same tables as a catalog) for scale tests, streamed in bounded memory.

python -m jobs.synthesize --out runs/synthetic --members 1000000 --clusters 2000

The tables and manifest.json are written into --out over those of an earlier catalog; an --out that
holds files but no catalog file is refused before anything is generated.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from catalog import CATALOG_FILES, SyntheticConfig, check_output_folder, generate_world
from jobs.cli import job_parser
from jobs.common import merge_config, run_main


class SynthJobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str = Field("runs/synthetic", description="output folder")
    members: int = Field(100_000, ge=1, description="members to generate")
    clusters: int = Field(1_000, ge=2, description="M, clusters")
    groups: int = Field(40, ge=1, description="level-1 groups")
    chunk_members: int = Field(50_000, ge=1, description="members per chunk; bounds memory")
    seed: int = Field(0, description="generator seed")


def main(argv: list[str] | None = None) -> None:
    args = job_parser(SynthJobConfig, __doc__).parse_args(argv)

    def body() -> int:
        cfg = merge_config(SynthJobConfig, args)
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
