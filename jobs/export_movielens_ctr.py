"""Write MovieLens-100K CTR as a user's dataset: train/valid/test parquet plus the feature spec that
reads them, the worked example of `jobs.train_ranker --dataset files` (bring your own data the same way).

    python -m jobs.export_movielens_ctr --out data/movielens-ctr
    python -m jobs.train_ranker --dataset files --spec data/movielens-ctr/spec.yaml \\
        --train-data data/movielens-ctr/train.parquet --valid-data data/movielens-ctr/valid.parquet \\
        --test-data data/movielens-ctr/test.parquet --out runs/ranker-files

All 100,000 ratings (like = rating >= 4), split by --split (global-time: one time cut, most test members
new; member-time: each member's latest ratings), with the 'standard' features (ids, age, gender,
occupation, zip prefix, release decade, genres as a list, the last --history-length rated items and
their ratings) or 'full'. Writes train/valid/test.parquet and spec.yaml (and with --single data.parquet,
every row in one file with its `timestamp`, for `--data`); an --out holding other files and none of
these is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.cli import job_parser
from jobs.common import merge_config, run_main

OWN_FILES = ("train.parquet", "valid.parquet", "test.parquet", "data.parquet", "spec.yaml")


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str = Field("data/movielens-ctr", description="output folder")
    split: Literal["global-time", "member-time"] = Field(
        "global-time", description="how test rows are chosen"
    )
    features: Literal["standard", "full"] = Field("standard", description="feature set")
    history_length: int = Field(10, ge=1, description="items in the history the spec reads")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of rows in the test part")
    valid_fraction: float = Field(0.1, ge=0, lt=1, description="share of rows in the validation part")
    single: bool = Field(False, description="also write data.parquet: every row in one file, for --data")


def main(argv: list[str] | None = None) -> None:
    args = job_parser(ExportConfig, __doc__).parse_args(argv)
    run_main(lambda: export(merge_config(ExportConfig, args)) and 0)


def export(cfg: ExportConfig) -> Path:
    import pyarrow as pa
    import yaml

    from catalog import build_movielens_catalog, check_output_folder, load_movielens_100k, write_table
    from ranking import movielens_ctr, spec_dict

    check_output_folder(cfg.out, OWN_FILES, job="jobs.export_movielens_ctr", what="exported dataset")
    examples = movielens_ctr(
        build_movielens_catalog(),
        interactions=load_movielens_100k().interactions,
        split=cfg.split,
        features=cfg.features,
        history_length=cfg.history_length,
        test_fraction=cfg.test_fraction,
        valid_fraction=cfg.valid_fraction,
    )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    columns = examples.schema.columns + list(examples.schema.tasks) + ["timestamp"]
    parts = {"train": examples.train, "valid": examples.valid, "test": examples.test}
    for name, table in parts.items():
        if table is not None:
            write_table(table.select(columns), out / f"{name}.parquet", table.select(columns).schema)
    if cfg.single:
        every = pa.concat_tables([t.select(columns) for t in parts.values() if t is not None]).sort_by(
            "timestamp"
        )
        write_table(every, out / "data.parquet", every.schema)
    spec = spec_dict(examples.schema, time_column="timestamp")
    (out / "spec.yaml").write_text(
        f"# MovieLens-100K CTR ({cfg.split} split, {cfg.features} features), written by "
        "jobs.export_movielens_ctr\n" + yaml.safe_dump(spec, sort_keys=False)
    )
    sizes = ", ".join(f"{n} {t.num_rows:,}" for n, t in parts.items() if t is not None)
    print(f"wrote {out}: {sizes} rows; spec {out / 'spec.yaml'}")
    return out


if __name__ == "__main__":
    main()
