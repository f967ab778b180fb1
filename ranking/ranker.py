"""The ranker's serving interface: a trained model with its feature schema, calibrated scores per
task, and Thompson-sampled scores for explore/exploit."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ranking.bandit import BayesianLastLayer
from ranking.checkpoint import load_bandit, load_model, save_checkpoint, write_checkpoint
from ranking.config import RankerConfig
from ranking.data import ExampleStream
from ranking.features import Featurizer
from ranking.model import LiRankModel
from ranking.quantization import quantize_embeddings
from ranking.schema import FeatureSchema
from ranking.train import pick_device


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

    @torch.no_grad()
    def score(
        self, candidates: pa.Table, *, explore: bool = False, generator: torch.Generator | None = None
    ) -> dict[str, np.ndarray]:
        """Calibrated probability of every task, and the ranking score.

        Returns {task: (N,) probabilities for each task, 'score': (N,), 'explored': bool}. With
        explore=True and a bandit, 'score' is a Thompson sample from the last-layer posterior (one
        draw for all N candidates); otherwise it is the rank task's calibrated probability.
        """
        if candidates.num_rows == 0:
            return {
                **{t: np.zeros(0, np.float32) for t in self.schema.tasks},
                "score": np.zeros(0, np.float32),
                "explored": False,
            }
        batch = self.featurizer(candidates).to(self.device)
        out = self.model.run(batch)
        probs = torch.sigmoid(out.logits).cpu().numpy()
        result = {t: probs[:, i] for i, t in enumerate(self.schema.tasks)}
        explored = explore and self.bandit is not None
        if explored:
            result["score"] = self.bandit.thompson_scores(out.phi[:, self.task_index], generator).numpy()
        else:
            result["score"] = probs[:, self.task_index]
        result["explored"] = explored
        return result

    @torch.no_grad()
    def update_bandit(
        self, examples, *, prior_precision: float = 1.0, noise: float = 0.5, batch_size: int = 4096
    ) -> int:
        """Add a period's labelled examples to the last-layer posterior (created on first use)."""
        featurizer = Featurizer(self.schema, with_labels=True, history=self.config.history)
        if self.bandit is None:
            self.bandit = BayesianLastLayer(self.config.tower_width, prior_precision, noise)
        n = 0
        for batch in ExampleStream(examples, featurizer, batch_size=batch_size, device=self.device):
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
        into `folder` as it is (`write_checkpoint`, for a folder the caller is staging)."""
        return (save_checkpoint if swap else write_checkpoint)(
            folder,
            self.model,
            self.schema,
            self.config,
            bandit=self.bandit,
            bandit_task=self.rank_task,
            **extras,
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
        model, schema, config, meta = load_model(folder, data_schema=data_schema)
        ranker = cls(
            model,
            schema,
            config,
            bandit=load_bandit(folder),
            rank_task=meta.get("bandit_task"),
            device=device,
        )
        return ranker.quantized() if quantize else ranker
