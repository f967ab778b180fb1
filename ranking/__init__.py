"""LiRank ranker (LinkedIn, KDD 2024): model parts, training recipe, calibration, compression and
explore/exploit. `import ranking` pulls in torch and pyarrow only.

Public API:
    RankerConfig, TrainConfig          configuration (frozen dataclasses, saved with checkpoints)
    FeatureSchema, Featurizer, Batch   which columns feed the model, and how tables become tensors
    build_model, LiRankModel           the model, assembled from its parts (ranking.layers)
    Trainer                            the training recipe
    IncrementalPrior, empirical_fisher incremental training (ranking.incremental: from_checkpoint)
    Ranker                             the serving interface (scores, Thompson sampling, save/load)
    movielens_ctr, feedback_examples   example tables from catalog tables and feedback logs (train/valid/test)
    load_spec, user_examples,          a user's parquet read by a feature spec file (ranking.spec)
    spec_dict
    DNNBaseline, build_dnn             the embeddings + MLP baseline the ranker is measured against
    feedback_features                  a feedback log's rows with the catalog's features
    popularity_scores                  the popularity baseline
    train_and_evaluate, evaluate,      one training run, its test metrics (calibrated), metrics per slice
    slice_metrics, task_metrics
    evaluate_checkpoint                a saved ranker's metrics on a feedback log it never saw
    reliability_diagram                calibration plot (reliability.png)
    CHECKPOINT_FILES, export_serving,  the checkpoint folder: its marker files, the torch.export archive,
    read_checkpoint_config             its typed config.json
    IncrementalPrior, from_checkpoint, incremental training from a previous checkpoint (ranking.incremental)
    cold_start_path, empirical_fisher
    quantize_embeddings,               int8 middle-max embedding compression and its size
    embedding_bytes
    count_flops, pick_device           model cost; CUDA when present
    ABLATION_STEPS, run_ablation,      the LiRank ablation (Table 6 on this data)
    multitask_steps, markdown_table
"""

from catalog.device import pick_device
from ranking.ablation import STEPS as ABLATION_STEPS
from ranking.ablation import markdown_table, multitask_steps, run_ablation
from ranking.bandit import BayesianLastLayer
from ranking.baseline import DNNBaseline, build_dnn
from ranking.checkpoint import OWN_FILES as CHECKPOINT_FILES
from ranking.checkpoint import export_serving, read_checkpoint_config
from ranking.config import PRESETS, RankerConfig
from ranking.data import ExampleStream
from ranking.datasets import Examples, feedback_examples, feedback_features, movielens_ctr, popularity_scores
from ranking.experiment import evaluate, evaluate_checkpoint, slice_metrics, train_and_evaluate
from ranking.features import Batch, Featurizer
from ranking.incremental import IncrementalPrior, cold_start_path, empirical_fisher, from_checkpoint
from ranking.layers.quantization import embedding_bytes, quantize_embeddings
from ranking.metrics import reliability_diagram, task_metrics
from ranking.model import LiRankModel, build_model, count_flops
from ranking.ranker import Ranker
from ranking.schema import FeatureSchema
from ranking.spec import load_spec, spec_dict, user_examples
from ranking.train import TrainConfig, Trainer, predict

__all__ = [
    "ABLATION_STEPS",
    "CHECKPOINT_FILES",
    "cold_start_path",
    "count_flops",
    "embedding_bytes",
    "evaluate",
    "evaluate_checkpoint",
    "export_serving",
    "from_checkpoint",
    "markdown_table",
    "multitask_steps",
    "pick_device",
    "quantize_embeddings",
    "read_checkpoint_config",
    "reliability_diagram",
    "run_ablation",
    "slice_metrics",
    "task_metrics",
    "train_and_evaluate",
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
    "feedback_features",
    "movielens_ctr",
    "popularity_scores",
    "predict",
    "DNNBaseline",
    "build_dnn",
    "load_spec",
    "spec_dict",
    "user_examples",
]
