"""Train one ranker on an example split and evaluate it: what the train job, the ablation, the demo
and the benchmarks share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ranking.config import RankerConfig
from ranking.data import ExampleStream
from ranking.datasets import Examples
from ranking.features import Featurizer
from ranking.incremental import IncrementalPrior
from ranking.metrics import task_metrics
from ranking.model import LiRankModel, build_model
from ranking.schema import FeatureSchema
from ranking.train import TrainConfig, Trainer, TrainResult, predict


@dataclass
class RunResult:
    model: LiRankModel
    schema: FeatureSchema
    config: RankerConfig
    train: TrainResult
    metrics: dict[str, dict[str, float]]  # task -> auc, logloss, ece, oe, ...
    predictions: dict[str, np.ndarray]  # probs, raw_probs, labels on the test part


def evaluate(
    model: LiRankModel,
    schema: FeatureSchema,
    config: RankerConfig,
    test,
    device: torch.device,
    batch_size: int = 4096,
) -> tuple[dict, dict]:
    """Per-task metrics of calibrated probabilities on `test` (a table or parquet path)."""
    stream = ExampleStream(
        test, Featurizer(schema, history=config.history), batch_size=batch_size, device=device, cache=False
    )  # one pass: nothing to cache
    preds = predict(model, stream, device)
    metrics = {
        t: task_metrics(preds["labels"][:, i], preds["probs"][:, i]) for i, t in enumerate(schema.tasks)
    }
    return metrics, preds


def evaluate_checkpoint(folder, log, catalog, *, device: str = "auto") -> dict[str, dict[str, float]]:
    """Per-task metrics of a saved ranker (checkpoint folder) on a feedback log it never trained on (e.g.
    the traffic that came after it): the log's rows get the catalog's features and the long-dwell label
    under the checkpoint's own thresholds."""
    from ranking.datasets import feedback_features, with_long_dwell
    from ranking.ranker import Ranker

    ranker = Ranker.load(folder, device=device)
    if not set(ranker.schema.tasks) <= set(log.schema.names) | {"long_dwell"}:
        raise ValueError(
            f"{folder}: tasks {list(ranker.schema.tasks)} are not all feedback-log labels; evaluate a ranker "
            "trained on feedback logs (--dataset feedback)."
        )
    table = feedback_features(log, catalog)
    if ranker.schema.long_dwell is not None:
        table = with_long_dwell(table, ranker.schema.long_dwell)
    metrics, _ = evaluate(ranker.model, ranker.schema, ranker.config, table, ranker.device)
    return metrics


def train_and_evaluate(
    examples: Examples,
    config: RankerConfig,
    train_config: TrainConfig,
    device: torch.device,
    *,
    train_source=None,
    test_source=None,
    prior: IncrementalPrior | None = None,
    schema: FeatureSchema | None = None,
    progress=None,
    valid_source=None,
    on_epoch=None,
    build=None,
) -> RunResult:
    """Build a model for the schema, train it on the training part (with per-epoch validation, early
    stopping and the best epoch restored when there is a validation part), evaluate on the test part.

    train_source / valid_source / test_source default to the in-memory tables; pass parquet paths to
    stream. schema defaults to the examples' fitted schema (pass a checkpoint's schema for incremental
    runs). build(schema, config) makes the model (default: the LiRank model; e.g. the DNN baseline).
    """
    schema = schema or examples.schema
    torch.manual_seed(train_config.seed)
    model = (build or build_model)(schema, config)
    featurizer = Featurizer(schema, history=config.history)
    valid = examples.valid if valid_source is None else valid_source
    valid_stream = None
    if valid is not None:
        valid_stream = ExampleStream(
            valid, Featurizer(schema, history=config.history), batch_size=4096, device=device
        )
    stream = ExampleStream(
        examples.train if train_source is None else train_source,
        featurizer,
        batch_size=train_config.batch_size,
        shuffle=True,
        seed=train_config.seed,
        device=device,
    )
    result = Trainer(model, train_config, device, prior=prior).fit(
        stream, progress=progress, valid=valid_stream, on_epoch=on_epoch
    )
    metrics, preds = evaluate(
        model, schema, config, examples.test if test_source is None else test_source, device
    )
    return RunResult(model, schema, config, result, metrics, preds)


def slice_metrics(
    labels: np.ndarray, probs: np.ndarray, tasks, masks: dict[str, np.ndarray], min_rows: int = 1
) -> dict[str, dict]:
    """Per-task metrics on slices of the test part (e.g. explore slots, clusters unseen in training):
    {slice: {'n': rows, task: metrics}}; a slice with fewer than `min_rows` rows has only 'n'."""
    out = {}
    for name, mask in masks.items():
        mask = np.asarray(mask, bool)
        out[name] = {"n": int(mask.sum())}
        if mask.sum() >= min_rows:
            for i, t in enumerate(tasks):
                out[name][t] = task_metrics(labels[mask, i], probs[mask, i])
    return out
