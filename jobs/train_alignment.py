"""Aggregate feedback logs per (history key, candidate cluster) and train the alignment LLM on them.

    python -m jobs.train_alignment --catalog runs/<demo>/catalog --logs runs/<demo>/logs/explore \\
        --candidates runs/<demo>/candidates/candidates --out runs/alignment
    python -m jobs.train_alignment ... --base runs/<demo>/novelty --method full   # warm start from the novelty LLM
    python -m jobs.train_alignment ... --base smollm2-135m --max-steps 200        # LoRA on SmolLM2
    python -m jobs.train_alignment ... --objective pairwise                       # Bradley-Terry, for comparison
    python -m jobs.train_alignment ... --aggregate-only                           # the tables, no training

Outputs in --out: model/ (the alignment model folder the bulk job reads), pairs.parquet (aggregated
feedback: the pointwise examples), preferences.parquet (the pairwise set), quarantine.parquet (log rows
that could not be used, with the reason), summary.json. Logs above --ray-threshold-mib are aggregated
with Ray Data, smaller ones in-process; both give the same tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.cli import job_parser
from jobs.common import merge_config, run_main


class AlignmentTrainFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    catalog: str = Field(description="catalog folder: cluster names and descriptions, K")
    logs: list[str] = Field(description="feedback log folders (or part files)")
    candidates: str | None = Field(
        None, description="novelty candidates (jobs.sample_novelty), for the sample-frequency baseline"
    )
    # aggregation
    sources: list[str] = Field(["explore"], description="impression sources aggregated")
    min_impressions: int = Field(5, ge=1, description="pairs with fewer feedback events are dropped")
    normalise: Literal["minmax", "rank", "none"] = Field("minmax", description="label normalisation")
    interval: float = Field(0.1, ge=0, le=0.5, description="label rounding interval (0: none)")
    min_gap: float = Field(0.2, gt=0, le=1, description="label gap of a preference pair (pairwise set)")
    dwell_click_s: float = Field(
        60.0, ge=0, description="a click with at least this dwell, s, is a dwell click (a fixed threshold)"
    )
    engine: Literal["auto", "pyarrow", "ray"] = Field("auto", description="aggregation engine")
    ray_threshold_mib: int = Field(256, ge=0, description="engine auto: Ray above this much log data, MiB")
    spill_mib: float = Field(
        16.0,
        ge=0,
        description="pyarrow engine: above this much log data, MiB, add up hash partitions spilled to disk, one"
        " per this many MiB (flat memory); 0: all in memory",
    )
    strict_logs: bool = Field(
        False, description="stop on an unreadable log part (default: quarantine the part whole, use the rest)"
    )
    aggregate_only: bool = Field(False, description="write the aggregated tables, train nothing")
    # model
    base: str = Field(
        "tiny", description="tiny, smollm2-135m, or a causal-LM folder (e.g. a trained novelty model)"
    )
    method: Literal["auto", "full", "lora"] = Field("auto", description="auto: full for tiny, LoRA otherwise")
    tiny_width: int = Field(
        128, ge=32, multiple_of=32, description="--base tiny: model width D (heads of 32; SwiGLU 3D)"
    )
    tiny_layers: int = Field(4, ge=1, description="--base tiny: decoder layers")
    objective: Literal["pointwise", "pairwise"] = Field("pointwise", description="training objective")
    epochs: float = Field(3.0, gt=0, description="passes over the training pairs")
    max_steps: int = Field(0, ge=0, description="stop after N optimizer steps (0: epochs decide)")
    batch_size: int = Field(64, ge=1, description="pairs per step")
    lr: float = Field(0.0, ge=0, description="learning rate (0: 3e-3 tiny, 1e-3 full warm start, 2e-4 LoRA)")
    lora_r: int = Field(16, ge=1, description="LoRA rank (alpha and dropout keep their defaults)")
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="share of pairs held out")
    prior: Literal["none", "candidate", "key_offset"] = Field(
        "none",
        description="the fixed logit the LM corrects (residual training): candidate = the candidate's "
        "smoothed global positive rate, key_offset = plus the key's fitted offset, none = the LM alone",
    )
    prior_strength: float = Field(
        100.0, ge=0, description="prior: pseudo-impressions shrinking each candidate's rate to the mean"
    )
    valid_fraction: float = Field(
        0.0, ge=0, lt=1, description="share of the training pairs kept for early stopping (0: none)"
    )
    eval_every: int = Field(0, ge=0, description="validate every N steps (0: total steps / 15, at least 10)")
    patience: int = Field(
        4, ge=0, description="validations without improvement before stopping (0: run every step)"
    )
    pairwise_weight: float = Field(
        0.0, ge=0, description="weight of an auxiliary Bradley-Terry loss on the preferences (pointwise)"
    )
    warm_start: str | None = Field(
        None,
        description="a previous alignment model (its folder, or a jobs.train_alignment output folder): "
        "retrain it from its backbone and head instead of from --base",
    )
    seed: int = Field(0, description="seed of the split and the initialisation")


class AlignmentTrainConfig(AlignmentTrainFields):
    out: str = Field("runs/alignment", description="output folder")


def aggregation_config(cfg: AlignmentTrainFields):
    from alignment import AggregationConfig

    return AggregationConfig(
        sources=tuple(cfg.sources),
        min_impressions=cfg.min_impressions,
        normalise=cfg.normalise,
        interval=cfg.interval,
        min_gap=cfg.min_gap,
        dwell_click_s=cfg.dwell_click_s,
        engine=cfg.engine,
        ray_threshold_mib=cfg.ray_threshold_mib,
        spill_mib=cfg.spill_mib,
        strict_logs=cfg.strict_logs,
    )


def tiny_preset(cfg: AlignmentTrainFields):
    """The tiny preset at --tiny-width / --tiny-layers (the defaults are TinyLMConfig's own)."""
    from lm import TinyLMConfig

    default = TinyLMConfig()
    if (cfg.tiny_width, cfg.tiny_layers) != (default.hidden_size, default.num_hidden_layers):
        other = f"--warm-start {cfg.warm_start}" if cfg.warm_start else f"--base {cfg.base}"
        if cfg.warm_start or cfg.base != "tiny":
            raise ValueError(
                f"--tiny-width {cfg.tiny_width} / --tiny-layers {cfg.tiny_layers} shape a new tiny model; "
                f"with {other} the model's shape is given. Use --base tiny without --warm-start, or leave "
                f"them at {default.hidden_size} / {default.num_hidden_layers}."
            )
    w = cfg.tiny_width
    return TinyLMConfig(
        hidden_size=w, intermediate_size=3 * w, num_hidden_layers=cfg.tiny_layers, num_attention_heads=w // 32
    )


OWN_FILES = ("pairs.parquet",)  # written first by every run: marks an --out as this job's


def train(cfg: AlignmentTrainFields, out: str | Path, *, progress: bool = True) -> dict:
    """Aggregate, then train and evaluate; returns the summary (also out/summary.json)."""
    from alignment import (
        AlignmentConfig,
        aggregate_logs,
        alignment_model_folder,
        check_alignment_base,
        check_alignment_out,
        read_alignment_info,
        train_alignment,
    )
    from catalog import Catalog, ClusterVocabulary, check_output_folder, read_table, schemas, write_table
    from lm import LoraSettings

    out = check_output_folder(out, OWN_FILES, job="jobs.train_alignment", what="alignment job output")
    check_alignment_out(out / "model")
    catalog = Catalog.load(cfg.catalog)
    vocab = ClusterVocabulary.from_clusters(catalog.clusters)
    model_cfg = AlignmentConfig(
        base=cfg.base,
        method=cfg.method,
        objective=cfg.objective,
        epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        lora=LoraSettings(r=cfg.lora_r),
        eval_fraction=cfg.eval_fraction,
        prior=cfg.prior,
        prior_strength=cfg.prior_strength,
        valid_fraction=cfg.valid_fraction,
        eval_every=cfg.eval_every,
        patience=cfg.patience,
        pairwise_weight=cfg.pairwise_weight,
        seed=cfg.seed,
        warm_start=str(alignment_model_folder(cfg.warm_start)) if cfg.warm_start else None,
        tiny=tiny_preset(cfg),
    )  # checked before the logs are read
    if not cfg.aggregate_only:  # a bad --base or --warm-start fails before --out is created
        if model_cfg.warm_start:
            read_alignment_info(model_cfg.warm_start)
        else:
            check_alignment_base(model_cfg.base)
    candidates = read_table(cfg.candidates, schemas.NOVELTY_CANDIDATES) if cfg.candidates else None
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate_logs(
        cfg.logs, catalog.history_k, catalog.n_clusters, aggregation_config(cfg), workdir=out
    )
    write_table(agg.pairs, out / "pairs.parquet", schemas.FEEDBACK_PAIRS)
    write_table(agg.preferences, out / "preferences.parquet", schemas.FEEDBACK_PREFERENCES)
    write_table(agg.quarantine, out / "quarantine.parquet", schemas.FEEDBACK_QUARANTINE)
    summary: dict = {"aggregation": agg.stats, "out": str(out)}
    if not cfg.aggregate_only:
        summary["model"] = train_alignment(
            vocab,
            agg.pairs,
            agg.preferences,
            out / "model",
            model_cfg,
            candidates=candidates,
            progress=progress,
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summary_lines(s: dict) -> list[str]:
    a = s["aggregation"]
    lines = [
        f"feedback: {a['events']} events in {a['parts']} parts ({a['engine']}); {a['quarantined']} quarantined"
        + (f" {a['quarantine_reasons']}" if a["quarantined"] else "")
        + (
            f"; {a['quarantined_parts']} unreadable part(s) quarantined whole"
            if a["quarantined_parts"]
            else ""
        ),
        f"aggregated: {a['pairs_kept']} (key, cluster) pairs of {a['keys_kept']} keys kept from {a['pairs_seen']} "
        f"({a['pairs_below_min_impressions']} below the minimum impressions); {a['label_values']} label values, "
        f"mean {a['label_mean']}; {a['preferences']} preference pairs",
    ]
    m = s.get("model")
    if m:
        ev = m["evaluation"]

        def fmt(name: str) -> str:
            r = ev.get(name)
            return "n/a (no --candidates)" if r is None else f"AUC {r['auc']}, logloss {r['logloss']}"

        best = ev.get("best_baseline")
        valid = (
            f"; best validated step {m['best_step']} ({m['valid_pairs']} validation pairs)"
            if m.get("valid_pairs")
            else ""
        )
        lines += [
            f"alignment model: {m['base']} ({m['method']}, {m['objective']}, prior {m.get('prior', 'none')}), "
            f"{m['trainable_params']:,} trainable parameters; {m['train_pairs']} training pairs, {m['steps']} steps "
            f"({m['examples_per_s']} examples/s){valid}",
            f"held-out logloss {m['heldout_loss_before']:.4f} -> {m['heldout_loss_after']:.4f} on "
            f"{ev['heldout_pairs']} pairs",
            f"held-out: model {fmt('model')} | global positive rate {fmt('global_positive_rate')} | "
            f"key offset {fmt('key_offset')} | history-cluster rate {fmt('history_cluster_rate')} | "
            f"novelty sample frequency {fmt('novelty_sample_frequency')}",
        ]
        if best:
            gap = ev["model"]["auc"] - ev[best]["auc"]
            lines.append(f"model vs the best baseline ({best}): AUC {gap:+.4f}, logloss "
                         f"{ev['model']['logloss'] - ev[best]['logloss']:+.4f}")  # fmt: skip
        lines.append(f"model folder: {m['out']}")
    lines.append(f"tables and summary in {s['out']}")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = job_parser(AlignmentTrainConfig, __doc__).parse_args(argv)

    def body() -> int:
        from alignment import resolve_engine
        from jobs.services import ray_session

        cfg = merge_config(AlignmentTrainConfig, args)
        if resolve_engine(cfg.logs, aggregation_config(cfg)) == "pyarrow":  # no Ray needed
            s = train(cfg, cfg.out)
        else:
            with ray_session():
                s = train(cfg, cfg.out)
        for line in summary_lines(s):
            print(line)
        return 0

    run_main(body)


if __name__ == "__main__":
    main()
