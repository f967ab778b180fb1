"""Train the LiRank ranker on MovieLens-100K (CTR: like = rating >= 4) or on feedback logs (click, like,
share, skip, long dwell), evaluate it on the later part by time, and write a self-describing checkpoint.

    python -m jobs.train_ranker --out runs/ranker                      # MovieLens CTR, default preset
    python -m jobs.train_ranker --dataset feedback --logs runs/<demo>/logs/round0/random --out runs/r2
    python -m jobs.train_ranker --warm-start runs/ranker --out runs/ranker-p2    # incremental period

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

import argparse
import json
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from jobs.common import merge_config, run_main


class RankerJobFields(BaseModel):
    """What every ranker job accepts: the data, the model preset and the training settings."""

    model_config = ConfigDict(extra="forbid")
    dataset: str = Field("movielens", pattern="^(movielens|feedback)$")
    catalog: str | None = None  # catalog folder; default: build MovieLens-100K in memory
    logs: list[str] = []  # feedback-log folders (dataset=feedback)
    preset: str = Field("default", pattern="^(tiny|default|paper)$")
    ranker: dict = {}  # RankerConfig fields overriding the preset
    train: dict = {}  # TrainConfig fields
    epochs: int | None = Field(None, ge=1)
    history_length: int = Field(50, ge=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    long_dwell_percentile: float = Field(75.0, gt=0, lt=100)
    device: str = "auto"
    seed: int | None = None  # overrides train.seed when given
    strict_logs: bool = False  # an unreadable feedback-log part stops the job (default: quarantined whole)


DATA_FLAGS = [
    "dataset", "catalog", "logs", "preset", "epochs", "history_length", "device", "seed", "strict_logs",
]  # fmt: skip


def add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="'movielens' (CTR on ratings, default) or 'feedback' (multi-task logs)")
    p.add_argument("--catalog", help="catalog folder (default: build MovieLens-100K in memory)")
    p.add_argument("--logs", nargs="+", help="feedback-log folders for --dataset feedback")
    p.add_argument("--preset", help="model size: tiny, default or paper (4 x 3500 MLP)")
    p.add_argument("--epochs", type=int, help="passes over the training part (default 2)")
    p.add_argument(
        "--history-length", dest="history_length", type=int, help="L, TransAct history (default 50)"
    )
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--strict-logs",
        dest="strict_logs",
        action="store_const",
        const=True,
        help="stop on an unreadable feedback-log part (default: quarantine the part whole and use the rest)",
    )


class TrainJobConfig(RankerJobFields):
    out: str = "runs/ranker"
    batch_size: int | None = Field(None, ge=1)
    warm_start: str | None = None  # previous period's checkpoint: incremental training
    cold_start: str | None = None  # the cold-start model w0 (default: the warm start's own cold start)
    forgetting_factor: float | None = Field(None, ge=0)
    cold_weight: float | None = Field(None, ge=0, le=1)
    bandit_prior_precision: float = Field(1.0, gt=0)
    bandit_noise: float = Field(0.5, gt=0)
    export: bool = True


FLAGS = [
    "out", *DATA_FLAGS, "batch_size", "test_fraction", "warm_start", "cold_start", "forgetting_factor",
    "cold_weight",
]  # fmt: skip


def job_configs(cfg: RankerJobFields, **flags):
    """(RankerConfig, TrainConfig): the preset with cfg.ranker on top; cfg.train with the flags that
    were given (not None: epochs, seed and `flags`) on top."""
    from ranking.config import PRESETS, RankerConfig
    from ranking.train import TrainConfig

    config = RankerConfig.from_dict({**PRESETS[cfg.preset]().to_dict(), **cfg.ranker})
    flags = {"epochs": cfg.epochs, "seed": cfg.seed, **flags}
    tcfg = TrainConfig.from_dict({**cfg.train, **{k: v for k, v in flags.items() if v is not None}})
    return config, tcfg


def read_feedback_logs(cfg, catalog):
    """cfg.logs read part by part and checked by catalog.feedback (the rules alignment applies, plus the
    catalog's item and member ids): a CheckedFeedback of the good rows, the quarantine and the counts."""
    from catalog.feedback import FeedbackRules, read_feedback
    from catalog.logs import log_parts

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
    from ranking.datasets import feedback_examples, movielens_ctr

    if cfg.dataset == "movielens":
        examples = movielens_ctr(catalog, test_fraction=cfg.test_fraction, history_length=cfg.history_length)
    else:
        checked = checked or read_feedback_logs(cfg, catalog)
        examples = feedback_examples(
            checked.good,
            catalog,
            test_fraction=cfg.test_fraction,
            history_length=cfg.history_length,
            percentile=cfg.long_dwell_percentile,
        )
    check_parts(examples, cfg.test_fraction)
    return examples


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
    from ranking.datasets import popularity_scores
    from ranking.metrics import task_metrics

    out = {}
    for task in examples.schema.tasks:
        p = popularity_scores(examples.train, examples.test, label=task)
        out[task] = task_metrics(examples.test[task].to_numpy(), p)
    return out


def cold_start_path(cfg, warm_meta: dict) -> str:
    """--cold-start, else the cold start the warm start recorded, else the warm start itself."""
    return cfg.cold_start or warm_meta.get("train", {}).get("cold_start") or cfg.warm_start


def check_out(cfg) -> None:
    """The job replaces --out whole: refuse a folder of other files, and one that is (or holds) the
    warm-start or cold-start checkpoint the run starts from."""
    from catalog.outputs import check_output_folder
    from ranking.checkpoint import OWN_FILES, read_checkpoint_config

    out = Path(cfg.out).resolve()
    if cfg.warm_start:
        meta, _, _ = read_checkpoint_config(cfg.warm_start)
        for flag, path in (("--warm-start", cfg.warm_start), ("--cold-start", cold_start_path(cfg, meta))):
            p = Path(path).resolve()
            if p == out or out in p.parents:
                raise ValueError(
                    f"--out {cfg.out} resolves to {out}, which is or holds the {flag} checkpoint {path} "
                    f"({p}); the job replaces --out whole and would overwrite it. Give --out a new folder."
                )
    check_output_folder(cfg.out, OWN_FILES, job="jobs.train_ranker", what="ranker checkpoint")


def incremental_prior(cfg, tcfg, data_schema):
    """Previous and cold-start checkpoints -> (IncrementalPrior, the previous schema and RankerConfig,
    cold-start path). The new period keeps the previous model's architecture and vocabularies."""
    from dataclasses import fields

    from ranking.checkpoint import load_fisher, load_model
    from ranking.train import IncrementalPrior

    prev_model, prev_schema, prev_config, prev_meta = load_model(cfg.warm_start, data_schema=data_schema)
    cold_path = cold_start_path(cfg, prev_meta)
    cold_model, _, cold_config, _ = load_model(cold_path, data_schema=data_schema)
    for f in fields(prev_config):
        a, b = getattr(cold_config, f.name), getattr(prev_config, f.name)
        if a != b:
            raise ValueError(
                f"the cold start {cold_path} has RankerConfig.{f.name}={a!r}, the warm start {cfg.warm_start} "
                f"has {b!r}; both must share one architecture. Pass the --cold-start the warm start was "
                "trained from."
            )
    h_prev, h0 = load_fisher(cfg.warm_start), load_fisher(cold_path)
    if h_prev is None or h0 is None:
        raise ValueError(
            f"incremental training needs fisher.safetensors in {cfg.warm_start} and {cold_path}; "
            "retrain those with this job (it writes the Fisher)."
        )
    try:
        prior = IncrementalPrior(
            {k: v.float() for k, v in cold_model.state_dict().items()},
            h0,
            {k: v.float() for k, v in prev_model.state_dict().items()},
            h_prev,
            tcfg.cold_weight,
            tcfg.forgetting_factor,
        )
    except ValueError as exc:
        raise ValueError(f"cold start {cold_path} vs warm start {cfg.warm_start}: {exc}") from exc
    return prior, prev_schema, prev_config, str(Path(cold_path).resolve())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="checkpoint folder (default runs/ranker)")
    p.add_argument("--config", help="TOML or JSON file with the fields of TrainJobConfig")
    add_data_flags(p)
    p.add_argument("--batch-size", dest="batch_size", type=int, help="examples per step (default 512)")
    p.add_argument("--test-fraction", dest="test_fraction", type=float, help="latest share held out (0.2)")
    p.add_argument("--warm-start", dest="warm_start", help="previous checkpoint: train incrementally from it")
    p.add_argument("--cold-start", dest="cold_start", help="cold-start checkpoint w0 for the prior")
    p.add_argument("--forgetting-factor", dest="forgetting_factor", type=float, help="lambda_f (default 0)")
    p.add_argument("--cold-weight", dest="cold_weight", type=float, help="alpha (default 0.5)")
    args = p.parse_args(argv)
    run_main(lambda: train(merge_config(TrainJobConfig, args, FLAGS)) and 0)


