"""The plain deep CTR baseline the ranker must beat: embeddings + MLP, as a standard CTR library's DNN
(FuxiCTR's DNN: every field embedded, sequence fields mean-pooled, an MLP with batch norm and ReLU,
L2 on the embeddings, Adam, early stopping on validation logloss).

It reads the same `Batch` and schema as the LiRank model, so both see the same features: each sparse
field's embedding (multi-valued fields mean-pooled, rare ids on the same learned rare row), the dense
fields, and the history as the mean of its items' embeddings next to the mean of its actions'
embeddings. Trained by the same `Trainer` (pass TrainConfig(sparse_optimizer='adam', embedding_l2=...)).
"""

from __future__ import annotations

import torch
from torch import nn

from ranking.config import RankerConfig
from ranking.features import Batch
from ranking.layers import QREmbedding, SparseArch, TableEmbedding
from ranking.model import RankerOutput
from ranking.schema import FeatureSchema

DNN_WIDTHS = (400, 400, 400)  # FuxiCTR's MovieLens DNN example: hidden_units [400, 400, 400]


class DNNBaseline(nn.Module):
    """x = [E(sparse) ; dense ; mean E(history items) ; mean A(history actions)] -> MLP -> one logit per task.

    Args:
        schema: the fitted feature schema.  dim: embedding width D.  widths: MLP widths.
        dropout: after each hidden layer.  history: read the schema's history when it has one.
    Shapes: the batch's tensors (see ranking.features.Batch) -> logits (B, T)
    """

    def __init__(
        self,
        schema: FeatureSchema,
        dim: int = 16,
        widths: tuple[int, ...] = DNN_WIDTHS,
        dropout: float = 0.0,
        history: bool = True,
    ):
        super().__init__()
        tables = {
            f.name: QREmbedding(f.buckets, dim, rare_row=f.has_rare_row)
            if f.kind == "qr"
            else TableEmbedding(len(f.vocab), dim)
            for f in schema.sparse
        }
        self.sparse = SparseArch(tables, [f.width for f in schema.sparse])
        self.use_history = history and schema.history is not None
        self.item_field = schema.history.item_field if self.use_history else None
        self.actions = nn.Embedding(schema.history.n_actions, dim) if self.use_history else None
        d = len(schema.sparse) * dim + len(schema.dense) + (2 * dim if self.use_history else 0)
        layers: list[nn.Module] = []
        for w in widths:
            layers += [nn.Linear(d, w), nn.BatchNorm1d(w), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            d = w
        self.mlp = nn.Sequential(*layers)
        self.dense_norm = nn.BatchNorm1d(len(schema.dense)) if schema.dense else None
        self.out = nn.Linear(d, len(schema.tasks))

    def forward(self, sparse, dense, hist_items, hist_actions, hist_mask, calib) -> RankerOutput:
        parts = [self.sparse(sparse).flatten(1)]
        if self.dense_norm is not None:
            parts.append(self.dense_norm(dense))
        if self.use_history:
            m = hist_mask.unsqueeze(-1).to(torch.float32)  # (B, L, 1)
            n = m.sum(1).clamp(min=1.0)
            items = self.sparse.tables[self.item_field](hist_items)  # (B, L, D)
            parts += [(items * m).sum(1) / n, (self.actions(hist_actions) * m).sum(1) / n]
        h = self.mlp(torch.cat(parts, dim=1))
        z = self.out(h)
        return RankerOutput(z, z, h.unsqueeze(1).expand(-1, z.shape[1], -1))

    def run(self, batch: Batch) -> RankerOutput:
        return self(*batch.inputs())

    def embedding_tables(self) -> list[nn.Embedding]:
        """Every embedding table (the history's action table included): what embedding_l2 regularises."""
        return [m for m in self.modules() if isinstance(m, nn.Embedding)]


def build_dnn(schema: FeatureSchema, config: RankerConfig) -> DNNBaseline:
    """The baseline at the ranker config's embedding width, for `train_and_evaluate(build=build_dnn)`."""
    return DNNBaseline(schema, dim=config.embedding_dim, history=config.history)
