"""The ranker's serving interface: a trained model with its feature schema, calibrated scores per
task, and Thompson-sampled scores for explore/exploit."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from catalog.device import pick_device
from ranking.bandit import BayesianLastLayer
from ranking.checkpoint import (
    checkpoint_version,
    load_bandit,
    load_model,
    save_checkpoint,
    write_checkpoint,
)
from ranking.config import RankerConfig
from ranking.data import ExampleStream
from ranking.features import Featurizer
from ranking.layers.quantization import quantize_embeddings
from ranking.model import LiRankModel
from ranking.schema import FeatureSchema


def carried_files(folder: str | os.PathLike, info) -> dict:
    """The optional contents of a checkpoint that describe its weights and stay valid when only the bandit
    changes: the Fisher (the next incremental period's prior), the training config, the metrics."""
    import json

    from ranking.incremental import load_fisher

    carried = {"fisher": load_fisher(folder), "train_config": dict(info.train) or None}
    metrics = Path(folder) / "metrics.json"
    carried["metrics"] = json.loads(metrics.read_text()) if metrics.is_file() else None
    return {k: v for k, v in carried.items() if v is not None}


class Ranker:
    """Scores candidate rows (Arrow tables with the schema's feature columns).

    Args:
        model: a trained LiRankModel.  schema: its fitted FeatureSchema.  config: its RankerConfig.
        bandit: the Bayesian last layer of `rank_task`, or None (explore then falls back to exploit).
        rank_task: the task whose probability orders the list (default: the schema's first task).
        device: 'auto' (CUDA when present), 'cpu' or 'cuda[:n]'.
    """

    def __init__(
        self,
        model: LiRankModel,
        schema: FeatureSchema,
        config: RankerConfig,
        *,
        bandit: BayesianLastLayer | None = None,
        rank_task: str | None = None,
        device: str = "auto",
    ):
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.schema, self.config, self.bandit = schema, config, bandit
        self.rank_task = rank_task or schema.tasks[0]
        if self.rank_task not in schema.tasks:
            raise ValueError(
                f"rank_task={self.rank_task!r} is not one of the model's tasks {list(schema.tasks)}."
            )
        self.task_index = schema.tasks.index(self.rank_task)
        self.featurizer = Featurizer(schema, with_labels=False, history=config.history)
        self.version: str | None = None  # the checkpoint's content hash, set by `load`
        # what the checkpoint holds besides the weights (Fisher, training config, metrics): `load` reads it,
        # `save` writes it back unless told otherwise, so a bandit update keeps the next period's prior
        self.carried: dict = {}

    @torch.no_grad()
    def score(
        self, candidates: pa.Table, *, explore: bool = False, generator: torch.Generator | None = None
    ) -> dict[str, np.ndarray]:
        """Calibrated probability of every task, and the ranking score.

        Returns {task: (N,) probabilities for each task, 'score': (N,), 'explored': bool}. With
        explore=True and a bandit, 'score' is a Thompson sample from the last-layer posterior (one
        draw for all N candidates); otherwise it is the rank task's calibrated probability.
        """
        return self.score_requests(
            candidates, [candidates.num_rows], explore=[explore], generators=[generator]
        )[0]

    @torch.no_grad()
    def score_requests(
        self,
        candidates: pa.Table,
        sizes: list[int],
        *,
        explore: list[bool],
        generators: list[torch.Generator | None],
    ) -> list[dict[str, np.ndarray]]:
        """`score` for several requests in one forward pass (a serving batch).

        `candidates` holds the requests' rows back to back, `sizes[r]` rows for request r. Each request
        that asks to explore gets its own Thompson draw (from `generators[r]`), so requests batched
        together never share a sample. Returns one `score` result per request, in order.
        """
        if sum(sizes) != candidates.num_rows or not len(sizes) == len(explore) == len(generators):
            raise ValueError(
                f"score_requests: sizes {sizes} must add up to the {candidates.num_rows} candidate rows, "
                f"with one explore flag and one generator per request (got {len(explore)} and "
                f"{len(generators)})."
            )
        if candidates.num_rows == 0:
            probs = np.zeros((0, len(self.schema.tasks)), np.float32)
            phi = None
        else:
            batch = self.featurizer(candidates)
            if self.model.history is not None:  # positions no row fills cost TransAct time, change nothing
                batch = batch.trim_history(self.model.history.last_k)
            out = self.model.run(batch.to(self.device))
            probs = torch.sigmoid(out.logits).cpu().numpy()
            phi = out.phi[:, self.task_index]  # (N, H)
        results, start = [], 0
        for size, wants, gen in zip(sizes, explore, generators, strict=True):
            p = probs[start : start + size]
            result = {t: p[:, i] for i, t in enumerate(self.schema.tasks)}
            explored = bool(wants) and self.bandit is not None and size > 0
            if explored:
                result["score"] = self.bandit.thompson_scores(phi[start : start + size], gen).numpy()
            else:
                result["score"] = p[:, self.task_index]
            result["explored"] = explored
            results.append(result)
            start += size
        return results

    @torch.no_grad()
    def update_bandit(
        self, examples, *, prior_precision: float = 1.0, noise: float = 0.5, batch_size: int = 4096
    ) -> int:
        """Add a period's labelled examples to the last-layer posterior (created on first use)."""
        featurizer = Featurizer(self.schema, with_labels=True, history=self.config.history)
        if self.bandit is None:
            self.bandit = BayesianLastLayer(self.config.tower_width, prior_precision, noise)
        n = 0
        for batch in ExampleStream(
            examples, featurizer, batch_size=batch_size, device=self.device, cache=False
        ):
            out = self.model.run(batch)
            self.bandit.update(out.phi[:, self.task_index], batch.labels[:, self.task_index])
            n += len(batch)
        return n

    def quantized(self) -> Ranker:
        """The same ranker with middle-max int8 embedding tables (CPU inference)."""
        return Ranker(
            quantize_embeddings(self.model),
            self.schema,
            self.config,
            bandit=self.bandit,
            rank_task=self.rank_task,
            device="cpu",
        )

    def save(self, folder: str | os.PathLike, *, swap: bool = True, **extras) -> Path:
        """Save as a checkpoint folder: swapped in whole (`save_checkpoint`), or with swap=False written
        into `folder` as it is (`write_checkpoint`, for a folder the caller is staging). What the loaded
        checkpoint carried (fisher, train_config, metrics) is written again unless `extras` replaces it."""
        return (save_checkpoint if swap else write_checkpoint)(
            folder,
            self.model,
            self.schema,
            self.config,
            bandit=self.bandit,
            bandit_task=self.rank_task,
            **{**self.carried, **extras},
        )

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        *,
        device: str = "auto",
        data_schema: FeatureSchema | None = None,
        quantize: bool = False,
    ) -> Ranker:
        """Rebuild from a checkpoint folder (safetensors and JSON only). `version` is the folder's content
        hash (`checkpoint_version`), read before and after loading, so a folder swapped in meanwhile is
        refused rather than half-read."""
        version = checkpoint_version(folder)
        model, schema, config, info = load_model(folder, data_schema=data_schema)
        ranker = cls(
            model,
            schema,
            config,
            bandit=load_bandit(folder),
            rank_task=info.bandit_task,
            device=device,
        )
        if checkpoint_version(folder) != version:
            raise ValueError(
                f"{folder} changed while it was loaded (a new checkpoint was swapped in); load it again."
            )
        ranker = ranker.quantized() if quantize else ranker
        ranker.version = version
        ranker.carried = carried_files(folder, info)
        return ranker