def train(cfg: TrainJobConfig) -> dict:
    """Run the job; returns the metrics it wrote to metrics.json."""
    from catalog.io import replace_folder, staging_folder

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

    from catalog.build import Catalog, build_movielens_catalog
    from catalog.feedback import summary_line
    from catalog.io import write_table
    from catalog.schemas import FEEDBACK_QUARANTINE
    from ranking.checkpoint import export_serving
    from ranking.data import ExampleStream
    from ranking.experiment import evaluate, slice_metrics, train_and_evaluate
    from ranking.features import Featurizer
    from ranking.metrics import reliability_diagram
    from ranking.model import count_flops
    from ranking.quantization import embedding_bytes, quantize_embeddings
    from ranking.ranker import Ranker
    from ranking.train import empirical_fisher, pick_device

    device = pick_device(cfg.device)
    config, tcfg = job_configs(
        cfg, batch_size=cfg.batch_size, forgetting_factor=cfg.forgetting_factor, cold_weight=cfg.cold_weight
    )

    catalog = Catalog.load(cfg.catalog) if cfg.catalog else build_movielens_catalog()
    checked = read_feedback_logs(cfg, catalog) if cfg.dataset == "feedback" else None
    examples = load_examples(cfg, catalog, checked)
    if checked is not None and checked.quarantine.num_rows:
        write_table(checked.quarantine, stage / "quarantine.parquet", FEEDBACK_QUARANTINE)
        print(f"{summary_line(checked.stats)}; set aside in {out / 'quarantine.parquet'}")
    # the streaming reader trains from parquet, as it would from shared storage at scale
    paths = {}
    for part in ("train", "test"):
        table = getattr(examples, part)
        paths[part] = write_table(table, stage / "examples" / f"{part}.parquet", table.schema)
    print(
        f"examples: {examples.train.num_rows} train, {examples.test.num_rows} test ({cfg.dataset}), "
        f"tasks {list(examples.schema.tasks)}, device {device}"
    )

    prior, schema, cold_start = None, None, None
    if cfg.warm_start:
        prior, schema, config, cold_start = incremental_prior(cfg, tcfg, examples.schema)
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
            test_source=paths["test"],
            prior=prior,
            schema=schema,
            progress=lambda n, loss: (bar.update(n), bar.set_postfix(loss=f"{loss:.4f}", refresh=False)),
        )
    model, schema = run.model, run.schema
    featurizer = Featurizer(schema, history=config.history)
    fisher = empirical_fisher(
        model,
        ExampleStream(paths["train"], featurizer, batch_size=tcfg.batch_size),
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

    print(
        f"trained {examples.train.num_rows} rows x {tcfg.epochs} epochs in {run.train.seconds:.1f}s "
        f"({run.train.examples_per_s:,.0f} ex/s)"
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
