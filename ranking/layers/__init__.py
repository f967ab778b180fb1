"""The ranker's layers: the nn.Module building blocks `ranking.model.build_model` assembles and injects
into LiRankModel, one operator family per file. Each docstring gives the formula, the LiRank section,
Args and shapes.

    embeddings.py    QREmbedding (quotient-remainder over hashed ids), TableEmbedding, SparseArch (3.7)
    dense.py         DenseArch: batch norm on the numeric features (3.2)
    crossnet.py      LowRankCross, AttentionLowRankCross, CrossStack, ResidualDCN, build_cross (3.3)
    mlp.py           GatedLayer, GatedMLP: the large MLP with dense gating (3.4)
    transact.py      EncoderLayer, TransAct: the history encoder (3.5)
    heads.py         TaskGroupHeads (task grouping, 3.6), MMoEHeads (the comparison baseline)
    calibration.py   IsotonicCalibration: the co-trained isotonic calibration layer (3.1)
    quantization.py  QuantizedEmbedding, middle-max int8 (de)quantization, quantize_embeddings (3.10)
"""

from ranking.layers.calibration import IsotonicCalibration
from ranking.layers.crossnet import AttentionLowRankCross, CrossStack, LowRankCross, ResidualDCN, build_cross
from ranking.layers.dense import DenseArch
from ranking.layers.embeddings import QREmbedding, SparseArch, TableEmbedding
from ranking.layers.heads import MMoEHeads, TaskGroupHeads
from ranking.layers.mlp import GatedLayer, GatedMLP
from ranking.layers.quantization import QuantizedEmbedding, embedding_bytes, quantize_embeddings
from ranking.layers.transact import EncoderLayer, TransAct

__all__ = [
    "AttentionLowRankCross",
    "CrossStack",
    "DenseArch",
    "EncoderLayer",
    "GatedLayer",
    "GatedMLP",
    "IsotonicCalibration",
    "LowRankCross",
    "MMoEHeads",
    "QREmbedding",
    "QuantizedEmbedding",
    "ResidualDCN",
    "SparseArch",
    "TableEmbedding",
    "TaskGroupHeads",
    "TransAct",
    "build_cross",
    "embedding_bytes",
    "quantize_embeddings",
]
