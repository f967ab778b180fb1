"""The novelty model folder's own file, novelty.json, typed (`NoveltyModelInfo`), and how to read it: what
the sampler and the jobs need of a trained model without importing the trainer.

The layout is lm.info's, format_version 1, with the training config under "sft_config" and keys of its
own: "prompt_format" ({"style", "k"}, plus "retrieved" for a retrieval-augmented model: how the model
reads a history key), "example_config" (how its examples were built) and, only for models trained with
--rag, "retrieval" (the table's version, "top" clusters per prompt, its provenance; the table itself lies
beside it: retrieval.parquet, retrieval.json, explore.retrieval). Files without "retrieval" are plain
models, read as before. Files written before "base", "method" and "lora" had their own keys read them
from sft_config and the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from explore.prompts import PromptFormat
from lm.info import ModelInfo

INFO_FILE = "novelty.json"
TRAIN = "python -m jobs.train_novelty --catalog DIR --out DIR"  # how to get a novelty model folder


@dataclass(frozen=True, kw_only=True)
class NoveltyModelInfo(ModelInfo, file=INFO_FILE, config_key="sft_config", what="novelty model", train=TRAIN):
    """novelty.json: the lm.info fields plus the prompt format and the example config."""

    prompt_format: PromptFormat  # how the model reads a history key; the sampler prompts it the same way
    example_config: dict  # explore.examples.ExampleConfig the training examples were built with (asdict)
    retrieval: dict | None = None  # the retrieval table trained with (RetrievalTable.to_dict); None: no RAG

    def __post_init__(self):
        super().__post_init__()
        if self.prompt_format.rag != (self.retrieval is not None):
            raise ValueError(
                f"prompt_format.retrieved={self.prompt_format.retrieved} but retrieval is "
                f"{'missing' if self.retrieval is None else 'set'}: a model reads retrieved clusters exactly when "
                "it was trained with a retrieval table. Retrain it (`python -m jobs.train_novelty [--rag]`)."
            )

    @property
    def rag(self) -> bool:
        """Trained with retrieval augmentation: its prompts must carry retrieved clusters."""
        return self.prompt_format.rag

    def to_dict(self) -> dict:
        d = {
            **super().to_dict(),
            "prompt_format": self.prompt_format.to_dict(),
            "example_config": self.example_config,
        }
        return {**d, "retrieval": self.retrieval} if self.retrieval is not None else d

    @classmethod
    def _fields_from(cls, d: dict) -> dict[str, Any]:
        config = d[cls.CONFIG_KEY]
        base = d.get("base", config["base"])
        legacy = {
            "base": base,
            "method": d.get("method") or ("full" if base == "tiny" else "lora"),
        }
        return {
            **super()._fields_from({**legacy, **d}),
            "prompt_format": PromptFormat(**d["prompt_format"]),
            "example_config": dict(d.get("example_config") or {}),
            "retrieval": d.get("retrieval"),
        }


def read_model_info(folder: str | os.PathLike) -> NoveltyModelInfo:
    """novelty.json of a model folder trained here, or a ValueError that says how to get one."""
    return NoveltyModelInfo.read(folder)
