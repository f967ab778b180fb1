"""The LiRank ablation (the paper's Table 6 on this data): train a baseline, then add one technique at
a time on the same data and seed, and print AUC, logloss, ECE and O/E with the change per row.

    python -m jobs.ablate_ranker --out runs/ablation                      # MovieLens CTR
    python -m jobs.ablate_ranker --dataset feedback --logs runs/<demo>/logs/round0/random

Writes ablation.md (the table) and ablation.json to --out, over those of an earlier run; an --out
that holds files but neither of them is refused before training.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from pydantic import Field

from catalog import check_output_folder
from jobs.cli import job_parser
from jobs.common import merge_config, run_main
from jobs.train_ranker import RankerJobFields, job_configs, load_examples

OWN_FILES = ("ablation.json", "ablation.md")


class AblationJobConfig(RankerJobFields):
    out: str = Field("runs/ablation", description="output folder")
    task_groups: list[list[str]] = Field(
        [["click", "like", "share"], ["skip"], ["long_dwell"]],
        description="task groups of the multi-task rows",
    )


def main(argv: list[str] | None = None) -> None:
    args = job_parser(AblationJobConfig, __doc__).parse_args(argv)
    run_main(lambda: ablate(merge_config(AblationJobConfig, args)))


def ablate(cfg: AblationJobConfig) -> int:
    from catalog import Catalog, build_movielens_catalog
    from ranking import ABLATION_STEPS, markdown_table, multitask_steps, pick_device, run_ablation

    check_output_folder(cfg.out, OWN_FILES, job="jobs.ablate_ranker", what="ablation")
    t0 = time.perf_counter()
    device = pick_device(cfg.device)
    full, tcfg = job_configs(cfg)
    catalog = Catalog.load(cfg.catalog) if cfg.catalog else build_movielens_catalog()
    examples = load_examples(cfg, catalog)
    steps = list(ABLATION_STEPS)
    if len(examples.schema.tasks) > 1:
        steps += multitask_steps(tuple(tuple(g) for g in cfg.task_groups))
    task = examples.schema.tasks[0]
    print(
        f"ablation on {cfg.dataset}: {examples.train.num_rows} train / {examples.test.num_rows} test rows, "
        f"{len(steps)} rows + int8, {tcfg.epochs} epochs each, device {device}; metric: {task}"
    )
    rows = run_ablation(examples, full, tcfg, device, steps=steps)
    table = markdown_table(rows, task)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(table + "\n")
    (out / "ablation.json").write_text(
        json.dumps({"config": cfg.model_dump(), "rows": [asdict(r) for r in rows]}, indent=2, default=float)
    )
    print(table)
    print(f"wrote {out}/ablation.md in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    main()
