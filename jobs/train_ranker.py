"""Train the LiRank ranker on MovieLens-100K (CTR: like = rating >= 4) or on feedback logs (click, like,
share, skip, long dwell), evaluate it on the later part by time, and write a self-describing checkpoint.

    python -m jobs.train_ranker --out runs/ranker                      # MovieLens CTR, default preset
    python -m jobs.train_ranker --dataset feedback --logs runs/<demo>/logs/round0/random --out runs/r2
    python -m jobs.train_ranker --warm-start runs/ranker --out runs/ranker-p2    # incremental period
    python -m jobs.train_ranker --dataset files --spec data/ml/spec.yaml --train-data data/ml/train.parquet \
        --valid-data data/ml/valid.parquet --test-data data/ml/test.parquet --out runs/ranker-files   # your data

Outputs in --out: the checkpoint (config.json, schema.json, model.safetensors, fisher.safetensors,
bandit.safetensors), metrics.json, reliability.png, serving.pt2 (torch.export), examples/*.parquet,
summary.json, and for --dataset feedback quarantine.parquet when log rows were set aside. Feedback
logs are checked by the rules alignment applies (catalog.feedback) plus the catalog's item and member
ids; the model trains on the rows that pass, the others are counted in metrics.json ("feedback") and
kept in quarantine.parquet with the reason; an unreadable log part is quarantined whole (with
--strict-logs it is an error). The folder is built beside --out and swapped in whole when the run
succeeds, so a failed run leaves the previous one intact and no file of an older model survives;
--out must not be (or hold) the warm-start or cold-start checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.cli import job_parser
from jobs.common import merge_config, run_main


class RankerJobFields(BaseModel):
    """What every ranker job accepts: the data, the model preset and the training settings."""

    model_config = ConfigDict(extra="forbid")
    dataset: Literal["movielens", "feedback", "files"] = Field(
        "movielens",
        description="movielens (CTR on ratings), feedback (multi-task logs) or files (your parquet + --spec)",
    )
    spec: str | None = Field(None, description="--dataset files: the feature spec (.yaml/.json/.toml)")
    train_data: str | None = Field(None, description="--dataset files: training parquet (file or folder)")
    valid_data: str | None = Field(None, description="--dataset files: validation parquet (optional)")
    test_data: str | None = Field(None, description="--dataset files: test parquet")
    data: str | None = Field(
        None,
        description="--dataset files: one parquet split by one time cut (instead of --train-data/--test-data)",
    )
    time_column: str | None = Field(None, description="--data: the column to split on (default: the spec's)")
    split: Literal["global-time", "member-time"] = Field(
        "global-time",
        description="movielens: one time cut for all (new members in test) or each member's latest ratings",
    )
    valid_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of examples before the test part kept for validation (0: none)"
    )
    catalog: str | None = Field(None, description="catalog folder (default: build MovieLens-100K in memory)")
    logs: list[str] = Field([], description="feedback-log folders for --dataset feedback")
    preset: Literal["tiny", "default", "paper"] = Field(
        "default", description="model size (paper: 4 x 3500 MLP)"
    )
    ranker: dict = Field({}, description="RankerConfig fields overriding the preset")
    train: dict = Field({}, description="TrainConfig fields")
    epochs: int | None = Field(None, ge=1, description="passes over the training part (default 2)")
    history_length: int = Field(50, ge=1, description="L, the TransAct history")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="latest share of examples held out")
    long_dwell_percentile: float = Field(
        75.0, gt=0, lt=100, description="long-dwell label: dwell above this percentile of its context"
    )
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda")
    seed: int | None = Field(None, description="overrides train.seed when given")
    strict_logs: bool = Field(
        False, description="stop on an unreadable feedback-log part (default: quarantine the part whole)"
    )


class TrainJobConfig(RankerJobFields):
    out: str = Field("runs/ranker", description="checkpoint folder")
    batch_size: int | None = Field(None, ge=1, description="examples per step (default 512)")
    warm_start: str | None = Field(
        None, description="previous period's checkpoint: train incrementally from it"
    )
    cold_start: str | None = Field(
        None, description="the cold-start model w0 of the prior (default: the warm start's own cold start)"
    )
    forgetting_factor: float | None = Field(None, ge=0, description="lambda_f (default 0)")
    cold_weight: float | None = Field(None, ge=0, le=1, description="alpha (default 0.5)")
    bandit_prior_precision: float = Field(1.0, gt=0, description="Thompson last layer: prior precision")
    bandit_noise: float = Field(0.5, gt=0, description="Thompson last layer: observation noise")
    export: bool = Field(True, description="write serving.pt2 (torch.export)")


def job_configs(cfg: RankerJobFields, **flags):
    """(RankerConfig, TrainConfig): the preset with cfg.ranker on top; cfg.train with the flags that
    were given (not None: epochs, seed and `flags`) on top."""
    from ranking import PRESETS, RankerConfig, TrainConfig

    config = RankerConfig.from_dict({**PRESETS[cfg.preset]().to_dict(), **cfg.ranker})
    flags = {"epochs": cfg.epochs, "seed": cfg.seed, **flags}
    tcfg = TrainConfig.from_dict({**cfg.train, **{k: v for k, v in flags.items() if v is not None}})
    return config, tcfg


def read_feedback_logs(cfg, catalog):
    """cfg.logs read part by part and checked by catalog.feedback (the rules alignment applies, plus the
    catalog's item and member ids): a CheckedFeedback of the good rows, the quarantine and the counts."""
    from catalog import FeedbackRules, log_parts, read_feedback

    if not cfg.logs:
        raise ValueError(
            "--dataset feedback needs --logs DIR (a feedback-log folder, e.g. from `make demo`)."
        )
    for d in cfg.logs:
        if not Path(d).is_file() and not log_parts(d):
            raise ValueError(
                f"no feedback rows in {d}; point --logs at a policy folder such as .../logs/round0/random."
            )
    checked = read_feedback(cfg.logs, FeedbackRules.for_catalog(catalog, ids=True), strict=cfg.strict_logs)
    st = checked.stats
    if checked.good.num_rows == 0:
        raise ValueError(
            f"--logs {' '.join(cfg.logs)}: none of the {st['events']} feedback rows in {st['parts']} parts is "
            f"usable ({st['quarantined']} quarantined: {st['quarantine_reasons']}; {st['quarantined_parts']} "
            "unreadable parts). Check that the logs were written for this --catalog, or fix their producer."
        )
    return checked


def load_examples(cfg, catalog, checked=None):
    """The job's train and test examples; for --dataset feedback from `checked` (read_feedback_logs),
    read here when not given."""
    from ranking import feedback_examples, movielens_ctr

    if cfg.dataset == "files":
        examples = files_examples(cfg)
    elif cfg.dataset == "movielens":
        examples = movielens_ctr(
            catalog,
            test_fraction=cfg.test_fraction,
            valid_fraction=cfg.valid_fraction,
            split=cfg.split,
            history_length=cfg.history_length,
        )
    else:
        checked = checked or read_feedback_logs(cfg, catalog)
        examples = feedback_examples(
            checked.good,
            catalog,
            test_fraction=cfg.test_fraction,
            valid_fraction=cfg.valid_fraction,
            history_length=cfg.history_length,
            percentile=cfg.long_dwell_percentile,
        )
    check_parts(examples, cfg.test_fraction)
    return examples


def files_examples(cfg):
    """--dataset files: the user's parquet read by their feature spec."""
    from ranking import load_spec, user_examples

    if not cfg.spec:
        raise ValueError(
            "--dataset files needs --spec FILE (the feature spec: fields, tasks, history; see ranking/spec.py, "
            "or `python -m jobs.export_movielens_ctr --out DIR` for a worked example)."
        )
    schema, time_column = load_spec(cfg.spec)
    return user_examples(
        schema,
        train=cfg.train_data,
        valid=cfg.valid_data,
        test=cfg.test_data,
        data=cfg.data,
        time_column=cfg.time_column or time_column,
        test_fraction=cfg.test_fraction,
        valid_fraction=cfg.valid_fraction,
    )


def check_parts(examples, test_fraction: float) -> None:
    """Training needs 2 rows (batch norm) and evaluation 1: refuse a split with fewer."""
    n = examples.train.num_rows + examples.test.num_rows
    for part, least in (("train", 2), ("test", 1)):
        if getattr(examples, part).num_rows < least:
            raise ValueError(
                f"the {part} part has {getattr(examples, part).num_rows} rows (of {n} example rows, "
                f"test_fraction={test_fraction}); it needs at least {least}. Give more data (more logs) "
                "or change --test-fraction."
            )


def baseline_metrics(examples) -> dict:
    """The popularity baseline per task: each item's smoothed rate in the training part."""
    from ranking import popularity_scores, task_metrics

    out = {}
    for task in examples.schema.tasks:
        p = popularity_scores(examples.train, examples.test, label=task)
        out[task] = task_metrics(examples.test[task].to_numpy(), p)
    return out


def check_out(cfg) -> None:
    """The job replaces --out whole: refuse a folder of other files, and one that is (or holds) the
    warm-start or cold-start checkpoint the run starts from."""
    from catalog import check_output_folder
    from ranking import CHECKPOINT_FILES, cold_start_path, read_checkpoint_config

    out = Path(cfg.out).resolve()
    if cfg.warm_start:
        info, _, _ = read_checkpoint_config(cfg.warm_start)  # a bad config.json stops the job here
        cold_start = cold_start_path(cfg.warm_start, cfg.cold_start, info=info)
        for flag, path in (("--warm-start", cfg.warm_start), ("--cold-start", cold_start)):
            p = Path(path).resolve()
            if p == out or out in p.parents:
                raise ValueError(
                    f"--out {cfg.out} resolves to {out}, which is or holds the {flag} checkpoint {path} "
                    f"({p}); the job replaces --out whole and would overwrite it. Give --out a new folder."
                )
    check_output_folder(cfg.out, CHECKPOINT_FILES, job="jobs.train_ranker", what="ranker checkpoint")


def main(argv: list[str] | None = None) -> None:
    args = job_parser(TrainJobConfig, __doc__).parse_args(argv)
    run_main(lambda: train(merge_config(TrainJobConfig, args)) and 0)


def train(cfg: TrainJobConfig) -> dict:
    """Run the job; returns the metrics it wrote to metrics.json."""
    from catalog import replace_folder, staging_folder

    t_start = time.perf_counter()
    check_out(cfg)
    out = Path(cfg.out)
    stage = staging_folder(out.resolve())
    try:
        metrics = _train_into(cfg, stage, out)
        replace_folder(stage, out.resolve())
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    print(f"wrote {out} in {time.perf_counter() - t_start:.1f}s")
    return metrics


def _train_into(cfg: TrainJobConfig, stage: Path, out: Path) -> dict:
    """Everything the job writes, written into `stage` (swapped in for `out` afterwards)."""
    import torch
    from tqdm import tqdm

    from catalog import Catalog, build_movielens_catalog, feedback_summary_line, schemas, write_table
    from ranking import (
        ExampleStream,
        Featurizer,
        Ranker,
        count_flops,
        embedding_bytes,
        empirical_fisher,
        evaluate,
        export_serving,
        from_checkpoint,
        pick_device,
        quantize_embeddings,
        reliability_diagram,
        slice_metrics,
        train_and_evaluate,
    )

    device = pick_device(cfg.device)
    config, tcfg = job_configs(
        cfg, batch_size=cfg.batch_size, forgetting_factor=cfg.forgetting_factor, cold_weight=cfg.cold_weight
    )

    catalog = Catalog.load(cfg.catalog) if cfg.catalog else build_movielens_catalog()
    checked = read_feedback_logs(cfg, catalog) if cfg.dataset == "feedback" else None
    examples = load_examples(cfg, catalog, checked)
    if checked is not None and checked.quarantine.num_rows:
        write_table(checked.quarantine, stage / "quarantine.parquet", schemas.FEEDBACK_QUARANTINE)
        print(f"{feedback_summary_line(checked.stats)}; set aside in {out / 'quarantine.parquet'}")
    # the streaming reader trains from parquet, as it would from shared storage at scale
    paths = {}
    for part in ("train", "valid", "test"):
        table = getattr(examples, part)
        if table is not None:
            paths[part] = write_table(table, stage / "examples" / f"{part}.parquet", table.schema)
    valid_rows = examples.valid.num_rows if examples.valid is not None else 0
    print(
        f"examples: {examples.train.num_rows} train, {valid_rows} valid, {examples.test.num_rows} test "
        f"({cfg.dataset}), tasks {list(examples.schema.tasks)}, device {device}"
    )

    prior, schema, cold_start = None, None, None
    if cfg.warm_start:
        warm = from_checkpoint(
            cfg.warm_start,
            cold_start=cfg.cold_start,
            cold_weight=tcfg.cold_weight,
            forgetting_factor=tcfg.forgetting_factor,
            data_schema=examples.schema,
        )
        prior, schema, config, cold_start = warm.prior, warm.schema, warm.config, warm.cold_start
        print(
            f"incremental: warm start {cfg.warm_start}, cold start {cold_start}, lambda_f {tcfg.forgetting_factor}; "
            "architecture and vocabularies come from the warm start (--preset and ranker fields are ignored)"
        )
    train_cfg_dict = {**tcfg.to_dict(), "cold_start": cold_start or str(out.resolve())}

    total = tcfg.epochs * examples.train.num_rows
    with tqdm(total=total, unit="ex", desc="train", mininterval=2.0, disable=None) as bar:
        run = train_and_evaluate(
            examples,
            config,
            tcfg,
            device,
            train_source=paths["train"],
            valid_source=paths.get("valid"),
            test_source=paths["test"],
            prior=prior,
            schema=schema,
            progress=lambda n, loss: (bar.update(n), bar.set_postfix(loss=f"{loss:.4f}", refresh=False)),
            on_epoch=lambda r: bar.write(
                f"  epoch {r['epoch']}: validation logloss {r['loss']:.4f}, AUC "
                + ", ".join(f"{a:.4f}" for a in r["auc"])
            ),
        )
    model, schema = run.model, run.schema
    featurizer = Featurizer(schema, history=config.history)
    fisher = empirical_fisher(
        model,
        ExampleStream(paths["train"], featurizer, batch_size=tcfg.batch_size, cache=False),
        tcfg.fisher_batches,
        device,
    )
    ranker = Ranker(model, schema, config, device=str(device))
    ranker.update_bandit(paths["train"], prior_precision=cfg.bandit_prior_precision, noise=cfg.bandit_noise)

    baseline = baseline_metrics(examples)
    qmodel = quantize_embeddings(model)
    q_metrics, _ = evaluate(qmodel, schema, config, paths["test"], torch.device("cpu"))
    sample = featurizer(examples.test.slice(0, 256))
    flops = count_flops(model, sample.to(device))
    metrics = {
        "dataset": cfg.dataset,
        "tasks": run.metrics,
        "popularity_baseline": baseline,
        "quantized_int8": q_metrics,
        "embedding_bytes": {"float32": embedding_bytes(model), "int8": embedding_bytes(qmodel)},
        "train": {
            "rows": examples.train.num_rows,
            "epochs": tcfg.epochs,
            "epochs_run": len(run.train.validation) or tcfg.epochs,
            "best_epoch": run.train.best_epoch,
            "stopped_early": run.train.stopped_early,
            "validation": run.train.validation,
            "valid_rows": valid_rows,
            "examples_seen": run.train.examples_seen,  # rows x epochs
            "seconds": round(run.train.seconds, 2),
            "examples_per_s": round(run.train.examples_per_s, 1),
            "final_loss": run.train.final_loss,
            "device": str(device),
        },
        "slices": _slices(examples, run, slice_metrics),
        "flops_per_example": flops,
        "params": sum(p.numel() for p in model.parameters()),
        "featurizer": dict(featurizer.stats),
    }
    if checked is not None:
        metrics["feedback"] = checked.stats  # rows read, kept and quarantined (with reasons)
    ranker.save(stage, swap=False, train_config=train_cfg_dict, fisher=fisher, metrics=metrics)
    png = reliability_diagram(
        {
            t: (run.predictions["labels"][:, i], run.predictions["probs"][:, i])
            for i, t in enumerate(schema.tasks)
        },
        stage / "reliability.png",
    )
    if cfg.export:
        program = export_serving(model.cpu(), sample.inputs(), stage / "serving.pt2")
        program.module()(*sample.inputs())  # the export must run; checked in memory, never read back

    epochs = metrics["train"]["epochs_run"]
    kept = f", kept epoch {run.train.best_epoch} (best validation logloss)" if run.train.best_epoch else ""
    print(
        f"trained {examples.train.num_rows} rows x {epochs} epochs in {run.train.seconds:.1f}s "
        f"({run.train.examples_per_s:,.0f} ex/s){kept}"
    )
    for t in schema.tasks:
        m, b, q = run.metrics[t], baseline[t], q_metrics[t]
        print(
            f"  {t:<11} AUC {m['auc']:.4f} (popularity {b['auc']:.4f}, int8 {q['auc']:.4f})  "
            f"logloss {m['logloss']:.4f}  ECE {m['ece']:.4f}  O/E {m['oe']:.3f}  positives {m['positive_rate']:.3f}"
        )
    for name, sl in metrics["slices"].items():
        shown = ", ".join(f"{t} {sl[t]['auc']:.4f}" for t in schema.tasks if t in sl)
        print(f"  slice {name:<15} {sl['n']:>6} rows  AUC {shown or '(too few rows)'}")
    eb = metrics["embedding_bytes"]
    print(f"embeddings {eb['float32'] / 1e6:.2f} MB float32 -> {eb['int8'] / 1e6:.2f} MB int8")
    print(f"reliability diagram: {out / png.name}")
    feedback = {"feedback": checked.stats} if checked is not None else {}
    (stage / "summary.json").write_text(
        json.dumps({"out": str(out), **metrics["train"], **feedback}, indent=2)
    )
    return metrics


def _slices(examples, run, slice_metrics) -> dict:
    """Test-part metrics on the explore slots, the exploit slots and clusters never seen in training
    (where exploration lands: the ranker must still tell good items from bad there)."""
    import numpy as np

    test = examples.test
    if "source" not in test.schema.names:
        return {}
    source = np.asarray(test["source"].to_pylist(), dtype=object)
    seen = np.unique(examples.train["cluster_id"].to_numpy())
    masks = {
        "explore": source == "explore",
        "exploit": source == "exploit",
        "unseen_cluster": ~np.isin(test["cluster_id"].to_numpy(), seen),
    }
    p = run.predictions
    return slice_metrics(p["labels"], p["probs"], examples.schema.tasks, masks, min_rows=20)


if __name__ == "__main__":
    main()
