"""The LiRank model: sparse arch -> [x_0 = embeddings ; dense ; history] -> cross -> gated MLP -> task
heads -> isotonic calibration. The parts are built by `build_model` and injected."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ranking.config import RankerConfig
from ranking.features import Batch
from ranking.layers import (
    DenseArch,
    GatedMLP,
    IsotonicCalibration,
    MMoEHeads,
    QREmbedding,
    SparseArch,
    TableEmbedding,
    TaskGroupHeads,
    TransAct,
    build_cross,
)
from ranking.schema import FeatureSchema


class RankerOutput(NamedTuple):
    logits: torch.Tensor  # (B, T) calibrated logits; sigmoid gives each task's probability
    raw_logits: torch.Tensor  # (B, T) before the calibration layer
    phi: torch.Tensor  # (B, T, H) each task's last-layer input (what the Bayesian last layer reads)


class LiRankModel(nn.Module):
    """Multi-task ranker (LiRank, arXiv 2402.06859).

    x_0 = [flatten(E(sparse)) ; BN(dense) ; TransAct(history, candidate)]      (B, d)
    h = MLP(Cross(x_0));  z, phi = Heads(h);  logits = Iso(z, calib)

    Args:
        sparse: embeddings of the F_s sparse fields.  dense: numeric-feature arch.
        history: TransAct or None.  item_field: the candidate's item field; TransAct shares its table.
        cross: interaction arch.  mlp: over arch.  heads: task heads.  calibration: isotonic layer or None.
    Shapes: see `forward`.
    """

    def __init__(
        self,
        sparse: SparseArch,
        dense: DenseArch,
        history: TransAct | None,
        item_field: str,
        cross: nn.Module,
        mlp: GatedMLP,
        heads: nn.Module,
        calibration: IsotonicCalibration | None,
    ):
        super().__init__()
        self.sparse, self.dense, self.history = sparse, dense, history
        self.item_field = item_field
        self.item_index = list(sparse.tables).index(item_field)
        self.cross, self.mlp, self.heads, self.calibration = cross, mlp, heads, calibration

    def forward(
        self,
        sparse: torch.Tensor,  # (B, F_s) int64
        dense: torch.Tensor,  # (B, F_d) float
        hist_items: torch.Tensor,  # (B, L) int64
        hist_actions: torch.Tensor,  # (B, L) int64
        hist_mask: torch.Tensor,  # (B, L) bool
        calib: torch.Tensor,  # (B, F_c) int64
    ) -> RankerOutput:
        emb = self.sparse(sparse)  # (B, F_s, D)
        parts = [emb.flatten(1), self.dense(dense)]
        if self.history is not None:
            item_table = self.sparse.tables[self.item_field]
            parts.append(
                self.history(item_table(hist_items), hist_actions, hist_mask, emb[:, self.item_index])
            )
        x0 = torch.cat(parts, dim=1)  # (B, d)
        z, phi = self.heads(self.mlp(self.cross(x0)))  # (B, T), (B, T, H)
        logits = z if self.calibration is None else self.calibration(z, calib)
        return RankerOutput(logits, z, phi)

    def run(self, batch: Batch) -> RankerOutput:
        return self(*batch.inputs())

    def embedding_tables(self) -> list[nn.Embedding]:
        """The id embedding tables (Adagrad's parameters; what 8-bit quantization compresses)."""
        return [m for m in self.sparse.modules() if isinstance(m, nn.Embedding)]


def build_model(schema: FeatureSchema, config: RankerConfig) -> LiRankModel:
    D = config.embedding_dim
    tables = {}
    for f in schema.sparse:
        if f.kind == "qr":
            tables[f.name] = QREmbedding(f.buckets, D, rare_row=f.has_rare_row)
        else:
            tables[f.name] = TableEmbedding(len(f.vocab), D)
    names = [f.name for f in schema.sparse]
    use_history = config.history and schema.history is not None
    history = None
    if use_history:
        if schema.history.length < config.last_k:
            raise ValueError(
                f"history length {schema.history.length} < RankerConfig.last_k={config.last_k}: "
                "lower last_k or keep a longer history."
            )
        history = TransAct(
            D,
            schema.history.n_actions,
            config.action_dim,
            config.transact_layers,
            config.transact_heads,
            config.last_k,
            config.dropout,
        )
    d0 = len(names) * D + len(schema.dense) + (history.out_dim if history else 0)
    cross, d_cross = build_cross(
        config.cross, d0, config.cross_layers, config.cross_rank, config.attention_temperature
    )
    mlp = GatedMLP(d_cross, config.mlp_widths, config.gating, config.dropout)
    T = len(schema.tasks)
    if config.heads == "mmoe":
        heads = MMoEHeads(mlp.out_dim, T, config.mmoe_experts, config.tower_width)
    else:
        heads = TaskGroupHeads(mlp.out_dim, config.group_indices(schema.tasks), config.tower_width)
    calibration = None
    if config.calibration:
        vocab = tuple(len(schema.field(c).vocab) for c in schema.calibration)
        calibration = IsotonicCalibration(T, config.calibration_buckets, *config.calibration_range, vocab)
    return LiRankModel(
        SparseArch(tables, [f.width for f in schema.sparse]),
        DenseArch(len(schema.dense), config.dense_batchnorm),
        history,
        schema.history.item_field if use_history else names[0],
        cross,
        mlp,
        heads,
        calibration,
    )


def count_flops(model: LiRankModel, batch: Batch) -> float:
    """Forward FLOPs per example, counted by torch's FLOP counter on one batch."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.run(batch)
    model.train(was)
    return counter.get_total_flops() / len(batch)
