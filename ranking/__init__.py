"""LiRank ranker (LinkedIn, KDD 2024): model parts, training recipe, calibration, compression and
explore/exploit. `import ranking` pulls in torch and pyarrow only.

Public API:
    RankerConfig, TrainConfig          configuration (frozen dataclasses, saved with checkpoints)
    FeatureSchema, Featurizer, Batch   which columns feed the model, and how tables become tensors
    build_model, LiRankModel           the model, assembled from its parts (ranking.layers)
    Trainer                            the training recipe
    IncrementalPrior, empirical_fisher incremental training (ranking.incremental: from_checkpoint)
    Ranker                             the serving interface (scores, Thompson sampling, save/load)
    movielens_ctr, feedback_examples   example tables from catalog tables and feedback logs
"""

from ranking.bandit import BayesianLastLayer
from ranking.config import PRESETS, RankerConfig
from ranking.data import ExampleStream
from ranking.datasets import Examples, feedback_examples, movielens_ctr, popularity_scores
from ranking.features import Batch, Featurizer
from ranking.incremental import IncrementalPrior, empirical_fisher
from ranking.model import LiRankModel, build_model
from ranking.ranker import Ranker
from ranking.schema import FeatureSchema
from ranking.train import TrainConfig, Trainer, predict

__all__ = [
    "PRESETS",
    "Batch",
    "BayesianLastLayer",
    "ExampleStream",
    "Examples",
    "FeatureSchema",
    "Featurizer",
    "IncrementalPrior",
    "LiRankModel",
    "Ranker",
    "RankerConfig",
    "TrainConfig",
    "Trainer",
    "build_model",
    "empirical_fisher",
    "feedback_examples",
    "movielens_ctr",
    "popularity_scores",
    "predict",
]
