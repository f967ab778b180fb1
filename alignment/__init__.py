"""The alignment LLM of LLM-powered interest exploration: it learns from members' aggregated feedback which
novel clusters suit a history key, and scores the novelty LLM's samples for best-of-n selection.
`import alignment` loads pyarrow and numpy only; torch and transformers load when a model is built.

Public API:
    AggregationConfig, aggregate_logs,     feedback logs -> per-(key, cluster) pairs, preferences, quarantine;
    resolve_engine                         which engine (pyarrow or Ray Data) a log set is aggregated with
    AlignmentConfig, train_alignment       pointwise (or Bradley-Terry) training and held-out evaluation
    AlignmentTrainer                       its steps: split, build, fit, evaluate, save
    check_alignment_base, check_alignment_out   a --base and an --out checked before any work
    AlignmentModelInfo, read_alignment_info   a model folder's alignment.json, typed
    AlignmentPrior                         the fixed logit a residual model corrects (prior.safetensors)
    training_global_rate                   the global-positive-rate baseline's per-cluster table
    AlignmentScorer                        batch scoring of (key, candidate) pairs, CPU or CUDA
    AlignmentStage                         the scorer as a Ray Data stage
"""

from alignment.aggregate import AggregationConfig, aggregate_logs, resolve_engine
from alignment.evaluate import training_global_rate
from alignment.info import AlignmentModelInfo, alignment_model_folder, read_alignment_info
from alignment.prior import AlignmentPrior
from alignment.train import (
    AlignmentConfig,
    AlignmentTrainer,
    check_alignment_base,
    check_alignment_out,
    train_alignment,
)

__all__ = [
    "alignment_model_folder",
    "check_alignment_base", "check_alignment_out", "resolve_engine",
    "AggregationConfig", "AlignmentConfig", "AlignmentModelInfo", "AlignmentPrior", "AlignmentScorer", "AlignmentStage",
    "AlignmentTrainer", "aggregate_logs", "read_alignment_info", "train_alignment", "training_global_rate",
]  # fmt: skip


def __getattr__(name: str):
    if name == "AlignmentScorer":
        from alignment.score import AlignmentScorer

        return AlignmentScorer
    if name == "AlignmentStage":
        from alignment.stage import AlignmentStage

        return AlignmentStage
    raise AttributeError(f"module 'alignment' has no attribute {name!r}")
