"""The novelty LLM of LLM-powered interest exploration: it reads a member's last K clusters as language
and proposes clusters the member has not seen. `import explore` pulls in pyarrow only; torch,
transformers and vLLM load when a model is built or sampled.

Public API:
    ClusterVocabulary, PromptFormat        cluster ids <-> names and descriptions; prompts and answers
    ExampleConfig, build_examples          fine-tuning examples from member histories
    SFTConfig, train_novelty               fine-tuning (full for `tiny`, LoRA merged for pretrained bases)
    NoveltyTrainer                         its steps: split, build, fit, evaluate, save
    NoveltyModelInfo, read_model_info      a model folder's novelty.json, typed
    NoveltySampler, SamplingConfig,        n constrained samples per history key through vLLM
    EngineConfig, KeyCandidates, resolve_retrieval
    RetrievalTable, build_table            retrieval augmentation: next-cluster counts per key from fresh logs
    NoveltyStage                           the sampler as a Ray Data stage
    evaluate_novelty                       validity, recall@n against baselines, novelty
    build_key_set, check_key_rows,         which keys a bulk run samples; quarantine of bad key rows
    load_keys
    BulkPipeline, Resources                the bulk pipeline: keys -> samples -> scores -> selection -> cache
    SelectionConfig, best_of_n,            best-of-n selection per key, and the back-off entries
    backoff_entries
    CacheWriter, CacheReader, rollback     the versioned Redis cache: publish, one-round-trip reads, rollback
                                           (the rest of its API: explore.cache)
"""

from catalog.vocabulary import ClusterVocabulary
from explore.best_of_n import SelectionConfig, backoff_entries, best_of_n
from explore.cache import CacheReader, CacheWriter, rollback
from explore.evaluate import evaluate_novelty
from explore.examples import ExampleConfig, build_examples
from explore.keys import build_key_set, check_key_rows, load_keys
from explore.model_info import NoveltyModelInfo, read_model_info
from explore.pipeline import BulkPipeline, Resources
from explore.prompts import PromptFormat
from explore.retrieval import RetrievalTable, build_table
from explore.sampler import EngineConfig, KeyCandidates, NoveltySampler, SamplingConfig, resolve_retrieval
from explore.sft import NoveltyTrainer, SFTConfig, train_novelty
from explore.stage import NoveltyStage

__all__ = [
    "BulkPipeline", "NoveltyModelInfo", "NoveltyTrainer", "Resources", "load_keys", "read_model_info",
    "CacheReader", "CacheWriter", "SelectionConfig", "backoff_entries", "best_of_n", "rollback",
    "ClusterVocabulary", "EngineConfig", "ExampleConfig", "KeyCandidates", "NoveltySampler", "NoveltyStage",
    "PromptFormat", "RetrievalTable", "SFTConfig", "SamplingConfig", "build_examples", "build_key_set",
    "build_table", "check_key_rows", "evaluate_novelty", "resolve_retrieval", "train_novelty",
]  # fmt: skip
