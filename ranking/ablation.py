"""The ablation behind LiRank's Table 6: a baseline, then one technique added at a time on the same
data and seed; each row reports the metric and its change against the previous row and the baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ranking.config import RankerConfig
from ranking.datasets import Examples
from ranking.experiment import evaluate, train_and_evaluate
from ranking.layers.quantization import embedding_bytes, quantize_embeddings
from ranking.train import TrainConfig

# (row label, changes applied on top of the previous row)
STEPS: list[tuple[str, dict]] = [
    ("baseline: embeddings + BN dense + MLP", {}),
    ("+ isotonic calibration layer", {"calibration": True}),
    ("+ low-rank DCNv2 cross", {"cross": "dcnv2"}),
    ("+ attention cross (Residual DCN)", {"cross": "residual"}),
    ("+ dense gating", {"gating": True}),
    ("+ TransAct history encoder", {"history": True}),
]


def baseline_config(full: RankerConfig) -> RankerConfig:
    """The starting row: every technique of the ablation switched off, the sizes of `full` kept."""
    return full.replace(calibration=False, cross="none", gating=False, history=False)


@dataclass
class AblationRow:
    name: str
    metrics: dict  # task -> metrics
    examples_per_s: float
    params: int
    embedding_bytes: int


def run_ablation(
    examples: Examples,
    full: RankerConfig,
    train_config: TrainConfig,
    device: torch.device,
    *,
    steps: list[tuple[str, dict]] | None = None,
    quantize: bool = True,
    log=print,
) -> list[AblationRow]:
    rows = []
    config = baseline_config(full)
    result = None
    for name, change in steps or STEPS:
        config = config.replace(**change)
        result = train_and_evaluate(examples, config, train_config, device)
        rows.append(
            AblationRow(
                name,
                result.metrics,
                result.train.examples_per_s,
                sum(p.numel() for p in result.model.parameters()),
                embedding_bytes(result.model),
            )
        )
        log(format_row(rows[-1], rows, examples.schema.tasks[0]))
    if quantize and result is not None:
        qmodel = quantize_embeddings(result.model)
        metrics, _ = evaluate(qmodel, result.schema, config, examples.test, torch.device("cpu"))
        rows.append(
            AblationRow(
                "+ 8-bit middle-max embeddings (inference)",
                metrics,
                rows[-1].examples_per_s,
                rows[-1].params,
                embedding_bytes(qmodel),
            )
        )
        log(format_row(rows[-1], rows, examples.schema.tasks[0]))
    return rows


def _rel(a: float, b: float) -> float:
    return 100.0 * (a - b) / b


def format_row(row: AblationRow, rows: list[AblationRow], task: str) -> str:
    base, prev = rows[0].metrics[task], rows[max(0, rows.index(row) - 1)].metrics[task]
    m = row.metrics[task]
    return (
        f"{row.name:<44} AUC {m['auc']:.4f} ({_rel(m['auc'], prev['auc']):+.2f}% vs prev, "
        f"{_rel(m['auc'], base['auc']):+.2f}% vs base)  logloss {m['logloss']:.4f}  ECE {m['ece']:.4f}  "
        f"O/E {m['oe']:.3f}"
    )


def markdown_table(rows: list[AblationRow], task: str) -> str:
    """The ablation as a Markdown table (what README and the closing note show)."""
    lines = [
        f"| model ({task}) | AUC | rel. to previous | rel. to baseline | logloss | ECE | O/E | params | embedding bytes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, r in enumerate(rows):
        m, prev, base = r.metrics[task], rows[max(0, i - 1)].metrics[task], rows[0].metrics[task]
        lines.append(
            f"| {r.name} | {m['auc']:.4f} | {_rel(m['auc'], prev['auc']):+.2f}% | {_rel(m['auc'], base['auc']):+.2f}% "
            f"| {m['logloss']:.4f} | {m['ece']:.4f} | {m['oe']:.3f} | {r.params:,} | {r.embedding_bytes:,} |"
        )
    return "\n".join(lines)


def multitask_steps(groups: tuple[tuple[str, ...], ...]) -> list[tuple[str, dict]]:
    """Rows for multi-task data: MMoE as the comparison, then task grouping in its place."""
    return [
        ("MMoE heads (comparison)", {"heads": "mmoe"}),
        ("task grouping instead of MMoE", {"heads": "groups", "task_groups": groups}),
    ]
